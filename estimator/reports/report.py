"""Design-review report: report.md with the comparison table, waste and warnings, plus two PNGs —
stacked per-device memory bars per layout, and the feasibility heatmap with each layout's frontier.

matplotlib loads lazily and draws on bare ``Figure`` objects (no pyplot state, no backend switch),
so ``import estimator`` stays light and a notebook's own plots keep working.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from estimator.planning.review import Candidate, compare, comparison_rows, tightest_row
from meshes.catalog import GiB
from meshes.validation import InputError, check_output_path

REPORT_FILES = ("report.md", "memory.png", "feasibility.png")
SEGMENTS = (("weights", "weights_bytes", "#4C72B0"), ("activations", "activation_bytes", "#DD8452"),
            ("signal buffers", "signal_bytes", "#8172B3"), ("runtime reserve", "reserve_bytes", "#937860"),
            ("KV pool", "kv_pool_bytes", "#55A868"), ("free", "free_bytes", "#CCCCCC"))


@dataclass(frozen=True)
class Report:
    """Where the report went and what it holds."""

    directory: Path
    markdown: Path
    memory_png: Path
    heatmap_png: Path | None
    candidates: tuple[Candidate, ...]


def mpl_text(text: object) -> str:
    """User text (a model name) for matplotlib: printable, and ``$`` kept literal (not mathtext)."""
    from meshes.validation import plain_text

    return plain_text(text).replace("$", r"\$")


def _figure(width: float, height: float) -> Any:
    """A figure not registered with pyplot: no backend switch, nothing left open in a notebook."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120)


