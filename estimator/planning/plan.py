"""plan(): the native, per-device memory plan of a model on a mesh under a layout.

Departs from MAX's pooled estimator on purpose (modular/modular issues #6254, #6268, #7145): every device is
charged its own weight shard, its own activations (replicated terms count on every device that
holds them, MAX issue #6268) and its own signal buffers; a page exists only if every device of a
replica has room for its slice, so pages per replica is the minimum over devices.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from estimator.core.geometry import Geometry, StageGeometry, geometry
from estimator.core.kv_spec import NO_LIMIT
from estimator.core.layout import Layout
from estimator.core.paging import SPEC_METHODS, pages_that_fit, scaled_budget, speculative_slack
from estimator.model.resolve import resolve_model
from estimator.model.spec import ModelSpec
from estimator.planning.activations import analytic_activation_bytes
from estimator.planning.signals import signal_buffer_bytes
from meshes.live import budget_explanation
from meshes.mesh import DeviceMesh
from meshes.validation import InputError, check_choice, check_fraction, check_int, check_page_size

DEFAULT_MAX_BATCH_INPUT_TOKENS = 8192


@dataclass(frozen=True)
class DeviceRow:
    """What one device holds under the plan, in bytes."""

    device: str
    replica: int
    stage: int
    tensor_rank: int
    bytes_limit: int
    bytes_in_use: int  # already used before the plan (another process, earlier arrays)
    budget_bytes: int  # floor((limit − in use) · utilization)
    weights_bytes: int
    activation_bytes: int
    signal_bytes: int
    reserve_bytes: int
    kv_budget_bytes: int  # budget − weights − activations − signals − reserve
    page_bytes: int
    pages_fit: int  # pages this device alone could hold
    kv_pool_bytes: int  # pages_per_replica · page_bytes
    free_bytes: int  # left unused on the device after everything planned


@dataclass(frozen=True)
class MemoryPlan:
    """The result of plan(): per-device rows and what they allow."""

    model: str
    mesh: str
    layout: str
    kv_cache_dtype: str
    page_size: int
    device_memory_utilization: float
    devices: tuple[DeviceRow, ...]
    num_replicas: int
    pages_per_replica: int
    reserved_pages: int  # the null page each replica keeps back
    speculative_slack_tokens: int
    bytes_per_block: int  # one page summed over a replica's devices
    kv_bytes_per_token_per_replica: int
    max_supported_sequence_length: int
    requested_max_length: int | None
    planned_max_length: int
    max_batch_size: int  # requests of planned_max_length that fit across all replicas
    requested_max_batch_size: int | None
    fits: bool
    tightest_device: str
    waste_bytes: int  # KV bytes per device spent on replicated heads (worst device)
    warnings: tuple[str, ...]
    suggestions: tuple[str, ...]
    budget_note: str = ""  # which memory budget the plan used per device, and why (meshes.live)

    @property
    def usable_pages_per_replica(self) -> int:
        return max(self.pages_per_replica - self.reserved_pages, 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (ints stay exact)."""
        out = asdict(self)
        out["devices"] = [asdict(r) for r in self.devices]
        out["warnings"], out["suggestions"] = list(self.warnings), list(self.suggestions)
        out["usable_pages_per_replica"] = self.usable_pages_per_replica
        return out


