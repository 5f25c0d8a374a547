"""sweep(): every (layout, KV dtype, page size, utilization, batch, length) cell at once, jitted.

Why: plan() answers one question in ~0.5 ms of Python; a notebook wants the whole feasible region
(millions of cells) and its frontier. The work splits in two:

1. **Per configuration, exactly, in Python ints** (outside jit): one plan() per (layout, dtype,
   page size, utilization) gives each device's KV budget and page bytes, the null pages, the
   speculative slack and the replica count. Activations grow with the sampler's rows
   (``min(b, max_batch_input_tokens)``), so the usable pages of a replica, its length cap and
   which device is tightest are worked out per batch value from the plan's rows, and the pool
   pages one request holds per length from the plan's geometry (full, sliding-window, recurrent
   layers: the stage's kv_spec.PoolGroups): exactly what ``plan(..., max_batch_size=b)`` would give.
2. **Per cell, in the jitted kernel** (estimator.sweeps.kernel): page and token counts only,
   int32 when every usable page count fits (int64 under ``jax.enable_x64(True)`` otherwise, e.g.
   budgets near 2^63); bytes (headroom) only in int64. ``jit`` over three ``vmap``s for every
   cell, a two-compares-per-cell broadcast for frontiers; no Python loop over cells.

A cell fits iff the replica keeps ≥ 1 usable page, L is within plan()'s single-request length
cap, b ≤ max_batch_input_tokens, and ceil(b / dp) requests' pages fit the replica: the verdict of
``plan(..., max_length=L, max_batch_size=b).fits`` with MAX's batch-token clamp on top. Reason
codes and their precedence: estimator.sweeps.kernel.

**Bounded memory.** The grid is cut into chunks over (batch, length) of at most ``chunk_cells``
cells (default 2^24; shapes padded to powers of two so chunks reuse one compiled kernel; with D
compute devices a chunk holds at most ``max(chunk_cells, 2·configs·D)`` cells). A chunk of the full
kernel returns 17 B per cell from the device (int8 reason, int64 pages and headroom): 2^24 cells
→ 272 MiB per chunk. ``sweep`` returns every cell on the host (17 B per cell); ``sweep_frontier`` keeps only
frontiers and counts, O(configs · (batches + lengths)) host memory whatever the cell count, so a
1e9-cell sweep runs in the memory of one chunk.

**Several devices.** ``compute_devices`` (a list of jax devices or a ``jax.sharding.Mesh``) shards
each chunk's batch axis over a 1-D mesh with ``NamedSharding`` (chunks padded to a multiple of the
device count); results are identical to one device.

**Several hosts (jax.distributed).** Start one process per host and, in every process::

    jax.distributed.initialize()  # coordinator, num_processes, process_id (auto on SLURM/TPU pods)
    result = sweep(model, mesh, layouts=..., batch_sizes=..., lengths=...,
                   compute_devices=jax.devices())  # jax.devices(): the global device list

with identical arguments in every process (SPMD). Each process computes the exact per-config
constants itself (deterministic, cheap), builds only its own shards of each chunk
(``jax.make_array_from_callback``), XLA runs one program over all hosts, and every process gets
the whole result back (``multihost_utils.process_allgather``). Prefer ``sweep_frontier`` there:
only frontiers cross the network.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import jax
import numpy as np

from estimator.core.geometry import Geometry, geometry
from estimator.core.kv_spec import NO_LIMIT, PoolGroups, kv_specs
from estimator.core.layout import Layout, stage_layers
from estimator.core.paging import pages_that_fit, scaled_budget
from estimator.model.dtypes import canonical_dtype
from estimator.model.resolve import resolve_model
from estimator.model.spec import ModelSpec
from estimator.planning.activations import analytic_activation_bytes
from estimator.planning.plan import (
    DEFAULT_MAX_BATCH_INPUT_TOKENS,
    MemoryPlan,
    length_cap,
    loads_mtp_layers,
    plan,
)
from estimator.sweeps.frontier import PADDING, REASONS, SweepFrontier, SweepResult
from estimator.sweeps.kernel import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    grid_aggregate_jit,
    grid_full_jit,
)
from meshes.mesh import DeviceMesh
from meshes.validation import InputError, check_fraction, check_int, check_page_size

DEFAULT_CHUNK_CELLS = 2**24
MAX_CHUNK_CELLS = 2**30  # per-chunk counts are int32
MAX_AXIS_VALUES = 2**24  # values of one axis (batch_sizes, lengths): counted before any list is built
MAX_CONFIGS = 4096  # layouts × KV dtypes × page sizes × utilizations (one plan() each)
MAX_FULL_CELLS = 2**28  # cells sweep() returns (17 B each on the host: 4.25 GiB); sweep_frontier has no cap
_AXIS_KWARGS = ("max_length", "max_batch_size", "kv_cache_dtype", "page_size",
                "device_memory_utilization")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ConfigConstants:
    """Exact numbers of one (layout, dtype, page size, utilization): per batch value the replica's
    usable pages, its length cap and the tightest device's KV budget and page bytes; per length
    the pool pages one request holds."""

    layout: Layout
    num_replicas: int
    reserved_pages: int  # null pages each replica keeps back
    usable: np.ndarray  # [B] int64, usable pages per replica at each batch value
    cap: np.ndarray  # [B] int64, plan()'s max_supported_sequence_length at those pages
    kv_budget: np.ndarray  # [B] int64, tightest device's KV budget (clamped at −2^63)
    page_bytes: np.ndarray  # [B] int64, tightest device's page bytes
    request_pages: np.ndarray  # [L] int64, pool pages per request (2^63 − 1: never fits)


@dataclass(frozen=True)
class ConfigTable:
    """The ConfigConstants of many configurations as columns, in C order over (layout, dtype,
    page size, utilization): what the kernel reads, built without a Python object per row."""

    num_replicas: np.ndarray  # [C] int64
    reserved_pages: np.ndarray  # [C] int64
    usable: np.ndarray  # [C, B] int64
    cap: np.ndarray  # [C, B] int64
    kv_budget: np.ndarray  # [C, B] int64
    page_bytes: np.ndarray  # [C, B] int64
    request_pages: np.ndarray  # [C, L] int64

    def __len__(self) -> int:
        return self.num_replicas.size

    @classmethod
    def of(cls, rows: Sequence[ConfigConstants]) -> ConfigTable:
        """The table of configurations computed one by one (config_constants())."""
        return cls(*(np.asarray([getattr(r, f.name) for r in rows], dtype=np.int64) for f in fields(cls)))


def config_constants(model: ModelSpec, mesh: DeviceMesh, layout: Layout, batches: np.ndarray,
                     lengths: np.ndarray, *, kv_cache_dtype: str | None, page_size: int,
                     utilization: float, max_batch_input_tokens: int,
                     **plan_kwargs: Any) -> ConfigConstants:
    """Per-batch and per-length page constants of one configuration, from plan()'s own rows.

    plan() charges activations for ``min(max_batch_size or 512, max_batch_input_tokens)`` sampler
    rows; a batch b therefore moves every device's KV budget by the activation difference. As in
    plan(), the tightest device is the first, among those holding KV pages, with the fewest pages,
    and the length cap is the tightest stage's longest request (the model's
    max_position_embeddings when no stage limits the length).
    """
    kwargs = dict(kv_cache_dtype=kv_cache_dtype, page_size=page_size,
                  device_memory_utilization=utilization,
                  max_batch_input_tokens=max_batch_input_tokens, **plan_kwargs)
    ref = plan(model, mesh, layout, **kwargs)
    geom = _plan_geometry(model, layout, ref, kwargs)
    activation = _activation_model(model, mesh, layout, geom, ref, kwargs)
    slack, reserved = ref.speculative_slack_tokens, ref.reserved_pages
    holding = [s for s in geom.stages if s.page_bytes]
    # devices alike in (KV budget before activations, page bytes) answer alike: keep the first
    groups = list(dict.fromkeys((r.kv_budget_bytes + r.activation_bytes, r.page_bytes)
                                for r in ref.devices if r.page_bytes))
    first = ref.devices[0]
    unique_keys, inverse = np.unique(activation.key(batches), return_inverse=True)
    by_act: dict[int, tuple[int, int, int, int]] = {}
    caps: dict[int, int] = {}
    per_key = []
    for key in unique_keys.tolist():
        act = activation.bytes(key)
        if act not in by_act:
            best = None
            for base, pb in groups:
                fit = pages_that_fit(base - act, pb)
                if best is None or fit < best[0]:
                    best = (fit, base - act, pb)
            fit, kvb, pb = best or (0, first.kv_budget_bytes + first.activation_bytes - act, 0)
            usable = max(fit - reserved, 0)
            if usable not in caps:
                caps[usable] = length_cap(holding, usable, slack, model.max_position_embeddings)
            by_act[act] = (usable, caps[usable], max(kvb, INT64_MIN), pb)
        per_key.append(by_act[act])
    table = np.asarray(per_key, dtype=np.int64).reshape(-1, 4)[inverse.reshape(-1)]
    return ConfigConstants(layout, ref.num_replicas, reserved, *(table[:, i].copy() for i in range(4)),
                           request_pages=_request_pages([s.pool for s in holding], lengths, slack))


def _plan_geometry(model: ModelSpec, layout: Layout, ref: MemoryPlan,
                   kwargs: dict[str, Any]) -> Geometry:
    """The geometry plan() used (same KV dtype, page, scales and MTP layers), checked against it."""
    include_mtp = loads_mtp_layers(kwargs.get("include_mtp"), kwargs.get("speculative_method", "eagle"),
                                   kwargs.get("num_draft_tokens", 0))
    geom = geometry(model, layout, kv_cache_dtype=kwargs["kv_cache_dtype"],
                    page_size=kwargs["page_size"], kv_scale_block=kwargs.get("kv_scale_block"),
                    include_mtp=include_mtp)
    stage_pages = [geom.stages[r.stage].page_bytes for r in ref.devices]
    if stage_pages != [r.page_bytes for r in ref.devices]:  # never silent: a changed plan()
        raise RuntimeError("estimator.sweeps.grid is out of step with plan(): page bytes differ")
    return geom


def layout_constants(model: ModelSpec, mesh: DeviceMesh, layout: Layout, batches: np.ndarray,
                     lengths: np.ndarray, *, kv_cache_dtypes: Sequence[str], page_sizes: Sequence[int],
                     utilizations: Sequence[float], max_batch_input_tokens: int,
                     **plan_kwargs: Any) -> ConfigTable:
    """config_constants() of every (dtype, page size, utilization) of one layout, in that C order,
    as one table, with the per-configuration work done on arrays.

    One plan() per layout checks every option and gives each device's weights, signal buffers
    and reserve (none depends on the KV dtype, page size or utilization). The KV specs give each
    stage's page pool per (dtype, page size), evaluated on the whole length axis at once; the KV
    budgets of every (device group, batch value) per utilization are one array, and the length
    caps come from PoolGroups.max_tokens on the array of usable page counts. Activation models
    other than the analytic one (e.g. "xla", which compiles per batch value) go through
    config_constants() per configuration.
    """
    kwargs = dict(max_batch_input_tokens=max_batch_input_tokens, **plan_kwargs)
    ref = plan(model, mesh, layout, kv_cache_dtype=kv_cache_dtypes[0], page_size=page_sizes[0],
               device_memory_utilization=utilizations[0], **kwargs)
    fixed = plan_kwargs.get("activation_bytes") is not None
    if not fixed and plan_kwargs.get("activations", "analytic") != "analytic":
        return ConfigTable.of([config_constants(model, mesh, layout, batches, lengths, kv_cache_dtype=d,
                                                page_size=p, utilization=u, **kwargs)
                               for d, p, u in itertools.product(kv_cache_dtypes, page_sizes, utilizations)])
    for page in page_sizes[1:]:
        check_page_size(page, mesh.platform, mla=model.is_mla)
    geom = _plan_geometry(model, layout, ref, {**kwargs, "kv_cache_dtype": kv_cache_dtypes[0],
                                               "page_size": page_sizes[0]})
    activation = _activation_model(model, mesh, layout, geom, ref, kwargs)
    keys, inverse = np.unique(activation.key(batches), return_inverse=True)
    act_values = [int(x) for x in np.broadcast_to(activation.bytes(keys.astype(np.int64)), keys.shape).tolist()]
    free = [stats.free for stats in mesh.stats]
    static = [r.weights_bytes + r.signal_bytes + r.reserve_bytes for r in ref.devices]
    exact = max(map(abs, [*free, *static, *act_values])) >= 2**61  # Python ints in object arrays
    dtype = object if exact else np.int64
    act = np.asarray(act_values, dtype=dtype)[inverse.reshape(-1)]
    slack, reserved = ref.speculative_slack_tokens, ref.reserved_pages
    ranges = stage_layers(model.num_layers, layout.pipeline)
    kvs = [kv_specs(model, layout.tensor, d, plan_kwargs.get("kv_scale_block")) for d in kv_cache_dtypes]
    n_d, n_u, n_b = len(kvs), len(utilizations), act.size
    # devices alike in (free, static bytes, stage) answer alike: one row each, in device order
    groups = list(dict.fromkeys(zip(free, static, (r.stage for r in ref.devices), strict=True)))
    budgets = {f: [scaled_budget(f, u) for u in utilizations] for f in set(free)}
    base = np.asarray([[budgets[f][i] - st for f, st, _ in groups] for i in range(n_u)], dtype=dtype)
    kv_budget = base[:, :, None] - act[None, None, :]  # [U, G, B], whatever the KV dtype and page
    tokens = lengths.astype(np.int64) + slack  # ≤ 2^31 + 2^22: every product below fits int64
    n_p = len(page_sizes)
    pools = [[[kv.pool(page, layers) for layers in ranges] for page in page_sizes] for kv in kvs]  # [D][P][stage]
    holding = [s for s in range(len(ranges)) if pools[0][0][s].page_bytes]  # alike for every dtype and page
    rows = [g for g, (_, _, stage) in enumerate(groups) if stage in holding]
    if rows:  # [D, P, U, B, G]: every KV dtype, page size, utilization, batch and device group at once
        pb = np.asarray([[[pools[d][j][groups[g][2]].page_bytes for g in rows] for j in range(n_p)]
                         for d in range(n_d)], dtype=dtype)[:, :, None, None, :]
        budget_rows = np.moveaxis(kv_budget[:, rows, :], 1, -1)  # [U, B, G]
        fit = budget_rows // pb  # pages_that_fit on arrays (clamped at 0 below)
        budgets = np.broadcast_to(budget_rows, fit.shape)
        pbs = np.broadcast_to(pb, fit.shape)
        if len(rows) > 1:
            np.maximum(fit, 0, out=fit)
        # the tightest device: the first with the fewest pages (a running minimum over the few groups)
        tight_fit, tight_budget, page_bytes = fit[..., 0], budgets[..., 0], pbs[..., 0]
        for g in range(1, len(rows)):
            fewer = fit[..., g] < tight_fit
            tight_fit, tight_budget, page_bytes = (np.where(fewer, a[..., g], t) for a, t in (
                (fit, tight_fit), (budgets, tight_budget), (pbs, page_bytes)))
        fit = tight_fit
    else:  # no device holds KV pages
        tight_budget = np.broadcast_to(kv_budget[None, None, :, 0, :], (n_d, n_p, n_u, n_b))
        fit = page_bytes = np.zeros((n_d, n_p, n_u, n_b), dtype)
    usable = fit - reserved  # max(max(fit, 0) − reserved, 0) = max(fit − reserved, 0): reserved ≥ 0
    np.maximum(usable, 0, out=usable)
    cap = np.full(usable.shape, NO_LIMIT, dtype=usable.dtype)
    request = np.zeros((n_d, n_p, tokens.size), np.int64)
    pages_axis = np.asarray(page_sizes, np.int64)
    for stage in holding:
        # dtypes change a pool's page bytes and its pages of recurrent state, never its groups:
        # the first dtype's rule, shifted by each dtype's state pages, serves them all; a pool with
        # no windowed group and no state is one rule for every page size too (page size an array)
        ref = pools[0][0][stage]
        shape = _rule_shape(ref)
        if not any(w for _, w, _ in shape) and all(
                _rule_shape(pools[d][j][stage]) == shape and not pools[d][j][stage].state_pages
                for d in range(n_d) for j in range(n_p)):
            most = _with_slack(replace(ref, page_size=pages_axis[None, :, None, None]).max_tokens(usable), slack)
            cap = most if stage == holding[0] else np.minimum(cap, most)  # the first stage: no copy
            np.maximum(request, replace(ref, page_size=pages_axis[:, None]).pages(tokens)[None], out=request)
            continue
        for j in range(n_p):
            ref_pool = pools[0][j][stage]
            shift = np.asarray([pools[d][j][stage].state_pages - ref_pool.state_pages for d in range(n_d)])
            most = ref_pool.max_tokens(usable[:, j] - shift[:, None, None] if shift.any() else usable[:, j])
            np.minimum(cap[:, j], _with_slack(most, slack), out=cap[:, j])
            np.maximum(request[:, j], ref_pool.pages(tokens)[None, :] + shift[:, None], out=request[:, j])
    unlimited = cap >= NO_LIMIT
    if unlimited.any():
        cap = np.where(unlimited, np.where(usable > 0, model.max_position_embeddings, 0), cap)
    request[request <= 0] = INT64_MAX  # no stage holds pages: no batch fits, as in plan()
    if dtype is object:  # exact budgets below −2^63 are clamped there
        tight_budget = np.maximum(tight_budget, INT64_MIN)
    n_c = n_d * n_p * n_u
    return ConfigTable(np.full(n_c, layout.data, np.int64), np.full(n_c, reserved, np.int64),
                       *(np.asarray(a, np.int64).reshape(n_c, n_b) for a in (usable, cap, tight_budget, page_bytes)),
                       np.broadcast_to(request[:, :, None, :], (n_d, n_p, n_u, tokens.size)).reshape(n_c, -1))


def _rule_shape(pool: PoolGroups) -> tuple[tuple[type, int, int], ...]:
    """What a pool's request rule depends on besides the page size: each group's kind, window and
    pages per page of tokens (not its bytes, which the KV dtype changes)."""
    return tuple((type(spec), spec.window, count) for spec, count in pool.groups)


def _with_slack(most: np.ndarray, slack: int) -> np.ndarray:
    """A stage's longest request less the speculative slack (no limit stays no limit)."""
    return np.where(most < NO_LIMIT, np.maximum(most - slack, 0), NO_LIMIT) if slack else most


