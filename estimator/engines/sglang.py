"""SGLang 0.5.23 (sgl-project/sglang, python/sglang/srt/model_executor/model_runner.py), with the
rules that changed between 0.4.3 and 0.5.23 following the release named (``release_family``).

``mem_fraction_static`` is (weights + KV pool) / memory. Per rank: ``rest = free_after_weights −
pre_load_free · (1 − mem_fraction_static)`` (pre-load free memory is the minimum over ranks, read
after the NCCL communicators exist); ``max_total_num_tokens = rest // cell_size`` floored to whole
pages, where the cell is the KV bytes of one token over the rank's attention layers (K and V of this
rank's heads; MLA: the latent, not divided by TP). No forward pass is profiled: activations, CUDA
graphs and the ReqToTokenPool must fit the (1 − fraction) reserve. Unset, the fraction is derived
from the GPU's memory and the chunked-prefill / CUDA-graph settings of its tier (§4.1).
Sliding-window hybrids get a second pool at ``swa_full_tokens_ratio`` (§4.3); Mamba hybrids carve a
state pool out of ``rest`` first (§4.4).
"""

from __future__ import annotations

from fractions import Fraction

from estimator.core.geometry import geometry
from estimator.core.kv_spec import kv_specs
from estimator.engines.base import (
    EnginePlan,
    GiB,
    Knob,
    Setup,
    apply_model_knobs,
    boolean,
    cdiv,
    default_kv_dtype,
    estimated_flags,
    fraction,
    integer,
    kv_dtype_choice,
    model_dtype_choice,
    positive_number,
    quantization_choice,
    with_band,
)
from estimator.engines.non_kv import (
    ACTIVATION_SOURCE,
    CONTEXT,
    CONTEXT_SOURCE,
    NON_TORCH_SOURCE,
    RESIDUAL_SOURCE,
    WEIGHTS_SOURCE,
    Band,
    NonKV,
    Term,
    activation_band,
    capture_graph_band,
    cudagraph_capture_sizes,
    interconnect,
    non_torch_band,
    residual_band,
    rotary_cache_bytes,
    term,
    torch_param_bytes,
)
from estimator.engines.releases import release_number
from estimator.model.spec import ModelSpec
from meshes.catalog import MiB
from meshes.validation import InputError

NAME = "sglang"
VERSIONS = ("0.5.23",)
MEASURED = ("weights_bytes", "non_torch_bytes", "context_bytes")
KV_DTYPES = {"auto": None, "bf16": "bfloat16", "bfloat16": "bfloat16", "fp8_e4m3": "float8_e4m3fn",
             "fp8_e5m2": "float8_e5m2"}
DEFAULT_MAX_PREFILL_TOKENS = 16384
ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
        "mixtral": "MixtralForCausalLM", "phi3": "Phi3ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
        "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "gpt_oss": "GptOssForCausalLM"}

KNOBS = {
    "mem_fraction_static": Knob("mem_fraction_static", None, fraction(
        high_inclusive=False, message="SGLang: the fraction of GPU memory for weights and the KV pool"),
        "auto: derived from the GPU's memory tier"),
    "context_length": Knob("context_length", None, integer(1, 2**40)),
    "page_size": Knob("page_size", 1, integer(1, 2**20)),
    "kv_cache_dtype": Knob("kv_cache_dtype", "auto", kv_dtype_choice(KV_DTYPES)),
    "max_total_tokens": Knob("max_total_tokens", None, integer(1)),
    "max_running_requests": Knob("max_running_requests", None, integer(1, 2**31)),
    "chunked_prefill_size": Knob("chunked_prefill_size", None, integer(1, 2**31)),
    "max_prefill_tokens": Knob("max_prefill_tokens", DEFAULT_MAX_PREFILL_TOKENS, integer(1, 2**31)),
    "cuda_graph_max_bs": Knob("cuda_graph_max_bs", None, integer(1, 2**20)),
    "disable_cuda_graph": Knob("disable_cuda_graph", False, boolean),
    "swa_full_tokens_ratio": Knob("swa_full_tokens_ratio", 0.8, positive_number),
    "mamba_full_memory_ratio": Knob("mamba_full_memory_ratio", 0.9, positive_number),
    "max_mamba_cache_size": Knob("max_mamba_cache_size", None, integer(1)),
    "quantization": Knob("quantization", None, quantization_choice,
                         "weight scheme (sglang --quantization); default: the checkpoint's"),
    "dtype": Knob("dtype", "auto", model_dtype_choice, "model dtype (sglang --dtype)"),
}