def plan(model: ModelSpec | str, mesh: DeviceMesh | str, layout: Layout | str | None = None, *,
         kv_cache_dtype: str | None = None, page_size: int = 128,
         device_memory_utilization: float = 0.9, max_length: int | None = None,
         max_batch_size: int | None = None,
         max_batch_input_tokens: int = DEFAULT_MAX_BATCH_INPUT_TOKENS,
         activation_bytes: int | None = None, signal_bytes: int | None = None,
         runtime_reserve_bytes: int = 0, num_draft_tokens: int = 0,
         speculative_method: str = "eagle", reserve_null_page: bool = True,
         activations: str | ActivationModel = "analytic", kv_scale_block: int | None = None,
         include_mtp: bool | None = None,
         weights: str | os.PathLike[str] | Mapping[int, int] | None = None,
         xla_options: Mapping[str, Any] | None = None) -> MemoryPlan:
    """Plan the KV pool of ``model`` on ``mesh`` under ``layout``, device by device.

    ``activation_bytes`` / ``signal_bytes`` are per device; left as None they come from the
    activation model ``activations`` — "analytic", "xla" (compile the reference prefill and
    decode steps on the mesh and read XLA's temp bytes), or any ActivationModel callable (the
    extension point: plan() imports no compiler itself) — and from MAX's signal-buffer size (GPU
    tensor groups only). ``kv_scale_block`` gives 8-bit caches one fp32 scale per that
    many values of each head; ``include_mtp`` loads the MTP layers (default: when speculating
    with ``speculative_method="mtp"``). ``weights``: a safetensors checkpoint (folder, index.json
    or file; headers only are read) whose tensors, split by the default partition rules, are
    charged to each device instead of the analytic weights — or ``{stage: bytes per device}``.
    ``xla_options`` go to estimator.xla.xla_activation_bytes (e.g. ``allow_cpu_proxy=True``).

    What a serving engine would allocate instead is ``estimator.engine_plan(model, mesh, layout,
    engine="vllm", **its_own_knobs)`` (estimator.engines): a separate function with the engine's
    own knobs, so plan() always returns a MemoryPlan.
    """
    model = resolve_model(model)
    if not isinstance(mesh, DeviceMesh | str):
        raise InputError("mesh", mesh, "a DeviceMesh or a mesh preset such as '8xH100-80GB'")
    if layout is not None and not isinstance(layout, Layout | str):
        raise InputError("layout", layout, "a Layout or layout text such as 'tp8' or 'dp2xtp4'")
    mesh = DeviceMesh.from_preset(mesh) if isinstance(mesh, str) else mesh
    layout = Layout.resolve(layout, mesh)
    if layout.expert > 1 and not model.is_moe:
        raise InputError("expert_parallel_size", layout.expert, f"1 for {model.name}, a dense model")
    check_choice("speculative_method", speculative_method, SPEC_METHODS)
    _check_types(reserve_null_page=reserve_null_page, include_mtp=include_mtp, kv_scale_block=kv_scale_block,
                 weights=weights, xla_options=xla_options)
    util = check_fraction("device_memory_utilization", device_memory_utilization)
    tokens = check_int("max_batch_input_tokens", max_batch_input_tokens, maximum=2**31)  # one prefill chunk
    reserve = check_int("runtime_reserve_bytes", runtime_reserve_bytes, minimum=0)
    check_int("num_draft_tokens", num_draft_tokens, minimum=0, maximum=2**20)
    if max_length is not None:
        max_length = check_int("max_length", max_length, maximum=2**40)
    if max_batch_size is not None:
        max_batch_size = check_int("max_batch_size", max_batch_size, maximum=2**31 - 1)
    mtp = loads_mtp_layers(include_mtp, speculative_method, num_draft_tokens)
    check_page_size(page_size, mesh.platform, mla=model.is_mla)
    geom = geometry(model, layout, kv_cache_dtype=kv_cache_dtype, page_size=page_size,
                    kv_scale_block=kv_scale_block, include_mtp=mtp)
    stage_weights, weight_notes = _stage_weights(weights, model, layout, geom)

    sampler_rows = min(max_batch_size or 512, tokens)
    if activation_bytes is not None:
        act = check_int("activation_bytes", activation_bytes, minimum=0)
    else:
        model_fn = activation_model(activations)
        act = check_int("activations", model_fn(geom, mesh, prefill_tokens=tokens,
                                                 decode_batch=max_batch_size or sampler_rows,
                                                 sampler_rows=sampler_rows, **(xla_options or {})),
                        minimum=0)
    sig = (signal_buffer_bytes(mesh.platform, layout.tensor) if signal_bytes is None
           else check_int("signal_bytes", signal_bytes, minimum=0))

    budgets = []
    for i, stats in enumerate(mesh.stats):
        stage = geom.stages[layout.coordinates(i)[1]]
        budget = scaled_budget(stats.free, util)
        kv_budget = budget - stage_weights[stage.stage] - act - sig - reserve
        fit = pages_that_fit(kv_budget, stage.page_bytes) if stage.page_bytes else None
        budgets.append((budget, kv_budget, fit))
    holding = [i for i, b in enumerate(budgets) if b[2] is not None]
    tight = min(holding, key=lambda i: budgets[i][2]) if holding else 0
    pages = budgets[tight][2] or 0  # one pool size for every device, as engines allocate it

    rows = []
    for i, (stats, (budget, kv_budget, fit)) in enumerate(zip(mesh.stats, budgets, strict=True)):
        replica, stage_index, rank = layout.coordinates(i)
        stage = geom.stages[stage_index]
        pool = pages * stage.page_bytes
        static = stage_weights[stage_index] + act + sig + reserve
        rows.append(DeviceRow(str(mesh.devices[i]), replica, stage_index, rank, stats.bytes_limit,
                              stats.bytes_in_use, budget, stage_weights[stage_index], act, sig, reserve,
                              kv_budget, stage.page_bytes, fit or 0, pool,
                              stats.free - static - pool))
    result = _conclude(model, mesh, layout, geom, util, tuple(rows), pages, tight, max_length,
                       max_batch_size, speculative_slack(num_draft_tokens, speculative_method),
                       int(reserve_null_page))
    return replace(result, warnings=(*result.warnings, *weight_notes)) if weight_notes else result


