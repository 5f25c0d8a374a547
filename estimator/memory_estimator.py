"""The seed API: Modular MAX's ``MemoryEstimator`` with the same names, parameters and numbers.

Pooled semantics, bit-compatible with MAX 26.7.0 (reference/max-semantics.md): free memory summed
over devices, the full checkpoint as weights, ``int(free · util − static)`` as the KV budget, pages
per data-parallel replica with one null page, speculative slack. One deliberate improvement:
the out-of-memory error suggests a length and a batch that really fit, searched with the uncapped
KV need (MAX searches a need it already capped at the budget, so its suggestions are dead).
``plan()`` is the per-device alternative.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from estimator.kv_params import KVCacheParams, human_bytes
from meshes.validation import InputError

logger = logging.getLogger("kvfit.memory_estimator")

DEFAULT_BATCH_SIZE = 512  # MAX _DEFAULT_BATCH_SIZE (G3/G5)
VIRTUAL_CACHE_BUDGET = 1024**4  # cache budget MAX assumes in virtual-device mode
NEAR_OOM_SCALE = 0.95


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

    @property
    def user_max_length(self) -> bool:
        if self.max_length_is_user_provided is None:
            return self.max_length is not None
        return self.max_length_is_user_provided


@dataclass(frozen=True)
class PipelineConfig:
    """MAX ``PipelineConfig``: runtime limits and the main model's config."""

    model: MAXModelConfig = field(default_factory=MAXModelConfig)
    max_batch_size: int | None = None
    max_batch_input_tokens: int = 8192
    max_batch_total_tokens: int | None = None
    draft_max_length: int | None = None  # the draft model's resolved max length, if any


@dataclass(frozen=True)
class ArchConfig:
    """MAX ``ArchConfigWithKVCache``: the KV geometry and the architecture's max length."""

    kv_params: KVCacheParams
    max_seq_len: int
    requires_max_batch_context_length: bool = False

    def get_kv_params(self) -> KVCacheParams:
        return self.kv_params

    def get_max_seq_len(self) -> int:
        return self.max_seq_len


@dataclass(frozen=True)
class EstimatedPlan:
    """MAX ``MemoryPlan``: what estimate_memory_footprint decided."""

    planned_max_batch_size: int
    footprint: int
    planned_max_length: int | None
    available_cache_memory: int
    planned_max_batch_total_tokens: int | None = None
    warnings: tuple[str, ...] = ()


def _device_free(device: Any) -> tuple[int, int]:
    """(free, total) of a MAX-style (``.stats``) or JAX-style (``memory_stats()``) device."""
    stats = getattr(device, "stats", None)
    if isinstance(stats, dict) and "free_memory" in stats:
        return int(stats["free_memory"]), int(stats.get("total_memory", 0))
    raw = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not raw:
        raise InputError(f"{device}.stats", None, "free_memory/total_memory (MAX) or "
                         "memory_stats() (JAX); this device reports neither")
    limit = int(raw.get("bytes_limit") or raw.get("bytes_reservable_limit") or 0)
    return limit - int(raw.get("bytes_in_use", 0)), limit


