"""The seed API: Modular MAX's ``MemoryEstimator`` with MAX's names, numbers, errors and log lines.

Ported from Modular MAX 26.7.0 (PyPI wheel, ``site-packages/max/pipelines/lib/memory_estimation.py``
``MemoryEstimator.plan_from_sizes`` and its helpers), word for word where MAX speaks: free memory
pooled over the devices (0 free falls back to total), the full checkpoint as weights,
``int(free · util − static)`` as the KV budget (float arithmetic, as MAX), the per-allocation cap,
the vision-encoder cache reservation, batch inference (512, 1 on one host device, 1 without a KV
cache), the KV size of the chosen KV manager (``estimator.seed.kv_manager``: Jenga by default,
legacy by argument or ``MODULAR_USE_LEGACY_KV_CACHE``), shrink-to-fit, MAX's out-of-memory text
(its suggestions come from a search over a need already capped at the budget, and are kept so),
the KV-capacity and draft clamps and the max-batch-total-tokens default. Log lines go to the
``kvfit.max`` logger (``estimator.seed.log``) and are carried on the returned plan.
``plan()`` (estimator/plan.py) is kvfit's per-device alternative with its own suggestions.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from io import StringIO
from typing import Any

from estimator.seed.kv_manager import kv_cache_memory_size, max_seq_len_fitting_in_cache
from estimator.seed.kv_params import KVCacheParams, human_bytes
from estimator.seed.kv_quant import dtype_size, max_dtype
from estimator.seed.log import collect, emit, logger
from meshes.validation import InputError, check_int, check_number

__all__ = ["ArchConfig", "Architecture", "EstimatedPlan", "KVCacheConfig", "MAXModelConfig",
           "MemoryEstimator", "PipelineConfig", "VisionCachePlan", "human_bytes",
           "is_virtual_device_mode", "logger", "set_virtual_device_count"]

DEFAULT_BATCH_SIZE = 512  # memory_estimation.py _DEFAULT_BATCH_SIZE
VIRTUAL_CACHE_BUDGET = 1024**4  # cache budget MAX assumes in virtual-device mode
NEAR_OOM_SCALE = 0.95  # memory_estimation.py vram_usage_limit_scale
DEFAULT_VISION_CACHE_BLOCK_TOKENS = 128  # pipelines/lib/vision_encoder_cache.py
_virtual_device_count = 0


def set_virtual_device_count(count: int) -> None:
    """MAX ``max.driver.set_virtual_device_count``: > 0 plans for cross-compilation only."""
    global _virtual_device_count
    _virtual_device_count = count


def is_virtual_device_mode() -> bool:
    """MAX ``max.driver.is_virtual_device_mode``: a virtual device count above 0 is set."""
    return _virtual_device_count > 0


_TRY_SMALLER = ("Try running a smaller model, using a smaller precision, or using a device with "
                "more memory.")


@dataclass(frozen=True)
class KVCacheConfig:
    """MAX ``KVCacheConfig``: the knobs of the KV cache."""

    device_memory_utilization: float = 0.9
    kv_cache_page_size: int = 128


@dataclass(frozen=True)
class MAXModelConfig:
    """MAX ``MAXModelConfig``: the model's resolved max length and its KV-cache config."""

    max_length: int | None = None
    max_length_is_user_provided: bool | None = None  # None: user-provided iff max_length is set
    quantization_encoding: str | None = "bfloat16"
    kv_cache: KVCacheConfig = field(default_factory=KVCacheConfig)
    model_name: str = ""

    @property
    def user_max_length(self) -> bool:
        if self.max_length_is_user_provided is None:
            return self.max_length is not None
        return self.max_length_is_user_provided


@dataclass(frozen=True)
class PipelineConfig:
    """MAX ``PipelineConfig`` (its ``runtime`` fields flattened) and the main model's config.

    ``use_legacy_kv_cache``: None reads ``MODULAR_USE_LEGACY_KV_CACHE`` as MAX does.
    """

    model: MAXModelConfig = field(default_factory=MAXModelConfig)
    max_batch_size: int | None = None
    max_batch_input_tokens: int = 8192
    max_batch_total_tokens: int | None = None
    draft_max_length: int | None = None  # the draft model's resolved max length, if any
    vision_cache_utilization: float = 0.05
    is_disaggregated: bool = False
    use_legacy_kv_cache: bool | None = None


