"""Jitted, vectorised sweeps over (layout, KV dtype, page, utilization, batch, length) grids.

The sweep functions import JAX and load on first use (PEP 562), so ``estimator.sweeps.axes`` (the
command-line axis grammar) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"sweep": "estimator.sweeps.grid", "sweep_frontier": "estimator.sweeps.grid",
            "SweepResult": "estimator.sweeps.frontier", "SweepFrontier": "estimator.sweeps.frontier"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'estimator.sweeps' has no attribute {name!r}")


__all__ = ["SweepFrontier", "SweepResult", "sweep", "sweep_frontier"]
