"""The one error a failed compile surfaces as (flax-free, so callers can catch it cheaply)."""

from __future__ import annotations


class XlaCompileError(RuntimeError):
    """XLA could not lower or compile a step: names the step, the stage and the mesh."""

    def __init__(self, step: str, stage: int, mesh: str, backend: str, cause: BaseException) -> None:
        self.step, self.stage, self.mesh, self.backend, self.cause = step, stage, mesh, backend, cause
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:400]
        super().__init__(f"XLA could not compile the {step} step (pipeline stage {stage}) for mesh "
                         f"{mesh} on {backend}: {type(cause).__name__}: {first}")
