"""The ``kvfit`` command line (typer + rich): ``plan`` and ``models`` here, the other commands in
estimator.cli_* modules, all registered on one app.

Exit codes: 0 the request fits, 1 it does not (suggestions on stderr), 2 bad input. jax, flax and
matplotlib load only inside the commands that need them, so ``kvfit plan`` starts fast.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from estimator.cli_options import (
    BatchOpt,
    CsvOpt,
    DpOpt,
    DtypeOpt,
    EpOpt,
    GiB,
    JsonOpt,
    LayoutOpt,
    LengthOpt,
    MeshOpt,
    ModelOpt,
    PpOpt,
    TpOpt,
    UtilOpt,
    check_one_format,
    err,
    fail_input,
    gib,
    layout_text,
    out,
    print_table,
    slow_work,
)
from estimator.plan import MemoryPlan, plan
from estimator.presets import DEFAULT_MESH, DEFAULT_MODEL
from meshes.validation import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kvfit: how many KV-cache pages fit on every device, how long a request "
                       "may be, and how many requests fit — before you rent the GPUs.\n\n"
                       "Example: kvfit plan --model llama-3.1-70b --mesh 8xH100-80GB --tp 8 --max-model-len 32768")


def plan_table(p: MemoryPlan, unit: int = GiB) -> Table:
    """Per-device rows of a plan, in GiB (``unit=1``: exact bytes)."""
    table = Table(title=f"{p.model} on {p.mesh} — {p.layout}, KV {p.kv_cache_dtype}, "
                        f"page {p.page_size}", title_justify="left")
    name = {GiB: "GiB", 1: "bytes"}[unit]
    columns = ("device", "stage", f"limit {name}", f"in use {name}", f"weights {name}", f"activ. {name}",
               f"signal {name}", f"KV pool {name}", "page MiB" if unit == GiB else "page bytes", f"free {name}")
    for col in columns:
        table.add_column(col, justify="left" if col == "device" else "right")

    def show(n: int) -> str:
        return gib(n) if unit == GiB else str(n)

    for r in p.devices:
        table.add_row(r.device, str(r.stage), show(r.bytes_limit), show(r.bytes_in_use),
                      show(r.weights_bytes), show(r.activation_bytes), show(r.signal_bytes),
                      show(r.kv_pool_bytes), f"{r.page_bytes / 2**20:,.2f}" if unit == GiB else str(r.page_bytes),
                      show(r.free_bytes))
    return table


def print_plan(p: MemoryPlan) -> None:
    out.print(plan_table(p))
    out.print(f"pages per replica: [bold]{p.pages_per_replica:,}[/] × {p.num_replicas} replicas "
              f"({p.reserved_pages} reserved)   max sequence length: "
              f"[bold]{p.max_supported_sequence_length:,}[/] tokens   "
              f"max batch at {p.planned_max_length:,} tokens: [bold]{p.max_batch_size:,}[/]",
              highlight=False)
    for w in p.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)


@app.command("plan")
def plan_command(
    model: ModelOpt = DEFAULT_MODEL,
    mesh: MeshOpt = DEFAULT_MESH,
    layout: LayoutOpt = None,
    tensor_parallel_size: TpOpt = None,
    data_parallel_size: DpOpt = None,
    pipeline_parallel_size: PpOpt = None,
    expert_parallel_size: EpOpt = None,
    max_length: LengthOpt = None,
    max_batch_size: BatchOpt = None,
    device_memory_utilization: UtilOpt = 0.9,
    kv_cache_dtype: DtypeOpt = None,
    page_size: Annotated[int, typer.Option("--page-size", "--block-size")] = 128,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="safetensors checkpoint (folder, model.safetensors.index.json or "
        ".safetensors file): charge each device its exact shard of the checkpoint's tensors "
        "instead of the analytic weights (headers only are read).")] = None,
    activations: Annotated[str, typer.Option(
        "--activations", help="analytic, or xla: compile kvfit's reference prefill and decode steps "
        "on the mesh and charge XLA's temp bytes (needs the mesh's platform here).")] = "analytic",
    allow_cpu_proxy: Annotated[bool, typer.Option(
        "--allow-cpu-proxy", help="With --activations xla: compile a GPU/TPU mesh on this CPU "
        "(XLA:CPU bytes, marked as a proxy).")] = False,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Also plan with the other activation model (analytic and XLA side by side) "
        "and say where each device's memory goes.")] = False,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """Plan the KV-cache pool device by device.

    Example: kvfit plan --model llama-3.1-70b --mesh 8xH100-80GB --tp 8 --max-model-len 32768
    """
    try:
        check_one_format(as_json, as_csv)
        if allow_cpu_proxy and activations != "xla" and not explain:
            raise InputError("--allow-cpu-proxy", True, "only with --activations xla or --explain")
        text = layout_text(layout, tensor_parallel_size, data_parallel_size, pipeline_parallel_size,
                           expert_parallel_size)
        if allow_cpu_proxy:
            _simulate_cpu_devices(mesh)
        with slow_work("planning"):
            p = plan(model, mesh, text, kv_cache_dtype=kv_cache_dtype, page_size=page_size,
                     device_memory_utilization=device_memory_utilization, max_length=max_length,
                     max_batch_size=max_batch_size, weights=weights, activations=activations,
                     xla_options={"allow_cpu_proxy": True} if allow_cpu_proxy and activations == "xla" else None)
            both = activation_models(model, mesh, text, p, activations, allow_cpu_proxy,
                                     kv_cache_dtype=kv_cache_dtype, page_size=page_size,
                                     device_memory_utilization=device_memory_utilization, max_length=max_length,
                                     max_batch_size=max_batch_size, weights=weights) if explain else None
    except InputError as e:
        fail_input(e)
    if as_json:
        out.print_json(json.dumps({**p.to_dict(), **({"activation_models": both} if both else {})}))
    elif as_csv:  # the per-device rows in bytes
        print_table(plan_table(p, unit=1), as_csv=True)
    else:
        print_plan(p)
        if both:
            print_activation_models(p, both)
    exit_on_verdict(p.fits, p.suggestions)


def _simulate_cpu_devices(mesh: str) -> None:
    """A CPU proxy compile needs one CPU device per mesh device: ask XLA for them before JAX starts."""
    import os

    from meshes.mesh import DeviceMesh

    size = DeviceMesh.from_preset(mesh).size
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={size}".strip()


def activation_models(model: str, mesh: str, layout: str | None, chosen: MemoryPlan, activations: str,
                      allow_cpu_proxy: bool, **plan_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Per-device activation bytes and pages under both activation models (for --explain).

    The model not chosen is planned too; XLA is reported as unavailable (with the reason) when the
    mesh's platform cannot be compiled here and no CPU proxy was allowed."""
    result: dict[str, dict[str, Any]] = {}
    for name in ("analytic", "xla"):
        if name == activations:
            p = chosen
        else:
            try:
                p = plan(model, mesh, layout, activations=name, **plan_kwargs,
                         xla_options={"allow_cpu_proxy": True} if name == "xla" and allow_cpu_proxy else None)
            except InputError as e:
                result[name] = {"available": False, "reason": e.allowed}
                continue
        tight = next(r for r in p.devices if r.device == p.tightest_device)
        result[name] = {"available": True, "activation_bytes": tight.activation_bytes,
                        "pages_per_replica": p.pages_per_replica,
                        "max_supported_sequence_length": p.max_supported_sequence_length,
                        "max_batch_size": p.max_batch_size, "fits": p.fits,
                        "cpu_proxy": name == "xla" and allow_cpu_proxy}
    return result


