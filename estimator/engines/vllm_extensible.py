"""vLLM 0.34's extensible KV cache: the pool sized after warmup and CUDA-graph capture from the
memory measured then (vllm/v1/worker/extensible_kv_cache.py ``measure_kv_cache_bytes``), as
``min(requested − resident, free at start-up − resident − margin) − transient`` with the margin
max(1 GiB, 0.75 × transient) and blocks committed in 2 MiB granules per layer segment; when it is
on (``extensible_cache``), the terms it adds to vLLM's non-KV ones (``extensible_terms``) and the
advice 0.34's KV-cache errors give (``more_memory_hint``). Used by estimator.engines.vllm.
"""

from __future__ import annotations

import re

from estimator.engines.base import GiB
from estimator.engines.non_kv import CONTEXT, CONTEXT_SOURCE, Band, Term
from meshes.validation import InputError

# 0.34's extensible KV cache (vllm/v1/worker/extensible_kv_cache.py): sized after warmup and CUDA-graph
# capture from free memory, less a margin of max(1 GiB, 0.75 × the transient peak) and the transient
# peak itself, committed in 2 MiB granules per layer segment (vllm/utils/extensible_tensor.py)
EXTENSIBLE_FAMILY = "0.34"
MARGIN_FLOOR = {"cuda": 1 * GiB, "rocm": 3 * GiB}  # KV_CACHE_MARGIN_FLOOR_BYTES by platform
MARGIN_FRACTION = 0.75  # KV_CACHE_MARGIN_FRACTION
GRANULE = 2 * 1024 * 1024  # the commit granule: the driver's granularity, floored at 2 MiB
EXTENSIBLE_SOURCE = ("vllm/v1/worker/extensible_kv_cache.py measure_kv_cache_bytes (0.34.0): the transient "
                     "reserve is the profiled peak plus the CUDA-graph estimate (gpu_worker.py "
                     "peak_activation_memory)")


def rocm(device_kind: str) -> bool:
    """An AMD Instinct card (the catalog's "MI300X-192GB", JAX's "AMD Instinct MI300X")."""
    return bool(re.search(r"\bamd\b|instinct|\bmi[1-9]\d\d", device_kind.lower()))


def extensible_terms(terms: list[Term], headroom: bool, context: int | None, floor: int,
                     pre_snapshot: int = 0) -> list[Term]:
    """The terms 0.34's extensible KV cache adds to the resident ones (``non_kv_terms``): the
    transient reserve's CUDA-graph estimate (the graphs themselves are also resident:
    ``peak_activation_memory`` = profiled peak + estimate), and, where the device's headroom binds,
    the CUDA context, the margin max(``floor``: 1 GiB, 3 GiB on ROCm, 0.75 × the transient reserve)
    and ``pre_snapshot``: the communicators set up before the memory snapshot where a measured
    non-torch figure (the increase after it) stands in for the modelled one."""
    act, graph = (next(t for t in terms if t.name == name) for name in ("activation", "cuda_graph"))
    added = [Term("transient_graph_reserve", graph.band, EXTENSIBLE_SOURCE, graph.measured)]
    if headroom:  # terms derived from measured values are measured too
        reserve = act.band + graph.band
        added += [Term("cuda_context", CONTEXT if context is None else Band.exact(context), CONTEXT_SOURCE,
                       context is not None),
                  Term("pre_snapshot_communicators", Band.exact(pre_snapshot), "NCCL and custom all-reduce "
                       "set up before the snapshot (estimator.engines.non_kv non_torch_band, nvls_band)"),
                  Term("margin", Band.of(*(max(floor, int(MARGIN_FRACTION * t))
                                           for t in (reserve.low, reserve.central, reserve.high))),
                       "vllm/v1/worker/extensible_kv_cache.py KV_CACHE_MARGIN_FLOOR_BYTES (1 GiB; ROCm 3), "
                       "KV_CACHE_MARGIN_FRACTION (0.75) × the transient reserve", act.measured and graph.measured)]
    return [t for t in added if t.band.high]


def uses_extensible_cache(version: str, requested: bool | None, pinned: bool) -> bool:
    """Whether 0.34's extensible KV cache sizes the pool (vllm/config/vllm.py
    ``_resolve_extensible_kv_cache``): on by default on CUDA and ROCm, off where kv_cache_memory_bytes
    or num_gpu_blocks_override pins the pool (asking for it then is an error); before 0.34 there is no
    such flag (vLLM would reject ``--enable-extensible-kv-cache`` either way), so setting it is refused."""
    if requested is not None and version != EXTENSIBLE_FAMILY:
        raise InputError("enable_extensible_kv_cache", requested,
                         f"unset for version {version}: the extensible KV cache (and its flag) is new in vLLM 0.34")
    if requested and pinned:
        raise InputError("enable_extensible_kv_cache", requested,
                         "unset or false with kv_cache_memory_bytes or num_gpu_blocks_override: the "
                         "extensible KV cache sizes the pool from measured memory, which they override")
    return version == EXTENSIBLE_FAMILY and requested is not False and not pinned


def committable_bytes(available: int, segments: int) -> int:
    """The part of ``available`` bytes whole blocks can fill when each of ``segments`` segments (one per
    layer of the default layer-outermost layouts) is committed in whole granules: ``blocks_within``
    gives floor(per-segment granules × granule / page) blocks, which this many bytes divide into."""
    if available <= 0:
        return available
    return segments * (available // segments // GRANULE * GRANULE)


def physical_bytes(blocks: int, segments: int, segment_page: int) -> int:
    """Bytes a commit of ``blocks`` maps (``physical_bytes_for``): each segment rounded up to granules."""
    return segments * -(-blocks * segment_page // GRANULE) * GRANULE


def more_memory_hint(extensible: bool, util: float, after_warmup: bool = True) -> str:
    """vLLM 0.34's advice in its KV-cache errors (vllm/v1/core/kv_cache_planning.py
    ``_more_kv_cache_memory_hint``): the reserved capacity is checked first (``after_warmup`` False),
    the size measured after warmup then."""
    if not extensible:
        return ("Try increasing `gpu_memory_utilization` when initializing the engine (this flag also "
                "controls CPU memory reservation on the CPU backend, despite its name).")
    used_by = "the model, its activations, CUDA graphs and warmup" if after_warmup else \
        "the model and its activations"
    graphs = (" CUDA graphs take less with fewer or smaller capture sizes in the compilation config."
              if after_warmup else "")
    if util < 1.0:
        return (f"The KV cache gets what is left after {used_by} within `gpu_memory_utilization`={util}; "
                "increase it (with the extensible KV cache it defaults to 1.0) or decrease `max_model_len` "
                f"or `max_num_seqs`.{graphs}")
    return (f"The extensible KV cache already takes all device memory left after {used_by}; decrease "
            f"`max_model_len` or `max_num_seqs`, or the model needs a device with more memory.{graphs}")