def memory_bars(candidates: Sequence[Candidate], path: Path) -> Path:
    """One stacked bar per candidate: the tightest device's memory, in GiB, by use."""
    fig = _figure(max(6.0, 1.6 * len(candidates) + 2.5), 4.8)
    ax = fig.subplots()
    labels = [mpl_text(c.label).replace(" ", "\n", 1) for c in candidates]
    bottoms = [0.0] * len(candidates)
    for name, attr, color in SEGMENTS:
        values = [max(getattr(tightest_row(c.plan), attr), 0) / GiB for c in candidates]
        ax.bar(labels, values, bottom=bottoms, color=color, label=name, width=0.6, edgecolor="white")
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_ylabel("GiB per device (tightest device)")
    ax.set_title(f"{mpl_text(candidates[0].plan.model)}: where each device's memory goes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def feasibility_heatmap(result: Any, path: Path) -> Path:
    """Feasible (batch, length) cells of the first layout shaded, every layout's frontier drawn."""
    import numpy as np

    fig = _figure(7.5, 5.0)
    ax = fig.subplots()
    lengths = np.asarray(result.lengths)
    batches = np.asarray(result.batches)
    mask = np.asarray(result.feasible)[0, 0, 0, 0]  # (batch, length) of the first configuration
    ax.pcolormesh(np.arange(len(lengths) + 1), np.arange(len(batches) + 1), mask, cmap="Greens",
                  vmin=0, vmax=1.6, shading="flat")
    frontier = np.asarray(result.frontier_max_batch())
    styles = ("-", "--", ":", "-.")  # layouts with equal frontiers stay visible on top of each other
    for i, layout in enumerate(result.layouts):
        ax.stairs(_batch_index(batches, frontier[i, 0, 0, 0]) + 1, np.arange(len(lengths) + 1), baseline=None,
                  label=f"{layout} frontier", linewidth=2.2, linestyle=styles[i % len(styles)])
    ax.set_xticks(np.arange(len(lengths)) + 0.5, [_tokens(v) for v in lengths], rotation=45, fontsize=7)
    ax.set_yticks(np.arange(len(batches)) + 0.5, [str(v) for v in batches], fontsize=7)
    ax.set_xlabel("request length (tokens)")
    ax.set_ylabel("concurrent requests (batch)")
    ax.set_title(f"feasible cells ({result.layouts[0]} shaded) and each layout's max batch")
    ax.legend(fontsize=8, loc="upper right", frameon=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _batch_index(batches: Any, frontier: Any) -> Any:
    import numpy as np

    return np.searchsorted(batches, frontier, side="right") - 1


def _tokens(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def check_report_files(field: str, out: Path) -> None:
    """Refuse a report file in ``out`` that is a symbolic link or a folder: the report replaces
    plain files only, never writes through a link to somebody's file."""
    for name in REPORT_FILES:
        target = out / name
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise InputError(field, str(out), f"a folder whose {name} is a plain file or absent "
                             f"({target} is a {'symbolic link' if target.is_symlink() else 'folder'})")


def write_report(model: str, meshes: Sequence[str], layouts: Sequence[str | None], out: Path, *,
                 max_length: int | None = None, max_batch_size: int | None = None,
                 kv_cache_dtype: str | None = None, device_memory_utilization: float = 0.9,
                 batch_sizes: Sequence[int] | None = None, lengths: Sequence[int] | None = None,
                 command: Sequence[str] | None = None) -> Report:
    """Write report.md, memory.png and (when one mesh is reviewed) feasibility.png into ``out``.

    ``out`` is checked before any work (meshes.validation.check_output_path): a folder that exists
    or can be created, outside /proc, /sys and /dev (InputError otherwise)."""
    out = check_output_path("out", out, folder=True)
    check_report_files("out", out)
    candidates = compare(model, [(m, lay) for m in meshes for lay in layouts], max_length=max_length,
                         max_batch_size=max_batch_size, kv_cache_dtype=kv_cache_dtype,
                         device_memory_utilization=device_memory_utilization)
    try:
        out.mkdir(parents=True, exist_ok=True)  # after compare(): bad input leaves no empty folder behind
    except OSError as err:
        raise InputError("out", str(out), f"a folder that can be created ({err.strerror or err})") from None
    bars = memory_bars(candidates, out / "memory.png")
    heat = None
    if len(meshes) == 1:
        from estimator.sweeps.grid import sweep

        result = sweep(model, meshes[0], layouts=[c.layout for c in candidates],
                       batch_sizes=list(batch_sizes or [2**i for i in range(0, 11)]),
                       lengths=list(lengths or [2**i for i in range(10, 18)]),
                       kv_cache_dtypes=[kv_cache_dtype], utilizations=[device_memory_utilization])
        heat = feasibility_heatmap(result, out / "feasibility.png")
    md = out / "report.md"
    md.write_text(_markdown(candidates, bars, heat, command), encoding="utf-8")
    return Report(out, md, bars, heat, tuple(candidates))


def _markdown(candidates: Sequence[Candidate], bars: Path, heat: Path | None,
              command: Sequence[str] | None) -> str:
    head = candidates[0].plan
    lines = [f"# Sharding design review: {head.model}", "",
             f"KV cache {head.kv_cache_dtype}, page {head.page_size} tokens, "
             f"utilization {head.device_memory_utilization}. Per-device figures are the tightest device's.", "",
             "| | " + " | ".join(c.label for c in candidates) + " |",
             "|---|" + "---|" * len(candidates)]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in comparison_rows(candidates)]
    lines += ["", f"![memory per device]({bars.name})", ""]
    if heat is not None:
        lines += [f"![feasible batch × length]({heat.name})", ""]
    lines += ["## Waste and warnings", ""]
    for c in candidates:
        notes = list(c.plan.warnings) + list(c.plan.suggestions)
        waste = f"{c.plan.waste_bytes / GiB:,.2f} GiB of replicated KV per device"
        lines.append(f"- **{c.label}**: {waste}" + (f"; {'; '.join(notes)}" if notes else ""))
    if command:
        lines += ["", "## Reproduce", "", "```bash", shlex.join(command), "```"]
    return "\n".join(lines) + "\n"
