"""TensorRT-LLM (NVIDIA/TensorRT-LLM, tensorrt_llm/_torch/pyexecutor/_util.py): the PyTorch backend
(``version="pytorch"``, KvCacheCreator
and KVCacheManager) and the older TRT-engine C++ runtime (``version="trt-engine"``), whose logs
R5 and R6 come from.

``free_gpu_memory_fraction`` applies to the memory free after the weights and the profiled peak,
not to the total: ``kv_bytes = fraction · (total − peak)`` where the peak holds the CUDA context,
weights, the dummy pass's activations, NCCL buffers and CUDA graphs (PyTorch backend), or the
engine, its execution context, runtime buffers and decoder buffers (TRT engine).
``max_tokens = kv_bytes // bytes_per_token`` (bytes per token = 2 · layers · ceil(kv_heads / tp) ·
head_dim · dtype), capped by ``max_tokens`` and ``max_gpu_total_bytes``, MIN over ranks; blocks of
``tokens_per_block`` (32) tokens: floor in the PyTorch backend, ceil in the C++ runtime. Nothing
checks the context length: max_seq_len is silently lowered to what one sequence can hold.
"""

from __future__ import annotations

from estimator.core.geometry import geometry
from estimator.core.kv_spec import kv_specs
from estimator.engines.base import (
    EnginePlan,
    GiB,
    Knob,
    Setup,
    apply_model_knobs,
    cdiv,
    default_kv_dtype,
    estimated_flags,
    fraction,
    integer,
    kv_dtype_choice,
    quantization_choice,
    scaled,
    with_band,
)
from estimator.engines.non_kv import (
    ACTIVATION_SOURCE,
    CONTEXT,
    CONTEXT_SOURCE,
    CUDA_GRAPH_SOURCE,
    NON_TORCH_SOURCE,
    RESIDUAL_SOURCE,
    TRT_DECODER_BYTES_PER_LOGIT,
    TRT_LEGACY_SOURCE,
    TRT_RUNTIME_BYTES_PER_LOGIT,
    Band,
    NonKV,
    Term,
    activation_band,
    cuda_graph_band,
    gpu_class,
    interconnect,
    non_torch_band,
    residual_band,
    term,
)
from meshes.validation import InputError

NAME = "trtllm"
VERSIONS = ("pytorch", "trt-engine")
MEASURED = ("weights_bytes", "activation_bytes", "non_torch_bytes", "cuda_graph_bytes",
            "context_bytes")  # the measured values this profile charges
KV_DTYPES = {"auto": None, "bfloat16": "bfloat16", "float16": "float16", "fp8": "float8_e4m3fn",
             "int8": "int8"}


