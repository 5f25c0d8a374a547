"""Live devices: read ``memory_stats()`` the way JAX's allocator really works (XLA's GPU BFC allocator).

What a live GPU reports depends on how JAX's allocator was configured when the backend started:

* ``bytes_limit`` is the allocator's **cap**: ``XLA_CLIENT_MEM_FRACTION`` (or the deprecated
  ``XLA_PYTHON_CLIENT_MEM_FRACTION``; setting both makes JAX raise ``ValueError``) × the memory
  CUDA lets the process see; 0.75 when neither is set. It is the budget kvfit plans against, so
  the fraction is respected by construction — never apply it a second time.
* ``pool_bytes`` is what the BFC allocator has actually reserved: the whole cap when JAX
  preallocates (the default), only what was used so far with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
  — then the rest of the cap is not held for this process and another one may take it.
* ``XLA_PYTHON_CLIENT_ALLOCATOR=platform`` reports no stats at all (``memory_stats()`` is None), as
  CPU devices do: then a capacity has to be given (``capacity_bytes=``) or a preset used.
* TPUs report ``bytes_reservable_limit`` next to ``bytes_limit``; the budget key comes first from
  ``meshes.stats.BUDGET_KEYS`` and every reading records which key it was.

Nothing here imports JAX: the functions take devices (anything with ``memory_stats()``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshes.catalog import CATALOG
from meshes.stats import BUDGET_KEYS, MemoryStats
from meshes.validation import InputError, check_int

FRACTION_VARS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")  # new name first
PREALLOCATE_VAR = "XLA_PYTHON_CLIENT_PREALLOCATE"
ALLOCATOR_VAR = "XLA_PYTHON_CLIENT_ALLOCATOR"
COLLECTIVE_VAR = "XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB"
ALLOCATORS = ("default", "platform", "bfc", "cuda_async", "vmm")
JAX_DEFAULT_MEM_FRACTION = 0.75  # docs/gpu_memory_allocation.rst: 75 % of total GPU memory
GPU_PLATFORMS = ("gpu", "cuda", "rocm")
# The text jaxlib/xla_client.py :: generate_pjrt_gpu_plugin_options raises with.
JAX_BOTH_FRACTIONS_TEXT = ("XLA_CLIENT_MEM_FRACTION is specified together with "
                           "XLA_PYTHON_CLIENT_MEM_FRACTION. Remove the latter one, it is deprecated.")
HOW_TO_PASS_CAPACITY = ("pass capacity_bytes=... to DeviceMesh.from_jax (the bytes one device may "
                        "use), or plan on a mesh preset such as --mesh 8xH100-80GB")


class MixedDevicesWarning(UserWarning):
    """Live devices of different kinds or capacities: the plan is per device, the smallest rules."""


@dataclass(frozen=True)
class AllocatorSettings:
    """JAX's GPU allocator configuration as the environment states it (read, not guessed)."""

    allocator: str = "default"
    mem_fraction: float | None = None  # None: JAX's default 0.75
    fraction_var: str | None = None  # which variable set it
    preallocate: bool = True
    collective_memory_bytes: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AllocatorSettings:
        """Read the variables jaxlib reads; refuse what JAX would refuse, with the same reason."""
        env = os.environ if environ is None else environ
        new, old = (env.get(v, "") for v in FRACTION_VARS)
        if new and old:
            raise InputError("XLA_CLIENT_MEM_FRACTION and XLA_PYTHON_CLIENT_MEM_FRACTION", (new, old),
                             f"only one of them — JAX raises ValueError: {JAX_BOTH_FRACTIONS_TEXT} "
                             "Unset XLA_PYTHON_CLIENT_MEM_FRACTION and keep XLA_CLIENT_MEM_FRACTION")
        fraction, var = (new, FRACTION_VARS[0]) if new else ((old, FRACTION_VARS[1]) if old else (None, None))
        value = None
        if fraction is not None:
            try:
                value = float(fraction)
            except ValueError:
                value = float("nan")
            if not 0.0 < value <= 1.0:  # nan fails too
                raise InputError(var, fraction, "a fraction of GPU memory in (0, 1], e.g. 0.9")
        allocator = env.get(ALLOCATOR_VAR, "default").lower() or "default"
        if allocator not in ALLOCATORS:
            raise InputError(ALLOCATOR_VAR, allocator, f"one of {', '.join(ALLOCATORS)} (as JAX requires)")
        prealloc = env.get(PREALLOCATE_VAR, "")
        collective = env.get(COLLECTIVE_VAR, "")
        try:
            collective_bytes = int(collective) * 2**20 if collective else 0
        except ValueError:
            raise InputError(COLLECTIVE_VAR, collective, "a whole number of MiB") from None
        return cls(allocator=allocator, mem_fraction=value, fraction_var=var,
                   preallocate=prealloc not in ("false", "False", "0"),
                   collective_memory_bytes=collective_bytes)

    @property
    def effective_fraction(self) -> float:
        return JAX_DEFAULT_MEM_FRACTION if self.mem_fraction is None else self.mem_fraction

    @property
    def reports_stats(self) -> bool:
        """The platform allocator (cudaMalloc/cudaFree) keeps no stats: memory_stats() is None."""
        return self.allocator != "platform"

    @property
    def pools(self) -> bool:
        """Whether a BFC pool is used (pool_bytes reported); cuda_async and platform have none."""
        return self.allocator in ("default", "bfc")

    def describe(self) -> str:
        frac = (f"{self.fraction_var}={self.mem_fraction:g}" if self.fraction_var
                else f"no memory-fraction variable (JAX default {JAX_DEFAULT_MEM_FRACTION:g})")
        parts = [f"allocator={self.allocator}", frac,
                 f"preallocate={'on' if self.preallocate else 'off'}"]
        if self.collective_memory_bytes:
            parts.append(f"collective memory {self.collective_memory_bytes:,} B")
        return ", ".join(parts)


