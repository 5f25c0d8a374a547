"""kvfit's estimator: what a model needs on a mesh — model specs, KV geometry, plans, sweeps.

The package follows the data flow, one concept a subpackage:

- ``estimator.model`` — architecture facts (ModelSpec) from HF configs and presets, weights, checkpoints;
- ``estimator.core`` — dtypes, KV-cache specs per layer kind, layouts, per-device geometry, the sharded-array table;
- ``estimator.planning`` — plan() (per device, per mesh, per layout), reviews, serving allocation;
- ``estimator.sweeps`` — jitted, vectorised sweeps over batch × length grids;
- ``estimator.engines`` — what vLLM, SGLang, TensorRT-LLM, MAX and tpu-inference would allocate;
- ``estimator.xla`` — the reference decoder compiled on the mesh (XLA's own memory figures);
- ``estimator.seed`` — Modular MAX 26.7.0's MemoryEstimator, bit-exact;
- ``estimator.reports``, ``estimator.cli`` — Markdown/PNG reports and the ``kvfit`` command.

Every name below loads on first use (PEP 562), so ``import estimator`` costs nothing and pulls in
no jax, flax, matplotlib, typer or rich: serving code imports it at start-up.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from estimator import _compat

_EXPORTS = {
    "DeviceMesh": "meshes", "InputError": "meshes",
    "ModelSpec": "estimator.model.spec", "PRESETS": "estimator.model.presets",
    "load_preset": "estimator.model.resolve", "resolve_model": "estimator.model.resolve",
    "parameter_count": "estimator.model.weights",
    "Layout": "estimator.core.layout", "Geometry": "estimator.core.geometry", "geometry": "estimator.core.geometry",
    "DeviceRow": "estimator.planning.plan", "MemoryPlan": "estimator.planning.plan", "plan": "estimator.planning.plan",
    "MemoryEstimator": "estimator.seed.memory_estimator",
    "KVCacheQuantizationConfig": "estimator.seed.kv_quant",
    "engine_plan": "estimator.engines", "EnginePlan": "estimator.engines",
    "sweep": "estimator.sweeps", "sweep_frontier": "estimator.sweeps",
    "SweepResult": "estimator.sweeps", "SweepFrontier": "estimator.sweeps",
}

if TYPE_CHECKING:  # for type checkers and IDEs; nothing is imported at run time
    from estimator.core.geometry import Geometry, geometry
    from estimator.core.layout import Layout
    from estimator.engines import EnginePlan, engine_plan
    from estimator.model.presets import PRESETS
    from estimator.model.resolve import load_preset, resolve_model
    from estimator.model.spec import ModelSpec
    from estimator.model.weights import parameter_count
    from estimator.planning.plan import DeviceRow, MemoryPlan, plan
    from estimator.seed.kv_quant import KVCacheQuantizationConfig
    from estimator.seed.memory_estimator import MemoryEstimator
    from estimator.sweeps import SweepFrontier, SweepResult, sweep, sweep_frontier
    from meshes import DeviceMesh, InputError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'estimator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


_compat.install(__name__)  # the module paths before the subpackages keep working


__all__ = [
    "PRESETS",
    "DeviceMesh",
    "DeviceRow",
    "EnginePlan",
    "Geometry",
    "InputError",
    "KVCacheQuantizationConfig",
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