def _check_types(*, reserve_null_page: object, include_mtp: object, kv_scale_block: object, weights: object,
                 xla_options: object) -> None:
    """The options whose type alone can be wrong, refused before any work."""
    if not isinstance(reserve_null_page, bool):
        raise InputError("reserve_null_page", reserve_null_page, "True or False")
    if include_mtp is not None and not isinstance(include_mtp, bool):
        raise InputError("include_mtp", include_mtp, "True, False or None (when speculating with mtp)")
    if kv_scale_block is not None:
        check_int("kv_scale_block", kv_scale_block, maximum=2**20)
    if weights is not None and not isinstance(weights, str | os.PathLike | Mapping):
        raise InputError("weights", weights, "a safetensors checkpoint path or {stage: bytes per device}")
    if isinstance(weights, str | os.PathLike) and not os.fspath(weights).strip():
        raise InputError("weights", weights, "a safetensors checkpoint path (not empty: '' would read the "
                         "current folder)")
    if xla_options is not None and not isinstance(xla_options, Mapping):
        raise InputError("xla_options", xla_options, "a mapping of estimator.xla options, e.g. "
                         "{'allow_cpu_proxy': True}")


class ActivationModel(Protocol):
    """Per-device activation bytes of one prefill chunk and one decode batch under ``geom``."""

    def __call__(self, geom: Geometry, mesh: DeviceMesh, *, prefill_tokens: int, decode_batch: int,
                 sampler_rows: int, **options: Any) -> int: ...


def _analytic(geom: Geometry, mesh: DeviceMesh, *, prefill_tokens: int, decode_batch: int,
              sampler_rows: int, **options: Any) -> int:
    """The default: estimator.planning.activations' analytic peak (no options)."""
    if options:
        raise InputError("xla_options", dict(options), "empty with activations='analytic'")
    return analytic_activation_bytes(geom, prefill_tokens, sampler_rows)


def _xla(geom: Geometry, mesh: DeviceMesh, *, prefill_tokens: int, decode_batch: int,
         sampler_rows: int, **options: Any) -> int:
    """XLA's own figure: compiles kvfit's reference decoder (imports jax and flax on first use)."""
    from estimator.xla import xla_activation_bytes

    return xla_activation_bytes(geom, mesh, prefill_tokens=prefill_tokens, decode_batch=decode_batch,
                                **options)


ACTIVATION_MODELS: dict[str, ActivationModel] = {"analytic": _analytic, "xla": _xla}


def activation_model(activations: str | ActivationModel) -> ActivationModel:
    """The activation model named ``activations`` (ACTIVATION_MODELS), or the callable given."""
    if callable(activations):
        return activations
    return ACTIVATION_MODELS[check_choice("activations", activations, tuple(ACTIVATION_MODELS))]


