"""Engine profiles: the KV capacity each serving engine would allocate, predicted without a GPU.

``engine_plan(model, mesh, layout, engine="vllm", gpu_memory_utilization=0.9, ...)`` runs one
engine's policy over the shared geometry and returns an ``EnginePlan``: budget, non-KV terms with
their uncertainty, KV bytes, blocks, tokens, max concurrency, max model length, the start-up error
if it would fail, and the lines the engine logs. Knobs use each engine's own names; a knob from
another engine is refused with its equivalent ("sglang calls this mem_fraction_static").

Profiles (and the engine version whose semantics they follow, each profile's module docstring cites its source):
``max`` (MAX 26.7.0, the seed API), ``vllm`` (0.34; "0.33", "0.2x", "0.17", "0.11", "0.10", "0.9", "v0", "v0-early"),
``sglang`` (0.5.23),
``trtllm`` (PyTorch backend; "trt-engine"), ``tpu`` (tpu-inference 0.32.0; "legacy").
Measured values (``weights_bytes``, ``activation_bytes``, ``non_torch_bytes``, ``cuda_graph_bytes``,
``context_bytes``; per device) pin a modelled term, e.g. from a start-up log. The non-KV terms and
their sources are in estimator.engines.non_kv; the few fitted constants in
estimator/engines/calibration.json (benchmarks/engine_calibration.py fits them on the start-up-log
corpus tests/engine_logs and reports their leave-one-out error).

Not imported by ``import estimator``: import ``estimator.engines`` where it is needed.
"""

from __future__ import annotations

from estimator.engines.base import CONCEPTS, ENGINE_NAMES, MEASURED, EnginePlan
from estimator.engines.non_kv import Band, NonKV, Term
from estimator.engines.registry import PROFILES, engine_plan, engines_for, knob_names, profile
from estimator.engines.translate import Translation, translate
from meshes.validation import InputError

__all__ = ["CONCEPTS", "ENGINE_NAMES", "MEASURED", "PROFILES", "Band", "EnginePlan", "InputError", "NonKV",
           "Term", "Translation", "engine_plan", "engines_for", "knob_names", "profile", "translate"]
