"""Import shim for running benchmarks/gpu_xla_validate.py where flax is older than JAX.

flax 0.12.8 subclasses ``jax.experimental.hijax`` names at import time that JAX 0.11.2 renamed
(HiPrimitive → HiPrim, MutableHiType → HiType) or dropped (AvalQDD, AvalMutableQDD). kvfit's reference
decoder uses no hijax variable, so these stand-ins only let flax import; code that really used them
would fail loudly. Used for the H100 table in benchmarks/RESULTS.md §3:

    PYTHONPATH=benchmarks/device_shims:$PYTHONPATH python benchmarks/gpu_xla_validate.py

Does nothing where JAX still has the old names. Never imported by kvfit itself.
"""

import contextlib

with contextlib.suppress(ImportError):
    import jax.experimental.hijax as hijax

    if not hasattr(hijax, "HiPrimitive") and hasattr(hijax, "HiPrim"):

        class HiPrimitive(hijax.HiPrim):
            """The old constructor took the primitive's name; the new one reads avals set first."""

            def __init__(self, name: str | None = None) -> None:
                self.in_avals, self.out_aval, self.params = (), None, {}
                with contextlib.suppress(Exception):
                    super().__init__()
                if name is not None:
                    with contextlib.suppress(Exception):
                        self.name = name

        hijax.HiPrimitive = HiPrimitive
    if not hasattr(hijax, "MutableHiType") and hasattr(hijax, "HiType"):
        hijax.MutableHiType = hijax.HiType
    def _accept_anything(self: object, *args: object, **kwargs: object) -> None:
        pass

    for missing in ("AvalQDD", "AvalMutableQDD"):
        if not hasattr(hijax, missing):
            setattr(hijax, missing, type(missing, (), {"__init__": _accept_anything}))