def _stage_weights(weights: str | os.PathLike[str] | Mapping[int, int] | None, model: ModelSpec,
                   layout: Layout, geom: Geometry) -> tuple[dict[int, int], list[str]]:
    """Weight bytes per device of each stage: analytic, given, or from a checkpoint's headers."""
    analytic = {s.stage: s.weight_bytes for s in geom.stages}
    if weights is None:
        return analytic, []
    if isinstance(weights, Mapping):
        got = {check_int("weights stage", k, minimum=0, maximum=2**20): check_int(f"weights[{k}]", v, minimum=0)
               for k, v in weights.items()}
        if set(got) != set(analytic):
            raise InputError("weights", sorted(got), f"bytes per device for stages {sorted(analytic)}")
        source, notes = "the given table", []
    else:
        from estimator.core.partition_rules import weight_bytes_per_stage
        from estimator.model.checkpoint import read_checkpoint  # reads headers only; imports nothing heavy

        ckpt = read_checkpoint(weights)
        got = weight_bytes_per_stage(ckpt.tensors, model, layout)
        source, notes = f"checkpoint {ckpt.path}", list(ckpt.warnings)
    if got != analytic:
        worst = max(got, key=lambda s: abs(got[s] - analytic[s]))
        notes.append(f"weights from {source}: {got[worst]:,} B per device on stage {worst} "
                     f"(the analytic count for {model.name} is {analytic[worst]:,} B)")
    return got, notes


def loads_mtp_layers(include_mtp: bool | None, speculative_method: str, num_draft_tokens: int) -> bool:
    """Whether the MTP layers are loaded: as asked, else when speculating with ``mtp``."""
    return include_mtp if include_mtp is not None else (speculative_method == "mtp" and num_draft_tokens > 0)


def length_cap(stages: Iterable[StageGeometry], usable: int, slack: int, max_position_embeddings: int) -> int:
    """max_supported_sequence_length at ``usable`` pages per replica: the tightest stage's longest
    single request, or the model's context limit where no stage limits the length (and a page fits)."""
    caps = [c for c in _stage_limits(stages, usable, slack) if c is not None]
    return min(caps) if caps else (max_position_embeddings if usable else 0)


def _stage_limits(stages: Iterable[StageGeometry], usable: int, slack: int) -> list[int | None]:
    """Longest single request each stage's pool allows (None: no length limit)."""
    caps = []
    for stage in stages:
        if not stage.page_bytes:
            caps.append(None)
            continue
        most = stage.pool.max_tokens(usable)
        caps.append(None if most >= NO_LIMIT else max(most - slack, 0))
    return caps


def _batch_at(geom: Geometry, usable: int, length: int, slack: int) -> int:
    """Requests of ``length`` tokens one replica holds: the tightest stage decides."""
    fits = [usable // need for s in geom.stages if s.page_bytes
            and (need := s.pool.pages(length + slack)) > 0]
    return min(fits) if fits else 0


