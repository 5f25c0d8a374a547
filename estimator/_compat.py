"""Module paths from before the package was split into subpackages (kvfit 0.1), still importable.

``import estimator.memory_estimator`` and ``from estimator.plan import MemoryPlan`` keep working:
a meta-path finder hands out the module that now holds the code (the same module object, not a
copy), and the package refuses to let such an import shadow its public functions of the same name
(``estimator.plan`` stays the function).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

MOVED: dict[str, str] = {
    "estimator.model_spec": "estimator.model.spec",
    "estimator.hf_config": "estimator.model.hf_config",
    "estimator.presets": "estimator.model.presets",
    "estimator.preset_configs": "estimator.model.preset_configs",
    "estimator.models": "estimator.model.resolve",
    "estimator.weights": "estimator.model.weights",
    "estimator.checkpoint": "estimator.model.checkpoint",
    "estimator.flax_weights": "estimator.core.flax_weights",
    "estimator.partition_rules": "estimator.core.partition_rules",
    "estimator.dtypes": "estimator.model.dtypes",
    "estimator.kv_spec": "estimator.core.kv_spec",
    "estimator.layout": "estimator.core.layout",
    "estimator.geometry": "estimator.core.geometry",
    "estimator.paging": "estimator.core.paging",
    "estimator.partitioning": "estimator.core.partitioning",
    "estimator.activations": "estimator.planning.activations",
    "estimator.signals": "estimator.planning.signals",
    "estimator.plan": "estimator.planning.plan",
    "estimator.review": "estimator.planning.review",
    "estimator.serving": "estimator.planning.serving",
    "estimator.sweep_kernel": "estimator.sweeps.kernel",
    "estimator.frontier": "estimator.sweeps.frontier",
    "estimator.memory_estimator": "estimator.seed.memory_estimator",
    "estimator.kv_params": "estimator.seed.kv_params",
    "estimator.kv_quant": "estimator.seed.kv_quant",
    "estimator.report": "estimator.reports.report",
}


class _Alias:
    """Finds an old module name and loads it as the module that now holds the code (a meta-path
    finder and its loader; importlib.abc is not imported: it pulls in importlib.resources)."""

    _own_specs: dict[str, Any] = {}  # noqa: RUF012 (one finder per process)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._own_specs[module.__name__] = module.__spec__  # importlib sets the alias's spec on it next
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run (the module ran under its own name); give it back its own spec."""
        module.__spec__ = self._own_specs[module.__name__]


class Package(types.ModuleType):
    """The ``estimator`` package: an old submodule path never replaces a public name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and f"{self.__name__}.{name}" in MOVED:
            return  # e.g. importing estimator.plan (now estimator.planning.plan) keeps estimator.plan()
        super().__setattr__(name, value)


def install(package: str) -> None:
    """Make the old paths importable and guard the package's public names."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
    sys.modules[package].__class__ = Package