@dataclass(frozen=True)
class ArchConfig:
    """MAX ``ArchConfig``: the KV geometry (None: a model without a KV cache) and max length.

    The architecture facts MAX reads off ``SupportedArchitecture`` (``name``,
    ``requires_max_batch_context_length``, the vision-cache hooks) live here too and are used
    when ``estimate_memory_footprint`` gets no ``arch``. ``vision_cache_row_spec`` is
    ``(hidden_size, dtype)`` of one cached vision token; ``vision_cache_entry_bytes > 0`` marks a
    vision tower (MAX ``arch_has_vision_tower``).
    """

    kv_params: KVCacheParams | None
    max_seq_len: int
    requires_max_batch_context_length: bool = False
    name: str = "kvfit"
    vision_cache_entry_bytes: int = 0
    vision_cache_row_spec: tuple[int, str] | None = None

    @property
    def has_kv_cache(self) -> bool:
        return self.kv_params is not None

    def get_kv_params(self) -> KVCacheParams | None:
        return self.kv_params

    def get_max_seq_len(self) -> int:
        return self.max_seq_len


@dataclass(frozen=True)
class Architecture:
    """What MAX's planner reads off ``SupportedArchitecture``: name, total-tokens rule, vision."""

    name: str
    requires_max_batch_context_length: bool = False
    vision_cache_entry_bytes: int = 0
    vision_cache_row_spec: tuple[int, str] | None = None


@dataclass(frozen=True)
class VisionCachePlan:
    """MAX ``VisionCachePlan``: the block-mode vision-encoder cache reserved on each device."""

    bytes_per_device: int
    hidden_size: int
    dtype: str


@dataclass(frozen=True)
class EstimatedPlan:
    """MAX ``MemoryPlan``, plus the lines MAX logged while planning it.

    ``available_cache_memory`` is the committed KV budget (0 for a model without a KV cache,
    None when its device stats could not be read). ``logs`` holds ``(level, message)`` pairs
    in order; ``warnings`` the WARNING messages among them.
    """

    planned_max_batch_size: int
    footprint: int
    planned_max_length: int | None
    available_cache_memory: int | None
    planned_max_batch_total_tokens: int | None = None
    warnings: tuple[str, ...] = ()
    vision_cache_plan: VisionCachePlan | None = None
    logs: tuple[tuple[str, str], ...] = ()


def _stats(device: Any) -> dict:
    """A MAX device's ``stats``, or a JAX device's ``memory_stats()`` in MAX's keys."""
    stats = getattr(device, "stats", None)
    if stats is not None:
        return stats
    raw = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not raw:
        raise InputError(f"{device}.stats", None, "free_memory/total_memory (MAX) or "
                         "memory_stats() (JAX); this device reports neither")
    limit = int(raw.get("bytes_limit") or raw.get("bytes_reservable_limit") or 0)
    return {"free_memory": limit - int(raw.get("bytes_in_use", 0)), "total_memory": limit}


def _kv(arch_config: Any) -> KVCacheParams | None:
    """The KV params of a KV-cache architecture, None for one without a KV cache."""
    if arch_config is None:
        return None
    getter = getattr(arch_config, "get_kv_params", None)
    return getter() if getter is not None else None


_RUNTIME_DEFAULTS = {"max_batch_size": None, "max_batch_input_tokens": 8192,
                     "max_batch_total_tokens": None, "vision_cache_utilization": 0.05,
                     "is_disaggregated": False, "use_legacy_kv_cache": None,
                     "draft_max_length": None}


def _runtime(pipeline_config: Any, name: str) -> Any:
    """A runtime knob of kvfit's flat PipelineConfig, or of a MAX-shaped one (``.runtime.X``)."""
    runtime = getattr(pipeline_config, "runtime", None)
    if runtime is not None and hasattr(runtime, name):
        return getattr(runtime, name)
    return getattr(pipeline_config, name, _RUNTIME_DEFAULTS[name])


def _user_max_length(model_config: Any) -> bool:
    """kvfit's ``user_max_length``, or MAX's ``max_length_is_user_provided`` bit."""
    if hasattr(model_config, "user_max_length"):
        return model_config.user_max_length
    return bool(model_config.max_length_is_user_provided)