def _power_of_two(field_: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise InputError(field_, value, "a power of two — TRT-LLM: tokens_per_block must be a power of 2")
    return value


KNOBS = {
    "free_gpu_memory_fraction": Knob("free_gpu_memory_fraction", 0.9, fraction(
        high_inclusive=False, message="TRT-LLM: Invalid freeMemFraction, it must be smaller than 1.0")),
    "max_tokens": Knob("max_tokens", None, integer(1)),
    "max_gpu_total_bytes": Knob("max_gpu_total_bytes", None, integer(1)),
    "tokens_per_block": Knob("tokens_per_block", 32, _power_of_two),
    "dtype": Knob("dtype", "auto", kv_dtype_choice(KV_DTYPES)),
    "max_seq_len": Knob("max_seq_len", None, integer(1, 2**40)),
    "max_batch_size": Knob("max_batch_size", 2048, integer(1, 2**31)),
    "max_num_tokens": Knob("max_num_tokens", 8192, integer(1, 2**31),
                           "8192 (trtllm-build ≥ 0.11; older builds: max_batch_size × max_input_len)"),
    "max_input_len": Knob("max_input_len", 1024, integer(1, 2**31),
                          "build limit (trtllm-build --max_input_len, default 1024)"),
    "max_beam_width": Knob("max_beam_width", 1, integer(1, 1024)),
    "quantization": Knob("quantization", None, quantization_choice,
                         "QuantConfig.quant_algo (FP8, W4A16_AWQ, ...); default: the checkpoint's"),
}


def compute(setup: Setup, which: str) -> EnginePlan:
    mesh, lay, k, version = setup.mesh, setup.layout, setup.knobs, setup.version
    m = apply_model_knobs(setup.model, k["quantization"], None)
    frac = k["free_gpu_memory_fraction"]
    tpb = k["tokens_per_block"]
    max_seq_len = k["max_seq_len"] or m.max_position_embeddings
    warnings = []
    if max_seq_len > m.max_position_embeddings:
        warnings.append(f"max_seq_len {max_seq_len} exceeds max_position_embeddings "
                        f"{m.max_position_embeddings}")
    kv_dtype = KV_DTYPES[k["dtype"]] or default_kv_dtype(m)
    geom = geometry(m, lay, kv_cache_dtype=kv_dtype, page_size=tpb)
    kvs = kv_specs(m, lay.tensor, kv_dtype)
    cls = gpu_class(mesh.stats[0].bytes_limit, mesh.device_kinds[0])
    beam, batch, num_tokens = k["max_beam_width"], k["max_batch_size"], k["max_num_tokens"]
    link = interconnect(mesh.device_kinds[0])
    per_device = []
    for i, stats in enumerate(mesh.stats):
        s = lay.coordinates(i)[1]
        stage = geom.stages[s]
        layers = [kvs[j] for j in stage.layers]
        state = sum(kv.state_bytes for kv in layers)
        if version == "pytorch":
            act = activation_band(m, tensor=lay.tensor, kv_heads_per_shard=geom.kv_heads_per_shard,
                                  tokens=num_tokens, sampler_rows=max(1, num_tokens // max_seq_len),
                                  last_stage=s == lay.pipeline - 1)
            terms = (
                term("context", CONTEXT, CONTEXT_SOURCE, setup.measured.get("context_bytes")),
                term("weights", Band.exact(stage.weight_bytes), "estimator.core.geometry weight shard",
                     setup.measured.get("weights_bytes")),
                term("activation", act, ACTIVATION_SOURCE, setup.measured.get("activation_bytes")),
                term("non_torch", non_torch_band(NAME, version, tensor=lay.tensor, pipeline=lay.pipeline,
                                                 link=link, custom_ar=False), NON_TORCH_SOURCE,
                     setup.measured.get("non_torch_bytes")),
                term("cuda_graph", cuda_graph_band(NAME, version, cls), CUDA_GRAPH_SOURCE,
                     setup.measured.get("cuda_graph_bytes")),
            )
        else:  # TRT engine: engine + execution context, runtime buffers, decoder
            # the engine never packs more context tokens than max_batch_size × max_input_len
            packed = min(num_tokens, batch * k["max_input_len"])
            runtime = batch * beam * m.vocab_size * TRT_RUNTIME_BYTES_PER_LOGIT + packed * (
                activation_band(m, tensor=lay.tensor, kv_heads_per_shard=geom.kv_heads_per_shard,
                                tokens=1, sampler_rows=0).central)
            decoder = batch * beam * m.vocab_size * TRT_DECODER_BYTES_PER_LOGIT
            terms = (
                term("context", CONTEXT, CONTEXT_SOURCE, setup.measured.get("context_bytes")),
                term("weights", Band.exact(stage.weight_bytes), "estimator.core.geometry weight shard (engine)",
                     setup.measured.get("weights_bytes")),
                term("activation", Band.of(runtime * 0.5, runtime, runtime * 1.5),
                     "runtime buffers + execution context: " + TRT_LEGACY_SOURCE,
                     setup.measured.get("activation_bytes")),
                term("non_torch", Band.of(decoder * 0.5, decoder, decoder * 1.5),
                     "decoder buffers: " + TRT_LEGACY_SOURCE, setup.measured.get("non_torch_bytes")),
            )
        if not all(t.measured for t in terms if t.name != "weights"):
            residual = residual_band(NAME, version, lay.tensor, stats.bytes_limit)
            terms = (*terms, Term("residual", residual, RESIDUAL_SOURCE))
        if state:  # Mamba hybrids: state slots for max_batch_size requests are allocated up front
            terms = (*terms, term("recurrent_state", Band.exact(state * batch),
                                  "MambaHybridCacheManager state for max_batch_size requests (§5)"))
        nk = NonKV(terms)
        free = stats.bytes_limit - stats.bytes_in_use - nk.total(which)
        kv = max(scaled(free, frac), 0)
        if k["max_gpu_total_bytes"] is not None:
            kv = min(kv, k["max_gpu_total_bytes"])
        bpt = sum(kv_.token_bytes for kv_ in layers)
        per_device.append((i, nk, free, kv, bpt, stats, layers))
    tokens_each = [kv // bpt if bpt else 0 for _, _, _, kv, bpt, _, _ in per_device]
    tokens = min(tokens_each)  # MPI all-reduce MIN
    if k["max_tokens"] is not None:
        if k["max_tokens"] < tokens:
            warnings.append("Both free_gpu_memory_fraction and max_tokens are set: the smaller wins")
        tokens = min(tokens, k["max_tokens"])
    blocks = tokens // tpb if version == "pytorch" else cdiv(tokens, tpb)
    pool_tokens = blocks * tpb
    tight = min(range(len(per_device)), key=lambda j: tokens_each[j])
    i, nk, free, kv, bpt, stats, layers = per_device[tight]
    windows = sorted({kv_.window for kv_ in layers if kv_.window})
    per_seq = cdiv(max_seq_len, tpb) * beam
    error = None
    if blocks <= 0:
        error = "Impossible to fit in any sequence in kvCache"
    window_cap = blocks // beam * tpb
    effective = min(max_seq_len, window_cap) if windows == [] else max_seq_len
    if error is None and max_seq_len > window_cap and not windows:
        warnings.append(f"maxAttentionWindow and maxSequenceLen are too large for at least one sequence to "
                        f"fit in kvCache. They are reduced to {window_cap}")
    concurrency = blocks / per_seq if per_seq else 0.0
    for w in windows:  # sliding layers need at most ceil(window / tpb) blocks of their share
        concurrency = min(concurrency, blocks / (cdiv(min(max_seq_len, w), tpb) * beam))
    kv_alloc = pool_tokens * bpt
    lines = []
    if version == "pytorch":
        lines.append(f"Peak memory during memory usage profiling (torch + non-torch): "
                     f"{(stats.bytes_limit - free) / GiB:.2f} GiB, available KV cache memory when "
                     "calculating "
                     f"max tokens: {max(free, 0) / GiB:.2f} GiB, fraction is set {frac}, kv size is {bpt}. "
                     f"device total memory {stats.bytes_limit / GiB:.2f} GiB")
        lines.append(f"Estimated max memory in KV cache : {kv / GiB:.2f} GiB")
    else:
        lines.append(f"Memory usage when calculating max tokens in paged kv cache: total: "
                     f"{stats.bytes_limit / GiB:.2f} GiB, available: {max(free, 0) / GiB:.2f} GiB")
    if error is None:
        lines += [f"Number of blocks in KV cache primary pool: {blocks}",
                  "Number of blocks in KV cache secondary pool: 0, onboard blocks to primary memory before "
                  "reuse: true",
                  f"Max KV cache pages per sequence: {cdiv(effective, tpb)}",
                  f"Number of tokens per block: {tpb}.",
                  f"[MemUsageChange] Allocated {kv_alloc / GiB:.2f} GiB for max tokens in paged KV cache "
                  f"({pool_tokens})."]
        if version == "trt-engine":  # the v0.8-era wording of the same numbers (R6)
            lines += [f"Allocate {kv_alloc} bytes for k/v cache.",
                      f"Using {pool_tokens} tokens in paged KV cache."]
    knobs = {**k, "max_seq_len": effective}
    capped = k["max_gpu_total_bytes"] is not None and k["max_gpu_total_bytes"] <= kv
    estimated = estimated_flags(lines, ("Number of tokens per block",),
                                not capped and any(t.name == "residual" for t in nk.terms))
    return EnginePlan(
        engine=NAME, version=version, model=m.name, mesh=mesh.describe(), layout=lay.name, knobs=knobs,
        scope="per device", kv_cache_dtype=kv_dtype, block_size=tpb, kv_bytes_per_token=bpt,
        bytes_per_block=bpt * tpb, total_bytes=stats.bytes_limit,
        budget_bytes=stats.bytes_limit - stats.bytes_in_use, non_kv=nk, non_kv_bytes=nk.total(which),
        kv_available_bytes=kv, kv_bytes=kv_alloc, num_blocks=blocks, usable_blocks=blocks,
        pool_tokens=pool_tokens, kv_tokens=pool_tokens, max_model_len=max_seq_len,
        max_concurrency=concurrency, max_model_len_fit=effective,
        num_replicas=lay.data, starts=error is None, error=error, log_lines=tuple(lines),
        warnings=tuple(warnings), estimated_lines=estimated,
        devices=tuple({"device": str(mesh.devices[j]), "free_after_peak_bytes": f, "kv_bytes": kvb,
                       "tokens": t}
                      for (j, _, f, kvb, _, _, _), t in zip(per_device, tokens_each, strict=True)))


def plan(setup: Setup, band: bool = True) -> EnginePlan:
    return with_band(compute, setup, band)


PROFILE_DOC = __doc__
