"""``kvfit report``: a design-review folder (report.md and PNGs) for several layouts or meshes.

Registered on the app by estimator.cli.app. matplotlib and jax load only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from estimator.cli.options import (
    BatchOpt,
    DtypeOpt,
    JsonOpt,
    LengthOpt,
    ModelOpt,
    NumSeqsOpt,
    UtilOpt,
    check_jax_env,
    check_layout_applies,
    error_line,
    fail_input,
    out,
    print_json,
    safe,
    slow_work,
)
from meshes.validation import InputError, check_output_path


def report_command(
    out_text: Annotated[str, typer.Option("--out", help="Folder for report.md, memory.png and "
                                          "feasibility.png (created; existing files are kept unless "
                                          "--overwrite).")],
    model: ModelOpt = "llama-3.1-70b",
    mesh: Annotated[str, typer.Option(help="One or more mesh presets, comma-separated.")] = "8xH100-80GB",
    layouts: Annotated[str | None, typer.Option(help="Layouts, comma-separated (tp8,dp2xtp4,...); "
                                                "default: each mesh's default.")] = None,
    max_length: LengthOpt = None,
    max_batch_size: BatchOpt = None,
    max_num_seqs: NumSeqsOpt = None,
    device_memory_utilization: UtilOpt = 0.9,
    kv_cache_dtype: DtypeOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier report in --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a sharding design review: comparison table, waste, warnings, memory bars, heatmap.

    Example: kvfit report --model llama-3.1-70b --mesh 8xH100-80GB --layouts tp8,dp2xtp4,pp2xtp4
    --max-model-len 32768 --out review/
    """
    from estimator.cli.review import _candidates, candidates_batch
    from estimator.reports.report import REPORT_FILES, check_report_files

    try:
        out_dir = check_output_path("--out", out_text, folder=True)
        assert out_dir is not None
        pairs = _candidates(mesh, layouts)
        meshes = list(dict.fromkeys(m for m, _ in pairs))
        layout_list = list(dict.fromkeys(lay for _, lay in pairs))
        for lay in layout_list:
            check_layout_applies(model, lay)
        max_batch_size = candidates_batch(pairs, max_batch_size, max_num_seqs)
        check_jax_env()
        check_report_files("--out", out_dir)
        taken = [name for name in REPORT_FILES if (out_dir / name).exists()]
        if taken and not overwrite:
            raise InputError("--out", str(out_dir), f"a folder without an earlier report ({', '.join(taken)} "
                             "exist); pass --overwrite to replace them")
        from estimator.reports.report import write_report  # imports jax (the heatmap's sweep)

        with slow_work("writing the report"):
            report = write_report(model, meshes, layout_list, out_dir, max_length=max_length,
                                  max_batch_size=max_batch_size, kv_cache_dtype=kv_cache_dtype,
                                  device_memory_utilization=device_memory_utilization,
                                  command=_command(model, mesh, layouts, max_length, max_batch_size, kv_cache_dtype,
                                                   device_memory_utilization, out_dir))
    except InputError as e:
        fail_input(e)
    written = [report.markdown, report.memory_png] + ([report.heatmap_png] if report.heatmap_png else [])
    if as_json:
        print_json({"files": [str(p) for p in written],
                    "candidates": [{"candidate": c.label, "mesh_preset": c.mesh, **c.plan.to_dict()}
                                   for c in report.candidates]})
    else:
        for path in written:
            out.print(safe(path, 4000), highlight=False)
    if not any(c.plan.fits for c in report.candidates):
        typer.echo(f"no candidate fits ({error_line(report.candidates[0].plan.model)})", err=True)
        raise typer.Exit(1)


def _command(model: str, mesh: str, layouts: str | None, max_length: int | None, max_batch_size: int | None,
             kv_cache_dtype: str | None, utilization: float, out_dir: Path) -> list[str]:
    """The command line that reproduces this report (for its "Reproduce" section)."""
    flags = {"--model": model, "--mesh": mesh, "--layouts": layouts, "--max-model-len": max_length,
             "--max-batch-size": max_batch_size, "--kv-cache-dtype": kv_cache_dtype,
             "--device-memory-utilization": None if utilization == 0.9 else utilization, "--out": out_dir}
    return ["kvfit", "report", *[str(x) for k, v in flags.items() if v is not None for x in (k, v)]]
