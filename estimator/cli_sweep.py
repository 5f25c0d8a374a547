"""``kvfit sweep``: batch × length grids for several layouts at once (jitted), with frontiers.

Registered on the app by estimator.cli. jax loads only when the command runs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from estimator.cli_options import JsonOpt, MeshOpt, ModelOpt, err, fail_input, out
from estimator.presets import DEFAULT_MESH, DEFAULT_MODEL
from meshes.validation import InputError

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
        fail_input(e)
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
