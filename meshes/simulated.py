"""Simulated devices: answer ``memory_stats()`` the way a JAX GPU/TPU device does, with no hardware.

A simulated device may start non-empty (``bytes_in_use``), e.g. another process's weights already
loaded, so plans can be made for the card as it really is.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshes.catalog import DeviceSpec
from meshes.validation import InputError, check_int


@dataclass(frozen=True)
class SimulatedDevice:
    """One device of a given kind; ``memory_stats()`` mirrors the keys JAX reports on GPU."""

    id: int
    spec: DeviceSpec
    bytes_in_use: int = 0
    process_index: int = 0
    bytes_limit: int | None = None  # defaults to spec.usable_bytes

    def __post_init__(self) -> None:
        limit = check_int("bytes_limit", self.limit)
        check_int("bytes_in_use", self.bytes_in_use, minimum=0)
        if self.bytes_in_use > limit:
            raise InputError("bytes_in_use", self.bytes_in_use, f"at most bytes_limit={limit}")

    @property
    def limit(self) -> int:
        return self.spec.usable_bytes if self.bytes_limit is None else self.bytes_limit

    @property
    def platform(self) -> str:
        return self.spec.platform

    @property
    def device_kind(self) -> str:
        return self.spec.device_kind or self.spec.name

    def memory_stats(self) -> dict[str, int]:
        """The allocator view a JAX device gives: limit, bytes in use, peak and counters."""
        stats = {"bytes_limit": self.limit, "bytes_in_use": self.bytes_in_use,
                 "peak_bytes_in_use": self.bytes_in_use, "num_allocs": int(self.bytes_in_use > 0),
                 "largest_alloc_size": self.bytes_in_use, "bytes_reserved": 0,
                 "peak_bytes_reserved": 0, "largest_free_block_bytes": self.limit - self.bytes_in_use}
        if self.platform == "tpu":
            stats["bytes_reservable_limit"] = self.limit
        return stats

    @property
    def stats(self) -> dict[str, int]:
        """MAX driver view (``Device.stats``): free and total memory in bytes."""
        return {"free_memory": self.limit - self.bytes_in_use, "total_memory": self.limit}

    def __str__(self) -> str:
        return f"{self.spec.name}:{self.id}"
