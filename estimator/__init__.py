"""kvfit's estimator: what a model needs on a mesh — model specs, KV geometry, plans, sweeps.

``import estimator`` stays light (no flax, matplotlib, typer or rich): serving code imports it at
start-up.
"""

from estimator.geometry import Geometry, geometry
from estimator.layout import Layout
from estimator.memory_estimator import MemoryEstimator
from estimator.model_spec import ModelSpec
from estimator.models import load_preset, resolve_model
from estimator.plan import DeviceRow, MemoryPlan, plan
from estimator.presets import PRESETS
from estimator.weights import parameter_count
from meshes import DeviceMesh, InputError

__all__ = ["PRESETS", "DeviceMesh", "DeviceRow", "Geometry", "InputError", "Layout",
           "MemoryEstimator", "MemoryPlan", "ModelSpec", "geometry", "load_preset",
           "parameter_count", "plan", "resolve_model"]
