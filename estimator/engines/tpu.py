"""vLLM TPU backend (vllm-project/tpu-inference 0.32.0, tpu_inference/runner/kv_cache_manager.py).

No profiling pass: ``available = gpu_memory_utilization · Σ bytes_limit − Σ bytes_in_use`` over the
worker's chips after the weights are loaded (``version="legacy"``: the meaning before PR #734,
``gpu_memory_utilization · (Σ bytes_limit − Σ bytes_in_use)``, which R7's log follows). Pages are
the real array shape, global over the mesh: KV heads padded up to the tensor size, K and V
interleaved and packed into 32-bit words (bf16 2 per word, fp8 4), head_dim padded to 128
(64 kept). Block counting, the fit check, the max-length estimate and the capacity lines are
vLLM core's (estimator.engines.vllm.vllm_core; legacy: the ≤ 0.2x core). Page size without
--block-size: 16 when max_model_len > 8192, else next_pow2(max_model_len) / 16 in [16, 256]
(MLA 1024), raised so max_num_seqs × pages per request stays within the 131,072-entry SMEM table.
"""

from __future__ import annotations

from estimator.core.geometry import geometry
from estimator.core.kv_spec import KVSpec, kv_specs
from estimator.engines.base import (
    EnginePlan,
    GiB,
    Knob,
    Setup,
    cdiv,
    default_kv_dtype,
    fraction,
    integer,
    kv_dtype_choice,
    scaled,
    with_band,
)
from estimator.engines.non_kv import ACTIVATION_SOURCE, Band, NonKV, activation_band, term
from estimator.engines.vllm import (
    BLOCK_SIZES,
    CacheLayout,
    KVGroup,
    cache_layout,
    format_gib,
    holds_kv,
    vllm_core,
)
from estimator.model.dtypes import dtype_bytes
from meshes.validation import InputError

NAME = "tpu"
VERSIONS = ("0.32.0", "legacy")
MEASURED = ("weights_bytes",)
SMEM_PAGE_ENTRIES = 131072  # tpu_platform: max_num_seqs × pages per request must fit this table
MLA_PAGE_SIZE = 1024
KV_DTYPES = {"auto": None, "bfloat16": "bfloat16", "fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn",
             "fp8_e5m2": "float8_e5m2", "int8": "int8"}
# vllm-project/tpu-inference, tpu_inference/platforms/tpu_platform.py: TPU defaults of
# (max_num_batched_tokens, max_num_seqs)
TPU_BATCH_DEFAULTS = {"v6": (2048, 1024), "v5 lite": (1024, 512), "v5e": (1024, 512), "v5": (512, 256),
                      "v5p": (512, 256)}

KNOBS = {
    "gpu_memory_utilization": Knob("gpu_memory_utilization", 0.9, fraction(
        message="tpu-inference caps HBM at gpu_memory_utilization × the chips' limit")),
    "max_model_len": Knob("max_model_len", None, integer(-1, 2**40)),
    "block_size": Knob("block_size", None, lambda f, v: _block(f, v)),
    "kv_cache_dtype": Knob("kv_cache_dtype", "auto", kv_dtype_choice(KV_DTYPES)),
    "max_num_seqs": Knob("max_num_seqs", None, integer(1, 2**31)),
    "max_num_batched_tokens": Knob("max_num_batched_tokens", None, integer(1, 2**31)),
    "kv_cache_memory_bytes": Knob("kv_cache_memory_bytes", None, integer(1)),
    "num_gpu_blocks_override": Knob("num_gpu_blocks_override", None, integer(1)),
}


