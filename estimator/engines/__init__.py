"""Engine profiles: the KV capacity each serving engine would allocate, predicted without a GPU.

``engine_plan(model, mesh, layout, engine="vllm", gpu_memory_utilization=0.9, ...)`` runs one
engine's policy over the shared geometry and returns an ``EnginePlan``: budget, non-KV terms with
their uncertainty, KV bytes, blocks, tokens, max concurrency, max model length, the start-up error
if it would fail, and the lines the engine logs. Knobs use each engine's own names; a knob from
another engine is refused with its equivalent ("sglang calls this mem_fraction_static").

Profiles (and the engine version whose semantics they follow, reference/engines.md §1):
``max`` (MAX 26.7.0, the seed API), ``vllm`` (0.33; "0.2x", "v0"), ``sglang`` (0.5.23),
``trtllm`` (PyTorch backend; "trt-engine"), ``tpu`` (tpu-inference 0.32.0; "legacy").
Measured values (``weights_bytes``, ``activation_bytes``, ``non_torch_bytes``, ``cuda_graph_bytes``,
``context_bytes``; per device) pin a modelled term, e.g. from a start-up log.

Not imported by ``import estimator``: import ``estimator.engines`` where it is needed.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from estimator.engines import max as _max
from estimator.engines import sglang, tpu, trtllm, vllm
from estimator.engines.base import CONCEPTS, ENGINE_NAMES, MEASURED, PLATFORMS, EnginePlan, make_setup
from estimator.engines.non_kv import Band, NonKV, Term
from estimator.layout import Layout
from estimator.model_spec import ModelSpec
from meshes.mesh import DeviceMesh
from meshes.validation import InputError, check_choice

PROFILES: dict[str, ModuleType] = {"max": _max, "vllm": vllm, "sglang": sglang, "trtllm": trtllm,
                                   "tpu": tpu}


def profile(engine: str) -> ModuleType:
    """The module of one engine profile (NAME, VERSIONS, KNOBS, plan)."""
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
    setup = make_setup(p.NAME, p.VERSIONS, p.KNOBS, model, mesh, layout, knobs, PLATFORMS[p.NAME], p.MEASURED)
    return p.plan(setup, band)


from estimator.engines.translate import Translation, translate  # noqa: E402

__all__ = ["CONCEPTS", "ENGINE_NAMES", "MEASURED", "PROFILES", "Band", "EnginePlan", "InputError", "NonKV",
           "Term", "Translation", "engine_plan", "engines_for", "knob_names", "profile", "translate"]
