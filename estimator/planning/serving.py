"""Serving integration: allocate exactly what a MemoryPlan says, as sharded JAX arrays.

``allocate_kv_pool(plan, mesh)`` builds the paged KV pool and ``allocate_weights_like(plan, mesh)``
placeholder weights (zeros, no checkpoint) from the one sharded-array table
(``estimator.core.partitioning``: global padded shapes with PartitionSpecs over ('data', 'expert',
'tensor') on each pipeline stage's sub-mesh), so every device's shards are byte for byte the plan's rows.
Arrays are made by a jitted zeros constructor with ``out_shardings``: each device writes its own
shard, nothing is built on the host and copied.

Before anything is allocated the plan is checked against the arguments: the mesh must be the one
the plan was made for (device count, axes), the model and layout must rebuild the plan's geometry
(per-device weight and page bytes), and — unless ``check_fit=False`` — every device is re-read
so a card whose free memory shrank since planning is reported in words, not as an allocator
failure. ``check_plan_still_fits(plan, mesh)`` gives the full answer: what changed and how many
pages would fit now.

This module imports JAX; ``import estimator`` does not import it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from estimator.core.geometry import Geometry, geometry
from estimator.core.layout import Layout
from estimator.core.paging import pages_that_fit, scaled_budget
from estimator.core.partitioning import STAGE_AXES, ShardedTensor, kv_pool_arrays, weight_arrays
from estimator.core.sharding import layout_stage_mesh
from estimator.model.dtypes import canonical_dtype, dtype_bytes
from estimator.model.resolve import resolve_model
from estimator.model.spec import ModelSpec
from estimator.planning.plan import DeviceRow, MemoryPlan
from meshes.live import stats_changes
from meshes.mesh import DeviceMesh
from meshes.stats import MemoryStats
from meshes.validation import InputError, check_int

_MESH_TEXT = re.compile(r"^(\d+) x (.*) \((.*)\)$")  # DeviceMesh.describe()


# ---------------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class Allocation:
    """Sharded arrays on live devices, one per row of the partitioning table."""

    tensors: tuple[ShardedTensor, ...]
    arrays: tuple[jax.Array, ...]

    def __len__(self) -> int:
        return len(self.arrays)

    def planned_bytes(self, row: DeviceRow) -> int:
        """What the plan's row says this allocation holds on that device."""
        raise NotImplementedError

    def __getitem__(self, name: str) -> jax.Array:
        for t, a in zip(self.tensors, self.arrays, strict=True):
            if t.name == name:
                return a
        raise KeyError(name)

    def as_dict(self) -> dict[str, jax.Array]:
        return {t.name: a for t, a in zip(self.tensors, self.arrays, strict=True)}

    def bytes_per_device(self) -> dict[Any, int]:
        """Bytes of this allocation's shards on each addressable device (``shard.data.nbytes``)."""
        out: dict[Any, int] = {}
        for a in self.arrays:
            for shard in a.addressable_shards:
                out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
        return out

    def block_until_ready(self) -> Allocation:
        jax.block_until_ready(self.arrays)
        return self

    def delete(self) -> None:
        """Free the device buffers now (the arrays are unusable afterwards)."""
        for a in self.arrays:
            if not a.is_deleted():
                a.delete()


@dataclass(frozen=True, eq=False)
class Weights(Allocation):
    """Placeholder weights (zeros) of the plan's per-device shapes, one array per weight tensor."""

    def planned_bytes(self, row: DeviceRow) -> int:
        return row.weights_bytes


@dataclass(frozen=True, eq=False)
class KVPool(Allocation):
    """The paged KV pool: per pipeline stage one array
    ``[2 (K, V), layers of the stage, pages_per_replica × replicas, page_size, KV heads, head_dim]``,
    pages split over the data group (each replica its own pages), heads over the tensor group.
    """

    pages_per_replica: int
    page_size: int
    num_replicas: int
    kv_cache_dtype: str
    stage_layers: tuple[range, ...]

    def planned_bytes(self, row: DeviceRow) -> int:
        return self.pages_per_replica * row.page_bytes

    @property
    def stages(self) -> tuple[jax.Array, ...]:
        return self.arrays

    def for_layer(self, layer: int) -> tuple[jax.Array, int]:
        """(the stage array holding ``layer``, the layer's index inside it)."""
        for array, layers in zip(self.arrays, self.stage_layers, strict=True):
            if layer in layers:
                return array, layer - layers.start
        raise InputError("layer", layer, f"a layer in 0..{self.stage_layers[-1].stop - 1}")


