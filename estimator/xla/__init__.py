"""XLA-backed memory: compile kvfit's reference decoder on a mesh and read XLA's memory analysis.

The only part of kvfit that imports flax (``import estimator`` never imports this package; plan()
imports it only for ``activations="xla"``). Names load lazily, so ``estimator.xla.errors`` and
``estimator.xla.report`` stay flax-free. Public API:

- ``compile_report(model, mesh, layout=None, **options) -> CompileReport``: prefill and decode
  steps lowered on abstract, sharded inputs (nothing allocated), per-device argument, output,
  alias (the donated KV pool), temp and generated-code bytes, compile seconds, backend, caveat.
- ``xla_activation_bytes(geom, mesh, *, prefill_tokens, decode_batch) -> int``: the larger of
  the prefill and decode temp bytes per device, for plan(..., activations="xla").
- ``Decoder`` (flax nnx) and ``compile_steps`` for callers that want the executables.

CPU temp bytes are not GPU/TPU bytes (XLA:CPU upcasts bf16 dots): a GPU or TPU mesh is never
compiled on CPU unless ``allow_cpu_proxy=True`` is passed, and then the report says PROXY.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CompiledStep": "compile", "compile_report": "compile", "compile_steps": "compile",
    "libtpu_available": "compile", "xla_activation_bytes": "compile",
    "Decoder": "decoder", "check_expressible": "decoder", "unsupported_features": "decoder",
    "CompileReport": "report", "StepMemory": "report",
    "XlaCompileError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"estimator.xla.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'estimator.xla' has no attribute {name!r}")
