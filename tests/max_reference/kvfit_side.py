"""kvfit's answers to ``max_oracle``'s calls, in the oracle's response shape.

``run(fn, kwargs)`` builds kvfit's seed-API objects from the same keywords ``max_oracle`` turns into
MAX objects and returns ``{"ok": True, "result": ..., "logs": [[level, msg], ...]}`` or
``{"ok": False, "type": ..., "message": ..., "logs": [...]}`` — so a test compares the two dicts.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import SimpleNamespace

from estimator.seed.jenga import plan_jenga_geometry
from estimator.seed.kv_manager import kv_cache_memory_size, max_seq_len_fitting_in_cache
from estimator.seed.kv_params import (
    KVCacheParams,
    KVCacheQuantizationConfig,
    compute_max_seq_len_fitting_in_cache,
    compute_num_device_blocks,
    estimated_memory_size,
)
from estimator.seed.log import collect
from estimator.seed.memory_estimator import (
    ArchConfig,
    Architecture,
    KVCacheConfig,
    MAXModelConfig,
    MemoryEstimator,
    PipelineConfig,
    set_virtual_device_count,
)

GEOMETRY_KEYS = ("n_kv_heads", "head_dim", "num_layers", "dtype", "page_size", "n_devices", "dp",
                 "is_mla", "num_q_heads", "allow_replication", "num_draft_tokens",
                 "speculative_method", "quant_scale_dtype", "quant_granularity", "window_size",
                 "enable_prefix_caching", "device_kind", "slots_per_page", "per_layer_buffers",
                 "kv_connector")


def split(kwargs: dict) -> tuple[dict, dict]:
    geo = {k: v for k, v in kwargs.items() if k in GEOMETRY_KEYS}
    return geo, {k: v for k, v in kwargs.items() if k not in GEOMETRY_KEYS}


def params(g: dict) -> KVCacheParams:
    """kvfit's KVCacheParams for a ``max_oracle`` geometry."""
    quant = None
    if g.get("quant_scale_dtype") is not None:
        quant = KVCacheQuantizationConfig(g["quant_scale_dtype"], g.get("quant_granularity", 128))
    return KVCacheParams(
        g["dtype"], g.get("n_kv_heads") or 0, g["head_dim"], g["num_layers"],
        page_size=g.get("page_size", 128), n_devices=g.get("n_devices", 1),
        data_parallel_degree=g.get("dp", 1), is_mla=g.get("is_mla", False),
        num_q_heads=g.get("num_q_heads"), allow_kv_head_replication=g.get("allow_replication", False),
        num_draft_tokens=g.get("num_draft_tokens", 0), speculative_method=g.get("speculative_method"),
        kvcache_quant_config=quant, window_size=g.get("window_size"),
        slots_per_page=g.get("slots_per_page"), enable_prefix_caching=g.get("enable_prefix_caching", False),
        per_layer_buffers=g.get("per_layer_buffers", False), kv_connector=g.get("kv_connector", "null"))


@contextmanager
def legacy_env(legacy):
    """A raw string is put in MODULAR_USE_LEGACY_KV_CACHE and kvfit reads it (legacy=None)."""
    if not isinstance(legacy, str):
        yield legacy
        return
    old = os.environ.get("MODULAR_USE_LEGACY_KV_CACHE")
    os.environ["MODULAR_USE_LEGACY_KV_CACHE"] = legacy
    try:
        yield None
    finally:
        if old is None:
            os.environ.pop("MODULAR_USE_LEGACY_KV_CACHE", None)
        else:
            os.environ["MODULAR_USE_LEGACY_KV_CACHE"] = old


class Device:
    """What MAX's MemoryEstimator reads off a driver device."""

    def __init__(self, free: int, total: int, single: int, host: bool) -> None:
        self.stats = {"free_memory": free, "total_memory": total}
        self.is_host = host
        self.max_single_alloc_size = single