class MemoryEstimator:
    """MAX's estimator: pooled free memory, full-checkpoint weights, paged KV per replica."""

    @classmethod
    def free_memory(cls, devices: Sequence[Any]) -> int:
        """Free bytes summed over ``devices``; a total of 0 falls back to total memory."""
        try:
            pairs = [_device_free(d) for d in devices]
        except Exception:
            logger.warning("Unable to estimate memory footprint of model: device stats cannot "
                           "be queried")
            raise
        free = sum(f for f, _ in pairs)
        return free if free else sum(t for _, t in pairs)

    @classmethod
    def static_memory_size(cls, model_weights_size: int, activation_memory_size: int,
                           signal_buffer_size: int = 0) -> int:
        """Weights + activations + P2P signal buffers, in bytes."""
        return model_weights_size + activation_memory_size + signal_buffer_size

    @classmethod
    def available_kv_cache_memory(cls, pipeline_config: PipelineConfig,
                                  model_config: MAXModelConfig, devices: Sequence[Any],
                                  model_weights_size: int, activation_memory_size: int,
                                  signal_buffer_size: int = 0) -> int:
        """``int(free · utilization − static)``: MAX's KV budget (float arithmetic, as MAX)."""
        free = cls.free_memory(devices)
        util = model_config.kv_cache.device_memory_utilization
        static = cls.static_memory_size(model_weights_size, activation_memory_size,
                                        signal_buffer_size)
        return int(free * util - static)

    @classmethod
    def max_supported_sequence_length(cls, pipeline_config: PipelineConfig,
                                      model_config: MAXModelConfig, arch_config: ArchConfig,
                                      devices: Sequence[Any], model_weights_size: int,
                                      activation_memory_size: int, signal_buffer_size: int = 0,
                                      available_cache_memory: int | None = None) -> int | None:
        """Longest single request the KV pool can hold (pages per replica × page size − slack)."""
        if model_config.quantization_encoding is None:
            raise ValueError("quantization_encoding must be provided in model_config")
        memory = available_cache_memory
        if memory is None:
            memory = cls.available_kv_cache_memory(pipeline_config, model_config, devices,
                                                   model_weights_size, activation_memory_size,
                                                   signal_buffer_size)
        return arch_config.get_kv_params().max_seq_len_fitting_in_cache(memory)

    @classmethod
    def estimate_memory_footprint(cls, pipeline_config: PipelineConfig,
                                  model_config: MAXModelConfig, arch_config: ArchConfig,
                                  devices: Sequence[Any], model_weights_size: int,
                                  activation_memory_size: int, signal_buffer_size: int = 0,
                                  arch: Any = None, max_batch_size: int | None = None
                                  ) -> EstimatedPlan:
        """MAX's plan: batch, footprint, max length clamped to the KV capacity, committed KV."""
        params = arch_config.get_kv_params()
        length0 = model_config.max_length
        if length0 is None:
            raise ValueError("max_length is unresolved: build the config through "
                             "PipelineConfig.from_args or set max_length")
        free = cls.free_memory(devices)
        w, a, s = model_weights_size, activation_memory_size, signal_buffer_size
        static = cls.static_memory_size(w, a, s)
        if static > free:
            raise RuntimeError(_static_oom_message(static, free, w, a, s))
        budget = int(free * model_config.kv_cache.device_memory_utilization - static)
        if budget <= 0:
            raise RuntimeError(f"The model {human_bytes(w)}, activations {human_bytes(a)}, and "
                               f"signal buffers {human_bytes(s)} don't leave room for KV cache. "
                               f"{_TRY_SMALLER}")
        single_alloc = [getattr(d, "max_single_alloc_size", None) for d in devices]
        if all(x is not None for x in single_alloc):
            budget = min(budget, sum(single_alloc))
        user_len, user_bs = model_config.user_max_length, max_batch_size is not None
        batch = max_batch_size if user_bs else cls._infer_optimal_batch_size(devices)
        if batch > pipeline_config.max_batch_input_tokens:
            batch = pipeline_config.max_batch_input_tokens
        kv = params.kv_cache_memory_size(budget, batch, length0)
        committed, total, length, warnings = kv, static + kv, length0, []
        if int(total) > free and not user_len:
            found, length, batch = _search_length(params, budget, batch, length0)
            length = length if found else 1
            warnings.append(f"Truncated model's default max_length from {length0} to {length} "
                            "to fit in memory.")
            total = w + params.kv_cache_memory_size(budget, batch, length0)
        if int(total) > int(free):
            raise RuntimeError(_oom_message(params, min(budget, free - static), total, free,
                                            length0, batch, user_bs))
        if int(total) > int(NEAR_OOM_SCALE * free):
            warnings.append("Estimated model and kv cache memory use nears available memory. "
                            "You may experience errors.")
        cap = params.max_seq_len_fitting_in_cache(committed)
        if cap and length > cap:
            warnings.append(f"Clamping max_length from {length} to {cap} due to capacity of KV "
                            "Cache")
            length = cap
        if pipeline_config.draft_max_length is not None:
            length = min(length, pipeline_config.draft_max_length)
        total_tokens = pipeline_config.max_batch_total_tokens
        if total_tokens is None and arch_config.requires_max_batch_context_length:
            total_tokens = length
        for w_text in warnings:
            logger.warning(w_text)
        return EstimatedPlan(batch, int(total), length, committed, total_tokens, tuple(warnings))

    @classmethod
    def _infer_optimal_batch_size(cls, devices: Sequence[Any]) -> int:
        """1 on a single host (CPU) device, else MAX's default of 512."""
        if len(devices) == 1 and getattr(devices[0], "is_host", False):
            return 1
        return DEFAULT_BATCH_SIZE


def _search_length(params: KVCacheParams, budget: int, batch: int,
                   max_length: int) -> tuple[bool, int, int]:
    """MAX's ``_find_valid_max_length``, step for step (its need is capped at the budget, so it
    always 'finds' max_length − 1; kept for bit-compatibility, never used for suggestions)."""
    lo, hi = 1, max_length
    while True:
        length = (lo + hi) // 2
        fits = params.kv_cache_memory_size(budget, batch, length) <= budget
        if lo > hi:
            return False, length, batch
        if hi - lo <= 1:
            return fits, length, batch
        hi, lo = (length - 1, lo) if not fits else (hi, length)


def _longest_fitting_length(params: KVCacheParams, budget: int, batch: int, limit: int) -> int:
    """Largest L ≤ limit whose uncapped need for ``batch`` requests is ≤ budget (0 if none)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if params.uncapped_memory_size(batch, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _largest_fitting_batch(params: KVCacheParams, budget: int, length: int, limit: int) -> int:
    """Largest B ≤ limit with uncapped need(B, length) ≤ budget (0 if none)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if params.uncapped_memory_size(mid, length) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


_TRY_SMALLER = ("Try running a smaller model, using a smaller precision, or using a device with "
                "more memory.")


def _static_oom_message(static: int, free: int, w: int, a: int, s: int) -> str:
    text = f"Model size exceeds available memory ({human_bytes(static)} > {human_bytes(free)}). "
    if a or s:
        text += (f"Model weights: {human_bytes(w)}, Activation memory: {human_bytes(a)}, "
                 f"Signal buffers: {human_bytes(s)}. ")
    return text + _TRY_SMALLER


def _oom_message(params: KVCacheParams, room: int, total: int, free: int, length: int,
                 batch: int, user_bs: bool) -> str:
    """MAX's OOM text, with suggestions that really fit.

    ``room`` = min(KV budget, free − static): a suggestion's uncapped KV need must fit both the
    budget and what static memory leaves of the free memory (the check that raised).
    """
    best_len = _longest_fitting_length(params, room, batch, length)
    best_bs = _largest_fitting_batch(params, room, length, batch) if user_bs else 0
    free_text = f"  / {human_bytes(free)} free" if free else ""
    head = (f"Estimated model and kv cache memory use exceeds available memory "
            f"({human_bytes(total)}{free_text}). Try ")
    options = []
    if best_len:
        options.append(f"reducing --max-length to {best_len} (supports batch size of {batch})")
    if best_bs:
        options.append(f"reducing --max-batch-size to {best_bs} (at --max-length {length})")
    if not options:
        return head + ("reducing --max-length or --max-batch-size, finding a smaller model, or "
                       "using a device with more memory.")
    return head + " or ".join(options) + "."
