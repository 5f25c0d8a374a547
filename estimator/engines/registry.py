"""The engine registry: the profiles by name, and ``engine_plan`` that runs one of them."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from estimator.core.layout import Layout
from estimator.engines import max as _max
from estimator.engines import sglang, tpu, trtllm, vllm
from estimator.engines.base import ENGINE_NAMES, PLATFORMS, EnginePlan, make_setup
from estimator.model.spec import ModelSpec
from meshes.mesh import DeviceMesh
from meshes.validation import InputError, check_choice

PROFILES: dict[str, ModuleType] = {"max": _max, "vllm": vllm, "sglang": sglang, "trtllm": trtllm,
                                   "tpu": tpu}


def profile(engine: str) -> ModuleType:
    """The module of one engine profile (NAME, VERSIONS, KNOBS, plan; optionally release_family)."""
    key = str(engine).strip().lower()
    if key not in PROFILES:
        check_choice("engine", key, ENGINE_NAMES)
    return PROFILES[key]


def knob_names(engine: str) -> tuple[str, ...]:
    return tuple(profile(engine).KNOBS)


def engines_for(mesh: DeviceMesh | str) -> tuple[str, ...]:
    """The profiles that run on this mesh's platform, in display order."""
    mesh = DeviceMesh.from_preset(mesh) if isinstance(mesh, str) else mesh
    return tuple(e for e in ENGINE_NAMES if mesh.platform in PLATFORMS[e])


def engine_plan(model: ModelSpec | str, mesh: DeviceMesh | str, layout: Layout | str | None = None, *,
                engine: str, band: bool = True, **knobs: Any) -> EnginePlan:
    """What ``engine`` would allocate for ``model`` on ``mesh`` under ``layout``, and log.

    ``knobs`` are the engine's own (``gpu_memory_utilization`` for vllm, ``mem_fraction_static`` for
    sglang, ...), plus ``version`` and the measured values in estimator.engines.base.MEASURED.
    ``band=False`` skips the low/high non-KV runs (tokens_band is then exact).
    """
    p = profile(engine)
    if not isinstance(band, bool):
        raise InputError("band", band, "True or False")
    setup = make_setup(p.NAME, p.VERSIONS, p.KNOBS, model, mesh, layout, knobs, PLATFORMS[p.NAME], p.MEASURED,
                       getattr(p, "release_family", None))
    return p.plan(setup, band)