def _request_pages(holding: list[PoolGroups], lengths: np.ndarray, slack: int) -> np.ndarray:
    """Pool pages one request of each length holds: the most any stage needs (the stage's
    PoolGroups rule evaluated on the whole length axis at once). 2^63 − 1 where no stage holds
    pages (then no batch fits, as in plan())."""
    tokens = lengths.astype(np.int64) + slack  # ≤ 2^31 + 2^22: every product below fits int64
    most = np.zeros(tokens.shape, np.int64)
    for pool in holding:
        np.maximum(most, pool.pages(tokens), out=most)
    most[most <= 0] = INT64_MAX
    return most


@dataclass(frozen=True)
class _Activation:
    """Activation bytes per device as plan() charges them for a batch value, keyed so that batch
    values charged alike are computed once."""

    key: Callable[[np.ndarray], np.ndarray]
    bytes: Callable[[int], int]


def _activation_model(model: ModelSpec, mesh: DeviceMesh, layout: Layout, geom: Geometry,
                      ref: MemoryPlan, kwargs: dict[str, Any]) -> _Activation:
    charged = ref.devices[0].activation_bytes
    if kwargs.get("activation_bytes") is not None:  # fixed by the caller
        return _Activation(lambda b: np.zeros_like(b), lambda rows: 0 * rows + charged)
    tokens = kwargs["max_batch_input_tokens"]
    if kwargs.get("activations", "analytic") == "analytic":  # depends on min(b, tokens) only
        if analytic_activation_bytes(geom, tokens, min(512, tokens)) != charged:
            raise RuntimeError("estimator.sweeps.grid is out of step with plan(): activations differ")
        return _Activation(lambda b: np.minimum(b, tokens),
                           lambda rows: analytic_activation_bytes(geom, tokens, rows))
    # another activation model (e.g. "xla", which compiles): ask plan() once per batch value
    return _Activation(lambda b: b, lambda b: plan(model, mesh, layout, max_batch_size=b,
                                                   **kwargs).devices[0].activation_bytes)