FIRST_RELEASE, LAST_RELEASE = (0, 4, 3), (0, 5, 23)


def release_family(release: str) -> str:
    """SGLang releases 0.4.3–0.5.23 run as the "0.5.23" profile, the rules that changed between
    them following the release (``compute``); anything else is refused."""
    text = str(release).strip()
    if text in VERSIONS:
        return text
    number = release_number(text)
    if number is None or not FIRST_RELEASE <= number <= LAST_RELEASE:
        raise InputError("version", release, "an SGLang release 0.4.3–0.5.23 (e.g. 0.4.6.post5, 0.5.3) "
                         f"or {VERSIONS[0]}")
    return VERSIONS[0]


def tier(gpu_gib: float, tp: int, release: tuple[int, int, int] = LAST_RELEASE) -> tuple[int, int]:
    """(chunked_prefill_size, cuda_graph_max_bs) by GPU memory (§4.1; 20–35 GiB cards: 2048 tokens
    and 16 (0.5.3–0.5.4) or 24 (to 0.5.19) graphs below TP 4, server_args.py ``_handle_gpu_memory_settings``)."""
    big = tp >= 4
    if gpu_gib < 20:
        return 2048, 8
    if gpu_gib < 35:
        if release < (0, 5, 20):
            return 2048, 80 if big else 16 if release < (0, 5, 5) else 24
        return 4096, 160 if big else 48
    if gpu_gib < 60:
        return 4096, 160 if big else 32
    if gpu_gib < 160:
        return 8192, 512 if big else 256
    return 16384, 512


# Prefill CUDA-graph capture sizes (tokens): python/sglang/srt/arg_groups/cuda_graph_hook.py
# ``generate_prefill_cuda_graph_batch_sizes``, up to the chunked prefill size (MLA: at most 8192)
PREFILL_GRAPH_SIZES = (tuple(range(4, 33, 4)) + tuple(range(48, 257, 16)) + tuple(range(288, 513, 32))
                       + tuple(range(576, 1025, 64)) + tuple(range(1280, 4097, 256)))
# SGLang's own list of hybrid sliding-window architectures (configs/model_config.py
# ``is_hybrid_swa_model``); Gemma 2/3 opt out (arg_groups/model_overrides/gemma2_gemma3.py:
# ``disable_hybrid_swa_memory``), so their windowed layers hold full-length KV
HYBRID_SWA_TYPES = ("gpt_oss", "llama4", "llama4_text")


def prefill_graph_reserve_mib(chunked: int, *, mla: bool) -> float:
    """``reserve_for_graph_mb``'s prefill part: 8 MiB of non-torch memory per captured size, or
    1.5 GiB with an MLA backend (breakable prefill graphs, on by default on CUDA)."""
    if mla:
        return 1.5 * 1024
    sizes = [n for n in PREFILL_GRAPH_SIZES + tuple(range(4608, chunked + 1, 512)) if n <= chunked]
    return 8 * len(sizes)


OLD_FRACTIONS = ((16, 0.79), (8, 0.81), (4, 0.85), (2, 0.87), (1, 0.88))  # by parallel size, ≤ 0.4.7