def _vision_facts(arch: Any, model_config: Any) -> tuple[int, Any]:
    """(entry bytes, row spec) of ``arch``: kvfit's fields, or MAX's classmethod hooks on
    ``arch.config`` (``estimate_vision_cache_entry_bytes`` / ``get_vision_cache_row_spec``)."""
    entry = getattr(arch, "vision_cache_entry_bytes", None)
    if entry is not None:
        return entry, getattr(arch, "vision_cache_row_spec", None)
    config = getattr(arch, "config", None)
    if not (hasattr(config, "estimate_vision_cache_entry_bytes")
            and hasattr(config, "get_vision_cache_row_spec")):
        return 0, None
    hf = getattr(model_config, "huggingface_config", None)
    entry = config.estimate_vision_cache_entry_bytes(hf)
    return entry, (config.get_vision_cache_row_spec(hf) if entry > 0 else None)


def _arch_facts(arch: Any, arch_config: Any) -> Any:
    """The ``arch`` MAX would read: the given one, else ArchConfig's own facts."""
    return arch if arch is not None else arch_config


def _max_bisect(kv_at: Callable[[int], int], budget: int, lower: int, upper: int) -> tuple[bool, int]:
    """MAX 26.7.0's binary search (memory_estimation.py, ``_find_valid_max_length`` and
    ``_find_valid_batch_size``), step for step: the midpoint's KV size is computed, and logged,
    before the bounds are checked, so the side effects match MAX's call for call."""
    found, inferred = False, upper
    while not found:
        inferred = (lower + upper) // 2
        kv = kv_at(inferred)
        if lower > upper:
            break
        if upper - lower <= 1:
            found = kv <= budget
            break
        if kv > budget:
            upper = inferred - 1
        else:
            lower = inferred
    return found, inferred