@dataclass(frozen=True)
class LiveReading:
    """One device's stats and how they were obtained: the budget key and what to know about it."""

    device: str
    platform: str
    device_kind: str
    stats: MemoryStats
    raw: Mapping[str, int] | None
    notes: tuple[str, ...] = ()

    @property
    def budget_key(self) -> str:
        return self.stats.budget_key

    def describe(self) -> str:
        s = self.stats
        pool = "" if s.pool_bytes is None else f", pool_bytes {s.pool_bytes:,} B"
        head = (f"{self.device} ({self.device_kind}): budget {s.bytes_limit:,} B from {s.budget_key}, "
                f"bytes_in_use {s.bytes_in_use:,} B{pool}, free {s.free:,} B")
        return "; ".join((head, *self.notes))


def is_gpu(device: Any) -> bool:
    return str(getattr(device, "platform", "")).lower() in GPU_PLATFORMS


def device_kind(device: Any) -> str:
    return str(getattr(device, "device_kind", type(device).__name__))


def no_stats_error(device: Any, settings: AllocatorSettings | None = None) -> InputError:
    """Say why ``device`` reports no memory stats and how to give a capacity instead."""
    name = f"{device}.memory_stats()"
    if is_gpu(device):
        settings = settings or AllocatorSettings()
        why = (f"{ALLOCATOR_VAR}=platform keeps no allocator stats; unset it (or use bfc / "
               "cuda_async) to read bytes_limit, or "
               if settings.allocator == "platform" else "this GPU backend reports none; ")
        return InputError(name, None, f"a dict of allocator stats: {why}{HOW_TO_PASS_CAPACITY}")
    platform = getattr(device, "platform", "this backend")
    return InputError(name, None, f"a dict of allocator stats, but {platform} devices report none "
                      f"(CPU has no allocator limit): {HOW_TO_PASS_CAPACITY}")


def raw_stats(device: Any) -> Mapping[str, int] | None:
    """``device.memory_stats()``; a device that cannot be asked (another host's) → InputError."""
    if not hasattr(device, "memory_stats"):
        return None
    try:
        return device.memory_stats()
    except Exception as err:  # jaxlib raises for non-addressable / compile-only devices
        raise InputError(f"{device}.memory_stats()", type(err).__name__,
                         f"an addressable device of this process ({err}); build the mesh from "
                         "jax.local_devices(), or " + HOW_TO_PASS_CAPACITY) from None