@dataclass(frozen=True)
class FitCheck:
    """Whether a plan still fits the devices as they are now, and what changed since planning."""

    fits: bool
    changed: bool
    pages_per_replica: int  # what the plan allocates
    pages_fit_now: int  # what the current stats would give, planned the same way
    tightest_device: str
    changes: tuple[str, ...]  # one line per changed quantity per device
    summary: str
    mesh: DeviceMesh  # the re-read mesh

    def __str__(self) -> str:
        return "\n".join((self.summary, *self.changes))

    def raise_if_not_fits(self) -> None:
        if not self.fits:
            raise InputError("plan", f"{self.pages_per_replica} pages per replica", str(self))


# ---------------------------------------------------------------------------------- checks
def _mesh_axes_text(mesh: DeviceMesh) -> str:
    return " x ".join(f"{n}={s}" for n, s in mesh.shape.items())


def check_plan_matches_mesh(plan: MemoryPlan, mesh: DeviceMesh) -> None:
    """Refuse a mesh other than the one ``plan`` was made for (device count, axis names and sizes).

    Device kinds or names that differ (a plan made on a preset, allocated on live devices) only
    warn: their memory is what ``check_plan_still_fits`` looks at.
    """
    if not isinstance(plan, MemoryPlan):
        raise InputError("plan", type(plan).__name__, "a MemoryPlan from estimator.plan()")
    if not isinstance(mesh, DeviceMesh):
        raise InputError("mesh", type(mesh).__name__, "a DeviceMesh (DeviceMesh.from_jax() for live devices)")
    diffs = []
    if mesh.size != len(plan.devices):
        diffs.append(f"device count: plan {len(plan.devices)}, mesh {mesh.size}")
    parsed = _MESH_TEXT.match(plan.mesh)
    plan_axes, plan_kinds = (parsed.group(3), parsed.group(2)) if parsed else (None, None)
    if plan_axes is not None and plan_axes != _mesh_axes_text(mesh):
        diffs.append(f"axes: plan ({plan_axes}), mesh ({_mesh_axes_text(mesh)})")
    if diffs:
        raise InputError("mesh", mesh.describe(),
                         f"the mesh the plan was made for ({plan.mesh}); it differs in "
                         f"{'; '.join(diffs)} — re-plan on this mesh: plan(model, mesh, layout)")
    kinds = ", ".join(mesh.device_kinds)
    if plan_kinds is not None and plan_kinds != kinds:
        warnings.warn(f"plan was made for {plan_kinds}, the mesh has {kinds}: "
                      "check_plan_still_fits(plan, mesh) says whether it fits them", stacklevel=3)