# --------------------------------------------------------------------------- public API
def sweep(model: ModelSpec | str, mesh: DeviceMesh | str, *,
          layouts: Layout | str | Sequence[Layout | str] | None = None,
          batch_sizes: Iterable[int], lengths: Iterable[int],
          kv_cache_dtypes: Sequence[str | None] = (None,), page_sizes: Sequence[int] = (128,),
          utilizations: Sequence[float] = (0.9,),
          max_batch_input_tokens: int = DEFAULT_MAX_BATCH_INPUT_TOKENS,
          chunk_cells: int = DEFAULT_CHUNK_CELLS, compute_devices: Any = None,
          progress: Progress | None = None, **plan_kwargs: Any) -> SweepResult:
    """Evaluate every cell; returns all of them labelled (see SweepResult).

    ``plan_kwargs`` go to plan() for every configuration (activation_bytes, signal_bytes,
    runtime_reserve_bytes, num_draft_tokens, speculative_method, reserve_null_page,
    activations). ``activations="xla"`` compiles once per (configuration, batch value): keep
    the batch axis short there, or pass ``activation_bytes``.
    ``progress(done_cells, total_cells)`` is called after each chunk.
    """
    grid = _prepare(model, mesh, layouts, batch_sizes, lengths, kv_cache_dtypes, page_sizes,
                    utilizations, max_batch_input_tokens, plan_kwargs)
    cells = grid.n_configs * grid.batches.size * grid.lengths.size
    if cells > MAX_FULL_CELLS:
        raise InputError("batch_sizes × lengths", f"{cells:,} cells", f"at most {MAX_FULL_CELLS:,} cells for "
                         "sweep() (17 B each on the host); sweep_frontier() keeps only frontiers")
    reason, needed, headroom = _run(grid, "full", chunk_cells, compute_devices, progress)
    shape = (*grid.axes["config_shape"], grid.batches.size, grid.lengths.size)
    available = grid.column("usable").reshape(*shape[:-1], 1)
    reason = reason.reshape(shape)
    return SweepResult(**grid.axes_kwargs(), feasible=reason == 0, reason=reason,
                       pages_needed=needed.reshape(shape),
                       pages_available=np.broadcast_to(available, shape),
                       headroom_bytes=headroom.reshape(shape))