def release_mem_fraction(release: tuple[int, int, int], gpu_mem_bytes: int, *, tp: int, pp: int) -> float | None:
    """The default ``mem_fraction_static`` of releases before 0.5.3 (server_args.py ``__post_init__``),
    None from 0.5.3 (``auto_mem_fraction``): 0.4.3–0.4.5 by TP size alone; 0.4.6–0.4.7 by TP × PP
    on cards up to 80 GiB, then 0.79 above 180,000 MiB (0.4.7) or ``min(f + 48 GiB · (1 − f) / mem,
    (mem − 18 GiB) / mem)`` above 96 GiB; 0.4.8–0.5.2 a reserve per card class."""
    gpu = gpu_mem_bytes / MiB
    parallel = tp * pp
    if release < (0, 4, 6):
        return next(f for n, f in OLD_FRACTIONS if tp >= n)
    if release < (0, 4, 8):
        f = next(f for n, f in OLD_FRACTIONS if parallel >= n) if gpu <= 81920 else 0.88
        if release >= (0, 4, 7) and gpu > 180 * 1000:
            return 0.79
        if gpu > 96 * 1024:
            return min(f + 48 * 1024 * (1 - f) / gpu, (gpu - 18 * 1024) / gpu)
        return f
    if release < (0, 5, 3):
        if gpu < 35 * 1024:
            reserved = (2.8 + parallel / 10) * 1024
        elif gpu < 90 * 1024:
            reserved = (9.5 + parallel / 2) * 1024
        elif gpu < 160 * 1024:
            reserved = (12 + parallel / 2) * 1024
        else:
            reserved = 32 * 1024
        return round((gpu - reserved) / gpu, 3)
    return None


def vlm_mem_fraction(frac: float, model: ModelSpec, release: tuple[int, int, int], user_set: bool) -> float:
    """The multimodal cut of ``mem_fraction_static`` for the image processing: × 0.95 (to 0.4.7) or
    × 0.90 (0.4.8) even on a fraction the user set (model_runner.py ``model_specific_adjustment``),
    × 0.90 on the default only (0.4.9–0.5.2), then ``adjust_mem_fraction_for_vlm`` (0.5.3 on,
    arg_groups/memory_hook.py): × 0.95 × clamp(1 − 0.1 · (ViT layers · hidden² / (24 · 1024²) − 1),
    0.8, 1.05), the layers ``vision_config.num_hidden_layers`` or 24 where the config has none."""
    if release < (0, 4, 9):
        return frac * (0.95 if release < (0, 4, 8) else 0.90)
    if user_set:
        return frac
    if release < (0, 5, 3):
        return frac * 0.90
    layers = model.vision_config_layers or 24
    ratio = layers * model.vision_hidden_size**2 / (24 * 1024**2)
    return frac * 0.95 * max(0.8, min(1.05, 1.0 - 0.1 * (ratio - 1.0)))


def auto_mem_fraction(gpu_mem_bytes: int, *, tp: int, pp: int, chunked: int, max_bs: int,
                      graphs: bool, prefill_graphs_mib: float = 0.0) -> float:
    """handle_gpu_memory_settings: reserve MiB for activations, graphs and parallel buffers
    (``gpu_mem_bytes``: the card's total as nvidia-smi prints it, ``get_device_memory_capacity``)."""
    gpu_mib = gpu_mem_bytes / MiB
    reserved = (512 + 1.5 * max(chunked, 2048) + tp * pp / 8 * 1024 + (2 * max_bs if graphs else 0)
                + prefill_graphs_mib)
    if gpu_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((gpu_mib - reserved) / gpu_mib, 3)