def _block(field_: str, value: object) -> int:
    if value not in (*BLOCK_SIZES, 512, 1024):
        raise InputError(field_, value, f"one of {', '.join(map(str, (*BLOCK_SIZES, 512, 1024)))}")
    return int(value)  # type: ignore[call-overload]


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def page_size_for(max_model_len: int, max_num_seqs: int, *, mla: bool) -> tuple[int, list[str]]:
    """tpu-inference's page size when --block-size is not given (§6.1), and its log notes."""
    notes = []
    if mla:
        page = MLA_PAGE_SIZE
    elif max_model_len > 8192:
        page = 16
    else:
        page = min(max(_next_pow2(max_model_len) // 16, 16), 256)
    smem = _next_pow2(cdiv(max_model_len, SMEM_PAGE_ENTRIES // max_num_seqs))
    if smem > page:
        notes.append(f"Increase the page size from {page} to {smem} to avoid SMEM OOM "
                     f"(max_num_seqs={max_num_seqs} × pages per request ≤ {SMEM_PAGE_ENTRIES})")
        page = smem
    return page, notes


def padded_token_bytes(kv: KVSpec, *, kv_heads: int, tensor: int, head_dim: int, dtype: str,
                       latent: int) -> int:
    """Global (over the tensor axis) bytes of one token of one layer in the RPA v3 array shape."""
    b = dtype_bytes(dtype)
    packing = max(4 // b, 1)
    if kv.replicated_across_tensor:  # MLA: latent rounded to 128, replicated on every chip
        return tensor * cdiv(latent, 128) * 128 * b
    per_chip = max(kv_heads // tensor, 1)  # heads padded up to the tensor size
    slots = cdiv(per_chip * 2, packing) * packing
    hd = head_dim if head_dim == 64 else cdiv(head_dim, 128) * 128
    return tensor * slots * hd * b


def _generation(kind: str) -> tuple[int, int]:
    k = kind.lower()
    for key in ("v6", "v5 lite", "v5e", "v5p", "v5"):
        if key in k:
            return TPU_BATCH_DEFAULTS[key]
    return 2048, 1024


def compute(setup: Setup, which: str) -> EnginePlan:
    m, mesh, lay, k, version = setup.model, setup.mesh, setup.layout, setup.knobs, setup.version
    if lay.pipeline > 1:
        raise InputError("layout", lay.name, "data and tensor axes only (the tpu profile has no "
                         "pipeline stages)")
    util = k["gpu_memory_utilization"]
    derived = m.max_position_embeddings
    length, auto_fit = k["max_model_len"] or derived, k["max_model_len"] == -1
    if auto_fit:
        length = derived
    if length > derived:
        raise InputError("max_model_len", length, f"at most max_position_embeddings={derived} "
                         "(set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 to override)")
    kv_dtype = KV_DTYPES[k["kv_cache_dtype"]] or default_kv_dtype(m)
    d_tokens, d_seqs = _generation(mesh.device_kinds[0])
    seqs = k["max_num_seqs"] or d_seqs
    batched = k["max_num_batched_tokens"] or d_tokens
    notes: list[str] = []
    if k["block_size"]:
        block = k["block_size"]
    else:
        block, notes = page_size_for(length, seqs, mla=m.is_mla)
    geom = geometry(m, lay, kv_cache_dtype=kv_dtype, page_size=block)
    kvs = kv_specs(m, lay.tensor, kv_dtype)
    latent = m.kv_lora_rank + m.qk_rope_head_dim

    def token(kv: KVSpec) -> int:
        return padded_token_bytes(kv, kv_heads=m.num_kv_heads, tensor=lay.tensor, head_dim=m.head_dim,
                                  dtype=kv_dtype, latent=latent)

    cache = cache_layout(kvs, block, token, mla=m.is_mla)
    if version == "legacy":
        cache = CacheLayout((KVGroup(tuple(i for i, kv in enumerate(kvs) if holds_kv(kv))),),
                            block, block * max(token(kv) for kv in kvs if holds_kv(kv)), ())
    stage = geom.stages[0]
    weights = setup.measured.get("weights_bytes", stage.weight_bytes)
    limit = sum(s.bytes_limit for s in mesh.stats)
    used = sum(s.bytes_in_use for s in mesh.stats) + weights * mesh.size
    if version == "legacy":
        budget = scaled(limit - used, util) + used
        avail = scaled(limit - used, util)
    else:
        budget = scaled(limit, util)
        avail = budget - used
    if k["kv_cache_memory_bytes"] is not None:
        avail = k["kv_cache_memory_bytes"]
    error = None
    if avail < 0 and k["kv_cache_memory_bytes"] is None:
        error = (f"Current HBM usage ({used / GiB:.2f} GiB) exceeds the capped HBM limit "
                 f"({budget / GiB:.2f} GiB = {util} × {limit / GiB:.2f} GiB). Increase "
                 "--gpu-memory-utilization.")
    bpb = cache.bytes_per_block(stage.layers)  # global over the mesh (all data shards' pages)
    core = vllm_core(core="0.33" if version == "0.32.0" else "0.1x", workers=[(avail, bpb)], layout=cache,
                     max_model_len=length, auto_fit=auto_fit, batched_tokens=batched, state_blocks=1,
                     override=k["num_gpu_blocks_override"], longest=derived)
    error = error or core.error
    per_replica = core.num_blocks // lay.data
    act = activation_band(m, tensor=lay.tensor, kv_heads_per_shard=geom.kv_heads_per_shard,
                          tokens=batched, sampler_rows=min(seqs, batched))
    nk = NonKV((term("weights", Band.exact(stage.weight_bytes), "estimator.core.geometry weight shard",
                     setup.measured.get("weights_bytes")),))
    headroom = (mesh.stats[0].bytes_limit - scaled(mesh.stats[0].bytes_limit, util))
    warnings = [f"tpu-inference runs no profiling pass: activations and compilation must fit the "
                f"(1 − gpu_memory_utilization) slice, {headroom / GiB:.2f} GiB per chip"]
    if act.central > headroom:
        warnings.append(f"estimated activation peak {act.central / GiB:.2f} GiB per chip exceeds that "
                        f"slice ({ACTIVATION_SOURCE})")
    if m.num_kv_heads < lay.tensor or (dtype_bytes(kv_dtype) == 1 and m.num_kv_heads // lay.tensor < 2):
        warnings.append("KV heads are padded/packed per chip: "
                        f"{bpb / max(geom.stages[0].page_bytes * lay.tensor, 1):.2f}× the unpadded bytes")
    hd = m.head_dim if m.head_dim == 64 else cdiv(m.head_dim, 128) * 128
    slots = bpb // max(len(cache.groups[0].layers), 1) // block // hd // dtype_bytes(kv_dtype)
    packing = max(4 // dtype_bytes(kv_dtype), 1)
    if version == "legacy":
        shape = f"({core.num_blocks}, {block}, {slots}, {hd})"
    else:
        shape = f"({core.num_blocks}, {block}, {slots // packing}, {packing}, {hd})"
    lines = [*notes, f"Available KV cache memory: {format_gib(avail)} GiB"]
    if error is None:
        lines.append(f"Init kv-cache | num_layers={sum(len(g.layers) for g in cache.groups)} | "
                     f"shape=(num_blocks, {shape})")
    lines += list(cache.notes) + list(core.lines)
    null = 1
    knobs = {**k, "block_size": cache.block_size, "max_num_seqs": seqs, "max_num_batched_tokens": batched,
             "max_model_len": core.max_model_len}
    return EnginePlan(
        engine=NAME, version=version, model=m.name, mesh=mesh.describe(), layout=lay.name, knobs=knobs,
        scope=f"global over {mesh.size} chips (one worker)", kv_cache_dtype=geom.kv_cache_dtype,
        block_size=cache.block_size, kv_bytes_per_token=bpb // cache.block_size, bytes_per_block=bpb,
        total_bytes=limit, budget_bytes=budget, non_kv=nk, non_kv_bytes=used, kv_available_bytes=avail,
        kv_bytes=core.num_blocks * bpb, num_blocks=per_replica, usable_blocks=max(per_replica - null, 0),
        pool_tokens=per_replica * cache.block_size, kv_tokens=core.kv_tokens,
        max_model_len=core.max_model_len, max_concurrency=core.concurrency / lay.data,
        max_model_len_fit=min(core.max_model_len, core.max_len_fit), num_replicas=lay.data,
        starts=error is None, error=error,
        log_lines=tuple(lines), warnings=tuple(warnings),
        devices=tuple({"device": str(d), "total_bytes": s.bytes_limit, "in_use_bytes": s.bytes_in_use,
                       "weights_bytes": weights} for d, s in zip(mesh.devices, mesh.stats, strict=True)))


def plan(setup: Setup, band: bool = True) -> EnginePlan:
    return with_band(compute, setup, band)


PROFILE_DOC = __doc__