def sweep_frontier(model: ModelSpec | str, mesh: DeviceMesh | str, *,
                   layouts: Layout | str | Sequence[Layout | str] | None = None,
                   batch_sizes: Iterable[int], lengths: Iterable[int],
                   kv_cache_dtypes: Sequence[str | None] = (None,),
                   page_sizes: Sequence[int] = (128,), utilizations: Sequence[float] = (0.9,),
                   max_batch_input_tokens: int = DEFAULT_MAX_BATCH_INPUT_TOKENS,
                   chunk_cells: int = DEFAULT_CHUNK_CELLS, compute_devices: Any = None,
                   progress: Progress | None = None, **plan_kwargs: Any) -> SweepFrontier:
    """Aggregate sweep: frontiers and reason counts only, in bounded memory (see module doc)."""
    grid = _prepare(model, mesh, layouts, batch_sizes, lengths, kv_cache_dtypes, page_sizes,
                    utilizations, max_batch_input_tokens, plan_kwargs)
    max_batch, max_length, counts = _run(grid, "aggregate", chunk_cells, compute_devices, progress)
    cfg = grid.axes["config_shape"]
    return SweepFrontier(**grid.axes_kwargs(), max_batch=max_batch.reshape(*cfg, -1),
                         max_length=max_length.reshape(*cfg, -1),
                         reason_counts=counts.reshape(*cfg, len(REASONS)))


