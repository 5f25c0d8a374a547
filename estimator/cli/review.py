"""CLI commands for design reviews: compare, explain, fit, devices (registered in estimator.cli.app)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from estimator.cli.options import (
    BatchOpt,
    CsvOpt,
    DpOpt,
    DtypeOpt,
    EpOpt,
    JsonOpt,
    LayoutOpt,
    LengthOpt,
    ModelOpt,
    NumSeqsOpt,
    PpOpt,
    TpOpt,
    UtilOpt,
    check_jax_env,
    check_layout_applies,
    check_one_format,
    comma_list,
    err,
    error_line,
    fail_input,
    gib,
    layout_text,
    out,
    print_json,
    print_table,
    replicas_of,
    safe,
    slow_work,
    total_batch,
)
from estimator.planning.review import compare, comparison_rows, explain, fit
from meshes.validation import InputError

MAX_CANDIDATES = 64


def _candidates(meshes: str, layouts: str | None) -> list[tuple[str, str | None]]:
    mesh_list = comma_list(meshes)
    layout_list = comma_list(layouts) or [None]
    if not mesh_list:
        raise InputError("--mesh", meshes, "one or more mesh presets, comma-separated")
    if layouts is not None and layout_list == [None]:
        raise InputError("--layouts", layouts, "one or more layouts, comma-separated")
    for flag, text, items in (("--mesh", meshes, mesh_list), ("--layouts", layouts, layout_list)):
        if len(set(items)) != len(items):
            raise InputError(flag, text, "distinct values (each candidate once)")
    if len(mesh_list) * len(layout_list) > MAX_CANDIDATES:
        raise InputError("--mesh × --layouts", f"{len(mesh_list) * len(layout_list)} candidates",
                         f"at most {MAX_CANDIDATES}")
    return [(m, lay) for m in mesh_list for lay in layout_list]


def candidates_batch(candidates: list[tuple[str, str | None]], max_batch_size: int | None,
                     max_num_seqs: int | None) -> int | None:
    """--max-batch-size, or --max-num-seqs × the replicas (the same for every candidate)."""
    if max_num_seqs is None:
        return total_batch(max_batch_size, None, 1)
    replicas = {replicas_of(m, lay) for m, lay in candidates}
    if len(replicas) > 1:
        raise InputError("--max-num-seqs", max_num_seqs, "--max-batch-size when the candidates have "
                         f"different replica counts ({', '.join(map(str, sorted(replicas)))})")
    return total_batch(max_batch_size, max_num_seqs, replicas.pop())


def compare_command(
    model: ModelOpt = "llama-3.1-70b",
    mesh: Annotated[str, typer.Option(help="One or more mesh presets, comma-separated.")] = "8xH100-80GB",
    layouts: Annotated[str | None, typer.Option(help="Layouts, comma-separated (tp8,dp2xtp4,...).")] = None,
    max_length: LengthOpt = None,
    max_batch_size: BatchOpt = None,
    max_num_seqs: NumSeqsOpt = None,
    kv_cache_dtype: DtypeOpt = None,
    device_memory_utilization: UtilOpt = 0.9,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """Layouts or meshes side by side: per-device memory, pages, lengths, batches, waste.

    Example: kvfit compare --model llama-3.1-70b --mesh 8xH100-80GB --layouts tp8,dp2xtp4,tp4xpp2
    """
    try:
        check_one_format(as_json, as_csv)
        pairs = _candidates(mesh, layouts)
        for _, lay in pairs:
            check_layout_applies(model, lay)
        max_batch_size = candidates_batch(pairs, max_batch_size, max_num_seqs)
        cands = compare(model, pairs, max_length=max_length,
                        max_batch_size=max_batch_size, kv_cache_dtype=kv_cache_dtype,
                        device_memory_utilization=device_memory_utilization)
    except InputError as e:
        fail_input(e)
    if as_json:
        # the plan's own "mesh" (a description) would hide the preset: keep the preset under its own key
        print_json([{"candidate": c.label, "mesh_preset": c.mesh, **c.plan.to_dict()}
                    for c in cands])
    else:  # as CSV, a metric name with a comma in it ("max batch at 32,768 tokens") is quoted
        table = Table("metric", *[safe(c.label) for c in cands], title=f"{safe(cands[0].plan.model)}: candidates",
                      title_justify="left")
        for name, values in comparison_rows(cands):
            table.add_row(safe(name), *(safe(v) for v in values))
        print_table(table, as_csv)
    if not any(c.plan.fits for c in cands):  # exit 1 as kvfit report does
        typer.echo("no candidate fits", err=True)
        raise typer.Exit(1)


def explain_command(
    model: ModelOpt = "llama-3.1-70b",
    mesh: Annotated[str, typer.Option(help="Mesh preset.")] = "8xH100-80GB",
    layout: LayoutOpt = None,
    tensor_parallel_size: TpOpt = None,
    data_parallel_size: DpOpt = None,
    pipeline_parallel_size: PpOpt = None,
    expert_parallel_size: EpOpt = None,
    max_length: LengthOpt = None,
    max_batch_size: BatchOpt = None,
    max_num_seqs: NumSeqsOpt = None,
    device_memory_utilization: UtilOpt = 0.9,
    kv_cache_dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """Why a configuration does not fit, and the nearest ones that do.

    Example: kvfit explain --model llama-3.1-70b --mesh 8xH100-80GB --max-model-len 131072 --max-num-seqs 64
    """
    try:
        check_one_format(as_json, as_csv)
        text = layout_text(layout, tensor_parallel_size, data_parallel_size, pipeline_parallel_size,
                           expert_parallel_size)
        check_layout_applies(model, text)
        max_batch_size = total_batch(max_batch_size, max_num_seqs,
                                     replicas_of(mesh, text) if max_num_seqs is not None else 1)
        with slow_work("trying the nearest configurations that fit"):
            e = explain(model, mesh, text, max_length=max_length, max_batch_size=max_batch_size,
                        kv_cache_dtype=kv_cache_dtype, device_memory_utilization=device_memory_utilization)
    except InputError as error:
        fail_input(error)
    if as_json:
        print_json({"fits": e.plan.fits, "reasons": list(e.reasons),
                    "alternatives": [{"change": a.change, "command": a.command,
                                      "plan": a.plan.to_dict()} for a in e.alternatives]})
    else:
        table = Table("change", "length", "max batch", "command", title="nearest that fit",
                      title_justify="left")
        for a in e.alternatives:
            table.add_row(safe(a.change), f"{a.plan.planned_max_length:,}", f"{a.plan.max_batch_size:,}",
                          safe(a.command, 1000))
        if not as_csv:
            head = f"{safe(e.plan.model)} on {safe(e.plan.mesh)}, {safe(e.plan.layout)}"
            if e.plan.fits:
                out.print(f"[bold]fits[/]: {head}", highlight=False)
            for reason in e.reasons:
                out.print(f"  • {error_line(reason)}", highlight=False, markup=False)
        if e.alternatives or as_csv:
            print_table(table, as_csv)
    if not e.plan.fits:  # on stderr, as kvfit plan says it
        typer.echo(f"does not fit: {error_line(e.plan.model)} on {error_line(e.plan.mesh)}, "
                   f"{error_line(e.plan.layout)}", err=True)
        raise typer.Exit(1)


def fit_command(
    model: ModelOpt = "llama-3.1-70b",
    target_length: Annotated[int, typer.Option("--target-length", "--max-model-len",
                                               help="Tokens per request to serve.")] = 32768,
    target_concurrency: Annotated[int, typer.Option(help="Requests at once.")] = 64,
    device: Annotated[str, typer.Option(help="Device kind (kvfit devices).")] = "H100-80GB",
    max_devices: Annotated[int, typer.Option(help="Largest mesh to try.")] = 64,
    device_memory_utilization: UtilOpt = 0.9,
    kv_cache_dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """The fewest devices and the layouts that serve a target length and concurrency, ranked.

    Example: kvfit fit --model llama-3.1-70b --target-length 32768 --target-concurrency 64 --device H100-80GB
    """
    try:
        check_one_format(as_json, as_csv)
        if not str(device).strip():
            raise InputError("--device", device, "a device kind (kvfit devices lists them)")
        with slow_work("planning every mesh size and layout"):
            options = fit(model, target_length=target_length, target_concurrency=target_concurrency,
                          device=device, max_devices=max_devices, kv_cache_dtype=kv_cache_dtype,
                          device_memory_utilization=device_memory_utilization)
    except InputError as e:
        fail_input(e)
    if as_json:
        print_json([{"devices": o.devices, "mesh": o.mesh, "layout": o.layout,
                     "headroom_bytes": o.headroom_bytes, "max_batch_size": o.plan.max_batch_size}
                    for o in options])
    else:
        table = Table("devices", "mesh", "layout", "headroom / device (GiB)", "max batch at target",
                      title=f"{target_concurrency} × {target_length:,} tokens on {safe(device)}", title_justify="left")
        for o in options:
            table.add_row(str(o.devices), safe(o.mesh), safe(o.layout), gib(o.headroom_bytes),
                          f"{o.plan.max_batch_size:,}")
        print_table(table, as_csv)
    if not options:
        err.print(f"nothing up to {max_devices} × {safe(device)} serves that target", highlight=False)
        raise typer.Exit(1)


def devices_command(
    live: Annotated[bool, typer.Option("--live", help="Also list this machine's JAX devices.")] = False,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """The device catalog (and, with --live, the local JAX devices and their memory stats).

    Example: kvfit devices --live
    """
    try:
        check_one_format(as_json, as_csv)
    except InputError as e:
        fail_input(e)
    from meshes.catalog import CATALOG

    specs = list(CATALOG.values())
    live_rows: list[dict] = []
    if live:
        try:
            check_jax_env()
        except InputError as e:
            fail_input(e)
        import jax

        for d in jax.devices():
            stats = d.memory_stats()
            live_rows.append({"device": str(d), "kind": d.device_kind, "platform": d.platform,
                              "memory_stats": stats})
    if as_json:
        print_json({"catalog": [vars(s) | {"aliases": list(s.aliases)} for s in specs],
                    "live": live_rows}, default=str)
        return
    table = Table("name", "platform", "memory GiB", "usable GiB", "HBM TB/s", "bf16 TFLOP/s", "aliases")
    for s in specs:
        table.add_row(safe(s.name), safe(s.platform), gib(s.memory_bytes), gib(s.usable_bytes),
                      f"{s.hbm_bandwidth / 1e12:.2f}",
                      f"{s.peak_bf16_flops / 1e12:,.0f}", safe(", ".join(s.aliases)))
    print_table(table, as_csv)
    if as_csv:
        return
    from meshes.stats import MemoryStats

    for row in live_rows:
        try:  # the budget key as plans read it (bytes_limit, else bytes_reservable_limit on TPU)
            ms = MemoryStats.from_jax(row["memory_stats"], device=row["device"])
            text = f"limit {gib(ms.bytes_limit)} GiB ({ms.budget_key}), in use {gib(ms.bytes_in_use)} GiB"
        except InputError:
            text = "no usable memory stats (pass a mesh preset or capacity_bytes)"
        out.print(f"live {safe(row['device'])} ({safe(row['kind'])}): {text}", highlight=False)