def read_live_stats(device: Any, *, capacity_bytes: int | None = None,
                    settings: AllocatorSettings | None = None, warn: bool = True) -> LiveReading:
    """Read one device: which key gave the budget, what the allocator settings mean for it.

    ``capacity_bytes`` replaces the budget (CPU, platform allocator, or planning for less than the
    cap); it may not exceed a live ``bytes_limit``, which is what JAX's allocator can give.
    """
    settings = settings or AllocatorSettings.from_env()
    gpu, notes = is_gpu(device), []
    if capacity_bytes is not None:
        capacity_bytes = check_int("capacity_bytes", capacity_bytes)
        try:
            raw = raw_stats(device)
        except InputError:  # another host's device: the capacity stands in, in-use unknown (0)
            raw = None
            notes.append("not addressable from this process: bytes_in_use unknown, taken as 0")
        raw_dict = dict(raw or {})
        in_use = int(raw_dict.get("bytes_in_use", 0) or 0)
        cap = next((int(raw_dict[k]) for k in BUDGET_KEYS if (raw_dict.get(k) or -1) > 0), None)
        if cap is not None and capacity_bytes > cap:
            notes.append(f"capacity_bytes {capacity_bytes:,} B exceeds the allocator's cap {cap:,} B: "
                         "JAX cannot allocate beyond it")
            if warn:
                warnings.warn(f"{device}: {notes[-1]}", stacklevel=3)
        stats = MemoryStats(bytes_limit=capacity_bytes, bytes_in_use=min(in_use, capacity_bytes),
                            budget_key="capacity_bytes")
        notes.append("budget given as capacity_bytes" + ("" if raw else " (device reports no stats)"))
        return LiveReading(str(device), str(getattr(device, "platform", "?")), device_kind(device),
                           stats, raw, tuple(notes))
    raw = raw_stats(device)
    if raw is None:
        raise no_stats_error(device, settings)
    stats = MemoryStats.from_jax(raw, device=str(device))
    if gpu:
        notes += _gpu_notes(device, stats, settings)
    return LiveReading(str(device), str(getattr(device, "platform", "?")), device_kind(device), stats,
                       dict(raw), tuple(notes))


def _gpu_notes(device: Any, stats: MemoryStats, settings: AllocatorSettings) -> list[str]:
    notes = [f"bytes_limit is JAX's allocator cap ({settings.describe()}); used as is"]
    if stats.pool_bytes is not None:
        if stats.pool_bytes >= stats.bytes_limit:
            notes.append("the whole cap is preallocated (pool_bytes = bytes_limit): reserved for "
                         "this process")
        else:
            notes.append(f"only pool_bytes={stats.pool_bytes:,} B of the cap is reserved (preallocation "
                         "off): the rest may be taken by another process before it is used")
    elif not settings.pools:
        notes.append(f"{settings.allocator} allocator: no pool is reserved; the cap is not held for "
                     "this process")
    spec = next((s for s in CATALOG.values() if s.device_kind and s.device_kind == device_kind(device)),
                None)
    if spec is not None:
        expected = int(spec.usable_bytes * settings.effective_fraction)
        if abs(stats.bytes_limit - expected) > 0.02 * expected:
            notes.append(f"bytes_limit differs from {settings.effective_fraction:g} × {spec.name}'s "
                         f"{spec.usable_bytes:,} B: the memory-fraction variables are read once, when "
                         "JAX's backend starts — the reported cap is what counts")
    return notes


def default_jax_budget(usable_bytes: int, fraction: float = JAX_DEFAULT_MEM_FRACTION) -> int:
    """What JAX's GPU allocator caps a process at on a card whose CUDA-visible memory is
    ``usable_bytes``: ``fraction`` of it (0.75 with no memory-fraction variable set)."""
    return int(check_int("usable_bytes", usable_bytes) * fraction)


def budget_explanation(devices: Sequence[Any], stats: Sequence[MemoryStats],
                       environ: Mapping[str, str] | None = None) -> str:
    """One line for a plan's output: which budget it used per device, and why.

    Live GPU: ``bytes_limit``, JAX's allocator cap, and which variable (or JAX's default 0.75)
    set it. Simulated GPU preset: the card's usable memory, and what a default JAX process on
    that card would get instead, so a preset plan and a live plan in a default JAX process are
    not silently a quarter apart. Budgets given as ``capacity_bytes`` say so.
    """
    if not devices or len(devices) != len(stats):
        raise InputError("devices", len(devices), f"one per stats entry ({len(stats)}), at least one")
    low = min(range(len(stats)), key=lambda i: stats[i].bytes_limit)
    device, s = devices[low], stats[low]
    per = "per device" if len({x.bytes_limit for x in stats}) == 1 else f"on the smallest device ({device})"
    spec = getattr(device, "spec", None)  # a meshes.simulated.SimulatedDevice
    if s.budget_key == "capacity_bytes":
        return f"budget: {s.bytes_limit:,} B {per}, given as capacity_bytes"
    if spec is not None and getattr(spec, "usable_bytes", None):
        if not is_gpu(device):
            return (f"budget: {spec.name}'s usable {s.bytes_limit:,} B {per} (simulated: what one process "
                    "can allocate)")
        if s.bytes_limit != spec.usable_bytes:
            return f"budget: {s.bytes_limit:,} B {per} (simulated {spec.name}, budget given)"
        return (f"budget: {spec.name}'s usable {spec.usable_bytes:,} B {per} (simulated: what a process "
                f"can allocate, as a serving engine sees the card); a default JAX process on this card "
                f"gets {JAX_DEFAULT_MEM_FRACTION:g} × that = {default_jax_budget(spec.usable_bytes):,} B "
                f"(JAX's allocator cap; set {FRACTION_VARS[0]} before JAX starts to change it, and plan "
                "inside that process with --mesh live / DeviceMesh.from_jax())")
    if is_gpu(device):
        settings = AllocatorSettings.from_env(environ)
        why = (f"{settings.fraction_var}={settings.mem_fraction:g} of the memory CUDA shows this process"
               if settings.fraction_var else
               f"JAX's default {JAX_DEFAULT_MEM_FRACTION:g} of the memory CUDA shows this process (no "
               f"{FRACTION_VARS[0]} set: a non-JAX engine on this card would get about "
               f"{1 / JAX_DEFAULT_MEM_FRACTION:.2f}× more)")
        return (f"budget: bytes_limit {s.bytes_limit:,} B {per}, read live — JAX's GPU allocator cap, "
                f"{why}; {'preallocated' if settings.preallocate else 'not preallocated'}")
    return f"budget: {s.budget_key} {s.bytes_limit:,} B {per}, read live ({getattr(device, 'platform', '?')})"