# --------------------------------------------------------------------------- preparation
@dataclass(frozen=True)
class _Grid:
    tables: tuple[ConfigTable, ...]  # one per layout; configs in C order over (layout, dtype, page, util)
    batches: np.ndarray
    lengths: np.ndarray
    limit: int
    axes: dict[str, Any]

    @property
    def n_configs(self) -> int:
        return sum(len(t) for t in self.tables)

    def column(self, name: str) -> np.ndarray:
        """One ConfigTable column over every configuration."""
        return np.concatenate([getattr(t, name) for t in self.tables])

    def axes_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.axes.items() if k != "config_shape"}


def _prepare(model: ModelSpec | str, mesh: DeviceMesh | str, layouts: Any, batch_sizes: Any,
             lengths: Any, kv_cache_dtypes: Any, page_sizes: Any, utilizations: Any,
             max_batch_input_tokens: int, plan_kwargs: dict[str, Any]) -> _Grid:
    for key in _AXIS_KWARGS:
        if key in plan_kwargs:
            raise InputError(key, plan_kwargs[key], "not a plan() argument here: sweep over it "
                             "with batch_sizes / lengths / kv_cache_dtypes / page_sizes / "
                             "utilizations")
    model = resolve_model(model)
    mesh = DeviceMesh.from_preset(mesh) if isinstance(mesh, str) else mesh
    limit = check_int("max_batch_input_tokens", max_batch_input_tokens)
    batches = _int_axis("batch_sizes", batch_sizes)
    lengths_ = _int_axis("lengths", lengths)
    layout_list = _layouts(layouts, mesh)
    dtypes = _nonempty("kv_cache_dtypes", kv_cache_dtypes)
    pages = [check_int("page_sizes", p, maximum=INT32_MAX) for p in _nonempty("page_sizes",
                                                                             page_sizes)]
    utils = [check_fraction("utilizations", u) for u in _nonempty("utilizations", utilizations)]
    dtype_names = [canonical_dtype(d or model.weight_dtype, "kv_cache_dtypes") for d in dtypes]
    for field, values in (("kv_cache_dtypes", dtype_names), ("page_sizes", pages),
                          ("utilizations", utils)):
        _distinct(field, values)
    n_configs = len(layout_list) * len(dtype_names) * len(pages) * len(utils)
    if n_configs > MAX_CONFIGS:  # checked before one plan() per configuration
        raise InputError("layouts × kv_cache_dtypes × page_sizes × utilizations", n_configs,
                         f"at most {MAX_CONFIGS} configurations")
    tables = tuple([layout_constants(model, mesh, lay, batches, lengths_, kv_cache_dtypes=dtype_names,
                                     page_sizes=pages, utilizations=utils, max_batch_input_tokens=limit,
                                     **plan_kwargs)
                    for lay in layout_list])
    axes = dict(model=model.name, mesh=mesh.describe(), layouts=tuple(x.name for x in layout_list),
                kv_dtypes=tuple(dtype_names), page_sizes=tuple(pages), utilizations=tuple(utils),
                batches=batches, lengths=lengths_,
                devices_per_replica=tuple(x.devices_per_replica for x in layout_list),
                num_replicas=tuple(x.data for x in layout_list), max_batch_input_tokens=limit,
                config_shape=(len(layout_list), len(dtypes), len(pages), len(utils)))
    return _Grid(tables, batches, lengths_, limit, axes)


