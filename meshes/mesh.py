"""DeviceMesh: named axes over devices, simulated or live, with per-device memory stats.

Built from a preset string (``8xH100-80GB``, ``2x8xH100-80GB`` for two hosts, ``v5e-16``), from
explicit devices, or from ``jax.devices()``. It hands out a ``jax.sharding.Mesh`` for live devices
and an ``AbstractMesh`` for simulated ones, so shardings and ``shard_shape`` work without hardware.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from meshes.catalog import CATALOG, DeviceSpec, device_spec
from meshes.simulated import SimulatedDevice
from meshes.stats import MemoryStats
from meshes.validation import InputError, check_int

_PRESET = re.compile(r"^(?:(\d+)x)?(?:(\d+)x)?(.+?)$")
_TPU_PRESET = re.compile(r"^(v\d+[a-z]*)-(\d+)$", re.IGNORECASE)
LIVE_MESH = "live"  # from_preset("live"): the local JAX devices, read live
PRESET_EXAMPLES = ("8xH100-80GB", "2x8xH100-80GB", "v5e-16", "4xA100-80GB", "H200-141GB")
# The most devices a mesh may have, checked before any device is built (a TPU v5p pod has 8,960
# chips; planning cost grows linearly with the device count).
MAX_MESH_DEVICES = 16384


@dataclass(frozen=True)
class DeviceMesh:
    """Devices laid out row-major over named axes, with each device's memory stats."""

    axis_names: tuple[str, ...]
    axis_sizes: tuple[int, ...]
    devices: tuple[Any, ...]  # SimulatedDevice or jax.Device, row-major over the axes
    stats: tuple[MemoryStats, ...]

    def __post_init__(self) -> None:
        if len(self.axis_names) != len(self.axis_sizes):
            raise InputError("axis_names", self.axis_names,
                             f"one name per axis size {self.axis_sizes}")
        if len(set(self.axis_names)) != len(self.axis_names):
            raise InputError("axis_names", self.axis_names, "distinct names")
        for name, size in zip(self.axis_names, self.axis_sizes, strict=True):
            check_int(f"axis {name!r} size", size)
        if math.prod(self.axis_sizes) != len(self.devices):
            raise InputError("axis_sizes", dict(zip(self.axis_names, self.axis_sizes, strict=True)),
                             f"sizes whose product is the device count {len(self.devices)}")
        if len(self.stats) != len(self.devices):
            raise InputError("stats", len(self.stats), f"one per device ({len(self.devices)})")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_devices(cls, devices: Sequence[Any], axes: Mapping[str, int] | None = None,
                     *, capacity_bytes: int | None = None) -> DeviceMesh:
        """Mesh over given devices (anything with ``memory_stats()``); one axis 'device' by default.

        ``capacity_bytes`` stands in for devices that report no stats (CPU, platform allocator).
        """
        devices = tuple(devices)
        if not devices:
            raise InputError("devices", [], "at least one device")
        axes = dict(axes) if axes else {"device": len(devices)}
        if capacity_bytes is not None:
            capacity_bytes = check_int("capacity_bytes", capacity_bytes)
        stats = tuple(_read_stats(d, capacity_bytes) for d in devices)
        return cls(tuple(axes), tuple(axes.values()), devices, stats)

    @classmethod
    def from_preset(cls, preset: str, *, bytes_in_use: int = 0,
                    axes: Mapping[str, int] | None = None) -> DeviceMesh:
        """Simulated mesh from ``[HOSTSx]NxKIND`` (e.g. ``2x8xH100-80GB``) or ``v5e-16``.

        ``bytes_in_use`` makes every device start non-empty by that many bytes. ``live`` (the
        CLI's ``--mesh live``) is no preset: it reads this process's JAX devices
        (``from_jax(jax.local_devices())``), so every command that takes a mesh plans on them.
        """
        if isinstance(preset, str) and preset.strip().lower() == LIVE_MESH:
            if bytes_in_use:
                raise InputError("bytes_in_use", bytes_in_use, "0 with mesh 'live' (its devices report "
                                 "their own bytes_in_use)")
            import jax

            return cls.from_jax(jax.local_devices(), axes)
        if axes is None and isinstance(preset, str) and type(bytes_in_use) is int:
            return _simulated_preset(preset, bytes_in_use)  # frozen: one object per preset and fill
        return _build_simulated(preset, bytes_in_use, axes)

    @classmethod
    def from_jax(cls, devices: Sequence[Any] | None = None, axes: Mapping[str, int] | None = None,
                 *, capacity_bytes: int | None = None) -> DeviceMesh:
        """Live mesh over ``jax.devices()`` (or the given ones), reading each ``memory_stats()``.

        Every device is read on its own (budget from ``bytes_limit``, else ``bytes_reservable_limit``;
        ``MemoryStats.budget_key`` says which). On GPU, ``bytes_limit`` already is JAX's allocator cap
        (``XLA_CLIENT_MEM_FRACTION``, 0.75 by default); preallocation only changes ``pool_bytes``.
        Devices with no stats (CPU, ``XLA_PYTHON_CLIENT_ALLOCATOR=platform``) raise an InputError
        that says how to pass ``capacity_bytes``. Mixed kinds or budgets warn
        (``meshes.live.MixedDevicesWarning``); see ``meshes.live`` for the per-device notes.
        """
        from meshes.live import AllocatorSettings, read_mesh_stats

        AllocatorSettings.from_env()  # refuse what JAX refuses (both fraction variables) up front
        if devices is None:
            import jax

            devices = jax.devices()
        devices = tuple(devices)
        if not devices:
            raise InputError("devices", [], "at least one device")
        axes = dict(axes) if axes else {"device": len(devices)}
        if capacity_bytes is not None:
            capacity_bytes = check_int("capacity_bytes", capacity_bytes)
        stats = tuple(r.stats for r in read_mesh_stats(devices, capacity_bytes=capacity_bytes))
        return cls(tuple(axes), tuple(axes.values()), devices, stats)

    # ------------------------------------------------------------------ views
    @property
    def size(self) -> int:
        return len(self.devices)

    @property
    def shape(self) -> dict[str, int]:
        return dict(zip(self.axis_names, self.axis_sizes, strict=True))

    @property
    def is_simulated(self) -> bool:
        return all(isinstance(d, SimulatedDevice) for d in self.devices)

    @property
    def device_kinds(self) -> tuple[str, ...]:
        """Distinct device kinds present (more than one means a mixed mesh)."""
        return tuple(dict.fromkeys(_device_kind(d) for d in self.devices))

    @property
    def platform(self) -> str:
        kinds = {getattr(d, "platform", "cpu") for d in self.devices}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def reshape(self, axes: Mapping[str, int]) -> DeviceMesh:
        """Same devices in the same order, viewed through other named axes."""
        return DeviceMesh(tuple(axes), tuple(axes.values()), self.devices, self.stats)

    def with_stats(self, stats: Sequence[MemoryStats]) -> DeviceMesh:
        """Same devices with other memory stats (e.g. re-read from live devices)."""
        return DeviceMesh(self.axis_names, self.axis_sizes, self.devices, tuple(stats))

    def refresh(self) -> DeviceMesh:
        """Re-read every device's ``memory_stats()`` (devices that had none keep their stats; a
        budget given as ``capacity_bytes`` stays, its ``bytes_in_use`` is re-read)."""
        from meshes.live import refresh_stats

        return self.with_stats([refresh_stats(d, s) for d, s in zip(self.devices, self.stats, strict=True)])

    def jax_mesh(self) -> Any:
        """A ``jax.sharding.Mesh`` for live devices, an ``AbstractMesh`` for simulated ones."""
        import jax
        import numpy as np

        if self.is_simulated:
            return jax.sharding.AbstractMesh(self.axis_sizes, self.axis_names)
        grid = np.array(self.devices, dtype=object).reshape(self.axis_sizes)
        return jax.sharding.Mesh(grid, self.axis_names)

    def describe(self) -> str:
        kinds = ", ".join(self.device_kinds)
        axes = " x ".join(f"{n}={s}" for n, s in self.shape.items())
        return f"{self.size} x {kinds} ({axes})"