def print_activation_models(p: MemoryPlan, both: dict[str, dict[str, Any]]) -> None:
    """The --explain table: the two activation models side by side, then the tightest device's budget."""
    table = Table("activation model", "activations / device GiB", "pages per replica", "max sequence length",
                  f"max batch at {p.planned_max_length:,}", title="activation models", title_justify="left")
    for name, row in both.items():
        if not row["available"]:
            table.add_row(name, escape(f"not compiled: {row['reason']}"), "—", "—", "—")
            continue
        label = name + (" (XLA:CPU proxy)" if row["cpu_proxy"] else "")
        table.add_row(label, gib(row["activation_bytes"]), f"{row['pages_per_replica']:,}",
                      f"{row['max_supported_sequence_length']:,}", f"{row['max_batch_size']:,}")
    out.print(table)
    r = next(r for r in p.devices if r.device == p.tightest_device)
    out.print(f"tightest device {r.device}: budget {r.budget_bytes:,} B − weights {r.weights_bytes:,} B − "
              f"activations {r.activation_bytes:,} B − signal buffers {r.signal_bytes:,} B − reserve "
              f"{r.reserve_bytes:,} B = {r.kv_budget_bytes:,} B for KV = {r.kv_budget_bytes // r.page_bytes:,} "
              f"pages of {r.page_bytes:,} B" if r.page_bytes else f"tightest device {r.device} holds no KV",
              highlight=False)


