"""Engine profiles: each engine's arithmetic recomputed by hand from the engines' code, knob
validation, the MAX profile against the seed API, and knob translation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from estimator import ModelSpec, plan
from estimator.engines import engine_plan, engines_for, translate
from estimator.engines.non_kv import forward_bytes_per_token, rotary_cache_bytes
from estimator.engines.sglang import auto_mem_fraction
from estimator.engines.tpu import page_size_for
from estimator.seed.kv_params import KVCacheParams
from estimator.seed.memory_estimator import (
    ArchConfig,
    KVCacheConfig,
    MAXModelConfig,
    MemoryEstimator,
    PipelineConfig,
)
from meshes import CATALOG, DeviceMesh, InputError

GiB, MiB = 2**30, 2**20
H100 = CATALOG["H100-80GB"].usable_bytes  # 85,018,542,080 B = 81,080 MiB
LLAMA8B_TOKEN = 32 * 8 * 128 * 2 * 2  # 131,072 B: 32 L × 8 KV heads × 128 × (K, V) × bf16
PINNED = dict(weights_bytes=15 * GiB, activation_bytes=GiB, non_torch_bytes=GiB // 4,
              cuda_graph_bytes=GiB // 2)
# 0.27+ (Model Runner V2): the sampler's penalty state at the H100's default 1024 sequences,
# [1024, 128,256] int32 counts and [1024, ⌈128,256 / 32⌉] int32 bit masks
MRV2_STATE = 1024 * (4 * 128_256 + 4 * 4_008)


# ----------------------------------------------------------------------------- non-KV model
def test_forward_bytes_per_token_by_hand():
    # 2 B × (3 · 4096 + max(2·4096 + 2·1024, 3·14336)) = 2 × (12,288 + 43,008)
    model = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm").model
    assert model == "llama-3.1-8b"
    from estimator import load_preset

    spec = load_preset("llama-3.1-8b")
    assert forward_bytes_per_token(spec, 1, 8) == 2 * (3 * 4096 + 3 * 14336) == 110_592
    # R1: 20,000 batched tokens → 2.06 GiB (vLLM #10517 logged 17.06 − 14.99 = 2.07 GiB)
    assert round(20_000 * 110_592 / GiB, 2) == 2.06
    assert rotary_cache_bytes(spec) == 131072 * 128 * 2  # the 32 MiB vLLM counts as weights


def test_bands_are_ordered_and_contain_central():
    for engine in ("vllm", "sglang", "trtllm"):
        p = engine_plan("llama-3.1-8b", "1xH100-80GB", engine=engine)
        assert p.tokens_band.low <= p.kv_tokens <= p.tokens_band.high
        assert p.non_kv.total("low") <= p.non_kv_bytes <= p.non_kv.total("high")
        assert p.tokens_band.low < p.tokens_band.high  # the uncertainty is reported, not hidden


# ----------------------------------------------------------------------------- vLLM
def test_vllm_033_block_arithmetic_by_hand():
    p = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", version="0.33", max_model_len=32768, **PINNED)
    requested = math.ceil(H100 * 92 / 100)  # ceil(total × 0.92), 0.33's default utilization
    avail = requested - (15 * GiB + GiB + GiB // 4 + GiB // 2 + MRV2_STATE)
    block = 16 * LLAMA8B_TOKEN
    blocks = avail // block
    assert (p.budget_bytes, p.kv_available_bytes, p.bytes_per_block) == (requested, avail, block)
    assert p.num_blocks == blocks and p.usable_blocks == blocks - 1  # the null block
    x = blocks / (32768 // 16)
    assert p.kv_tokens == int(x * 32768)
    assert (f"GPU KV cache size: {int(x * 32768):,} tokens, Maximum concurrency for 32,768 tokens per "
            f"request: {x:.2f}x") in p.log_lines
    assert f"Available KV cache memory: {round(avail / GiB, 2)} GiB" in p.log_lines


def test_vllm_fit_check_error_and_estimate_with_null_block():
    # leave 1000.5 blocks: the 0.33 check holds one back, so 999 blocks → 15,984 tokens
    block = 16 * LLAMA8B_TOKEN
    requested = math.ceil(H100 * 0.92)
    weights = requested - GiB - MRV2_STATE - 1000 * block - block // 2
    p = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", version="0.33", weights_bytes=weights,
                    activation_bytes=GiB, non_torch_bytes=0, cuda_graph_bytes=0)
    assert not p.starts
    check = 1000 * block + block // 2 - block
    assert p.error == ("To serve at least one request with the model's max seq len (131072), (16.0 GiB KV "
                       "cache is needed, which is larger than the available KV cache memory "
                       f"({round(check / GiB, 2)} GiB). Based on the available memory, the estimated maximum "
                       "model length is 15984. Try increasing `gpu_memory_utilization` (which also controls "
                       "CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the "
                       "engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more "
                       "details.")
    assert p.max_model_len_fit == 15984
    fitted = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", version="0.33", max_model_len=-1,
                         weights_bytes=weights, activation_bytes=GiB, non_torch_bytes=0, cuda_graph_bytes=0)
    assert fitted.starts and fitted.max_model_len == 15984
    assert any(line.startswith("Auto-fit max_model_len: reduced from 131072 to 15984")
               for line in fitted.log_lines)


def test_vllm_min_over_pipeline_stages():
    # 9 layers over pp2 as vLLM's get_pp_indices splits them → 5 + 4: the 5-layer stage limits
    spec = ModelSpec(name="m9", model_type="llama", num_layers=9, hidden_size=1024, num_attention_heads=8,
                     num_kv_heads=8, head_dim=128, vocab_size=32000, intermediate_size=4096,
                     max_position_embeddings=4096)
    p = engine_plan(spec, "2xH100-80GB", "pp2", engine="vllm", version="0.33", **PINNED)
    stage_block = 16 * 5 * 8 * 128 * 2 * 2
    requested = math.ceil(H100 * 0.92)
    assert p.bytes_per_block == stage_block
    assert p.num_blocks == (requested - (15 * GiB + GiB + GiB // 4 + GiB // 2)) // stage_block


def test_vllm_hybrid_sliding_groups_by_hand(sliding_model):
    # 12 layers, a full layer every 6th (2 full, 10 sliding, window 1024): vLLM groups of 2 layers
    # → 1 full group + 5 sliding groups; a page holds 2 layers; one request of L tokens needs
    # cdiv(L,16) + 5 · (cdiv(min(1023 + T, L), 16) + 1) blocks (§3.3).
    spec = sliding_model
    p = engine_plan(spec, "1xH100-80GB", engine="vllm", version="0.33", max_num_batched_tokens=2048, **PINNED)
    token_layer = 4 * 128 * 2 * 2
    block = 2 * 16 * token_layer
    assert p.bytes_per_block == block
    state = 1024 * (4 * 32000 + 4 * 1000)  # the penalty state over its 32,000-token vocabulary
    avail = math.ceil(H100 * 0.92) - (15 * GiB + GiB + GiB // 4 + GiB // 2 + state)
    per_request = 32768 // 16 + 5 * (-(-(1023 + 2048) // 16) + 1)
    assert per_request == 2048 + 5 * 193
    assert p.num_blocks == avail // block
    assert p.max_concurrency == pytest.approx((avail // block) / per_request)
    assert p.kv_tokens == int((avail // block) / per_request * 32768)


@pytest.mark.parametrize("version, util, ceil, tokens_by", [
    ("0.2x", 0.92, True, "concurrency"),  # 0.20–0.28: utilization 0.92, count from 0.20.1, no null block
    ("0.17", 0.90, True, "blocks"),  # 0.17–0.19: 0.9, num_blocks // groups × block size
    ("0.11", 0.90, False, "blocks"),  # total × util unrounded before request_memory (0.15)
])
def test_vllm_families_differ_where_the_releases_do(version, util, ceil, tokens_by, sliding_model):
    # the sliding-window model above: 6 groups of 2 layers, per request 2048 + 5 × 193 blocks
    spec = sliding_model
    p = engine_plan(spec, "1xH100-80GB", engine="vllm", version=version, max_num_batched_tokens=2048,
                    **PINNED)
    requested = math.ceil(H100 * util) if ceil else int(H100 * util)
    avail = requested - (15 * GiB + GiB + GiB // 4 + GiB // 2)  # a measured graph term is charged as given
    blocks = avail // (2 * 16 * 4 * 128 * 2 * 2)
    assert (p.budget_bytes, p.num_blocks) == (requested, blocks)
    by_concurrency = int(blocks / (2048 + 5 * 193) * 32768)
    by_blocks = blocks // 6 * 16
    assert by_concurrency != by_blocks
    assert p.kv_tokens == (by_concurrency if tokens_by == "concurrency" else by_blocks)
    assert (f"GPU KV cache size: {p.kv_tokens:,} tokens") in p.log_lines  # two lines before 0.28


def test_vllm_startup_free_memory_check():
    mesh = DeviceMesh.from_preset("1xH100-80GB", bytes_in_use=20 * GiB)  # another process holds 20 GiB
    p = engine_plan("llama-3.1-8b", mesh, engine="vllm", version="0.33", max_model_len=8192)
    assert not p.starts and "on startup is less than desired GPU memory utilization" in p.error


# ----------------------------------------------------------------------------- SGLang
def test_sglang_auto_mem_fraction_by_hand():
    # H100 (81,080 MiB) TP1: chunked 8192, graph max_bs 256 → 512 + 1.5·8192 + 1/8·1024 + 2·256 = 13,440 MiB
    assert auto_mem_fraction(H100, tp=1, pp=1, chunked=8192, max_bs=256, graphs=True) == round(
        (81080 - 13440) / 81080, 3) == 0.834
    # TP4: max_bs 512 → 14,336 MiB (above the 10 GiB floor)
    assert auto_mem_fraction(H100, tp=4, pp=1, chunked=8192, max_bs=512, graphs=True) == 0.823
    # SGLang reads nvidia-smi's total (81,559 MiB on an H100 80GB HBM3) and, from 0.5.10, reserves
    # 8 MiB per prefill CUDA-graph size: 4–32 by 4, 48–256 by 16, 288–512 by 32, 576–1024 by 64,
    # 1280–4096 by 256, 4608–8192 by 512 = 8 + 14 + 8 + 8 + 12 + 8 = 58 sizes = 464 MiB
    p = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang")
    assert p.knobs["mem_fraction_static"] == round((81559 - (13440 + 58 * 8)) / 81559, 3) == 0.830


def test_sglang_pool_by_hand():
    p = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang", mem_fraction_static=0.9,
                    context_bytes=GiB // 2, weights_bytes=15 * GiB, non_torch_bytes=GiB, context_length=8192)
    pre = H100 - GiB // 2 - GiB  # read after the distributed set-up: non-torch is already in use
    rest = pre - 15 * GiB - pre // 10  # free after load − pre-load free × (1 − 0.9)
    tokens = rest // LLAMA8B_TOKEN
    assert p.kv_tokens == tokens and p.block_size == 1
    running = min(min(max(int(tokens / 8192 * 512), 2048), 4096), tokens // 2)
    assert p.knobs["max_running_requests"] == running
    half = (tokens + 1) * LLAMA8B_TOKEN // 2
    assert (f"KV Cache is allocated. #tokens: {tokens}, K size: {half / GiB:.2f} GB, "
            f"V size: {half / GiB:.2f} GB") in p.log_lines
    capped = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang", mem_fraction_static=0.9,
                         max_total_tokens=1000)
    assert capped.kv_tokens == 1000


def test_sglang_too_small_fraction_says_so():
    p = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang", mem_fraction_static=0.15)
    assert not p.starts and "increase --mem-fraction-static" in p.error


# ----------------------------------------------------------------------------- TRT-LLM
def test_trtllm_pytorch_by_hand():
    p = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="trtllm", context_bytes=GiB // 2, **PINNED)
    free = H100 - GiB // 2 - (15 * GiB + GiB + GiB // 4 + GiB // 2)
    kv = free * 9 // 10
    tokens = kv // LLAMA8B_TOKEN
    pool = tokens // 32 * 32  # floor to blocks of 32 in the PyTorch backend
    assert p.pool_tokens == pool and p.num_blocks == pool // 32
    assert (f"[MemUsageChange] Allocated {pool * LLAMA8B_TOKEN / GiB:.2f} GiB for max tokens in paged KV "
            f"cache ({pool}).") in p.log_lines
    # max_seq_len is silently lowered to what one sequence can hold
    tight = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="trtllm", max_tokens=4096)
    assert tight.starts and tight.max_model_len_fit == 4096
    assert any("reduced to 4096" in w for w in tight.warnings)


# ----------------------------------------------------------------------------- TPU
def test_tpu_page_size_rule():
    assert page_size_for(4096, 256, mla=False)[0] == 256  # next_pow2(4096) / 16
    assert page_size_for(1000, 256, mla=False)[0] == 64
    assert page_size_for(100, 256, mla=False)[0] == 16
    assert page_size_for(32768, 64, mla=False)[0] == 16
    assert page_size_for(16384, 1024, mla=False)[0] == 128  # SMEM: 1024 seqs × 128 pages ≤ 131,072
    assert page_size_for(4096, 256, mla=True)[0] == 1024


def test_tpu_padding_and_packing():
    # bf16, 2 KV heads per chip: no padding (32 L × 4 chips × 4 slots × 128 × 2 B)
    p = engine_plan("llama-3.1-8b", "v6e-4", engine="tpu", max_model_len=4096)
    assert p.kv_bytes_per_token == 32 * 4 * 4 * 128 * 2 == LLAMA8B_TOKEN
    # fp8 with one KV head per chip: K,V take 2 of 4 packed slots → no saving over bf16
    fp8 = engine_plan("llama-3.1-8b", "v5e-8", engine="tpu", max_model_len=4096, kv_cache_dtype="fp8")
    bf16 = engine_plan("llama-3.1-8b", "v5e-8", engine="tpu", max_model_len=4096)
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token == 32 * 8 * 4 * 128 * 1
    # head_dim 96 padded to 128 (Phi-3-mini: 32 KV heads, 8 per chip on TP4)
    phi = engine_plan("phi-3-mini-4k", "v6e-4", engine="tpu", max_model_len=4096)
    assert phi.kv_bytes_per_token == 32 * 4 * 16 * 128 * 2
    # fewer KV heads than chips: heads padded up to the tensor size (Qwen3-30B-A3B: 4 KV heads on 8 chips)
    qwen = engine_plan("qwen3-30b-a3b", "v5e-8", engine="tpu", max_model_len=4096)
    assert qwen.kv_bytes_per_token == 48 * 8 * 2 * 128 * 2


def test_tpu_budget_by_hand():
    p = engine_plan("llama-3.1-8b", "v6e-4", engine="tpu", max_model_len=4096, weights_bytes=4 * GiB)
    limit = 4 * CATALOG["TPU-v6e"].usable_bytes
    avail = math.floor(limit * 9 / 10) - 4 * 4 * GiB  # util × Σ limit − Σ in use (weights)
    block = 256 * LLAMA8B_TOKEN
    assert p.kv_available_bytes == avail and p.num_blocks == avail // block


# ----------------------------------------------------------------------------- MAX
def test_max_profile_is_the_seed_api():
    mesh = DeviceMesh.from_preset("2xH100-80GB")
    p = engine_plan("llama-3.1-8b", mesh, engine="max", max_length=16384)
    model_cfg = MAXModelConfig(max_length=16384, max_length_is_user_provided=True,
                               kv_cache=KVCacheConfig(0.9, 128))
    params = KVCacheParams("bfloat16", 8, 128, 32, page_size=128, n_devices=2, num_q_heads=32)
    from estimator import load_preset, parameter_count
    from estimator.planning.signals import SIGNAL_BUFFER_BYTES

    weights = parameter_count(load_preset("llama-3.1-8b")) * 2
    est = MemoryEstimator.estimate_memory_footprint(
        PipelineConfig(model=model_cfg), model_cfg, ArchConfig(params, 131072), mesh.devices, weights, 0,
        2 * SIGNAL_BUFFER_BYTES)
    assert p.kv_bytes == est.available_cache_memory
    assert p.max_model_len_fit == est.planned_max_length
    assert p.non_kv_bytes == weights + 2 * SIGNAL_BUFFER_BYTES
    assert p.num_blocks == est.available_cache_memory // params.bytes_per_block


# ----------------------------------------------------------------------------- bad input
def test_unknown_engine_lists_them():
    with pytest.raises(InputError) as e:
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vlm")
    assert "did you mean vllm" in e.value.allowed
    assert all(name in e.value.allowed for name in ("max", "sglang", "trtllm", "tpu"))


@pytest.mark.parametrize(("engine", "knob", "says"), [
    ("sglang", "gpu_memory_utilization", "sglang calls this mem_fraction_static"),
    ("vllm", "mem_fraction_static", "vllm calls this gpu_memory_utilization"),
    ("trtllm", "gpu_memory_utilization", "trtllm calls this free_gpu_memory_fraction"),
    ("vllm", "tokens_per_block", "vllm calls this block_size"),
    ("trtllm", "max_model_len", "trtllm calls this max_seq_len"),
    ("sglang", "kv_cache_memory_bytes", "sglang has no kv bytes knob"),
])
def test_knob_of_another_engine_names_the_equivalent(engine, knob, says):
    with pytest.raises(InputError) as e:
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine=engine, **{knob: 0.9})
    assert says in e.value.allowed and e.value.field == knob


def test_unknown_knob_lists_the_engines_knobs():
    with pytest.raises(InputError) as e:
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", gpu_memory_utilisation=0.9)
    assert "did you mean gpu_memory_utilization" in e.value.allowed


@pytest.mark.parametrize(("engine", "knobs", "says"), [
    ("vllm", {"gpu_memory_utilization": 1.2}, "must be > 0 and ≤ 1"),
    ("vllm", {"gpu_memory_utilization": 0}, "(0.0, 1.0]"),
    ("vllm", {"block_size": 24}, "one of 1, 8, 16, 32, 64, 128, 256"),
    ("vllm", {"max_model_len": 200_000}, "VLLM_ALLOW_LONG_MAX_MODEL_LEN"),
    ("sglang", {"mem_fraction_static": 1.0}, "(0.0, 1.0)"),
    ("sglang", {"context_length": 200_000}, "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"),
    ("trtllm", {"free_gpu_memory_fraction": 1.0}, "Invalid freeMemFraction"),
    ("trtllm", {"tokens_per_block": 24}, "tokens_per_block must be a power of 2"),
    ("max", {"kv_cache_page_size": 100}, "multiple of 128"),
    ("max", {"kv_cache_format": "int4"}, "unrecognized kv_cache_format"),
    ("vllm", {"kv_cache_dtype": "fp4"}, "auto, bfloat16"),
    ("vllm", {"version": "0.1"}, "0.33, 0.2x, 0.17, 0.11, 0.10, 0.9, v0, v0-early"),
])
def test_values_outside_the_engines_range(engine, knobs, says):
    with pytest.raises(InputError) as e:
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine=engine, **knobs)
    assert says in e.value.allowed


def test_engine_and_platform_must_match():
    with pytest.raises(InputError) as e:
        engine_plan("llama-3.1-8b", "v6e-4", engine="vllm")
    assert "tpu" in e.value.allowed
    with pytest.raises(InputError):
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine="tpu")
    assert engines_for("1xH100-80GB") == ("max", "vllm", "sglang", "trtllm")
    assert engines_for("v5e-8") == ("tpu",)


def test_kvfit_dtype_names_work_for_every_engine():
    for engine, knob in (("vllm", "kv_cache_dtype"), ("sglang", "kv_cache_dtype"), ("trtllm", "dtype")):
        p = engine_plan("llama-3.1-8b", "1xH100-80GB", engine=engine, band=False, **{knob: "fp8"})
        assert p.kv_cache_dtype == "float8_e4m3fn" and p.kv_bytes_per_token == LLAMA8B_TOKEN // 2


# ----------------------------------------------------------------------------- translate
def test_translate_vllm_to_sglang_and_back():
    t = translate("vllm", "sglang", 0.9, "llama-3.1-8b", "1xH100-80GB", source_knobs={"max_model_len": 32768},
                  target_knobs={"context_length": 32768})
    assert t.achievable and t.target_tokens >= t.source_tokens
    below = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang", band=False, context_length=32768,
                        mem_fraction_static=round(t.target_value - 1e-4, 4))
    assert below.pool_tokens < t.source_tokens  # the smallest 4-decimal value that does it
    back = translate("sglang", "vllm", t.target_value, "llama-3.1-8b", "1xH100-80GB",
                     source_knobs={"context_length": 32768}, target_knobs={"max_model_len": 32768})
    # 0.34 commits its pool in 2 MiB granules per layer segment: 32 × 2 MiB steps of the budget, so
    # the way back lands within one step (64 MiB of the H100's memory) of 0.9
    step = 32 * 2 * MiB / H100
    assert back.achievable and abs(back.target_value - 0.9) <= 2e-4 + step


def test_translate_trtllm_and_unreachable():
    t = translate("sglang", "trtllm", 0.85, "llama-3.1-8b", "1xH100-80GB")
    assert t.achievable and t.target_knob == "free_gpu_memory_fraction" and t.target_tokens >= t.source_tokens
    far = translate("trtllm", "sglang", 0.99, "llama-3.1-8b", "1xH100-80GB")
    assert far.achievable in (True, False) and far.target_value <= 0.9999
    with pytest.raises(InputError):
        translate("vllm", "sglang", 0.9, "llama-3.1-8b", "1xH100-80GB",
                  target_knobs={"mem_fraction_static": 0.5})


# ----------------------------------------------------------------------------- hybrids and MLA
def _mamba_hybrid() -> ModelSpec:
    # 8 layers: a full-attention layer every 4th, Mamba2 elsewhere (Nemotron-H / Granite-4 style)
    kinds = tuple("full_attention" if i % 4 == 3 else "mamba2" for i in range(8))
    return ModelSpec(name="hyb", model_type="nemotron_h", num_layers=8, hidden_size=1024,
                     num_attention_heads=8, num_kv_heads=2, head_dim=128, vocab_size=32000,
                     intermediate_size=4096, max_position_embeddings=32768, layer_types=kinds,
                     ssm_inner_size=2048, ssm_state_size=128, ssm_conv_kernel=4, ssm_n_groups=1,
                     ssm_n_heads=32, ssm_head_dim=64)


def test_vllm_raises_attention_block_to_cover_the_mamba_page():
    # Mamba2 state per layer (bf16): conv (2048 + 2·1·128)·3·2 B + SSM 32·64·128·2 B
    state = (2048 + 2 * 128) * 3 * 2 + 32 * 64 * 128 * 2
    token = 2 * 2 * 128 * 2  # one attention layer: 2 KV heads × 128 × (K, V) × bf16
    block = 16 * -(-state // (16 * token))  # smallest multiple of 16 with block · token ≥ state
    p = engine_plan(_mamba_hybrid(), "1xH100-80GB", engine="vllm", max_model_len=4096, **PINNED)
    assert p.block_size == block == 528
    assert (f"Setting attention block size to {block} tokens to ensure that attention page size is >= "
            "mamba page size.") in p.log_lines
    # groups of 2 layers (6 mamba, 2 full: 6 ≥ 1.5·2 → group size 2): 3 mamba groups + 1 full group
    assert p.bytes_per_block == 2 * block * token
    per_request = -(-4096 // block) + 3 * 2  # full blocks + 2 state blocks per mamba group (prefix caching)
    assert p.max_concurrency == pytest.approx(p.num_blocks / per_request)


def test_sglang_mamba_pool_first():
    state = 6 * ((2048 + 2 * 128) * 3 * 2 + 32 * 64 * 128 * 2)  # per request, all six Mamba2 layers
    cell = 2 * (2 * 2 * 128 * 2)
    p = engine_plan(_mamba_hybrid(), "1xH100-80GB", engine="sglang", mem_fraction_static=0.9,
                    context_bytes=0, weights_bytes=GiB, non_torch_bytes=0, context_length=4096)
    rest = H100 - GiB - H100 // 10
    size = int(rest * 0.9 / 1.9) // state  # mamba_full_memory_ratio 0.9: budget = rest · r / (1 + r)
    assert p.kv_tokens == (rest - size * state) // cell
    assert any(f"max_mamba_cache_size: {size}" in line for line in p.log_lines)


def test_sglang_sliding_window_pool_ratio(sliding_model):
    spec = sliding_model
    layer = 4 * 128 * 2 * 2
    rest = H100 - GiB - H100 // 10
    # an architecture SGLang pools apart (gpt-oss here): full + 0.8 × sliding per token
    hybrid = engine_plan(replace(spec, model_type="gpt_oss"), "1xH100-80GB", engine="sglang",
                         mem_fraction_static=0.9, context_bytes=0, weights_bytes=GiB, non_torch_bytes=0)
    assert hybrid.kv_tokens == int(rest // (2 * layer + 0.8 * 10 * layer))
    # Gemma 2/3 opt out of the hybrid pool (disable_hybrid_swa_memory): every layer at full length
    p = engine_plan(spec, "1xH100-80GB", engine="sglang", mem_fraction_static=0.9, context_bytes=0,
                    weights_bytes=GiB, non_torch_bytes=0)
    assert p.kv_tokens == rest // (12 * layer)


def test_mla_latent_is_not_divided_by_tp():
    spec = ModelSpec(name="mla", model_type="deepseek_v3", num_layers=4, hidden_size=2048,
                     num_attention_heads=16, num_kv_heads=16, head_dim=192, vocab_size=32000,
                     intermediate_size=8192, max_position_embeddings=32768, kv_lora_rank=512,
                     q_lora_rank=768, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    for engine in ("vllm", "sglang", "trtllm"):
        p = engine_plan(spec, "8xH100-80GB", "tp8", engine=engine, band=False)
        assert p.kv_bytes_per_token == 4 * (512 + 64) * 2  # every rank holds the whole latent
    assert engine_plan(spec, "8xH100-80GB", "tp8", engine="vllm", band=False).block_size == 64
    sgl = engine_plan(spec, "8xH100-80GB", "tp8", engine="sglang")
    assert any("KV size:" in line for line in sgl.log_lines)


def test_measured_value_the_engine_does_not_charge_is_refused():
    with pytest.raises(InputError) as e:
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang", cuda_graph_bytes=GiB)
    assert "sglang does not charge cuda_graph_bytes" in e.value.allowed


def test_engine_plan_takes_the_engines_kv_dtype_and_plan_stays_a_memory_plan():
    fp8 = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", kv_cache_dtype="fp8", max_model_len=8192)
    bf16 = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", max_model_len=8192)
    # fp8 reached the engine: one byte per value, half of bf16's 32 layers × K,V × 8 heads × 128 × 2 B
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2
    with pytest.raises(TypeError):
        plan("llama-3.1-8b", "1xH100-80GB", engine="vllm")  # the engine dispatch is engine_plan()


@pytest.mark.parametrize(("kwargs", "field", "hint"), [
    ({"engine": "vllm", "page_size": 16}, "page_size", "block_size"),
    ({"engine": "vllm", "mem_fraction_static": 0.8}, "mem_fraction_static", "gpu_memory_utilization"),
    ({"engine": "nope"}, "engine", "vllm"),
])
def test_engine_plan_refuses_other_engines_knobs(kwargs, field, hint):
    with pytest.raises(InputError) as err:
        engine_plan("llama-3.1-8b", "1xH100-80GB", **kwargs)
    assert err.value.field == field and hint in str(err.value)


@pytest.mark.parametrize("kwargs", [{"mesh": None}, {"layout": 5}, {"band": "yes"}])
def test_engine_plan_refuses_arguments_of_the_wrong_kind(kwargs):
    args = {"mesh": "1xH100-80GB", "layout": None, **kwargs}
    with pytest.raises(InputError, match=next(iter(kwargs))):
        engine_plan("llama-3.1-8b", args.pop("mesh"), args.pop("layout"), engine="vllm", **args)