def _parse_preset(preset: str) -> tuple[int, int, DeviceSpec]:
    """(hosts, devices per host, device kind) of ``[HOSTSx]COUNTxDEVICE`` or ``vNx-CHIPS``."""
    if not isinstance(preset, str) or not preset.strip():
        raise InputError("mesh", preset, f"a preset such as {', '.join(PRESET_EXAMPLES)}")
    text = preset.strip()
    tpu = _TPU_PRESET.match(text)
    if tpu:
        hosts, count, kind = None, tpu.group(2), f"TPU-{tpu.group(1).lower()}"
    else:
        match = _PRESET.match(text)
        hosts, count, kind = match.groups() if match else (None, None, text)
        if count is None:
            hosts, count = None, hosts
    try:
        spec = device_spec(kind)
    except InputError as err:
        raise InputError("mesh", preset, f"[HOSTSx]COUNTxDEVICE or vNx-CHIPS (e.g. "
                         f"{', '.join(PRESET_EXAMPLES)}); device: {err.allowed}") from None
    if max(len(count or ""), len(hosts or "")) > 6:  # before int(): 10**5000 digits would be slow
        raise InputError("mesh", preset, f"at most {MAX_MESH_DEVICES:,} devices")
    per_host = check_int("mesh devices per host", int(count or 1), maximum=MAX_MESH_DEVICES)
    n_hosts = check_int("mesh hosts", int(hosts), maximum=MAX_MESH_DEVICES) if hosts else 1
    if n_hosts * per_host > MAX_MESH_DEVICES:
        raise InputError("mesh", preset, f"at most {MAX_MESH_DEVICES:,} devices (got {n_hosts * per_host:,})")
    return n_hosts, per_host, spec


def _build_simulated(preset: str, bytes_in_use: int, axes: Mapping[str, int] | None) -> DeviceMesh:
    hosts, per_host, spec = _parse_preset(preset)
    devices = tuple(SimulatedDevice(i, spec, bytes_in_use=bytes_in_use, process_index=i // per_host)
                    for i in range(hosts * per_host))
    if axes is None:
        axes = {"host": hosts, "device": per_host} if hosts > 1 else {"device": per_host}
    return DeviceMesh.from_devices(devices, axes)


@lru_cache(maxsize=64)
def _simulated_preset(preset: str, bytes_in_use: int) -> DeviceMesh:
    """A simulated preset mesh, built once: it reads no environment and is a frozen value."""
    return _build_simulated(preset, bytes_in_use, None)


def _device_kind(device: Any) -> str:
    return str(getattr(device, "device_kind", type(device).__name__))


def _read_stats(device: Any, capacity_bytes: int | None) -> MemoryStats:
    """Stats from ``memory_stats()``; ``capacity_bytes`` replaces a missing or overriding budget.

    Environment-independent (simulated devices, explicit device lists); ``from_jax`` reads the
    allocator variables through ``meshes.live``.
    """
    from meshes.live import AllocatorSettings, read_live_stats

    return read_live_stats(device, capacity_bytes=capacity_bytes, settings=AllocatorSettings(),
                           warn=False).stats


def known_device_names() -> list[str]:
    """Catalog names, for help texts."""
    return sorted(CATALOG)