def _nonempty(field: str, values: Any) -> list:
    if isinstance(values, (str, bytes)) or values is None:
        values = [values]
    elif not isinstance(values, Iterable):
        raise InputError(field, values, "a value or a sequence of values")
    values = list(itertools.islice(values, MAX_CONFIGS + 1))
    if len(values) > MAX_CONFIGS:
        raise InputError(field, f"more than {MAX_CONFIGS} values", f"at most {MAX_CONFIGS} values")
    if not values:
        raise InputError(field, values, "at least one value")
    return values


def _distinct(field: str, values: list) -> None:
    if len(set(values)) != len(values):
        raise InputError(field, values, "distinct values")


def _int_axis(field: str, values: Any) -> np.ndarray:
    """A sorted, de-duplicated int64 axis of integers in [1, 2^31 − 1]."""
    if not isinstance(values, np.ndarray):
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise InputError(field, values, f"a sequence of integers in [1, {INT32_MAX}]")
        values = list(itertools.islice(values, MAX_AXIS_VALUES + 1))
    if len(values) > MAX_AXIS_VALUES:
        raise InputError(field, f"more than {MAX_AXIS_VALUES:,} values", f"at most {MAX_AXIS_VALUES:,} values")
    arr = np.asarray(values)
    if arr.size == 0:
        raise InputError(field, [], "at least one value")
    if arr.ndim != 1:
        raise InputError(field, arr.shape, "a one-dimensional sequence of integers")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        bad = next((v for v in arr.tolist() if isinstance(v, bool) or not isinstance(v, int)
                    or not 1 <= v <= INT32_MAX), arr.tolist()[0])
        raise InputError(field, bad, f"integers in [1, {INT32_MAX}]")
    if arr.min() < 1 or arr.max() > INT32_MAX:
        bad = arr.min() if arr.min() < 1 else arr.max()
        raise InputError(field, int(bad), f"integers in [1, {INT32_MAX}]")
    return np.unique(arr.astype(np.int64))


def _layouts(layouts: Any, mesh: DeviceMesh) -> list[Layout]:
    if layouts is None:
        return [Layout.default_for(mesh)]
    items = _nonempty("layouts", [layouts] if isinstance(layouts, (str, Layout)) else layouts)
    out = [x if isinstance(x, Layout) else Layout.parse(x) for x in items]
    _distinct("layouts", [x.name for x in out])
    return out


