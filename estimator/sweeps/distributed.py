"""Sweeps on a multi-process JAX runtime: one process per host, the grid sharded over every device.

``estimator.sweeps.grid`` already runs one SPMD program over ``jax.devices()`` when that list spans
processes (each process builds only its own shards, results are gathered with
``multihost_utils.process_allgather``). This module is the entry point around it:

- ``initialize(...)``: ``jax.distributed.initialize`` (coordinator, process count and id;
  automatic on SLURM, Open MPI and TPU pods), with cross-process CPU collectives (gloo) switched
  on first when the processes compute on CPUs, which JAX needs for the gather;
- ``sweep_frontier_distributed(model, mesh, ...)`` / ``sweep_distributed(...)``: the same
  arguments as ``sweeps.sweep_frontier`` / ``sweeps.sweep`` in every process, the grid's batch
  axis sharded over all processes' devices; every process gets the whole result;
- ``python -m estimator.sweeps.distributed --coordinator HOST:PORT --num-processes N
  --process-id I --model M --mesh MESH --batch-sizes 1:4096 --lengths 1024:131072:1024 --out F``
  (or ``--auto`` on SLURM / Cloud TPU, nothing for one process): the same from a shell, process 0
  writing the frontiers (``.npz``).

Imports JAX; ``import estimator`` does not import this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from estimator.sweeps import grid as sweeps
from estimator.sweeps.axes import parse_axis
from meshes.validation import InputError, check_int


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu: bool | None = None, **kwargs: Any) -> None:
    """Start (or join) the multi-process runtime; a no-op when it is already up.

    ``cpu``: the processes compute on CPUs (default: ``JAX_PLATFORMS`` is ``cpu``); then gloo
    collectives are enabled before the backend starts, since XLA:CPU has none across processes
    otherwise. Arguments left None are found by JAX on SLURM, Open MPI and Cloud TPU.
    """
    if jax.distributed.is_initialized():
        return
    if num_processes is not None:
        check_int("num_processes", num_processes, maximum=65536)
    if process_id is not None:
        check_int("process_id", process_id, minimum=0, maximum=(num_processes or 65536) - 1)
    if cpu is None:
        import os

        cpu = os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu"
    if cpu:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **kwargs)


def _global_devices(compute_devices: Any) -> Any:
    return jax.devices() if compute_devices is None else compute_devices


def sweep_frontier_distributed(model: Any, mesh: Any, *, compute_devices: Any = None,
                               **kwargs: Any) -> sweeps.SweepFrontier:
    """``sweeps.sweep_frontier`` over every process's devices; call it in every process with the
    same arguments (SPMD). Only frontiers and reason counts are gathered across processes."""
    return sweeps.sweep_frontier(model, mesh, compute_devices=_global_devices(compute_devices), **kwargs)


def sweep_distributed(model: Any, mesh: Any, *, compute_devices: Any = None, **kwargs: Any) -> sweeps.SweepResult:
    """``sweeps.sweep`` (every cell, 17 B each, gathered to every process) over all processes' devices."""
    return sweeps.sweep(model, mesh, compute_devices=_global_devices(compute_devices), **kwargs)


def frontier_arrays(result: sweeps.SweepFrontier) -> dict[str, np.ndarray]:
    """The frontier's arrays by name (``max_batch``, ``max_length``, ``reason_counts``, axes)."""
    out = {"max_batch": np.asarray(result.max_batch), "max_length": np.asarray(result.max_length),
           "reason_counts": np.asarray(result.reason_counts)}
    out |= {"batches": np.asarray(result.batches), "lengths": np.asarray(result.lengths)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """One process of a distributed frontier sweep (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m estimator.sweeps.distributed",
                                 description="frontier sweep on a multi-process JAX runtime")
    ap.add_argument("--coordinator", help="HOST:PORT of process 0 (auto on SLURM/TPU pods)")
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    ap.add_argument("--auto", action="store_true",
                    help="let JAX find coordinator, count and id (SLURM, Open MPI, Cloud TPU)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--mesh", required=True, help="the mesh being planned (a preset), not the compute one")
    ap.add_argument("--layouts", default=None, help="comma list, e.g. tp8,dp2xtp4 (default: the mesh's)")
    ap.add_argument("--batch-sizes", required=True)
    ap.add_argument("--lengths", required=True)
    ap.add_argument("--kv-cache-dtypes", default=None, help="comma list (default: the model's)")
    ap.add_argument("--chunk-cells", type=int, default=sweeps.DEFAULT_CHUNK_CELLS)
    ap.add_argument("--out", help="write the frontiers here (.npz), from process 0")
    args = ap.parse_args(argv)
    try:
        if args.auto or args.coordinator or (args.num_processes or 1) > 1:
            initialize(args.coordinator, args.num_processes, args.process_id)
        layouts = args.layouts.split(",") if args.layouts else None
        dtypes = tuple(args.kv_cache_dtypes.split(",")) if args.kv_cache_dtypes else (None,)
        result = sweep_frontier_distributed(
            args.model, args.mesh, layouts=layouts, batch_sizes=parse_axis("--batch-sizes", args.batch_sizes),
            lengths=parse_axis("--lengths", args.lengths), kv_cache_dtypes=dtypes, chunk_cells=args.chunk_cells)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    arrays = frontier_arrays(result)
    if args.out and jax.process_index() == 0:
        np.savez(args.out, **arrays)
    print(f"process {jax.process_index()} of {jax.process_count()}: {len(jax.devices())} devices, "
          f"{arrays['reason_counts'].sum():,} cells, frontier checksum "
          f"{int(arrays['max_batch'].astype(np.int64).sum())}/{int(arrays['max_length'].astype(np.int64).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