def _info(p: KVCacheParams) -> dict:
    getters = {
        "bytes_per_block": lambda: p.bytes_per_block,
        "bytes_per_value_block": lambda: p.bytes_per_value_block,
        "bytes_per_scale_block": lambda: p.bytes_per_scale_block,
        "tensor_parallel_degree": lambda: p.tensor_parallel_degree,
        "n_kv_heads_per_device": lambda: p.n_kv_heads_per_device,
        "kv_dim": lambda: p.kv_dim,
        "shape_per_block": lambda: p.shape_per_block,
        "shape_per_scale_block": lambda: p.shape_per_scale_block,
        "replicates_kv_across_tp": lambda: p.replicates_kv_across_tp,
        "quantized_kv_cache": lambda: p.quantized_kv_cache,
        "is_nvfp4_kv_cache": lambda: p.is_nvfp4_kv_cache,
        "storage_head_dim": lambda: p.storage_head_dim,
        "kv_cache_scale_dtype": lambda: p.kv_cache_scale_dtype,
        "row_bytes": lambda: p.row_bytes,
        "scale_row_bytes": lambda: p.scale_row_bytes,
        "num_draft_tokens_per_step": lambda: p.num_draft_tokens_per_step,
        "leaves": lambda: {k: {"bytes_per_page": v.bytes_per_page, "row_bytes": v.row_bytes,
                               "full": v.is_full} for k, v in p.leaves().items()},
        "spec_slack": lambda: p.spec_decode_cache_slack,
    }
    out = {}
    for key, get in getters.items():
        try:
            out[key] = ["ok", get()]
        except Exception as e:
            out[key] = [type(e).__name__, str(e)]
    return out


def _footprint(kw: dict) -> dict:
    g, o = split(kw)
    has_kv = o.get("has_kv_cache", True)
    p = params(g) if has_kv else None
    max_length = o["max_length"]
    entry = o.get("vision_entry_bytes", 0)
    row = o.get("vision_row_spec")
    row = None if row is None else (row[0], row[1])
    name = o.get("arch_name", "kvfit_stub")
    requires = o["requires_max_batch_context_length"]
    style = (o["weights"] + (max_length or 0)) % 3
    if style == 2:
        return _footprint_max_shaped(o, g, p, max_length, entry, row, name, requires)
    if o.get("with_arch", True):
        # alternate the two ways kvfit takes architecture facts: an explicit arch, or ArchConfig's
        if style == 1:
            arch_config = ArchConfig(p, max_length, requires, name, entry, row)
            arch = None
        else:
            arch_config = ArchConfig(p, max_length)
            arch = Architecture(name, requires, entry, row)
    else:
        arch_config, arch = ArchConfig(p, max_length), None
    devices = _devices(o, g)
    with legacy_env(o["legacy"]) as legacy:
        model = MAXModelConfig(max_length=max_length,
                               max_length_is_user_provided=o["max_length_user_provided"],
                               kv_cache=KVCacheConfig(o["utilization"]))
        pipeline = PipelineConfig(model, max_batch_input_tokens=o["max_batch_input_tokens"],
                                  max_batch_total_tokens=o["max_batch_total_tokens"],
                                  vision_cache_utilization=o.get("vision_cache_utilization", 0.05),
                                  is_disaggregated=o.get("is_disaggregated", False),
                                  use_legacy_kv_cache=legacy)
        plan = MemoryEstimator.plan_from_sizes(
            pipeline, model, arch_config, devices, o["weights"], o["activations"], o["signal"],
            arch=arch, max_batch_size=o["max_batch_size"], draft_max_seq_len=o["draft_max_seq_len"])
    return _result(plan)


def _devices(o: dict, g: dict) -> list[Device]:
    free = o["free_memory_per_device"]
    total = o["total_memory_per_device"] or list(free)
    single = o["max_single_alloc_size_per_device"] or list(total)
    host = g.get("device_kind", "gpu") == "cpu"
    devices = [Device(free[i], total[i], single[i], host) for i in range(len(free))]
    if o.get("device_stats") is not None:
        for d in devices:
            d.stats = dict(o["device_stats"])
    return devices


def _footprint_max_shaped(o, g, p, max_length, entry, row, name, requires) -> dict:
    """The same plan through MAX-shaped stubs (``runtime.*``, MAX's vision hooks on
    ``arch.config``, a model config with ``max_length_is_user_provided``)."""

    class Config:
        def get_kv_params(self):
            return p

        @classmethod
        def estimate_vision_cache_entry_bytes(cls, hf):
            return entry

        @classmethod
        def get_vision_cache_row_spec(cls, hf):
            return row

    class NoKV:
        pass

    arch_config = Config() if p is not None else NoKV()
    arch = SimpleNamespace(name=name, config=Config if entry else NoKV,
                           requires_max_batch_context_length=requires) \
        if o.get("with_arch", True) else None
    runtime = SimpleNamespace(max_batch_input_tokens=o["max_batch_input_tokens"],
                              max_batch_total_tokens=o["max_batch_total_tokens"],
                              is_disaggregated=o.get("is_disaggregated", False),
                              vision_cache_utilization=o.get("vision_cache_utilization", 0.05))
    model = SimpleNamespace(max_length=max_length,
                            max_length_is_user_provided=o["max_length_user_provided"],
                            kv_cache=SimpleNamespace(device_memory_utilization=o["utilization"]),
                            huggingface_config=None)
    with legacy_env(o["legacy"]) as legacy:
        plan = MemoryEstimator.plan_from_sizes(
            SimpleNamespace(runtime=runtime), model, arch_config, _devices(o, g), o["weights"],
            o["activations"], o["signal"], arch=arch, max_batch_size=o["max_batch_size"],
            draft_max_seq_len=o["draft_max_seq_len"], legacy=legacy)
    return _result(plan)


