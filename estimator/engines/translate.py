"""Engine-to-engine knob translation: each engine's memory-fraction knob, as its profile defines it.

The same "0.9" means a share of total memory in vLLM, of pre-load free memory minus a reserve in
SGLang, of the memory free after the profiled peak in TRT-LLM, of the HBM limit in tpu-inference.
``translate`` finds the memory-fraction value engine B needs to hold the KV capacity engine A
holds at a given value: the smallest value (to 4 decimals) whose pool (blocks × block size per
replica) is at least A's, by bisection over B's own plan — every profile's pool grows with its
fraction, so the search is exact up to B's block granularity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from estimator.core.layout import Layout
from estimator.engines.base import CONCEPTS, EnginePlan
from estimator.engines.registry import engine_plan, profile
from estimator.model.spec import ModelSpec
from meshes.mesh import DeviceMesh
from meshes.validation import InputError

FRACTION = CONCEPTS["memory fraction"]
UPPER = {"max": 1.0, "vllm": 1.0, "tpu": 1.0, "sglang": 0.9999, "trtllm": 0.9999}
DECIMALS = 4


@dataclass(frozen=True)
class Translation:
    """engine A's knob value → engine B's knob value holding the same KV capacity."""

    source: str
    source_knob: str
    source_value: float
    source_tokens: int
    target: str
    target_knob: str
    target_value: float  # smallest value (4 decimals) with target_tokens ≥ source_tokens
    target_tokens: int
    exact_value: float  # the bisection's boundary before rounding
    achievable: bool
    target_starts: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pool(plan: EnginePlan) -> int:
    return plan.pool_tokens


def translate(source: str, target: str, knob_value: float, model: ModelSpec | str,
              mesh: DeviceMesh | str, layout: Layout | str | None = None, *,
              source_knobs: dict[str, Any] | None = None,
              target_knobs: dict[str, Any] | None = None) -> Translation:
    """The ``target`` engine's memory-fraction value that gives the KV pool ``source`` gives at
    ``knob_value`` (its own memory-fraction knob), for the same model, mesh and layout."""
    src, dst = profile(source).NAME, profile(target).NAME
    s_knob, t_knob = FRACTION[src], FRACTION[dst]
    source_knobs, target_knobs = dict(source_knobs or {}), dict(target_knobs or {})
    for knobs, name in ((source_knobs, s_knob), (target_knobs, t_knob)):
        if name in knobs:
            raise InputError(name, knobs[name], f"set by translate (the {name} being translated)")
    mesh = DeviceMesh.from_preset(mesh) if isinstance(mesh, str) else mesh
    a = engine_plan(model, mesh, layout, engine=src, band=False, **{s_knob: knob_value}, **source_knobs)
    want = _pool(a)

    def tokens(x: float) -> tuple[int, EnginePlan]:
        p = engine_plan(model, mesh, layout, engine=dst, band=False, **{t_knob: x}, **target_knobs)
        return _pool(p), p

    hi = UPPER[dst]
    top, top_plan = tokens(hi)
    if top < want:
        return Translation(src, s_knob, knob_value, want, dst, t_knob, hi, top, hi, False, top_plan.starts,
                           f"{dst} holds at most {top:,} tokens at {t_knob}={hi}; {src} holds {want:,}")
    lo = 1e-6
    if tokens(lo)[0] >= want:
        hi = lo
    for _ in range(60):
        if hi - lo <= 1e-9:
            break
        mid = (lo + hi) / 2
        if tokens(mid)[0] >= want:
            hi = mid
        else:
            lo = mid
    value = min(math.ceil(hi * 10**DECIMALS - 1e-9) / 10**DECIMALS, UPPER[dst])
    got, plan = tokens(value)
    while got < want and value < UPPER[dst]:
        value = min(round(value + 10**-DECIMALS, DECIMALS), UPPER[dst])
        got, plan = tokens(value)
    note = (f"{src} {s_knob}={knob_value} → {want:,} tokens in its pool; {dst} needs {t_knob}={value} "
            f"for {got:,}")
    if not plan.starts:
        note += f" (but {dst} would not start: {plan.error})"
    return Translation(src, s_knob, knob_value, want, dst, t_knob, value, got, hi, True, plan.starts, note)


__all__ = ["Translation", "translate"]