def resolve_plan(plan: MemoryPlan, mesh: DeviceMesh, *, model: ModelSpec | str | None = None,
                 layout: Layout | str | None = None) -> Geometry:
    """Rebuild the geometry ``plan`` was made from, and check it row by row against the plan.

    ``model`` defaults to the preset named ``plan.model``; ``layout`` to ``plan.layout``. One
    InputError names the first thing that differs (mesh, layout, model, page bytes).
    """
    check_plan_matches_mesh(plan, mesh)
    if layout is None:
        layout = Layout.parse(plan.layout)
    elif isinstance(layout, str):
        layout = Layout.parse(layout)
    if not isinstance(layout, Layout):
        raise InputError("layout", layout, "a Layout or a layout name such as tp8, dp2xtp4")
    if layout.name != plan.layout:
        raise InputError("layout", layout.name, f"the plan's layout {plan.layout}")
    layout.check(mesh)
    if layout.data != plan.num_replicas:
        raise InputError("layout", layout.name, f"{plan.num_replicas} replicas, as the plan has")
    if model is None:
        try:
            spec = resolve_model(plan.model)
        except InputError:
            raise InputError("model", None, f"the ModelSpec the plan was made for: {plan.model!r} is "
                             "not a preset, pass model=ModelSpec(...) (or its config.json)") from None
    else:
        spec = resolve_model(model)
        if spec.name != plan.model:
            raise InputError("model", spec.name, f"the plan's model {plan.model!r}")
    geom = geometry(spec, layout, kv_cache_dtype=plan.kv_cache_dtype, page_size=plan.page_size)
    for i, row in enumerate(plan.devices):
        coords = layout.coordinates(i)
        if (row.replica, row.stage, row.tensor_rank) != coords:
            raise InputError("layout", layout.name, f"device {i} at (replica, stage, rank) "
                             f"{(row.replica, row.stage, row.tensor_rank)} as in the plan, not {coords}")
        stage = geom.stages[row.stage]
        for field, planned, rebuilt in (("weights_bytes", row.weights_bytes, stage.weight_bytes),
                                        ("page_bytes", row.page_bytes, stage.page_bytes)):
            if planned != rebuilt:
                raise InputError("model", spec.name, f"the model the plan was made for: {row.device} "
                                 f"{field} is {planned:,} B in the plan but {rebuilt:,} B for this "
                                 f"model ({spec.weight_dtype} weights, {plan.kv_cache_dtype} KV, page "
                                 f"size {plan.page_size}) — pass the same ModelSpec as to plan()")
        if row.kv_pool_bytes != plan.pages_per_replica * row.page_bytes:
            raise InputError("plan", row.device, f"kv_pool_bytes = pages_per_replica × page_bytes "
                             f"({plan.pages_per_replica} × {row.page_bytes:,}), got {row.kv_pool_bytes:,}")
    return geom


def _row_stats(row: DeviceRow) -> MemoryStats:
    return MemoryStats(bytes_limit=row.bytes_limit, bytes_in_use=row.bytes_in_use)


def device_bytes(mesh: DeviceMesh, allocations: Iterable[Allocation]) -> list[int]:
    """Bytes the given allocations hold on each device of ``mesh``, in mesh order."""
    totals: dict[Any, int] = {}
    for alloc in allocations:
        for device, n in alloc.bytes_per_device().items():
            totals[device] = totals.get(device, 0) + n
    return [totals.get(d, 0) for d in mesh.devices]


def check_plan_still_fits(plan: MemoryPlan, mesh: DeviceMesh, *,
                          allocated: Sequence[Allocation] = ()) -> FitCheck:
    """Re-read every device's memory and redo the plan's page count with what is free now.

    ``allocated``: the plan's own arrays already on the devices (e.g. the weights, loaded since
    planning); their bytes are not counted as a change. The page count uses the plan's own
    utilization, weights, activations, signals and reserve per device, so unchanged stats give
    exactly ``plan.pages_per_replica``.
    """
    check_plan_matches_mesh(plan, mesh)
    fresh = mesh.refresh()
    own = device_bytes(mesh, allocated) if allocated else [0] * mesh.size
    changes, fits_now = [], []
    for i, (row, now) in enumerate(zip(plan.devices, fresh.stats, strict=True)):
        other = max(now.bytes_in_use - own[i], 0)
        current = MemoryStats(bytes_limit=now.bytes_limit, bytes_in_use=min(other, now.bytes_limit))
        lines = stats_changes(str(mesh.devices[i]), _row_stats(row), current)
        if lines and own[i]:
            lines[-1] += f" (not counting the plan's own {own[i]:,} B allocated since)"
        changes += lines
        budget = scaled_budget(current.free, plan.device_memory_utilization)
        static = row.weights_bytes + row.activation_bytes + row.signal_bytes + row.reserve_bytes
        fits_now.append(pages_that_fit(budget - static, row.page_bytes))
    pages_now = min(fits_now)
    tight = str(mesh.devices[min(range(mesh.size), key=lambda i: fits_now[i])])
    fits, planned = pages_now >= plan.pages_per_replica, plan.pages_per_replica
    if not changes:
        summary = (f"memory unchanged since planning on all {mesh.size} devices: the plan still fits "
                   f"({planned} pages per replica)")
    elif fits:
        summary = (f"memory changed since planning ({len(changes)} change(s)); the plan still fits: "
                   f"{pages_now} pages per replica would fit now, the plan allocates {planned}")
    else:
        summary = (f"memory changed since planning ({len(changes)} change(s)); the plan no longer fits: "
                   f"only {pages_now} pages per replica fit now (plan: {planned}; tightest device "
                   f"{tight}) — re-plan with plan(model, mesh.refresh(), layout, ...)")
    return FitCheck(fits, bool(changes), planned, pages_now, tight, tuple(changes), summary, fresh)