def _longest_at(geom: Geometry, usable: int, batch: int, slack: int, ceiling: int) -> int:
    """Longest length such that ``batch`` requests fit in one replica's ``usable`` pages."""
    caps = [c for c in _stage_limits(geom.stages, usable // batch, slack) if c is not None]
    return min([*caps, ceiling])


def _conclude(model: ModelSpec, mesh: DeviceMesh, layout: Layout, geom: Geometry, util: float,
              rows: tuple[DeviceRow, ...], pages: int, tight: int, max_length: int | None,
              max_batch_size: int | None, slack: int, reserved: int) -> MemoryPlan:
    """Turn per-device page counts into lengths, batches, a verdict, warnings and suggestions."""
    usable = max(pages - reserved, 0)
    cap = length_cap(geom.stages, usable, slack, model.max_position_embeddings)
    wanted = max_length if max_length is not None else model.max_position_embeddings
    planned = min(wanted, cap)
    per_replica = _batch_at(geom, usable, planned, slack) if planned else 0
    total_batch = per_replica * layout.data
    warnings, suggestions = [], []
    fits = usable > 0 and cap > 0
    if not fits:
        worst = rows[tight]
        warnings.append(f"no KV page fits on {worst.device}: budget {worst.budget_bytes:,} B "
                        f"leaves {worst.kv_budget_bytes:,} B for pages of {worst.page_bytes:,} B")
        short = (reserved + 1) * worst.page_bytes - worst.kv_budget_bytes
        suggestions.append(
            f"{worst.device} is {short:,} B short of its weights ({worst.weights_bytes:,} B), activations, "
            f"signal buffers and {reserved + 1} page(s): spread the weights over more devices (a larger "
            f"--tensor-parallel-size or --pipeline-parallel-size, or more devices: kvfit fit --model "
            f"{model.name}), quantise them, or raise --device-memory-utilization")
    if max_length is not None and max_length > cap:
        fits = False
        if cap > 0:
            suggestions.append(f"reduce --max-length to {cap} (the longest one request can be)")
    elif max_length is None and wanted > cap and cap > 0:
        warnings.append(f"max_length clamped from {wanted} to {cap} by KV-cache capacity")
    if max_length is not None and max_length > model.max_position_embeddings:
        warnings.append(f"max_length {max_length:,} is beyond {model.name}'s context limit "
                        f"(max_position_embeddings = {model.max_position_embeddings:,}): engines refuse it "
                        "without a RoPE-scaling override, and quality past it is not the model's")
    if max_batch_size is not None and fits:
        need_per_replica = -(-max_batch_size // layout.data)
        if need_per_replica > per_replica:
            fits = False
            longest = _longest_at(geom, usable, need_per_replica, slack, wanted)
            if longest > 0:
                suggestions.append(f"reduce --max-length to {longest} to serve "
                                   f"{max_batch_size} requests at once")
            suggestions.append(f"reduce --max-batch-size to {total_batch} at length {planned}")
    waste = 0
    if geom.replication > 1:
        what = ("the MLA latent cache is stored on every tensor shard" if model.is_mla else
                f"{model.num_kv_heads} KV heads over tensor_parallel_size={layout.tensor}: each head is "
                "stored")
        if any(s.state_bytes for s in geom.stages):  # recurrent state shares the pool, unreplicated
            warnings.append(f"{what} {geom.replication}× (the attention pages of each device's pool)")
        else:
            waste = max(r.kv_pool_bytes for r in rows) * (geom.replication - 1) // geom.replication
            warnings.append(f"{what} {geom.replication}× — {waste:,} B of each device's KV pool holds "
                            "copies")
    frees = [r.bytes_limit - r.bytes_in_use for r in rows]
    if len(mesh.device_kinds) > 1:
        warnings.append(f"mixed device kinds {', '.join(mesh.device_kinds)}: planned per device, "
                        "the smallest sets the page count")
    elif max(frees) - min(frees) > 0.01 * max(r.bytes_limit for r in rows):
        warnings.append(f"devices differ in free memory ({min(frees):,} … {max(frees):,} B): planned per "
                        f"device; {rows[tight].device} sets the page count")
    return MemoryPlan(
        model=model.name, mesh=mesh.describe(), layout=layout.name,
        kv_cache_dtype=geom.kv_cache_dtype, page_size=geom.page_size, device_memory_utilization=util,
        devices=rows, num_replicas=layout.data, pages_per_replica=pages, reserved_pages=reserved,
        speculative_slack_tokens=slack, bytes_per_block=geom.bytes_per_block,
        kv_bytes_per_token_per_replica=sum(s.kv_bytes_per_token for s in geom.stages) * layout.tensor,
        max_supported_sequence_length=cap, requested_max_length=max_length,
        planned_max_length=planned, max_batch_size=total_batch,
        requested_max_batch_size=max_batch_size, fits=fits, tightest_device=rows[tight].device,
        waste_bytes=waste, warnings=tuple(warnings), suggestions=tuple(suggestions),
        budget_note=budget_explanation(mesh.devices, mesh.stats))


__all__ = ["ACTIVATION_MODELS", "ActivationModel", "DeviceRow", "MemoryPlan", "activation_model", "plan"]