def _bytes(name: str, value: Any) -> int:
    """A byte count the caller passes: an int (numpy's too, made a Python int so that 2^62 + 2^62
    does not wrap) ≥ 0; floats, bools, None and negatives are refused here, not deep inside."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(name, value, "a byte count: an integer ≥ 0")
    return check_int(name, int(value), minimum=0, maximum=2**63 - 1)


def _sizes(*named: tuple[str, Any]) -> list[int]:
    return [_bytes(name, value) for name, value in named]


def _utilization(model_config: Any) -> float:
    """``model_config.kv_cache.device_memory_utilization``, a finite number ≥ 0 (MAX takes values
    above 1 too); a string would multiply into a gigabyte-long string, not a budget."""
    value = getattr(getattr(model_config, "kv_cache", None), "device_memory_utilization", None)
    return check_number("kv_cache.device_memory_utilization", value, zero_ok=True)


def _devices(devices: Any) -> Sequence[Any]:
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence) or not devices:
        raise InputError("devices", devices, "a non-empty sequence of devices (MAX devices or JAX devices)")
    return devices


class MemoryEstimator:
    """MAX 26.7.0's planner: pooled free memory, full-checkpoint weights, paged KV per replica.

    The public methods check their byte counts and device list at the boundary (InputError); what
    MAX itself refuses keeps MAX's own error text."""

    # ---- kvfit's public names (MAX G4 names) ----------------------------------------------
    @classmethod
    def free_memory(cls, devices: Sequence[Any]) -> int:
        """Free bytes summed over ``devices``; a total of 0 falls back to total memory."""
        return cls._free_memory(_devices(devices))

    @classmethod
    def static_memory_size(cls, model_weights_size: int, activation_memory_size: int,
                           signal_buffer_size: int = 0) -> int:
        """Weights + activations + P2P signal buffers, in bytes."""
        w, a, sig = _sizes(("model_weights_size", model_weights_size),
                           ("activation_memory_size", activation_memory_size),
                           ("signal_buffer_size", signal_buffer_size))
        return w + a + sig

    @classmethod
    def available_kv_cache_memory(cls, pipeline_config: PipelineConfig,
                                  model_config: MAXModelConfig, devices: Sequence[Any],
                                  model_weights_size: int, activation_memory_size: int,
                                  signal_buffer_size: int = 0) -> int:
        """``int(free · utilization − static)``: MAX's KV budget (float arithmetic, as MAX)."""
        w, a, sig = _sizes(("model_weights_size", model_weights_size),
                           ("activation_memory_size", activation_memory_size),
                           ("signal_buffer_size", signal_buffer_size))
        return cls._available_kv_cache_memory(w, a, model_config, _devices(devices), sig)

    @classmethod
    def max_supported_sequence_length(cls, pipeline_config: PipelineConfig,
                                      model_config: MAXModelConfig, arch_config: ArchConfig,
                                      devices: Sequence[Any], model_weights_size: int,
                                      activation_memory_size: int, signal_buffer_size: int = 0,
                                      available_cache_memory: int | None = None, *,
                                      legacy: bool | None = None) -> int | None:
        """Longest single request the chosen KV manager holds (None without a KV cache)."""
        legacy = _runtime(pipeline_config, "use_legacy_kv_cache") if legacy is None else legacy
        w, a, sig = _sizes(("model_weights_size", model_weights_size),
                           ("activation_memory_size", activation_memory_size),
                           ("signal_buffer_size", signal_buffer_size))
        if available_cache_memory is not None:
            available_cache_memory = _bytes("available_cache_memory", available_cache_memory)
        return cls._max_supported_sequence_length(
            w, a, model_config, _devices(devices), arch_config, sig, available_cache_memory,
            is_di_enabled=_runtime(pipeline_config, "is_disaggregated"), legacy=legacy)

    @classmethod
    def estimate_memory_footprint(cls, pipeline_config: PipelineConfig,
                                  model_config: MAXModelConfig, arch_config: ArchConfig,
                                  devices: Sequence[Any], model_weights_size: int,
                                  activation_memory_size: int, signal_buffer_size: int = 0,
                                  arch: Any = None, max_batch_size: int | None = None, *,
                                  legacy: bool | None = None) -> EstimatedPlan:
        """MAX's plan (``plan_from_sizes``), the draft bound taken from ``pipeline_config``."""
        return cls.plan_from_sizes(pipeline_config, model_config, arch_config, devices,
                                   model_weights_size, activation_memory_size,
                                   signal_buffer_size, arch=arch, max_batch_size=max_batch_size,
                                   draft_max_seq_len=_runtime(pipeline_config, "draft_max_length"),
                                   legacy=legacy)

    # ---- MAX 26.7.0 (memory_estimation.py), same names and parameter order ---------------
    @classmethod
    def plan_from_sizes(cls, pipeline_config: PipelineConfig, model_config: MAXModelConfig,
                        arch_config: ArchConfig, devices: Sequence[Any], model_weights_size: int,
                        activation_memory_size: int, signal_buffer_size: int = 0,
                        arch: Any = None, max_batch_size: int | None = None,
                        draft_max_seq_len: int | None = None, *,
                        legacy: bool | None = None) -> EstimatedPlan:
        """Batch, footprint, max length (clamped to the KV capacity and the draft), committed KV.

        ``max_batch_size`` None falls back to kvfit's ``PipelineConfig.max_batch_size``, and None
        there is inferred. MAX-shaped configs (``pipeline_config.runtime.*``, a model config with
        ``max_length_is_user_provided``, an ``arch`` whose ``config`` has MAX's vision hooks)
        are read as MAX reads them. Raises MAX's ValueError/RuntimeError texts; logs MAX's lines on
        ``kvfit.max`` (also returned in ``logs``; a failing call has logged its lines too).
        """
        model_weights_size, activation_memory_size, signal_buffer_size = _sizes(
            ("model_weights_size", model_weights_size), ("activation_memory_size", activation_memory_size),
            ("signal_buffer_size", signal_buffer_size))
        devices = _devices(devices)
        if max_batch_size is None and isinstance(pipeline_config, PipelineConfig):
            max_batch_size = pipeline_config.max_batch_size
        if legacy is None:
            legacy = _runtime(pipeline_config, "use_legacy_kv_cache")
        with collect() as lines:
            plan = cls._plan_from_sizes(pipeline_config, model_config, arch_config, devices,
                                        model_weights_size, activation_memory_size,
                                        signal_buffer_size, _arch_facts(arch, arch_config),
                                        max_batch_size, draft_max_seq_len, legacy)
        return replace(plan, logs=tuple(lines),
                       warnings=tuple(m for lvl, m in lines if lvl == "WARNING"))

    @classmethod
    def _plan_from_sizes(cls, pipeline_config, model_config, arch_config, devices, w, a, s,
                         arch, max_batch_size, draft_max_seq_len, legacy) -> EstimatedPlan:
        resolved = model_config.max_length
        if resolved is None:
            raise ValueError("max_length is unresolved. Construct the config through "
                             "PipelineConfig.from_args, which runs the architecture's "
                             "sequence-length policy, or set max_length explicitly.")
        if is_virtual_device_mode():
            emit(logging.INFO, "Skipping memory estimation in virtual device mode "
                               "(cross-compilation)")
            length = cls._bounded_by_draft(resolved, draft_max_seq_len)
            return EstimatedPlan(max_batch_size or 1, 0, length, VIRTUAL_CACHE_BUDGET,
                                 cls._resolve_max_batch_total_tokens(pipeline_config, arch,
                                                                     length))
        params = _kv(arch_config)
        try:
            free = cls._free_memory(devices)
        except Exception:
            if params is not None:
                raise
            length = cls._bounded_by_draft(resolved, draft_max_seq_len)
            return EstimatedPlan(max_batch_size or 1, 0, length, None,
                                 cls._resolve_max_batch_total_tokens(pipeline_config, arch,
                                                                     length))
        static = w + a + s
        if static > free:
            text = f"Model size exceeds available memory ({human_bytes(static)} > {human_bytes(free)}). "
            if a > 0 or s > 0:
                text += (f"Model weights: {human_bytes(w)}, Activation memory: {human_bytes(a)}, "
                         f"Signal buffers: {human_bytes(s)}. ")
            raise RuntimeError(text + _TRY_SMALLER)
        total = static
        budget = int(free * _utilization(model_config) - static)
        if budget <= 0:
            raise RuntimeError(f"The model {human_bytes(w)}, activations {human_bytes(a)}, and "
                               f"signal buffers {human_bytes(s)} don't leave room for KV cache. "
                               + _TRY_SMALLER)
        single = [getattr(d, "max_single_alloc_size", None) for d in devices]
        if all(x is not None for x in single):  # JAX devices have no such cap: skipped
            budget = min(budget, cls._max_per_layer_buffer_count(arch_config) * sum(single))
        vision_bytes, vision_plan = cls._reserve_vision_cache_memory(
            pipeline_config, model_config, budget, devices, arch)
        budget -= vision_bytes
        total += vision_bytes

        user_len = _user_max_length(model_config)
        user_bs = max_batch_size is not None
        length = resolved
        if not user_bs:
            max_batch_size = cls._infer_optimal_batch_size(arch_config, devices)
        limit = _runtime(pipeline_config, "max_batch_input_tokens")
        if max_batch_size > limit:
            emit(logging.INFO, f"max_batch_size of {max_batch_size} cannot be larger than "
                               f"max_batch_input_tokens of {limit}, overriding max_batch_size to "
                               f"{limit}")
            max_batch_size = limit
        di = _runtime(pipeline_config, "is_disaggregated")
        kv = cls._calculate_kv_cache_size(arch_config, max_batch_size, budget, resolved,
                                          is_di_enabled=di, legacy=legacy)
        committed = kv
        total += kv
        if int(total) > free and not user_len:
            original = length
            found, inferred, max_batch_size = cls._find_valid_max_length(
                arch_config, budget, user_bs, max_batch_size, devices, length,
                is_di_enabled=di, legacy=legacy)
            if found:
                emit(logging.WARNING, f"Truncated model's default max_length from {original} to "
                                      f"{inferred} to fit in memory.")
                length = inferred
            else:
                length = 1
            kv = cls._calculate_kv_cache_size(arch_config, max_batch_size, budget, resolved,
                                              is_di_enabled=di, legacy=legacy)
            total = w + kv
        if isinstance(free, int | float):
            if int(total) > int(free):
                cls._raise_oom_error(arch_config, user_len, user_bs, max_batch_size, total, free,
                                     budget, devices, length, is_di_enabled=di, legacy=legacy)
            elif int(total) > int(NEAR_OOM_SCALE * free):
                emit(logging.WARNING, "Estimated model and kv cache memory use nears available "
                                      "memory. You may experience errors.")
        cap = cls._max_supported_sequence_length(w, a, model_config, devices, arch_config, s,
                                                 available_cache_memory=committed,
                                                 is_di_enabled=di, legacy=legacy)
        if cap:
            if length is None:
                length = cap
            elif length > cap:
                emit(logging.WARNING, "Clamping max_length from %d to %d due to capacity of KV "
                                      "Cache", length, cap)
                length = cap
        length = cls._bounded_by_draft(length, draft_max_seq_len)
        return EstimatedPlan(max_batch_size, int(total), length, committed,
                             cls._resolve_max_batch_total_tokens(pipeline_config, arch, length),
                             vision_cache_plan=vision_plan)

    @classmethod
    def _free_memory(cls, devices: Sequence[Any]) -> int:
        try:
            free = int(sum(_stats(d)["free_memory"] for d in devices))
            if free == 0:
                return int(sum(_stats(d).get("total_memory", 0) for d in devices))
            return free
        except Exception as e:
            emit(logging.WARNING, "Unable to estimate memory footprint of model, can't query "
                                  "device stats: " + str(e))
            raise

    @classmethod
    def _static_memory_size(cls, model_weights_size: int, activation_memory_size: int,
                            signal_buffer_size: int = 0) -> int:
        return cls.static_memory_size(model_weights_size, activation_memory_size, signal_buffer_size)

    @classmethod
    def _available_kv_cache_memory(cls, model_weights_size: int, activation_memory_size: int,
                                   model_config: MAXModelConfig, devices: Sequence[Any],
                                   signal_buffer_size: int = 0) -> int:
        return int(cls._free_memory(devices) * _utilization(model_config)
                   - cls._static_memory_size(model_weights_size, activation_memory_size,
                                             signal_buffer_size))

    @classmethod
    def _max_supported_sequence_length(cls, model_weights_size: int, activation_memory_size: int,
                                       model_config: MAXModelConfig, devices: Sequence[Any],
                                       arch_config: Any, signal_buffer_size: int = 0,
                                       available_cache_memory: int | None = None,
                                       is_di_enabled: bool = False, *,
                                       legacy: bool | None = None) -> int | None:
        if is_virtual_device_mode():
            emit(logging.INFO, "Skipping memory-based sequence length constraints in virtual "
                               "device mode (cross-compilation)")
            return None
        params = _kv(arch_config)
        if params is None:
            return None
        memory = available_cache_memory
        if memory is None:
            memory = cls._available_kv_cache_memory(model_weights_size, activation_memory_size,
                                                    model_config, devices, signal_buffer_size)
        return max_seq_len_fitting_in_cache(params, memory, is_di_enabled, legacy=legacy)

    @classmethod
    def _max_per_layer_buffer_count(cls, arch_config: Any) -> int:
        """Allocation-cap multiplier: num_layers for a per-layer-buffer pool, else 1."""
        params = _kv(arch_config)
        if params is not None and getattr(params, "per_layer_buffers", False):
            return max(int(getattr(params, "num_layers", 1)), 1)
        return 1

    @classmethod
    def _bounded_by_draft(cls, max_length: int | None, draft_max_seq_len: int | None
                          ) -> int | None:
        if draft_max_seq_len is None or max_length is None or max_length <= draft_max_seq_len:
            return max_length
        emit(logging.INFO, "Clamping max_length from %d to %d (draft model max sequence length)",
             max_length, draft_max_seq_len)
        return draft_max_seq_len

    @classmethod
    def _resolve_max_batch_total_tokens(cls, pipeline_config: PipelineConfig, arch: Any,
                                        max_length: int | None) -> int | None:
        configured = _runtime(pipeline_config, "max_batch_total_tokens")
        if (configured is not None or arch is None
                or not getattr(arch, "requires_max_batch_context_length", False)):
            return configured
        emit(logging.WARNING, "Architecture '%s' requires max-batch-total-tokens to be specified "
                              "but found None. Defaulting to the max sequence length of the "
                              "model: %s", arch.name, max_length)
        return max_length

    @classmethod
    def _calculate_kv_cache_size(cls, arch_config: Any, max_batch_size: int,
                                 available_kv_cache_memory: int, max_seq_len: int, *,
                                 is_di_enabled: bool = False, model_name: str = "",
                                 legacy: bool | None = None) -> int:
        params = _kv(arch_config)
        if params is None:
            return 0
        return kv_cache_memory_size(params, available_kv_cache_memory, max_batch_size,
                                    max_seq_len, is_di_enabled, legacy=legacy)

    @classmethod
    def _find_valid_max_length(cls, arch_config: Any, available_kv_cache_memory: int,
                               user_provided_max_batch_size: bool, max_batch_size: int,
                               devices: Sequence[Any], max_length: int, *,
                               is_di_enabled: bool = False, model_name: str = "",
                               legacy: bool | None = None) -> tuple[bool, int, int]:
        """MAX's binary search over [1, max_length], step for step (one KV sizing per step)."""
        batch = max_batch_size

        def kv_at(length: int) -> int:
            nonlocal batch
            if not user_provided_max_batch_size:
                batch = cls._infer_optimal_batch_size(arch_config, devices)
            return cls._calculate_kv_cache_size(arch_config, batch, available_kv_cache_memory, length,
                                                is_di_enabled=is_di_enabled, legacy=legacy)

        found, inferred = _max_bisect(kv_at, available_kv_cache_memory, 1, max_length)
        return found, inferred, batch

    @classmethod
    def _find_valid_batch_size(cls, available_kv_cache_memory: int, original_max_length: int,
                               user_provided_max_batch_size: bool, max_batch_size: int,
                               arch_config: Any, *, is_di_enabled: bool = False,
                               model_name: str = "", legacy: bool | None = None
                               ) -> tuple[bool, int]:
        """MAX's binary search over [1, batch] at the original length ((False, -1) unless set)."""
        if not user_provided_max_batch_size:
            return False, -1
        return _max_bisect(lambda batch: cls._calculate_kv_cache_size(
            arch_config, batch, available_kv_cache_memory, original_max_length,
            is_di_enabled=is_di_enabled, legacy=legacy), available_kv_cache_memory, 1, max_batch_size)

    @classmethod
    def _raise_oom_error(cls, arch_config: Any, user_provided_max_length: bool,
                         user_provided_max_batch_size: bool, max_batch_size: int,
                         total_size: int, original_free_memory: int,
                         available_kv_cache_memory: int, devices: Sequence[Any], max_length: int,
                         *, is_di_enabled: bool = False, model_name: str = "",
                         legacy: bool | None = None) -> None:
        found_len, length, length_batch = cls._find_valid_max_length(
            arch_config, available_kv_cache_memory, user_provided_max_batch_size, max_batch_size,
            devices, max_length, is_di_enabled=is_di_enabled, legacy=legacy)
        found_bs, batch = cls._find_valid_batch_size(
            available_kv_cache_memory, max_length, user_provided_max_batch_size, max_batch_size,
            arch_config, is_di_enabled=is_di_enabled, legacy=legacy)
        raise RuntimeError(cls._generate_oom_error_message(
            total_size, original_free_memory, user_provided_max_length,
            user_provided_max_batch_size, found_len, found_bs, length, batch, length_batch,
            max_length))

    @classmethod
    def _generate_oom_error_message(cls, total_size: int, original_free_memory: int,
                                    user_provided_max_length: bool,
                                    user_provided_max_batch_size: bool,
                                    found_valid_max_length: bool,
                                    found_valid_max_batch_size: bool, inferred_max_length: int,
                                    inferred_max_batch_size: int,
                                    inferred_max_length_compatible_batch_size: int,
                                    original_max_length: int) -> str:
        """MAX's text (its double space before "/" and stray ")" included)."""
        free_str = (f" / {human_bytes(original_free_memory)} free"
                    if original_free_memory else "")
        msg = StringIO()
        msg.write("Estimated model and kv cache memory use exceeds available memory "
                  f"({human_bytes(total_size)} {free_str}). Try ")
        found_len, found_bs = found_valid_max_length, found_valid_max_batch_size
        length, batch = inferred_max_length, inferred_max_batch_size
        length_batch = inferred_max_length_compatible_batch_size
        if not found_len and not found_bs:
            msg.write("reducing --max-length or --max-batch-size, finding a smaller model, or "
                      "using a device with more memory.")
        elif user_provided_max_length:
            if not user_provided_max_batch_size:
                if found_len:
                    msg.write(f"reducing --max-length to {length} "
                              f"(supports batch size of {length_batch})")
                else:
                    msg.write("reducing --max-length or --max-batch-size")
            else:
                if found_len:
                    msg.write(f"reducing --max-length to {length} and "
                              f"--max-batch-size to {length_batch})")
                if found_bs:
                    if found_len:
                        msg.write(" or ")
                    msg.write(f"reducing --max-batch-size to {batch}")
        elif not user_provided_max_batch_size:
            if found_len:
                msg.write(f"setting --max-length to {length} and "
                          f"--max-batch-size to {length_batch})")
            if found_bs:
                if found_len:
                    msg.write(" or ")
                msg.write(f"setting --max-batch-size to {batch}")
        else:
            if found_bs:
                msg.write(f"reducing --max-batch-size to {batch}")
            if found_len:
                if found_bs:
                    msg.write(" or ")
                msg.write(f"setting --max-length to {length} "
                          f"(currently defaulted to {original_max_length})")
        msg.write(".")
        return msg.getvalue()

    @classmethod
    def _reserve_vision_cache_memory(cls, pipeline_config: PipelineConfig,
                                     model_config: MAXModelConfig, available_memory: int,
                                     devices: Sequence[Any], arch: Any = None
                                     ) -> tuple[int, VisionCachePlan | None]:
        """Vision-encoder cache bytes to take off the KV budget (0 for non-vision models)."""
        if _runtime(pipeline_config, "vision_cache_utilization") == 0:
            return 0, None
        if arch is None:
            return 0, None
        entry, row_spec = _vision_facts(arch, model_config)
        if not entry > 0:
            return 0, None
        if row_spec is None:
            emit(logging.WARNING, "%s's arch config reports a per-entry estimate but no row spec "
                                  "(get_vision_cache_row_spec); no vision encoder cache will be "
                                  "reserved.", arch.name)
            return 0, None
        return cls._reserve_vision_cache_blocks(pipeline_config, row_spec, available_memory,
                                                len(devices))

    @classmethod
    def _reserve_vision_cache_blocks(cls, pipeline_config: PipelineConfig,
                                     row_spec: tuple[int, str], available_memory: int,
                                     n_devices: int) -> tuple[int, VisionCachePlan]:
        """Whole 128-token blocks of ``util · budget``, sharded over the devices (MAX rules)."""
        hidden_size, dtype = row_spec
        dtype = max_dtype(dtype, "vision cache dtype")
        util = _runtime(pipeline_config, "vision_cache_utilization")
        requested = int(available_memory * util) // n_devices
        block = DEFAULT_VISION_CACHE_BLOCK_TOKENS * hidden_size * dtype_size(dtype)
        num_blocks = requested // block // n_devices * n_devices
        if num_blocks == 0:
            raise ValueError(
                f"vision_cache_utilization={util} reserves {human_bytes(requested)} of the KV "
                f"cache pool, too small to fit one {DEFAULT_VISION_CACHE_BLOCK_TOKENS}-token block "
                f"({human_bytes(block)}) per device. Increase the fraction or set 0 to disable "
                "the vision encoder cache.")
        total = num_blocks * block
        emit(logging.INFO, "Vision encoder cache: %d blocks x %d tokens sharded across %d "
                           "device(s), %s reserved (%s per device).",
             num_blocks, DEFAULT_VISION_CACHE_BLOCK_TOKENS, n_devices, human_bytes(total),
             human_bytes(total // n_devices))
        return total, VisionCachePlan(total // n_devices, hidden_size, dtype)

    @classmethod
    def _infer_optimal_batch_size(cls, arch_config: Any, devices: Sequence[Any]) -> int:
        """1 without a KV cache or on a single host device, else MAX's default of 512."""
        if _kv(arch_config) is None:
            return 1
        if len(devices) == 1 and getattr(devices[0], "is_host", False):
            return 1
        return DEFAULT_BATCH_SIZE