def _precheck(plan: MemoryPlan, mesh: DeviceMesh, need: Sequence[int], what: str) -> None:
    """Re-read the devices; refuse, in words, an allocation that no longer has room."""
    fresh = mesh.refresh()
    short = []
    for i, (row, now) in enumerate(zip(plan.devices, fresh.stats, strict=True)):
        if now.free < need[i]:
            name = str(mesh.devices[i])
            changed = stats_changes(name, _row_stats(row), now)
            since = (" — since planning " + "; ".join(c.removeprefix(f"{name}: ") for c in changed)
                     if changed else "")
            short.append(f"{name}: {what} needs {need[i]:,} B, {now.free:,} B free now{since}")
    if short:
        raise InputError("memory", what, "room for it on every device, but " + "; ".join(short)
                         + ". check_plan_still_fits(plan, mesh, allocated=[...]) says what fits now; "
                         "re-plan with plan(model, mesh.refresh(), ...)")


def check_allocation(plan: MemoryPlan, mesh: DeviceMesh, *allocations: Allocation) -> list[str]:
    """Per-device bytes of ``allocations`` against the plan's rows; empty when equal to the byte."""
    got = device_bytes(mesh, allocations)
    problems = []
    for i, row in enumerate(plan.devices):
        want = sum(a.planned_bytes(row) for a in allocations)
        if got[i] != want:
            problems.append(f"{mesh.devices[i]}: {got[i]:,} B allocated, plan says {want:,} B")
    return problems


# ---------------------------------------------------------------------------------- allocation
def _require_live(mesh: DeviceMesh) -> None:
    bad = [d for d in mesh.devices if not isinstance(d, jax.Device)]
    if bad:
        raise InputError("mesh", mesh.describe(), f"live JAX devices (DeviceMesh.from_jax()) to allocate "
                         f"on; {bad[0]} is not one — a simulated mesh has shapes but no memory "
                         "(use estimator.core.partitioning for shard shapes)")


def stage_meshes(mesh: DeviceMesh, layout: Layout) -> tuple[jax.sharding.Mesh, ...]:
    """One ``jax.sharding.Mesh`` ('data', 'expert', 'tensor') per pipeline stage, over that stage's
    devices: its dp × tp grid factored as the sharding table's stage mesh (row-major, so a tensor
    group stays neighbours and an expert group spans whole axes)."""
    logical = layout.logical_mesh(mesh)  # ('data', 'pipeline', 'tensor'), row-major as coordinates()
    grid = np.empty(logical.size, dtype=object)
    grid[:] = list(logical.devices)
    grid = grid.reshape(logical.axis_sizes)
    sizes = layout_stage_mesh(layout).sizes
    shape = tuple(sizes[a] for a in STAGE_AXES)
    return tuple(jax.sharding.Mesh(grid[:, s, :].reshape(shape), STAGE_AXES) for s in range(layout.pipeline))


@lru_cache(maxsize=512)
def _zeros_fn(shape: tuple[int, ...], dtype: str, sharding: jax.sharding.NamedSharding) -> Any:
    """A jitted zeros constructor writing each shard on its device (compiled once per signature)."""
    jdtype = jnp.dtype(dtype)
    return jax.jit(lambda: jnp.zeros(shape, jdtype), out_shardings=sharding)


def clear_caches() -> None:
    """Drop the compiled zeros constructors (and JAX's caches), e.g. between validation cases."""
    _zeros_fn.cache_clear()
    jax.clear_caches()


def _allocate(tensors: Sequence[ShardedTensor], meshes: Sequence[jax.sharding.Mesh],
              dtype: str | None = None) -> tuple[jax.Array, ...]:
    arrays: list[jax.Array] = []
    try:
        for t in tensors:
            mesh = meshes[t.stage]
            t.shard_shape(dict(mesh.shape))  # a clear error for an uneven split, before JAX's
            sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*t.spec))
            arrays.append(_zeros_fn(t.shape, dtype or t.dtype, sharding)())
        jax.block_until_ready(arrays)
    except BaseException:
        for a in arrays:  # leave nothing half-allocated behind (e.g. after RESOURCE_EXHAUSTED)
            a.delete()
        raise
    return tuple(arrays)


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return canonical_dtype(dtype, "dtype")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise InputError("dtype", dtype, "a dtype name (bfloat16, float8_e4m3fn, ...) or a numpy/jnp dtype") from None
    return canonical_dtype(name, "dtype")


