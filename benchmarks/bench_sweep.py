"""Sweep throughput as ratios measured in one run (a script, not a test).

1. cells/s of the jitted sweep vs the scalar plan() per cell, same process, on a
   4096 batch × 4096 length × 8 layout grid (llama-3.1-8b on 8xH100-80GB): plan() is timed on
   ~200 random cells and extrapolated; the sweep's setup (exact per-config constants) and compile
   time are reported apart from its steady-state time.
2. aggregate sweeps (sweep_frontier) of 1e7, 1e8 and 1e9 cells, each in a fresh process: wall
   time, ns per cell (linear in cells) and peak RSS (resource.getrusage; bounded memory).
3. set-up vs kernel for many configurations (1,000 = 5 layouts × 4 KV dtypes × 5 page sizes ×
   10 utilizations, 256 × 256 cells each; llama-3.1-70b on 8xH100-80GB), in a fresh process: the
   per-configuration constants from the KV specs on arrays (``layout_constants``, what sweep()
   runs) against the scalar path (``config_constants``, one plan() per configuration, the path
   before), and the share of the whole aggregate sweep spent in Python set-up — for the first
   sweep in a process (compile included), a repeated sweep, and a new model in a warm process.

Columns: setup_s is the exact per-config Python (plan() per configuration, constants per batch
value), paid once per call whatever the cell count; chunks_s the jitted chunks alone;
steady_s/cells_per_s the whole call (setup + chunks); ratio is the whole call's cells/s over
plan()'s; ns_per_cell is chunks_s per cell.

Runs unchanged on CPU or GPU (whatever jax's default backend is); on an accelerator it also
reports steady-state cells/s of a larger aggregate grid. Examples:

    python benchmarks/bench_sweep.py                  # everything (1e9 included)
    python benchmarks/bench_sweep.py --max-cells 1e8  # skip the 1e9 run
    python benchmarks/bench_sweep.py --markdown       # tables as Markdown (for RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL, MESH = "llama-3.1-8b", "8xH100-80GB"
LAYOUTS = ["tp8", "dp2xtp4", "dp4xtp2", "dp8", "pp2xtp4", "pp4xtp2", "pp8", "dp2xpp2xtp2"]


def _peak_rss_mib() -> float:
    """Peak RSS of this process (getrusage; Linux reports KiB). Linux carries ru_maxrss across
    fork+exec, so the scaling children run before the parent allocates anything large."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _grid(n_batch: int, n_length: int) -> tuple[list[int], list[int]]:
    return list(range(1, n_batch + 1)), [32 * k for k in range(1, n_length + 1)]