def compute(setup: Setup, which: str) -> EnginePlan:
    mesh, lay, k = setup.mesh, setup.layout, setup.knobs
    m = apply_model_knobs(setup.model, k["quantization"], k["dtype"])
    derived = m.max_position_embeddings
    context_len = k["context_length"] or derived
    if context_len > derived:
        raise InputError("context_length", context_len,
                         f"at most the derived context_length ({derived}) — SGLang: User-specified "
                         "context_length is greater than the derived context_length; set "
                         "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 to override")
    kv_dtype = KV_DTYPES[k["kv_cache_dtype"]] or default_kv_dtype(m)
    page = k["page_size"]
    geom = geometry(m, lay, kv_cache_dtype=kv_dtype, page_size=page)
    kvs = kv_specs(m, lay.tensor, kv_dtype)
    first = mesh.stats[0]
    # nvidia-smi's memory.total, the smallest over the GPUs (utils get_device_memory_capacity)
    gpu_mem = min(getattr(getattr(d, "spec", None), "memory_bytes", 0) or st.bytes_limit
                  for d, st in zip(mesh.devices, mesh.stats, strict=True))
    release = release_number(setup.release) if setup.release else LAST_RELEASE
    d_chunk, d_bs = tier(gpu_mem / GiB, lay.tensor, release)
    chunked = k["chunked_prefill_size"] or d_chunk
    max_bs = k["cuda_graph_max_bs"] or d_bs
    if k["cuda_graph_max_bs"] is None and k["max_running_requests"] is not None and release >= (0, 5, 22):
        max_bs = min(max_bs, k["max_running_requests"])  # no graph larger than the batch (memory_hook.py)
    graphs = not k["disable_cuda_graph"]
    frac = k["mem_fraction_static"]
    if frac is None:
        frac = release_mem_fraction(release, gpu_mem, tp=lay.tensor, pp=lay.pipeline)
    if frac is None:
        # prefill graphs (0.5.10 on): breakable capture, off for pipeline parallelism and multimodal models
        prefill = graphs and lay.pipeline == 1 and not m.vision_patches_per_item and release >= (0, 5, 10)
        # the decode graphs' 2 MiB a batch size: reserved even with graphs off until 0.5.15
        frac = auto_mem_fraction(gpu_mem, tp=lay.tensor, pp=lay.pipeline, chunked=chunked, max_bs=max_bs,
                                 graphs=graphs or release < (0, 5, 15),
                                 prefill_graphs_mib=prefill_graph_reserve_mib(chunked, mla=m.is_mla)
                                 if prefill else 0.0)
    if m.vision_patches_per_item:
        frac = vlm_mem_fraction(frac, m, release, user_set=k["mem_fraction_static"] is not None)
    link = interconnect(mesh.device_kinds[0])
    context = term("context", CONTEXT, CONTEXT_SOURCE, setup.measured.get("context_bytes"))
    non_torch = term("non_torch", non_torch_band(NAME, setup.version, tensor=lay.tensor, pipeline=lay.pipeline,
                                                 link=link), NON_TORCH_SOURCE, setup.measured.get("non_torch_bytes"))
    # the pre-load reading (min over ranks, all-reduced) comes after the distributed set-up:
    # ModelRunner.init_torch_distributed calls get_available_gpu_memory only once
    # init_distributed_environment and initialize_model_parallel have built the NCCL communicators
    # and custom all-reduce buffers, so they shrink the fraction's base rather than the KV pool
    pre = min(s.bytes_limit - s.bytes_in_use for s in mesh.stats) - context.band.pick(which) \
        - non_torch.band.pick(which)
    per_stage = []
    for s, stage in enumerate(geom.stages):
        terms = [
            context,
            term("weights", Band.exact(torch_param_bytes(m, stage.weight_bytes, stage=s, tensor=lay.tensor)
                                        + rotary_cache_bytes(m)),
                 WEIGHTS_SOURCE, setup.measured.get("weights_bytes")),
            non_torch,
        ]
        if not all(t.measured for t in terms if t.name != "weights"):
            residual = residual_band(NAME, setup.version, lay.tensor, first.bytes_limit)
            terms.append(Term("residual", residual, RESIDUAL_SOURCE))
        nk = NonKV(tuple(terms))
        after = pre - nk.total(which, ("weights", "residual"))
        rest = after - int(pre * (1 - Fraction(str(frac))))
        layers = [kvs[i] for i in stage.layers]
        # the hybrid pool: none before 0.4.10, every windowed model in 0.4.10, SGLang's list from 0.5.1
        hybrid = release >= (0, 4, 10) and (release < (0, 5, 1) or m.model_type in HYBRID_SWA_TYPES)
        full_cell = sum(kv.token_bytes for kv in layers if not (kv.window and hybrid))
        swa_cell = sum(kv.token_bytes for kv in layers if kv.window and hybrid)  # HybridSWAPoolConfigurator
        state = sum(kv.state_bytes for kv in layers)
        per_stage.append((s, nk, after, rest, full_cell, swa_cell, state, layers))
    notes, warnings, error = [], [], None
    mamba_size = None
    tokens_by_stage = []
    for _s, _nk, _after, rest, full_cell, swa_cell, state, _layers in per_stage:
        if state:  # §4.4: the state pool first
            r = k["mamba_full_memory_ratio"]
            size = k["max_mamba_cache_size"] or max(int(rest * r / (1 + r)) // state, 0)
            rest -= size * state
            mamba_size = size if mamba_size is None else min(mamba_size, size)
        cost = full_cell + k["swa_full_tokens_ratio"] * swa_cell
        tokens_by_stage.append(int(rest // cost) // page * page if cost and rest > 0 else 0)
    profiled = min(tokens_by_stage)
    tokens = profiled
    if k["max_total_tokens"] is not None:
        if k["max_total_tokens"] > profiled:
            warnings.append(f"max_total_tokens={k['max_total_tokens']} is larger than the profiled value "
                            f"{profiled}. Use the profiled value instead.")
        tokens = min(profiled, k["max_total_tokens"]) // page * page
    s, nk, after, rest, full_cell, swa_cell, state, layers = min(
        per_stage, key=lambda t: tokens_by_stage[t[0]])
    if rest <= 0:
        least = 1 - Fraction(after) / Fraction(pre) if pre > 0 else 1
        error = (f"Not enough memory: the loaded weights leave no memory for the KV cache at "
                 f"--mem-fraction-static={frac} (after loading {after / GiB:.2f} GB of "
                 f"{pre / GiB:.2f} GB is free); the fraction must exceed {float(least):.3f}. Please "
                 "increase --mem-fraction-static.")
    elif tokens <= 0:
        error = "Not enough memory. Please try to increase --mem-fraction-static."
    if k["max_running_requests"] is not None:
        running = min(k["max_running_requests"], tokens // 2)
        if running < k["max_running_requests"]:
            warnings.append(f"max_running_requests reduced to {running} (half the token pool)")
    else:
        running = min(min(max(int(tokens / context_len * 512), 2048), 4096), tokens // 2)
    if mamba_size is not None:
        if mamba_size <= 0:
            error = error or "Not enough memory for the mamba state cache to serve any request."
        elif running > mamba_size:
            warnings.append(f"max_running_requests is capped by the mamba state cache: {mamba_size}")
            running = mamba_size
    max_req_len = min(context_len - 1, tokens - 1)
    if error is None and max_req_len <= 0:
        error = "Memory pool size is too small"
    if swa_cell and error is None:
        window = max(kv.window for kv in layers)
        swa_tokens = int(tokens * k["swa_full_tokens_ratio"])
        if swa_tokens < window + page:
            error = (f"The SWA pool ({swa_tokens} tokens) cannot hold one request's window "
                     f"({window} + page {page}); increase --swa-full-tokens-ratio.")
    kv_pool = (tokens + page) * (full_cell + int(k["swa_full_tokens_ratio"] * swa_cell))
    req_pool = (running + 1) * (context_len + 4) * 4
    left = after - kv_pool - req_pool - (mamba_size or 0) * state
    arch = ARCH.get(m.model_type, m.model_type)
    dt = default_kv_dtype(m)
    lines = [f"Load weight end. type={arch}, dtype=torch.{dt}, avail mem={after / GiB:.2f} GB, "
             f"mem usage={nk.get('weights') / GiB:.2f} GB."]
    if mamba_size:
        lines.append(f"Mamba Cache is allocated. max_mamba_cache_size: {mamba_size}, state size: "
                     f"{mamba_size * state / GiB:.2f}GB")
    mla = any(kv.replicated_across_tensor for kv in layers)  # MLA latent: one "KV size" line
    if error is None:
        if mla:
            lines.append(f"KV Cache is allocated. #tokens: {tokens}, KV size: {kv_pool / GiB:.2f} GB")
        else:
            half = (tokens + page) * full_cell // 2
            lines.append(f"KV Cache is allocated. #tokens: {tokens}, K size: {half / GiB:.2f} GB, "
                         f"V size: {half / GiB:.2f} GB")
        lines.append(f"Memory pool end. avail mem={left / GiB:.2f} GB")
        lines.append(f"max_total_num_tokens={tokens}, chunked_prefill_size={chunked}, "
                     f"max_prefill_tokens={k['max_prefill_tokens']}, max_running_requests={running}, "
                     f"context_len={context_len}, available_gpu_mem={left / GiB:.2f} GB")
        if tokens < context_len:
            warnings.append(f"the pool ({tokens:,} tokens) is smaller than context_len ({context_len:,}): "
                            "SGLang starts, but a request longer than the pool is rejected at runtime "
                            "(input length exceeds the maximum allowed length)")
    act = activation_band(m, tensor=lay.tensor, kv_heads_per_shard=geom.kv_heads_per_shard, tokens=chunked,
                          sampler_rows=min(max_bs, chunked))
    # SGLang captures one graph per batch size up to cuda_graph_max_bs into one pool: vLLM's
    # estimate of that (sizes 1, 2, 4, multiples of 8 ...), one mode
    graph = capture_graph_band(m, tensor=lay.tensor, kv_heads_per_shard=geom.kv_heads_per_shard,
                               modes=[cudagraph_capture_sizes(max_bs, chunked, max_bs)]).central if graphs else 0
    reserve = pre - int(pre * Fraction(str(frac)))
    if error is None and reserve - req_pool < act.central + graph:
        warnings.append(f"the static reserve ({reserve / GiB:.2f} GB) minus the ReqToTokenPool "
                        f"({req_pool / GiB:.2f} GB) is below the estimated activation peak + CUDA graphs "
                        f"({(act.central + graph) / GiB:.2f} GB; {ACTIVATION_SOURCE}): runtime OOM is "
                        "likely; lower --mem-fraction-static")
    cell = full_cell
    blocks = tokens // page
    per_request = cdiv(context_len, page)
    knobs = {**k, "mem_fraction_static": frac, "context_length": context_len, "chunked_prefill_size": chunked,
             "cuda_graph_max_bs": max_bs, "max_running_requests": running}
    budget = int(pre * Fraction(str(frac)))
    estimated = estimated_flags(notes + lines, (), k["max_total_tokens"] is None or
                                k["max_total_tokens"] >= profiled) if any(
        t.name == "residual" for t in nk.terms) else tuple(False for _ in notes + lines)
    return EnginePlan(
        engine=NAME, version=setup.version, model=m.name, mesh=mesh.describe(), layout=lay.name, knobs=knobs,
        scope="per device", kv_cache_dtype=kv_dtype, block_size=page, kv_bytes_per_token=cell,
        bytes_per_block=cell * page, total_bytes=min(s.bytes_limit for s in mesh.stats), budget_bytes=budget,
        non_kv=nk, non_kv_bytes=nk.total(which), kv_available_bytes=rest, kv_bytes=tokens * cell,
        num_blocks=blocks, usable_blocks=blocks, pool_tokens=tokens, kv_tokens=tokens,
        max_model_len=context_len, max_concurrency=blocks / per_request if per_request else 0.0,
        max_model_len_fit=max(max_req_len, 0), num_replicas=lay.data, starts=error is None, error=error,
        log_lines=tuple(notes + lines), warnings=tuple(warnings), estimated_lines=estimated,
        devices=tuple({"device": str(d), "total_bytes": st.bytes_limit, "pre_load_free_bytes": pre}
                      for d, st in zip(mesh.devices, mesh.stats, strict=True)))


def plan(setup: Setup, band: bool = True) -> EnginePlan:
    return with_band(compute, setup, band)


PROFILE_DOC = __doc__