def allocate_weights_like(plan: MemoryPlan, mesh: DeviceMesh, *, model: ModelSpec | str | None = None,
                          layout: Layout | str | None = None, check_fit: bool = True) -> Weights:
    """Zeros of every weight tensor's global (padded) shape, sharded as the plan charges them.

    No checkpoint is read: the point is to hold the bytes the real weights would. Each device
    ends up with exactly its row's ``weights_bytes``.
    """
    geom = resolve_plan(plan, mesh, model=model, layout=layout)
    if check_fit:
        _precheck(plan, mesh, [r.weights_bytes for r in plan.devices], "the weights")
    _require_live(mesh)
    tensors = weight_arrays(geom)
    return Weights(tensors, _allocate(tensors, stage_meshes(mesh, geom.layout)))


def allocate_kv_pool(plan: MemoryPlan, mesh: DeviceMesh, *, model: ModelSpec | str | None = None,
                     layout: Layout | str | None = None, dtype: Any = None,
                     pages_per_replica: int | None = None, check_fit: bool = True) -> KVPool:
    """The plan's paged KV pool as JAX arrays with NamedSharding, on each stage's sub-mesh.

    ``dtype`` defaults to the plan's KV dtype; another of the same width (e.g. float8_e5m2 for
    float8_e4m3fn) is allowed, a different width is refused (the plan's bytes would be wrong).
    ``pages_per_replica`` overrides the plan's count (e.g. to probe the allocator past it).
    With ``check_fit`` every device is re-read first, and a pool that no longer has room is
    refused with what changed since planning.
    """
    geom = resolve_plan(plan, mesh, model=model, layout=layout)
    pages = plan.pages_per_replica if pages_per_replica is None else check_int(
        "pages_per_replica", pages_per_replica, maximum=2**40)
    if pages < 1:
        raise InputError("plan.pages_per_replica", pages, "at least 1: the plan fits no KV page "
                         f"({'; '.join(plan.warnings) or 'see plan.warnings'}) — nothing to allocate")
    kv_dtype = plan.kv_cache_dtype if dtype is None else _dtype_name(dtype)
    if dtype_bytes(kv_dtype) != dtype_bytes(plan.kv_cache_dtype):
        raise InputError("dtype", kv_dtype, f"a {dtype_bytes(plan.kv_cache_dtype)}-byte dtype like the "
                         f"plan's kv_cache_dtype {plan.kv_cache_dtype} (re-plan for another width)")
    if check_fit:
        _precheck(plan, mesh, [pages * r.page_bytes for r in plan.devices], "the KV pool")
    _require_live(mesh)
    tensors = kv_pool_arrays(geom, pages)
    arrays = _allocate(tensors, stage_meshes(mesh, geom.layout), kv_dtype)
    return KVPool(tensors, arrays, pages, geom.page_size, geom.layout.data, kv_dtype,
                  tuple(s.layers for s in geom.stages))


def pool_bytes_per_device(plan: MemoryPlan, pages_per_replica: int | None = None) -> list[int]:
    """KV pool bytes each device holds for ``pages_per_replica`` pages (default: the plan's)."""
    pages = plan.pages_per_replica if pages_per_replica is None else pages_per_replica
    return [pages * r.page_bytes for r in plan.devices]


def grown_pages(pages: int, percent: int = 2) -> int:
    """``pages`` grown by ``percent`` % (rounded up, exact integer arithmetic), at least one more."""
    return pages + max(-(-pages * percent // 100), 1)


__all__ = ["Allocation", "FitCheck", "KVPool", "Weights", "allocate_kv_pool", "allocate_weights_like",
           "check_allocation", "check_plan_matches_mesh", "check_plan_still_fits", "clear_caches",
           "device_bytes", "grown_pages", "pool_bytes_per_device", "resolve_plan", "stage_meshes"]
