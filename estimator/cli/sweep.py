"""``kvfit sweep``: batch × length grids for several layouts at once (jitted), with frontiers.

Registered on the app by estimator.cli.app. jax loads only when the command runs.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from estimator.cli.options import (
    JsonOpt,
    MeshOpt,
    ModelOpt,
    check_jax_env,
    check_layout_applies,
    check_one_format,
    comma_list,
    err,
    fail_input,
    interruptible,
    out,
    print_json,
    print_table,
    safe,
    stop_if_interrupted,
)
from estimator.model.presets import DEFAULT_MESH, DEFAULT_MODEL
from estimator.sweeps.axes import parse_axis
from meshes.validation import InputError, check_output_path

SWEEP_FLAGS = {"batch_sizes": "--batch", "lengths": "--length", "page_sizes": "--page-sizes",
               "utilizations": "--device-memory-utilization", "kv_cache_dtypes": "--kv-cache-dtypes",
               "kv_cache_dtype": "--kv-cache-dtypes",
               "max_batch_input_tokens": "--max-batch-input-tokens"}
MAX_CONFIGS = 256  # layouts × KV dtypes × page sizes × utilisations
MAX_SWEEP_CELLS = 1 << 32  # cells of the aggregate sweep (bounded memory; ~1e9 cells/s on one CPU)
MAX_CSV_CELLS = 1 << 22  # cells of --cells-csv (17 B each in memory, ~60 B each on disk)


def check_grid(batches: list, lengths: list, configs: int, *, every_cell: bool) -> int:
    """Cells of the grid (distinct values), refused above the caps before anything is allocated."""
    if configs > MAX_CONFIGS:
        raise InputError("--layouts/--kv-cache-dtypes/--page-sizes/--device-memory-utilization", configs,
                         f"at most {MAX_CONFIGS} configurations (the product of their counts)")
    cells = configs * len(set(batches)) * len(set(lengths))
    if cells > MAX_SWEEP_CELLS:
        raise InputError("--batch × --length × configurations", f"{cells:,} cells",
                         f"at most {MAX_SWEEP_CELLS:,} cells ({len(set(batches)):,} batches × "
                         f"{len(set(lengths)):,} lengths × {configs} configurations here)")
    if every_cell and cells > MAX_CSV_CELLS:
        raise InputError("--cells-csv", f"{cells:,} cells", f"at most {MAX_CSV_CELLS:,} cells for the "
                         "every-cell file (the frontier without --cells-csv has no such limit)")
    return cells


class _LazyProgress:
    """A rich progress bar on stderr that appears only once a sweep has run for a second."""

    def __init__(self, delay: float = 1.0) -> None:
        import time

        self._clock, self._start, self._delay = time.perf_counter, time.perf_counter(), delay
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        stop_if_interrupted()  # between chunks: Ctrl-C stops here, never inside XLA
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
    from estimator.sweeps.frontier import CONFIG_DIMS

    frame = frontier._config_frame()
    varying = [d for d in CONFIG_DIMS[1:] if len(frontier.coords[d]) > 1]
    fmt = {"kv_dtype": "{}", "page_size": "page {}", "utilization": "util {}"}
    return [" ".join([str(frame["layout"][i]), *(fmt[d].format(frame[d][i]) for d in varying)])
            for i in range(len(frame["layout"]))]


def sweep_table(frontier: Any) -> Table:
    """Max batch per length (rows) for each configuration (columns)."""
    table = Table(title=f"max batch per length — {safe(frontier.model)} on {safe(frontier.mesh)}",
                  title_justify="left")
    table.add_column("length", justify="right")
    labels = _config_labels(frontier)
    for label in labels:
        table.add_column(safe(label), justify="right")
    flat = frontier.max_batch.reshape(len(labels), -1)
    for j, length in enumerate(frontier.lengths.tolist()):
        table.add_row(f"{length:,}", *(f"{v:,}" if v else "—" for v in flat[:, j].tolist()))
    return table


PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def _plot_frontier(frontier: Any, path: Any) -> None:
    import matplotlib

    from estimator.reports.report import mpl_text

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    flat = frontier.max_batch.reshape(-1, frontier.lengths.size)
    for label, row in zip(_config_labels(frontier), flat, strict=True):
        ax.step(frontier.lengths, row, where="post", label=mpl_text(label))
    ax.set(xscale="log", yscale="symlog", xlabel="request length (tokens)",
           ylabel="max batch that fits", title=f"{mpl_text(frontier.model)} on {mpl_text(frontier.mesh)}")
    ax.legend(fontsize="small")
    for text in ax.get_legend().get_texts():  # $...$ in a user's name is not mathtext
        text.set_text(mpl_text(text.get_text()))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_command(
    model: ModelOpt = DEFAULT_MODEL,
    mesh: MeshOpt = DEFAULT_MESH,
    layouts: Annotated[str | None, typer.Option(
        "--layouts", "--layout", help="Comma-separated layouts (tp8,dp2xtp4,pp2xtp4); default: the mesh's "
        "default layout.")] = None,
    batch: Annotated[str, typer.Option(
        "--batch", help="Batch sizes (requests at once over all replicas): a:b (powers of two, a and b "
        "included), a:b:step, or a comma list.")] = "1:4096",
    length: Annotated[str, typer.Option("--length", help="Request lengths, same forms as "
                                        "--batch.")] = "128:131072",
    kv_cache_dtypes: Annotated[str | None, typer.Option(
        "--kv-cache-dtypes", "--kv-cache-dtype", help="Comma list (bf16,fp8); default: the weights' "
        "dtype.")] = None,
    page_sizes: Annotated[str, typer.Option("--page-sizes", "--page-size", "--block-size",
                                            help="Comma list of page sizes (tokens per KV page).")] = "128",
    utilizations: Annotated[str, typer.Option(
        "--device-memory-utilization", "--gpu-memory-utilization", "--utilizations",
        help="Comma list of fractions of each device's free memory.")] = "0.9",
    max_batch_input_tokens: Annotated[int, typer.Option(
        "--max-batch-input-tokens", "--max-num-batched-tokens",
        help="Tokens of one prefill batch (sets the activation memory).")] = 8192,
    cells_csv: Annotated[str | None, typer.Option(
        "--cells-csv", help=f"Write every cell to this CSV file (at most {MAX_CSV_CELLS:,} cells).")] = None,
    plot_path: Annotated[str | None, typer.Option(
        "--plot", help="Save the frontier as an image (.png, .svg, .pdf, .jpg).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --cells-csv / --plot "
                                            "file.")] = False,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the frontier table as CSV instead of a "
                                         "table.")] = False,
) -> None:
    """Sweep batch × length grids for several layouts at once (jitted), print the frontier.

    Example: kvfit sweep --model llama-3.1-70b --mesh 8xH100-80GB --layouts tp8,dp2xtp4
    --batch 1:4096 --length 128:131072 --kv-cache-dtypes bf16,fp8
    """
    try:
        check_one_format(as_json, as_csv)
        check_output_path("--cells-csv", cells_csv, suffixes=(".csv",), overwrite=overwrite, inputs=(model,))
        check_output_path("--plot", plot_path, suffixes=PLOT_SUFFIXES, overwrite=overwrite, inputs=(model,))
        layout_list = comma_list(layouts) if layouts is not None else None
        dtypes = comma_list(kv_cache_dtypes) if kv_cache_dtypes is not None else [None]
        if layout_list == [] or dtypes == []:
            raise InputError("--layouts" if layout_list == [] else "--kv-cache-dtypes",
                             layouts if layout_list == [] else kv_cache_dtypes, "a comma list of one or more values")
        for lay in layout_list or []:
            check_layout_applies(model, lay)
        kwargs = dict(
            layouts=layout_list,
            batch_sizes=parse_axis("--batch", batch), lengths=parse_axis("--length", length),
            kv_cache_dtypes=dtypes,
            page_sizes=parse_axis("--page-sizes", page_sizes, max_values=64),
            utilizations=parse_axis("--device-memory-utilization", utilizations, float, max_values=64),
            max_batch_input_tokens=max_batch_input_tokens)
        configs = (len(layout_list or [None]) * len(dtypes) * len(kwargs["page_sizes"])
                   * len(kwargs["utilizations"]))
        check_grid(kwargs["batch_sizes"], kwargs["lengths"], configs, every_cell=cells_csv is not None)
        check_jax_env()
    except InputError as e:
        fail_input(e)
    progress = _LazyProgress()
    try:
        with interruptible():  # from here on Ctrl-C stops between chunks, never inside XLA
            from estimator.sweeps.grid import sweep, sweep_frontier  # imports jax: only for this command

            stop_if_interrupted()
            if cells_csv:
                result = sweep(model, mesh, progress=progress, **kwargs)
                frontier = result.frontier()
                result.to_csv(cells_csv)
            else:
                frontier = sweep_frontier(model, mesh, progress=progress, **kwargs)
    except InputError as e:  # the API's argument names back to the flags typed
        flag = SWEEP_FLAGS.get(e.field)
        fail_input(InputError(flag, e.value, e.allowed) if flag else e)
    finally:
        progress.close()
    if plot_path:
        _plot_frontier(frontier, plot_path)
    if as_json:
        print_json(frontier.to_dict())
    elif as_csv:
        print_table(sweep_table(frontier), as_csv=True)
    else:
        out.print(sweep_table(frontier))
        fits = int(frontier.feasible_count.sum())
        out.print(f"{frontier.cells:,} cells, {fits:,} fit", highlight=False)
    if not frontier.feasible_count.any():
        err.print("[bold red]no cell fits.[/]", highlight=False)
        raise typer.Exit(1)