def _result(plan) -> dict:
    vp = plan.vision_cache_plan
    return {"planned_max_length": plan.planned_max_length,
            "planned_max_batch_size": plan.planned_max_batch_size,
            "available_cache_memory": plan.available_cache_memory, "footprint": plan.footprint,
            "planned_max_batch_total_tokens": plan.planned_max_batch_total_tokens,
            "vision_bytes_per_device": None if vp is None else vp.bytes_per_device,
            "logs": [list(x) for x in plan.logs]}


def _available(kw: dict) -> int:
    free = kw["free_memory_per_device"]
    total = kw["total_memory_per_device"] or list(free)
    devices = [Device(free[i], total[i], total[i], False) for i in range(len(free))]
    model = MAXModelConfig(max_length=1, kv_cache=KVCacheConfig(kw["utilization"]))
    return MemoryEstimator.available_kv_cache_memory(PipelineConfig(model), model, devices,
                                                     kw["weights"], kw["activations"], kw["signal"])


def _call(fn: str, kw: dict):
    if fn == "estimate_footprint":
        return _footprint(kw)
    if fn == "available_kv_cache_memory":
        return _available(kw)
    if fn == "jenga_geometry":
        g = plan_jenga_geometry(kw["available_bytes"], kw["cache_sizes"], kw["row_sizes"],
                                include_null_block=kw["include_null_block"],
                                max_padding=kw["max_padding_fraction"])
        return {"num_huge_blocks": g.num_huge_blocks, "huge_page_bytes": g.huge_page_bytes,
                "ratios": g.ratios, "padded_sizes": g.padded_sizes}
    g, o = split(kw)
    p = params(g)
    if fn == "kv_params_info":
        return _info(p)
    if fn == "bytes_per_block":
        return p.bytes_per_block
    if fn == "spec_slack":
        return p.spec_decode_cache_slack
    if fn == "num_device_blocks":
        return compute_num_device_blocks(p, o["available_cache_memory"], o["max_batch_size"],
                                         o["max_seq_len"], o.get("require_max_seq_len_fits", False),
                                         o.get("include_null_block", False))
    if fn == "estimated_memory_size":
        return estimated_memory_size(p, o["available_cache_memory"], o["max_batch_size"],
                                     o["max_seq_len"], o.get("include_null_block", False))
    if fn == "max_seq_len_fitting":
        return compute_max_seq_len_fitting_in_cache(p, o["available_cache_memory"],
                                                    o.get("include_null_block", False))
    with legacy_env(o.get("legacy", False)) as legacy:
        if fn == "kv_cache_memory_size":
            return kv_cache_memory_size(p, o["available_cache_memory"], o["max_batch_size"],
                                        o["max_seq_len"], o.get("is_di_enabled", False),
                                        legacy=legacy)
        if fn == "max_seq_len_fitting_in_cache":
            return max_seq_len_fitting_in_cache(p, o["available_cache_memory"],
                                                o.get("is_di_enabled", False), legacy=legacy)
    raise AssertionError(f"no kvfit side for {fn}")


def run(fn: str, kwargs: dict) -> dict:
    """kvfit's response to one oracle call (exceptions and log lines included)."""
    with collect() as lines:
        try:
            set_virtual_device_count(kwargs.get("virtual_devices", 0))
            result = _call(fn, kwargs)
            ok = True
        except Exception as e:  # the exception is the answer being compared
            ok, err = False, e
        finally:
            set_virtual_device_count(0)
    logs = [list(x) for x in lines]
    if ok:
        return {"ok": True, "result": result, "logs": logs}
    return {"ok": False, "type": type(err).__name__, "message": str(err), "logs": logs}