# --------------------------------------------------------------------------- chunked execution
def _run(grid: _Grid, mode: str, chunk_cells: int, compute_devices: Any,
         progress: Progress | None) -> tuple[np.ndarray, ...]:
    """Evaluate the grid chunk by chunk; ``mode`` is "full" (every cell) or "aggregate"."""
    chunk_cells = check_int("chunk_cells", chunk_cells, maximum=MAX_CHUNK_CELLS)
    devices = _devices(compute_devices)
    n_cfg, n_b, n_l = grid.n_configs, grid.batches.size, grid.lengths.size
    c_pad, b_tile, l_tile = chunk_shape(n_cfg, n_b, n_l, chunk_cells, len(devices))

    consts = _stack_constants(grid, c_pad)
    wide = mode == "full" or not _fits_int32(grid, consts)
    itype = np.int64 if wide else np.int32
    placer = _Placer(devices)
    fn = grid_full_jit if mode == "full" else grid_aggregate_jit
    sink = _FullSink(n_cfg, n_b, n_l) if mode == "full" else _AggregateSink(n_cfg, n_b, n_l)
    total, done = n_cfg * n_b * n_l, 0

    def rows(name: str, i0: int, nb: int, dtype: Any, fill: int = 0) -> Any:
        return placer.rows(_pad2(_clip(consts[name][:, i0:i0 + nb], dtype), b_tile, dtype, fill))

    with jax.enable_x64(True) if wide else contextlib.nullcontext():
        dp = placer.replicated(consts["dp"].astype(itype))
        limit = placer.replicated(np.asarray(min(grid.limit, np.iinfo(itype).max), dtype=itype))
        reserved = [placer.replicated(consts["reserved"])] if mode == "full" else []
        q_tiles = [placer.replicated(_pad2(_clip(consts["q"][:, j0:j0 + l_tile], itype), l_tile,
                                           itype)) for j0 in range(0, n_l, l_tile)]
        pending = None
        for i0 in range(0, n_b, b_tile):
            nb = min(b_tile, n_b - i0)
            b_arr = placer.batch(_pad1(grid.batches[i0:i0 + nb], b_tile, itype))
            per_batch = [rows("usable", i0, nb, itype), rows("cap", i0, nb, itype)]
            budget = ([rows("kv_budget", i0, nb, np.int64), rows("page_bytes", i0, nb, np.int64, 1)]
                      if mode == "full" else [])
            for tile, j0 in enumerate(range(0, n_l, l_tile)):
                nl = min(l_tile, n_l - j0)
                lengths = placer.replicated(_pad1(grid.lengths[j0:j0 + nl], l_tile, itype))
                out = fn(b_arr, lengths, *per_batch, q_tiles[tile], dp, limit, *budget, *reserved)
                if pending is not None:
                    sink.collect(*pending)
                    done += n_cfg * pending[1][1] * pending[1][3]
                    if progress is not None:
                        progress(done, total)
                pending = (out, (i0, nb, j0, nl))
        sink.collect(*pending)
        if progress is not None:
            progress(total, total)
    return sink.result()


