"""Per-device memory statistics with the keys of ``jax.Device.memory_stats()``, plus ``free``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from meshes.validation import InputError, check_int

# Which key supplies the device's budget, in the order engines read them (XLA's GPU client reports
# bytes_limit; TPU and some plugins only bytes_reservable_limit).
BUDGET_KEYS = ("bytes_limit", "bytes_reservable_limit")


@dataclass(frozen=True)
class MemoryStats:
    """A snapshot of one device's allocator, as JAX reports it (absent keys are None)."""

    bytes_limit: int
    bytes_in_use: int = 0
    peak_bytes_in_use: int = 0
    bytes_reservable_limit: int | None = None
    pool_bytes: int | None = None
    peak_pool_bytes: int | None = None
    num_allocs: int = 0
    largest_alloc_size: int = 0
    budget_key: str = "bytes_limit"  # which key gave bytes_limit

    def __post_init__(self) -> None:
        check_int("bytes_limit", self.bytes_limit)
        check_int("bytes_in_use", self.bytes_in_use, minimum=0)
        if self.bytes_in_use > self.bytes_limit:
            raise InputError("bytes_in_use", self.bytes_in_use,
                             f"at most bytes_limit={self.bytes_limit}")

    @property
    def free(self) -> int:
        """Bytes this device can still allocate: the limit less what is already in use."""
        return self.bytes_limit - self.bytes_in_use

    @classmethod
    def from_jax(cls, stats: Mapping[str, int] | None, *, device: str = "device") -> MemoryStats:
        """Read a ``memory_stats()`` dict; the budget comes from the first key of BUDGET_KEYS present."""
        if stats is None:
            raise InputError(f"{device}.memory_stats()", None,
                             "a dict of allocator stats; this backend reports none (CPU, or a GPU "
                             "with XLA_PYTHON_CLIENT_ALLOCATOR=platform): pass a mesh preset such "
                             "as --mesh 8xH100-80GB, or capacity_bytes=... to DeviceMesh.from_jax")
        key = next((k for k in BUDGET_KEYS if (stats.get(k) or -1) > 0), None)
        if key is None:
            raise InputError(f"{device}.memory_stats()", dict(stats),
                             f"a positive one of {', '.join(BUDGET_KEYS)}; "
                             "pass capacity_bytes=...")
        optional = ("bytes_in_use", "peak_bytes_in_use", "bytes_reservable_limit", "pool_bytes",
                    "peak_pool_bytes", "num_allocs", "largest_alloc_size")
        known = {k: int(stats[k]) for k in optional if (stats.get(k) or 0) > 0}  # −1: unavailable
        return cls(bytes_limit=int(stats[key]), budget_key=key, **known)

    def to_dict(self) -> dict[str, int | str | None]:
        """The JAX keys (absent ones dropped) and ``free``."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["free"] = self.free
        return out