def _time(fn, repeats: int) -> tuple[float, float, object]:
    """(first call s, median of the next ``repeats`` calls s, last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times) if times else first, out


def plan_per_cell(n_cells: int, batches: list[int], lengths: list[int]) -> float:
    """Seconds per cell of the scalar plan() on random cells of the grid."""
    from estimator import plan, resolve_model
    from meshes import DeviceMesh

    model, mesh = resolve_model(MODEL), DeviceMesh.from_preset(MESH)
    rng = random.Random(0)
    cells = [(rng.choice(LAYOUTS), rng.choice(batches), rng.choice(lengths)) for _ in range(n_cells)]
    plan(model, mesh, LAYOUTS[0], max_length=128, max_batch_size=1)  # warm caches
    t0 = time.perf_counter()
    for layout, b, length in cells:
        plan(model, mesh, layout, max_length=length, max_batch_size=b)
    return (time.perf_counter() - t0) / n_cells


def compile_seconds(mode: str, n_batch: int, n_length: int, chunk_cells: int) -> float:
    """Trace + compile of the kernel for this grid's chunk shape (jit's AOT path), alone."""
    import contextlib

    import jax
    import numpy as np

    from estimator.sweeps import grid as sw
    from estimator.sweeps import kernel as k

    c, b, length = sw.chunk_shape(len(LAYOUTS), n_batch, n_length, chunk_cells)
    wide = mode == "full"
    dt = np.int64 if wide else np.int32

    def spec(*shape, dtype=dt):
        return jax.ShapeDtypeStruct(shape, dtype)

    # batches, lengths, usable, cap, request pages, dp, limit (+ kv budget, page bytes, reserved)
    args = [spec(b), spec(length), spec(c, b), spec(c, b), spec(c, length), spec(c), spec()]
    if wide:
        args += [spec(c, b), spec(c, b), spec(c)]
    fn = jax.jit(k.grid_full if wide else k.grid_aggregate)  # a fresh cache: a real compile
    with jax.enable_x64(True) if wide else contextlib.nullcontext():
        t0 = time.perf_counter()
        fn.lower(*args).compile()
        return time.perf_counter() - t0


def setup_and_kernel(mode: str, batches: list[int], lengths: list[int], chunk_cells: int,
                     repeats: int) -> tuple[float, float]:
    """(setup s, chunked kernel s): the exact per-config constants (Python, once per call) and
    the jitted chunks alone (median of ``repeats`` after a warm-up), as sweep() runs them."""
    from estimator.sweeps import grid as sw

    t0 = time.perf_counter()
    grid = sw._prepare(MODEL, MESH, LAYOUTS, batches, lengths, (None,), (128,), (0.9,), 8192, {})
    setup = time.perf_counter() - t0
    _, kernel, _ = _time(lambda: sw._run(grid, mode, chunk_cells, None, None), repeats)
    return setup, kernel


def grid_benchmark(n_batch: int, n_length: int, repeats: int, chunk_cells: int) -> list[dict]:
    from estimator.sweeps import grid as sw

    batches, lengths = _grid(n_batch, n_length)
    cells = len(LAYOUTS) * n_batch * n_length
    per_cell = plan_per_cell(200, batches, lengths)
    rows = [{"what": "plan() per cell (200 cells, extrapolated)", "cells": cells,
             "steady_s": per_cell * cells, "cells_per_s": 1 / per_cell, "ratio": 1.0}]
    kw = dict(layouts=LAYOUTS, batch_sizes=batches, lengths=lengths, chunk_cells=chunk_cells)
    for name, mode, fn in (("sweep_frontier (aggregate)", "aggregate", sw.sweep_frontier),
                           ("sweep (every cell)", "full", sw.sweep)):
        compile_s = compile_seconds(mode, n_batch, n_length, chunk_cells)
        first, steady, _ = _time(lambda fn=fn: fn(MODEL, MESH, **kw), repeats)
        setup, kernel = setup_and_kernel(mode, batches, lengths, chunk_cells, repeats)
        rows.append({"what": name, "cells": cells, "setup_s": setup, "compile_s": compile_s,
                     "first_s": first, "steady_s": steady, "cells_per_s": cells / steady,
                     "ratio": cells / steady * per_cell, "chunks_s": kernel,
                     "chunks_cells_per_s": cells / kernel})
    return rows


SECOND_MODEL = "qwen2.5-72b"  # another 80-layer model: the many-configuration set-up of a new model
MANY = dict(model="llama-3.1-70b", mesh="8xH100-80GB", layouts=["tp8", "dp2xtp4", "dp4xtp2", "dp8", "tp4xpp2"],
            dtypes=["bf16", "fp8", "fp16", "fp32"], pages=[16, 32, 64, 128, 256],
            utils=[0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96])


def many_configs_child(repeats: int) -> dict:
    """Set-up vs kernel of a 1,000-configuration aggregate sweep, like with like: the first call
    in this process (set-up cold; kernel compiled on the way), later calls (best of ``repeats``,
    caches of frozen values and the compiled kernel warm), and the set-up of a second model in
    the warm process (its KV specs, geometry and sharding table built anew); and the scalar
    set-up path on the same grid."""
    import itertools

    import numpy as np

    from estimator.core.layout import Layout
    from estimator.model.resolve import resolve_model
    from estimator.sweeps import grid as sw
    from meshes import DeviceMesh

    batches, lengths = np.arange(1, 257), np.arange(1, 257) * 512
    m = MANY

    def prepare(model=m["model"]):
        return sw._prepare(model, m["mesh"], m["layouts"], batches, lengths, m["dtypes"], m["pages"],
                           m["utils"], 8192, {})

    t0 = time.perf_counter()
    grid = prepare()
    first_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    sw._run(grid, "aggregate", 2**24, None, None)  # compiles
    first_kernel = time.perf_counter() - t0
    steady = min(_time(prepare, 1)[1] for _ in range(repeats))
    kernel = min(_time(lambda: sw._run(grid, "aggregate", 2**24, None, None), 1)[1] for _ in range(repeats))
    t0 = time.perf_counter()
    prepare(SECOND_MODEL)
    other = time.perf_counter() - t0
    model, mesh = resolve_model(m["model"]), DeviceMesh.from_preset(m["mesh"])
    t0 = time.perf_counter()
    for lay, d, p, u in itertools.product(m["layouts"], m["dtypes"], m["pages"], m["utils"]):
        sw.config_constants(model, mesh, Layout.parse(lay), batches, lengths, kv_cache_dtype=d, page_size=p,
                            utilization=u, max_batch_input_tokens=8192)
    scalar = time.perf_counter() - t0
    return {"configs": grid.n_configs, "cells": grid.n_configs * batches.size * lengths.size,
            "first_setup_s": first_setup, "first_kernel_s": first_kernel,
            "first_share": first_setup / (first_setup + first_kernel),
            "setup_s": steady, "kernel_s": kernel, "setup_share": steady / (steady + kernel),
            "new_model_setup_s": other, "new_model_share": other / (other + kernel),
            "scalar_setup_s": scalar, "speedup": scalar / steady, "scalar_share": scalar / (scalar + kernel)}


def many_configs(repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--many-child", str(repeats)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling_child(cells: float, chunk_cells: int) -> dict:
    """One aggregate sweep of ~``cells`` cells (run in a fresh process)."""
    import jax
    import jax.numpy as jnp

    from estimator.sweeps.grid import sweep_frontier

    n_length = 4096
    n_batch = max(1, round(cells / (len(LAYOUTS) * n_length)))
    batches, lengths = _grid(n_batch, n_length)
    jnp.zeros(1).block_until_ready()
    base = _peak_rss_mib()
    kw = dict(layouts=LAYOUTS, batch_sizes=batches, lengths=lengths, chunk_cells=chunk_cells)
    first, steady, f = _time(lambda: sweep_frontier(MODEL, MESH, **kw), 1)
    setup, kernel = setup_and_kernel("aggregate", batches, lengths, chunk_cells, 1)
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "chunk": chunk_cells,
            "cells": f.cells, "first_s": first, "steady_s": steady, "setup_s": setup,
            "chunks_s": kernel, "ns_per_cell": kernel / f.cells * 1e9,
            "cells_per_s": f.cells / steady,
            "rss_base_mib": base, "rss_peak_mib": _peak_rss_mib(),
            "feasible": int(f.feasible_count.sum())}


def scaling(sizes: list[float], chunk_cells: int | None) -> list[dict]:
    rows = []
    for cells in sizes:
        cmd = [sys.executable, __file__, "--child", str(cells)]
        if chunk_cells:
            cmd += ["--chunk-cells", str(chunk_cells)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"scaling child for {cells:.0e} cells failed:\n{proc.stderr[-4000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def accelerator_steady(n: int, chunk_cells: int, repeats: int) -> dict:
    """Steady-state cells/s of a large aggregate grid (accelerators)."""
    from estimator.sweeps.grid import sweep_frontier

    batches, lengths = _grid(n, n)
    kw = dict(layouts=LAYOUTS, batch_sizes=batches, lengths=lengths, chunk_cells=chunk_cells)
    first, steady, f = _time(lambda: sweep_frontier(MODEL, MESH, **kw), repeats)
    setup, kernel = setup_and_kernel("aggregate", batches, lengths, chunk_cells, repeats)
    return {"what": f"sweep_frontier {len(LAYOUTS)}×{n}×{n}", "cells": f.cells,
            "first_s": first, "steady_s": steady, "cells_per_s": f.cells / steady,
            "setup_s": setup, "chunks_s": kernel, "chunks_cells_per_s": f.cells / kernel}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(rows: list[dict], columns: list[str], markdown: bool) -> str:
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
    else:
        lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-cells", type=float, default=1e9, help="largest scaling run (1e9)")
    ap.add_argument("--grid", type=int, default=4096, help="batches = lengths per layout (4096)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-cells", type=int, default=None,
                    help="cells per chunk (default 2^24 on CPU, 2^26 on accelerators)")
    ap.add_argument("--gpu", action="store_true",
                    help="also the accelerator steady-state run, even on CPU")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--many-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--only-setup", action="store_true", help="only the many-configurations set-up split")
    args = ap.parse_args()
    if args.many_child:
        print(json.dumps(many_configs_child(args.many_child)))
        return
    if args.only_setup:
        print(table([many_configs(args.repeats)], ["configs", "cells", "first_setup_s", "first_kernel_s",
                                                   "first_share", "setup_s", "kernel_s", "setup_share",
                                                   "new_model_setup_s", "new_model_share", "scalar_setup_s",
                                                   "speedup", "scalar_share"], args.markdown))
        return
    if args.child:
        import jax

        chunk = args.chunk_cells or (2**26 if jax.default_backend() != "cpu" else 2**24)
        print(json.dumps(scaling_child(args.child, chunk)))
        return
    # the scaling children first: the parent is still small (see _peak_rss_mib)
    sizes = [s for s in (1e7, 1e8, 1e9) if s <= args.max_cells]
    scaled = scaling(sizes, args.chunk_cells)

    import jax

    accel = jax.default_backend() != "cpu"
    chunk = args.chunk_cells or (2**26 if accel else 2**24)
    dev = jax.devices()[0]
    print(f"jax {jax.__version__} · backend {jax.default_backend()} · {len(jax.devices())} × "
          f"{dev.device_kind} · host {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs · chunk {chunk:,} cells")
    print(f"\n## {len(LAYOUTS)} layouts × {args.grid} batches × {args.grid} lengths "
          f"({MODEL} on {MESH})")
    print(table(grid_benchmark(args.grid, args.grid, args.repeats, chunk),
                ["what", "cells", "setup_s", "compile_s", "first_s", "steady_s", "cells_per_s",
                 "ratio", "chunks_s", "chunks_cells_per_s"], args.markdown))
    print("\n## aggregate sweeps, each in a fresh process (time linear, memory bounded)")
    print(table(scaled, ["cells", "first_s", "steady_s", "cells_per_s", "setup_s", "chunks_s",
                         "ns_per_cell", "rss_base_mib", "rss_peak_mib"], args.markdown))
    print("\n## set-up vs kernel, 1,000 configurations × 256 × 256 cells (fresh process)")
    print(table([many_configs(args.repeats)], ["configs", "cells", "setup_s", "scalar_setup_s", "speedup",
                                               "kernel_s", "setup_share", "scalar_share"], args.markdown))
    if accel or args.gpu:
        n = 32768 if accel else 2048
        print("\n## steady state on the accelerator")
        print(table([accelerator_steady(n, chunk, args.repeats)],
                    ["what", "cells", "first_s", "steady_s", "cells_per_s", "setup_s", "chunks_s",
                     "chunks_cells_per_s"], args.markdown))


if __name__ == "__main__":
    main()