def chunk_shape(n_cfg: int, n_b: int, n_l: int, chunk_cells: int = DEFAULT_CHUNK_CELLS,
                n_devices: int = 1) -> tuple[int, int, int]:
    """(configs, batches, lengths) of one chunk: powers of two (so chunks of similar grids share
    one compiled kernel), at most ``chunk_cells`` cells, the batch axis a multiple of the device
    count (which may raise the bound to ``2 · configs · n_devices``)."""
    c_pad = _ceil_pow2(n_cfg)
    l_tile = min(_ceil_pow2(n_l), _floor_pow2(max(1, chunk_cells // c_pad)))
    b_tile = min(_ceil_pow2(n_b), _floor_pow2(max(1, chunk_cells // (c_pad * l_tile))))
    return c_pad, -(-b_tile // n_devices) * n_devices, l_tile


def _stack_constants(grid: _Grid, c_pad: int) -> dict[str, np.ndarray]:
    """Per-config [C] and per-(config, batch) [C, B] int64 arrays, padded to c_pad configs with
    harmless values (no pages)."""
    pad = c_pad - grid.n_configs

    def rows(name: str, fill: int) -> np.ndarray:
        parts = [getattr(t, name) for t in grid.tables]
        return np.concatenate([*parts, np.full((pad, *parts[0].shape[1:]), fill, np.int64)])

    return {"dp": rows("num_replicas", 1), "reserved": rows("reserved_pages", 0),
            "usable": rows("usable", 0), "cap": rows("cap", 0), "kv_budget": rows("kv_budget", 0),
            "page_bytes": rows("page_bytes", 1), "q": rows("request_pages", INT64_MAX)}


def _fits_int32(grid: _Grid, consts: dict[str, np.ndarray]) -> bool:
    """True when the aggregate kernel can run in int32: every usable page count is below 2^31 − 1.

    Batches and lengths are below 2^31 by validation; caps and request pages above 2^31 − 1 are
    clipped to it (``_clip``), which changes no verdict: L ≤ 2^31 − 1, and a request of 2^31 − 1
    pages exceeds every usable count.
    """
    return int(consts["usable"].max()) < INT32_MAX


def _clip(x: np.ndarray, dtype: Any) -> np.ndarray:
    return np.minimum(x, np.iinfo(dtype).max)


class _FullSink:
    """Host arrays of every cell, filled chunk by chunk."""

    def __init__(self, n_cfg: int, n_b: int, n_l: int) -> None:
        self.n_cfg = n_cfg
        self.reason = np.empty((n_cfg, n_b, n_l), np.int8)
        self.needed = np.empty((n_cfg, n_b, n_l), np.int64)
        self.headroom = np.empty((n_cfg, n_b, n_l), np.int64)

    def collect(self, out: tuple[Any, ...], where: tuple[int, int, int, int]) -> None:
        i0, nb, j0, nl = where
        for dst, src in zip((self.reason, self.needed, self.headroom), out, strict=True):
            dst[:, i0:i0 + nb, j0:j0 + nl] = _host(src)[:self.n_cfg, :nb, :nl]

    def result(self) -> tuple[np.ndarray, ...]:
        if (self.reason == PADDING).any():  # a padding cell leaked: a driver bug, never silent
            raise AssertionError("sweep: padding cell in the result")
        return self.reason, self.needed, self.headroom


class _AggregateSink:
    """Running frontiers and reason counts (O(configs · (batches + lengths)) memory)."""

    def __init__(self, n_cfg: int, n_b: int, n_l: int) -> None:
        self.n_cfg = n_cfg
        self.max_batch = np.zeros((n_cfg, n_l), np.int64)
        self.max_length = np.zeros((n_cfg, n_b), np.int64)
        self.counts = np.zeros((n_cfg, len(REASONS)), np.int64)

    def collect(self, out: tuple[Any, ...], where: tuple[int, int, int, int]) -> None:
        i0, nb, j0, nl = where
        max_batch, max_length, counts = (_host(x)[:self.n_cfg] for x in out)
        np.maximum(self.max_batch[:, j0:j0 + nl], max_batch[:, :nl],
                   out=self.max_batch[:, j0:j0 + nl])
        np.maximum(self.max_length[:, i0:i0 + nb], max_length[:, :nb],
                   out=self.max_length[:, i0:i0 + nb])
        self.counts += counts

    def result(self) -> tuple[np.ndarray, ...]:
        return self.max_batch, self.max_length, self.counts


class _Placer:
    """Puts chunk inputs on the compute devices: batch axis sharded, the rest replicated."""

    def __init__(self, devices: list[Any]) -> None:
        self.mesh = None
        if len(devices) > 1:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            self.mesh = Mesh(np.asarray(devices, dtype=object), ("sweep",))
            self._shardings = {
                "batch": NamedSharding(self.mesh, PartitionSpec("sweep")),
                "rows": NamedSharding(self.mesh, PartitionSpec(None, "sweep")),
                "replicated": NamedSharding(self.mesh, PartitionSpec())}
        self.device = devices[0]

    def _put(self, x: np.ndarray, kind: str) -> Any:
        if self.mesh is None:
            return jax.device_put(x, self.device)
        # builds only this process's shards: the same call works across hosts
        return jax.make_array_from_callback(x.shape, self._shardings[kind], lambda idx: x[idx])

    def batch(self, x: np.ndarray) -> Any:
        return self._put(x, "batch")

    def rows(self, x: np.ndarray) -> Any:
        return self._put(x, "rows")

    def replicated(self, x: np.ndarray) -> Any:
        return self._put(np.asarray(x), "replicated")


def _devices(compute_devices: Any) -> list[Any]:
    if compute_devices is None:
        return [jax.devices()[0]]
    if isinstance(compute_devices, jax.sharding.Mesh):
        return list(np.asarray(compute_devices.devices).reshape(-1))
    allowed = "None, a jax.sharding.Mesh, or a sequence of jax devices"
    if isinstance(compute_devices, jax.Device):
        compute_devices = [compute_devices]
    if isinstance(compute_devices, str | bytes) or not isinstance(compute_devices, Iterable):
        raise InputError("compute_devices", compute_devices, allowed)
    devices = list(itertools.islice(compute_devices, 1 << 20))
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise InputError("compute_devices", devices[:4], allowed + " (at least one)")
    return devices


def _host(x: Any) -> np.ndarray:
    """A device array as numpy; across hosts, gathered from every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _pad1(x: np.ndarray, size: int, dtype: Any) -> np.ndarray:
    out = np.zeros(size, dtype)
    out[:x.size] = x
    return out


def _pad2(x: np.ndarray, size: int, dtype: Any, fill: int = 0) -> np.ndarray:
    out = np.full((x.shape[0], size), fill, dtype)
    out[:, :x.shape[1]] = x
    return out


def _ceil_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _floor_pow2(n: int) -> int:
    return 1 << (n.bit_length() - 1)


__all__ = ["DEFAULT_CHUNK_CELLS", "ConfigConstants", "SweepFrontier", "SweepResult",
           "chunk_shape", "config_constants", "sweep", "sweep_frontier"]