def exit_on_verdict(fits: bool, suggestions: Any) -> None:
    """Exit code 1, with the suggestions on stderr, when the request does not fit."""
    if not fits:
        typer.echo("does not fit: " + "; ".join(suggestions), err=True)
        raise typer.Exit(1)


@app.command("models")
def models_command(as_json: JsonOpt = False, as_csv: CsvOpt = False) -> None:
    """List the embedded model presets.

    Example: kvfit models --json
    """
    try:
        check_one_format(as_json, as_csv)
    except InputError as e:
        fail_input(e)
    from estimator.models import load_preset
    from estimator.presets import PRESETS
    from estimator.weights import parameter_count

    specs = [load_preset(n) for n in PRESETS]
    if as_json:
        out.print_json(json.dumps([{**s.to_dict(), "parameters": parameter_count(s)}
                                   for s in specs]))
        return
    table = Table("preset", "type", "layers", "hidden", "heads", "KV heads", "head dim",
                  "params (B)", "max pos")
    for s in specs:
        table.add_row(s.name, s.model_type, str(s.num_layers), str(s.hidden_size),
                      str(s.num_attention_heads), str(s.num_kv_heads), str(s.head_dim),
                      f"{parameter_count(s) / 1e9:.2f}", f"{s.max_position_embeddings:,}")
    print_table(table, as_csv)


def _register() -> None:
    from estimator import cli_engines, cli_report, cli_review, cli_sweep

    for name, command in (("sweep", cli_sweep.sweep_command), ("compare", cli_review.compare_command),
                          ("explain", cli_review.explain_command), ("fit", cli_review.fit_command),
                          ("devices", cli_review.devices_command), ("report", cli_report.report_command),
                          ("engines", cli_engines.engines_command),
                          ("translate", cli_engines.translate_command)):
        app.command(name)(command)


_register()


# Spellings of one option (the engines' names beside kvfit's): giving two of them is ambiguous.
SAME_OPTION = (("--max-length", "--max-model-len"), ("--max-batch-size", "--max-num-seqs"),
               ("--device-memory-utilization", "--gpu-memory-utilization", "--utilizations"),
               ("--tensor-parallel-size", "--tp"), ("--data-parallel-size", "--dp"),
               ("--pipeline-parallel-size", "--pp"), ("--expert-parallel-size", "--ep"),
               ("--page-size", "--block-size"), ("--model", "-m"), ("--mesh",), ("--layout",), ("--layouts",))


def check_repeated_options(argv: list[str]) -> None:
    """Refuse an option given twice, under one name or two (typer would silently keep the last)."""
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("-")]
    for group in SAME_OPTION:
        given = [f for f in flags if f in group]
        if len(given) > 1:
            raise InputError(group[0], " ".join(given), f"one value: {', '.join(group)} name the same option")


def main() -> None:
    """Console entry point: exit 0 fits, 1 does not fit, 2 bad input — always one line of error."""
    argv = sys.argv[1:] or ["--help"]
    try:
        check_repeated_options(argv)
        code = app(args=argv, prog_name="kvfit", standalone_mode=False)
    except InputError as e:  # a bad value caught outside a command's own handler
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C
        sys.exit(130)
    except Exception as e:  # typer's own usage errors (a misspelt option, "nan" for an integer): exit code 2
        if getattr(e, "exit_code", None) != 2 or not callable(getattr(e, "format_message", None)):
            raise
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