def refresh_stats(device: Any, previous: MemoryStats) -> MemoryStats:
    """Re-read ``device``; a budget given as capacity_bytes stays, bytes_in_use is re-read."""
    try:
        raw = raw_stats(device)
    except InputError:
        if previous.budget_key == "capacity_bytes":  # another host's device: nothing to re-read
            return previous
        raise
    if raw is None:
        return previous
    if previous.budget_key == "capacity_bytes":
        in_use = int(raw.get("bytes_in_use", 0) or 0)
        return MemoryStats(bytes_limit=previous.bytes_limit,
                           bytes_in_use=min(in_use, previous.bytes_limit), budget_key="capacity_bytes")
    return MemoryStats.from_jax(raw, device=str(device))


def mixed_device_warnings(devices: Sequence[Any], stats: Sequence[MemoryStats]) -> list[str]:
    """Lines saying the devices differ in kind, cap or memory already in use (empty when alike)."""
    out = []
    kinds = tuple(dict.fromkeys(device_kind(d) for d in devices))
    if len(kinds) > 1:
        out.append(f"mixed device kinds {', '.join(kinds)}: plan per device; the smallest budget "
                   "sets the page count of its replica")
    limits = sorted({s.bytes_limit for s in stats})
    if len(limits) > 1:
        out.append(f"devices differ in budget ({limits[0]:,} … {limits[-1]:,} B): planned per device")
    free = [s.free for s in stats]
    if len(limits) == 1 and max(free) - min(free) > 0.01 * max(limits[0], 1):
        low = min(range(len(stats)), key=lambda i: free[i])
        out.append(f"devices differ in free memory (least on {devices[low]}: {free[low]:,} B free, "
                   f"{stats[low].bytes_in_use:,} B already in use): planned per device")
    return out


def stats_changes(device: str, before: MemoryStats, after: MemoryStats) -> list[str]:
    """What changed on one device between two readings, in words (empty when nothing did)."""
    out = []
    if before.bytes_limit != after.bytes_limit:
        out.append(f"{device}: budget {before.bytes_limit:,} → {after.bytes_limit:,} B "
                   f"({after.bytes_limit - before.bytes_limit:+,} B)")
    if before.bytes_in_use != after.bytes_in_use:
        out.append(f"{device}: bytes_in_use {before.bytes_in_use:,} → {after.bytes_in_use:,} B "
                   f"({after.bytes_in_use - before.bytes_in_use:+,} B)")
    return out


def read_mesh_stats(devices: Sequence[Any], *, capacity_bytes: int | None = None,
                    environ: Mapping[str, str] | None = None, warn: bool = True) -> list[LiveReading]:
    """Read every device (per device, never device 0 scaled) and warn when they differ."""
    settings = AllocatorSettings.from_env(environ)
    readings = [read_live_stats(d, capacity_bytes=capacity_bytes, settings=settings) for d in devices]
    if warn:
        for line in mixed_device_warnings(devices, [r.stats for r in readings]):
            warnings.warn(line, MixedDevicesWarning, stacklevel=3)
    return readings


__all__ = ["ALLOCATORS", "FRACTION_VARS", "JAX_BOTH_FRACTIONS_TEXT", "AllocatorSettings", "LiveReading",
           "MixedDevicesWarning", "budget_explanation", "default_jax_budget", "mixed_device_warnings",
           "no_stats_error", "read_live_stats", "read_mesh_stats", "refresh_stats", "stats_changes"]
