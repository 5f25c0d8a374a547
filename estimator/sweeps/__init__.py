"""Jitted, vectorised sweeps over (layout, KV dtype, page, utilization, batch, length) grids.

Importing this package imports JAX; ``import estimator`` loads it lazily on first use.
"""

from estimator.sweeps.frontier import SweepFrontier, SweepResult
from estimator.sweeps.grid import sweep, sweep_frontier

__all__ = ["SweepFrontier", "SweepResult", "sweep", "sweep_frontier"]
