"""kvfit's estimator: what a model needs on a mesh — model specs, KV geometry, plans, sweeps.

``import estimator`` stays light (no jax, flax, matplotlib, typer or rich): serving code imports
it at start-up. ``estimator.sweep`` / ``sweep_frontier`` (jitted, import jax) load on first use.
"""

from typing import Any

from estimator.geometry import Geometry, geometry
from estimator.layout import Layout
from estimator.memory_estimator import MemoryEstimator
from estimator.model_spec import ModelSpec
from estimator.models import load_preset, resolve_model
from estimator.plan import DeviceRow, MemoryPlan, plan
from estimator.presets import PRESETS
from estimator.weights import parameter_count
from meshes import DeviceMesh, InputError

_LAZY = {"sweep": "estimator.sweeps", "sweep_frontier": "estimator.sweeps",
         "engine_plan": "estimator.engines", "EnginePlan": "estimator.engines",
         "SweepResult": "estimator.frontier", "SweepFrontier": "estimator.frontier"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'estimator' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "DeviceMesh",
    "DeviceRow",
    "EnginePlan",
    "Geometry",
    "InputError",
    "Layout",
    "MemoryEstimator",
    "MemoryPlan",
    "ModelSpec",
    "SweepFrontier",
    "SweepResult",
    "engine_plan",
    "geometry",
    "load_preset",
    "parameter_count",
    "plan",
    "resolve_model",
    "sweep",
    "sweep_frontier",
]
