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
    weights: Annotated[str | None, typer.Option(
        "--weights", help="safetensors checkpoint (folder, model.safetensors.index.json or "
        ".safetensors file): charge each device its exact shard of the checkpoint's tensors "
        "instead of the analytic weights (headers only are read).")] = None,
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
                 max_batch_size=max_batch_size, weights=weights)
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


# --------------------------------------------------------------------------- kvfit sweep
MAX_AXIS_VALUES = 1 << 22


def parse_axis(field: str, text: str, cast: Any = int) -> list:
    """Values of a sweep axis: ``a:b`` powers of two from a to b (a and b included),
    ``a:b:step`` linear from a to b inclusive, or a comma list mixing both (``1,8:64``)."""
    values: list = []
    for item in (t.strip() for t in str(text).split(",")):
        parts = item.split(":")
        try:
            if len(parts) == 1 and item:
                values.append(cast(item))
                continue
            if cast is not int or len(parts) not in (2, 3):
                raise ValueError(item)
            lo, hi = int(parts[0]), int(parts[1])
            step = int(parts[2]) if len(parts) == 3 else 0
        except ValueError:
            raise InputError(field, text, "a number, a:b (powers of two from a to b), a:b:step "
                             "(linear) or a comma list of those") from None
        if lo < 1 or hi < lo or (len(parts) == 3 and step < 1):
            raise InputError(field, text, "ranges a:b or a:b:step with 1 ≤ a ≤ b and step ≥ 1")
        if step:
            if (hi - lo) // step + 1 > MAX_AXIS_VALUES:
                raise InputError(field, text, f"at most {MAX_AXIS_VALUES:,} values")
            values.extend(range(lo, hi + 1, step))
        else:
            values.extend(sorted({lo, hi} | {1 << k for k in range(hi.bit_length())
                                             if lo <= 1 << k <= hi}))
    return values


class _LazyProgress:
    """A rich progress bar on stderr that appears only once a sweep has run for a second."""

    def __init__(self, delay: float = 1.0) -> None:
        import time

        self._clock, self._start, self._delay = time.perf_counter, time.perf_counter(), delay
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None and done < total and self._clock() - self._start > self._delay:
            from rich.progress import Progress

            self._bar = Progress(console=err, transient=True)
            self._bar.start()
            self._task = self._bar.add_task("sweeping cells", total=total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _config_labels(frontier: Any) -> list[str]:
    """Column labels: the layout, plus each other config dimension that has several values."""
    from estimator.frontier import CONFIG_DIMS

    frame = frontier._config_frame()
    varying = [d for d in CONFIG_DIMS[1:] if len(frontier.coords[d]) > 1]
    fmt = {"kv_dtype": "{}", "page_size": "page {}", "utilization": "util {}"}
    return [" ".join([str(frame["layout"][i]), *(fmt[d].format(frame[d][i]) for d in varying)])
            for i in range(len(frame["layout"]))]


def sweep_table(frontier: Any) -> Table:
    """Max batch per length (rows) for each configuration (columns)."""
    table = Table(title=f"max batch per length — {frontier.model} on {frontier.mesh}",
                  title_justify="left")
    table.add_column("length", justify="right")
    labels = _config_labels(frontier)
    for label in labels:
        table.add_column(label, justify="right")
    flat = frontier.max_batch.reshape(len(labels), -1)
    for j, length in enumerate(frontier.lengths.tolist()):
        table.add_row(f"{length:,}", *(f"{v:,}" if v else "—" for v in flat[:, j].tolist()))
    return table


def _plot_frontier(frontier: Any, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    flat = frontier.max_batch.reshape(-1, frontier.lengths.size)
    for label, row in zip(_config_labels(frontier), flat, strict=True):
        ax.step(frontier.lengths, row, where="post", label=label)
    ax.set(xscale="log", yscale="symlog", xlabel="request length (tokens)",
           ylabel="max batch that fits", title=f"{frontier.model} on {frontier.mesh}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command("sweep")
def sweep_command(
    model: ModelOpt = DEFAULT_MODEL,
    mesh: MeshOpt = DEFAULT_MESH,
    layouts: Annotated[str | None, typer.Option(
        "--layouts", help="Comma-separated layouts (tp8,dp2xtp4,pp2xtp4); default: the mesh's "
        "default layout.")] = None,
    batch: Annotated[str, typer.Option(
        "--batch", help="Batch sizes: a:b (powers of two, a and b included), a:b:step, or a comma "
        "list.")] = "1:4096",
    length: Annotated[str, typer.Option("--length", help="Request lengths, same forms as "
                                        "--batch.")] = "128:131072",
    kv_cache_dtypes: Annotated[str | None, typer.Option(
        "--kv-cache-dtypes", help="Comma list (bf16,fp8); default: the weights' dtype.")] = None,
    page_sizes: Annotated[str, typer.Option("--page-sizes", help="Comma list of page sizes.")] = "128",
    utilizations: Annotated[str, typer.Option(
        "--device-memory-utilization", "--utilizations", help="Comma list of fractions.")] = "0.9",
    max_batch_input_tokens: Annotated[int, typer.Option("--max-batch-input-tokens")] = 8192,
    csv_path: Annotated[str | None, typer.Option("--csv", help="Write every cell as CSV.")] = None,
    plot_path: Annotated[str | None, typer.Option("--plot", help="Save the frontier as a PNG.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sweep batch × length grids for several layouts at once (jitted), print the frontier.

    Example: kvfit sweep --model llama-3.1-70b --mesh 8xH100-80GB --layouts tp8,dp2xtp4
    --batch 1:4096 --length 128:131072 --kv-cache-dtypes bf16,fp8
    """
    from estimator.sweeps import sweep, sweep_frontier  # imports jax: only for this command

    progress = _LazyProgress()
    try:
        kwargs = dict(
            layouts=[t.strip() for t in layouts.split(",")] if layouts else None,
            batch_sizes=parse_axis("--batch", batch), lengths=parse_axis("--length", length),
            kv_cache_dtypes=([t.strip() for t in kv_cache_dtypes.split(",")] if kv_cache_dtypes
                             else [None]),
            page_sizes=parse_axis("--page-sizes", page_sizes),
            utilizations=parse_axis("--device-memory-utilization", utilizations, float),
            max_batch_input_tokens=max_batch_input_tokens, progress=progress)
        if csv_path:
            result = sweep(model, mesh, **kwargs)
            frontier = result.frontier()
            result.to_csv(csv_path)
        else:
            frontier = sweep_frontier(model, mesh, **kwargs)
    except InputError as e:
        progress.close()
        _fail_input(e)
    progress.close()
    if plot_path:
        _plot_frontier(frontier, plot_path)
    if as_json:
        out.print_json(json.dumps(frontier.to_dict()))
    else:
        out.print(sweep_table(frontier))
        fits = int(frontier.feasible_count.sum())
        out.print(f"{frontier.cells:,} cells, {fits:,} fit", highlight=False)
    if not frontier.feasible_count.any():
        err.print("[bold red]no cell fits.[/]", highlight=False)
        raise typer.Exit(1)
