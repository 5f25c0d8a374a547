"""Modular MAX 26.7.0 (modular/modular, max/pipelines/lib/memory_estimation.py): the seed API
``MemoryEstimator`` itself.

This profile only translates kvfit's model and mesh into MAX's inputs and calls
``estimator.seed.memory_estimator.MemoryEstimator.estimate_memory_footprint`` — so its numbers are the
seed API's, bit for bit: free memory pooled over the devices, the whole checkpoint as weights,
``int(free · device_memory_utilization − static)`` as the KV budget, pages per data-parallel
replica with one null page. Byte figures are pooled over all devices (MAX's scope).
"""

from __future__ import annotations

from estimator.core.kv_spec import kv_specs
from estimator.core.sharding import StageMesh, weight_table
from estimator.engines.base import (
    EnginePlan,
    Knob,
    Setup,
    integer,
    kv_dtype_choice,
    positive_number,
    with_band,
)
from estimator.engines.non_kv import Band, NonKV, term
from estimator.planning.signals import SIGNAL_BUFFER_BYTES
from estimator.seed.kv_params import KVCacheParams
from estimator.seed.memory_estimator import (
    ArchConfig,
    KVCacheConfig,
    MAXModelConfig,
    MemoryEstimator,
    PipelineConfig,
)
from meshes.validation import InputError

NAME = "max"
VERSIONS = ("26.7.0",)
MEASURED = ("weights_bytes", "activation_bytes")
FORMATS = {"float32": "float32", "bfloat16": "bfloat16", "float8_e4m3fn": "float8_e4m3fn"}


def _page(field_: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 128 or value % 128:
        raise InputError(field_, value, "a multiple of 128 — MAX: the KV cache page size must be a "
                         "multiple of 128")
    return value


KNOBS = {
    "device_memory_utilization": Knob("device_memory_utilization", 0.9, positive_number,
                                      "MAX enforces no upper bound"),
    "kv_cache_page_size": Knob("kv_cache_page_size", 128, _page),
    "kv_cache_format": Knob("kv_cache_format", None, kv_dtype_choice(
        FORMATS, "MAX: unrecognized kv_cache_format override")),
    "max_length": Knob("max_length", None, integer(1, 2**40)),
    "max_batch_size": Knob("max_batch_size", None, integer(1, 2**31)),
    "max_batch_input_tokens": Knob("max_batch_input_tokens", 8192, integer(1, 2**31)),
}


def cache_dtype_for_encoding(weight_dtype: str) -> str:
    """MAX 26.7.0's KV cache dtype for a weight encoding: float32 → f32, float16 → f16, bfloat16 and fp8 → bf16."""
    return {"float32": "float32", "float16": "float16"}.get(weight_dtype, "bfloat16")


def checkpoint_bytes(setup: Setup) -> int:
    """MAX's weights: the whole checkpoint (every tensor once, as the sharding table prices it on
    one device)."""
    return sum(row.bytes_per_device * row.tensor.copies for row in weight_table(setup.model, StageMesh(1, 1)))


def compute(setup: Setup, which: str) -> EnginePlan:
    m, mesh, lay, k = setup.model, setup.mesh, setup.layout, setup.knobs
    if lay.pipeline > 1:
        raise InputError("layout", lay.name, "data and tensor axes only (MAX has no pipeline parallelism)")
    util, page = k["device_memory_utilization"], k["kv_cache_page_size"]
    dtype = k["kv_cache_format"] or cache_dtype_for_encoding(m.weight_dtype)
    dtype = FORMATS.get(dtype, dtype)
    kvs = kv_specs(m, lay.tensor, dtype)
    layers = sum(1 for kv in kvs if kv.holds_tokens)
    warnings = []
    if any(kv.window or kv.state_bytes for kv in kvs):
        warnings.append("MAX's KVCacheParams has one paged layout: sliding-window layers are charged as full "
                        "attention and recurrent layers are left out")
    head_dim = m.kv_lora_rank + m.qk_rope_head_dim if m.is_mla else m.head_dim
    weights = setup.measured.get("weights_bytes", checkpoint_bytes(setup))
    activation = setup.measured.get("activation_bytes", 0)
    n = mesh.size
    signals = SIGNAL_BUFFER_BYTES * n if mesh.platform == "gpu" and n > 1 else 0
    length = k["max_length"] or m.max_position_embeddings
    model_cfg = MAXModelConfig(max_length=length, max_length_is_user_provided=k["max_length"] is not None,
                               kv_cache=KVCacheConfig(util, page))
    pipeline = PipelineConfig(model=model_cfg, max_batch_input_tokens=k["max_batch_input_tokens"])
    nk = NonKV((term("weights", Band.exact(weights), "whole checkpoint (MAX weights_size)",
                     setup.measured.get("weights_bytes")),
                term("activation", Band.exact(activation), "MAX estimate_activation_memory (0 by default)",
                     setup.measured.get("activation_bytes")),
                term("signal_buffers", Band.exact(signals), "MAX Signals.NUM_BYTES × devices (§5.3)")))
    free = MemoryEstimator.free_memory(mesh.devices)
    error, est, params = None, None, None
    try:
        params = KVCacheParams(dtype, n_kv_heads=1 if m.is_mla else m.num_kv_heads, head_dim=head_dim,
                               num_layers=max(layers, 1), page_size=page, n_devices=n,
                               data_parallel_degree=lay.data, is_mla=m.is_mla,
                               num_q_heads=m.num_attention_heads)
        est = MemoryEstimator.estimate_memory_footprint(
            pipeline, model_cfg, ArchConfig(params, m.max_position_embeddings), mesh.devices, weights,
            activation, signals, max_batch_size=k["max_batch_size"])
    except (RuntimeError, ValueError) as err:
        error = str(err)
    budget = int(free * util)
    static = weights + activation + signals
    lines = list(est.warnings) if est else []
    if est is None:
        committed, blocks, length_fit, batch = 0, 0, 0, k["max_batch_size"] or 0
    else:
        committed = est.available_cache_memory
        per_replica = committed // lay.data
        blocks = per_replica // params.bytes_per_block
        length_fit = est.planned_max_length or 0
        batch = est.planned_max_batch_size
    usable = max(blocks - 1, 0)
    per_request = -(-length // page)
    return EnginePlan(
        engine=NAME, version=setup.version, model=m.name, mesh=mesh.describe(), layout=lay.name,
        knobs={**k, "kv_cache_format": dtype, "max_length": length, "max_batch_size": batch},
        scope=f"pooled over {n} devices (MAX)", kv_cache_dtype=dtype, block_size=page,
        kv_bytes_per_token=params.bytes_per_block // page if params else 0,
        bytes_per_block=params.bytes_per_block if params else 0, total_bytes=free, budget_bytes=budget,
        non_kv=nk, non_kv_bytes=static, kv_available_bytes=int(free * util - static), kv_bytes=committed,
        num_blocks=blocks, usable_blocks=usable, pool_tokens=blocks * page, kv_tokens=usable * page,
        max_model_len=length, max_concurrency=usable / per_request if per_request else 0.0,
        max_model_len_fit=length_fit, num_replicas=lay.data, starts=error is None, error=error,
        log_lines=tuple(lines), warnings=tuple(warnings))


def plan(setup: Setup, band: bool = True) -> EnginePlan:
    return with_band(compute, setup, band)


PROFILE_DOC = __doc__
