"""The ``kvfit`` command line (typer + rich): the only module that imports either.

Exit codes: 0 the request fits, 1 it does not (suggestions on stderr), 2 bad input.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from estimator.plan import MemoryPlan, plan
from estimator.presets import DEFAULT_MESH, DEFAULT_MODEL
from meshes.validation import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kvfit: how many KV-cache pages fit on every device, how long a request "
                       "may be, and how many requests fit — before you rent the GPUs.")
out = Console()
err = Console(stderr=True)

GiB = 1024**3

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Preset name (kvfit models) or "
                                       "path to an HF config.json.")]
MeshOpt = Annotated[str, typer.Option("--mesh", help="Mesh preset: 8xH100-80GB, 2x8xH100-80GB, "
                                      "v5e-16, ...")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail_input(error: InputError) -> None:
    typer.echo(f"error: {error}", err=True)  # one unwrapped line
    raise typer.Exit(2)


def _gib(n: int) -> str:
    return f"{n / GiB:,.2f}"


def _layout_text(layout: str | None, tp: int | None, dp: int | None, pp: int | None,
                 ep: int | None) -> str | None:
    degrees = {"dp": dp, "tp": tp, "pp": pp, "ep": ep}
    if layout and any(v is not None for v in degrees.values()):
        raise InputError("--layout", layout, "either --layout or the --*-parallel-size flags, "
                         "not both")
    if layout:
        return layout
    if all(v is None for v in degrees.values()):
        return None
    return "x".join(f"{k}{v}" for k, v in degrees.items() if v is not None)


def plan_table(p: MemoryPlan) -> Table:
    """Per-device rows of a plan, in GiB."""
    table = Table(title=f"{p.model} on {p.mesh} — {p.layout}, KV {p.kv_cache_dtype}, "
                        f"page {p.page_size}", title_justify="left")
    for col in ("device", "stage", "limit GiB", "in use GiB", "weights GiB", "activ. GiB",
                "signal GiB", "KV pool GiB", "page MiB", "free GiB"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for r in p.devices:
        table.add_row(r.device, str(r.stage), _gib(r.bytes_limit), _gib(r.bytes_in_use),
                      _gib(r.weights_bytes), _gib(r.activation_bytes), _gib(r.signal_bytes),
                      _gib(r.kv_pool_bytes), f"{r.page_bytes / 2**20:,.2f}", _gib(r.free_bytes))
    return table


def _print_plan(p: MemoryPlan) -> None:
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
    layout: Annotated[str | None, typer.Option(help="Layout such as tp8, dp2xtp4, pp2xtp4.")] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option("--tensor-parallel-size", "--tp")] = None,
    data_parallel_size: Annotated[int | None, typer.Option("--data-parallel-size", "--dp")] = None,
    pipeline_parallel_size: Annotated[int | None,
                                      typer.Option("--pipeline-parallel-size", "--pp")] = None,
    expert_parallel_size: Annotated[int | None,
                                    typer.Option("--expert-parallel-size", "--ep")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", "--max-model-len",
                                                   help="Tokens of one request.")] = None,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size", "--max-num-seqs")] = None,
    device_memory_utilization: Annotated[float, typer.Option(
        "--device-memory-utilization", "--gpu-memory-utilization")] = 0.9,
    kv_cache_dtype: Annotated[str | None, typer.Option(help="bf16, fp8, fp16, fp32; default: "
                                                       "the weights' dtype.")] = None,
    page_size: Annotated[int, typer.Option("--page-size", "--block-size")] = 128,
    as_json: JsonOpt = False,
) -> None:
    """Plan the KV-cache pool device by device.

    Example: kvfit plan --model llama-3.1-70b --mesh 8xH100-80GB --tp 8 --max-length 32768
    """
    try:
        text = _layout_text(layout, tensor_parallel_size, data_parallel_size,
                            pipeline_parallel_size, expert_parallel_size)
        p = plan(model, mesh, text, kv_cache_dtype=kv_cache_dtype, page_size=page_size,
                 device_memory_utilization=device_memory_utilization, max_length=max_length,
                 max_batch_size=max_batch_size)
    except InputError as e:
        _fail_input(e)
    if as_json:
        out.print_json(json.dumps(p.to_dict()))
    else:
        _print_plan(p)
    _exit_on_verdict(p.fits, p.suggestions)


def _exit_on_verdict(fits: bool, suggestions: Any) -> None:
    if not fits:
        typer.echo("does not fit: " + "; ".join(suggestions), err=True)
        raise typer.Exit(1)


@app.command("models")
def models_command(as_json: JsonOpt = False) -> None:
    """List the embedded model presets."""
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
    out.print(table)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except InputError as e:  # a bad value caught outside a command's own handler
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
