"""Reference cases R1–R8 (public start-up logs, sources below) through the engine profiles.

Two checks per case where the log allows them:
- exact: from the KV bytes (or block count) the log gives, the profile's block arithmetic must
  print the engine's own lines character for character (blocks, tokens, concurrency, errors);
  logged GiB figures are rounded, so the test also checks the logged count lies in the window of
  counts that rounding allows;
- config + card: from the model config, the catalog card and the engine's knobs alone (plus the
  component sizes the log itself states, where the case says so) the KV tokens must be within 3 %.

| case | exact | config + card |
|---|---|---|
| R1 vLLM V0, Llama-3.1-8B, RTX 3090, 20000 | 1952 blocks, 1.56x | 1967 blocks, +0.8 % |
| R2 same, 29000 | error text, 23648 | 1493 blocks, +1.0 %, fails to start |
| R3 vLLM, Qwen3-1.7B, 24 GB | 175,856 tokens | n/a: no 24 GB card gives 18.78 GiB at util 0.9 |
| R4 vLLM TP4 H100 | 178,880 (min over ranks) | n/a: the run had LMCache buffers |
| R4 SGLang TP4 H100, 0.93 | 367,404, K/V 8.23 GB | +1.2 % (fp8-block weights from the config) |
| R5 TRT engine, 0.5B int8, A4000 | 4.53 GiB (395776) | −1.2 % (logged engine/buffer sizes) |
| R6 TRT engine, 7B fp16 KV, A100 | 69524783104 B, 132608 | −0.1 % (logged engine size) |
| R7 tpu-inference v6e-4 | 811,008 tokens, 198.00x | exact (legacy), −1.5 % (0.32.0) |
| R8 tpu-inference v5e-8 | error, 16.00 GiB, 5632 | n/a: 0.71 GiB came from a fixed one-chip bug |
"""

from __future__ import annotations

import math

import pytest

from estimator import ModelSpec
from estimator.core.geometry import geometry
from estimator.core.layout import Layout
from estimator.engines import engine_plan
from estimator.model.hf_config import load_hf_config
from meshes import CATALOG, DeviceMesh, SimulatedDevice

GiB, MiB = 2**30, 2**20


def within(got: int, logged: int, pct: float = 3.0) -> bool:
    return abs(got / logged - 1) * 100 <= pct


def rounding_window(gib: float, unit_bytes: int, *, ceil: bool = False, per: int = 1) -> range:
    """Counts of ``unit_bytes`` consistent with a value logged as ``gib`` to two decimals."""
    lo, hi = (gib - 0.005) * GiB, (gib + 0.005) * GiB
    f = math.ceil if ceil else math.floor
    return range(f(lo / unit_bytes / per), f(hi / unit_bytes / per) + 1)


QWEN3_17B = ModelSpec(  # R3: 28 L, 8 KV heads, head_dim 128 (Qwen/Qwen3-1.7B config.json)
    name="Qwen3-1.7B", model_type="qwen3", num_layers=28, hidden_size=2048, num_attention_heads=16,
    num_kv_heads=8, head_dim=128, vocab_size=151936, intermediate_size=6144, max_position_embeddings=40960,
    tie_word_embeddings=True, qk_norm=True)
QWEN25_05B = ModelSpec(  # R5: 24 L, 2 KV heads, head_dim 64 (Qwen2.5-Coder-0.5B)
    name="Qwen2.5-Coder-0.5B", model_type="qwen2", num_layers=24, hidden_size=896, num_attention_heads=14,
    num_kv_heads=2, head_dim=64, vocab_size=151936, intermediate_size=4864, max_position_embeddings=32768,
    tie_word_embeddings=True, attention_bias=True)
LLAMA3_8B = ModelSpec(  # R7: Llama-3-8B class (32 L, 8 KV heads, 128), max_position 8192
    name="Meta-Llama-3-8B", model_type="llama", num_layers=32, hidden_size=4096, num_attention_heads=32,
    num_kv_heads=8, head_dim=128, vocab_size=128256, intermediate_size=14336, max_position_embeddings=8192)


# ----------------------------------------------------------------------------- R1, R2
R1_BLOCK = 16 * 131_072  # 16 tokens × 131,072 B/token


def test_r1_exact():
    assert 1952 in rounding_window(3.81, R1_BLOCK)
    # V0 has no kv_cache_memory_bytes (0.10.2): pin the logged pool by its block count
    p = engine_plan("llama-3.1-8b", "1xRTX3090-24GB", engine="vllm", version="v0", max_model_len=20000,
                    num_gpu_blocks_override=1952)
    assert p.starts and p.num_blocks == 1952 and p.kv_tokens == 1952 * 16
    assert "# GPU blocks: 1952, # CPU blocks: 2048" in p.log_lines
    assert "Maximum concurrency for 20000 tokens per request: 1.56x" in p.log_lines  # 1952·16/20000


def test_r1_config_and_card():
    p = engine_plan("llama-3.1-8b", "1xRTX3090-24GB", engine="vllm", version="v0", gpu_memory_utilization=0.9,
                    max_model_len=20000)
    assert p.starts and within(p.num_blocks, 1952)
    assert ("the current vLLM instance can use total_gpu_memory (23.58GiB) x gpu_memory_utilization "
            "(0.90) = 21.22GiB") in p.log_lines
    assert p.log_lines[1].startswith("model weights take 14.99GiB;")  # logged: 14.99 GB
    assert abs(p.non_kv.get("activation") / GiB - (17.06 - 14.99)) < 0.02  # logged peak torch − weights


def test_r2_exact():
    assert 1478 in rounding_window(2.89, R1_BLOCK)
    p = engine_plan("llama-3.1-8b", "1xRTX3090-24GB", engine="vllm", version="v0", max_model_len=29000,
                    num_gpu_blocks_override=1478)
    assert not p.starts
    assert p.error == ("The model's max seq len (29000) is larger than the maximum number of tokens that can "
                       "be stored in KV cache (23648). Try increasing `gpu_memory_utilization` or decreasing "
                       "`max_model_len` when initializing the engine.")


def test_r2_config_and_card():
    p = engine_plan("llama-3.1-8b", "1xRTX3090-24GB", engine="vllm", version="v0", max_model_len=29000)
    assert not p.starts and within(p.num_blocks, 1478)
    assert abs(p.non_kv.get("activation") / GiB - (17.98 - 14.99)) < 0.02
    assert "is larger than the maximum number of tokens that can be stored in KV cache" in p.error


# ----------------------------------------------------------------------------- R3
R3_BLOCK = 16 * 28 * 8 * 128 * 2 * 2  # 16 × 114,688 B


def test_r3_exact():
    assert 28 * 8 * 128 * 2 * 2 == 114_688
    assert 10_991 in rounding_window(18.78, R3_BLOCK)
    for version in ("0.2x", "0.33"):
        p = engine_plan(QWEN3_17B, "1xRTX4090-24GB", engine="vllm", version=version, max_num_seqs=1,
                        max_model_len=1024, kv_cache_memory_bytes=10_991 * R3_BLOCK)
        assert p.kv_tokens == 175_856 and p.num_blocks == 10_991
        assert any(line.startswith("GPU KV cache size: 175,856 tokens") for line in p.log_lines)


def test_r3_needs_more_than_util_09_on_any_24gb_card():
    # 18.78 GiB of KV after 3.21 GiB of weights needs > 21.99 GiB of budget: more than 0.9 × any 24 GB card
    for card in ("RTX3090-24GB", "RTX4090-24GB", "L4-24GB", "A10G-24GB"):
        p = engine_plan(QWEN3_17B, f"1x{card}", engine="vllm", version="0.2x", max_num_seqs=1,
                        max_model_len=1024, gpu_memory_utilization=0.9, band=False)
        assert p.budget_bytes - p.non_kv.get("weights") < 18.78 * GiB


# ----------------------------------------------------------------------------- R4
R4_TOKEN = 94 * 1 * 128 * 2 * 2  # 94 L × (4 KV heads / TP4) × 128 × K,V × bf16 = 48,128 B


def test_r4_vllm_exact_min_over_ranks():
    assert R4_TOKEN == 48_128
    block = 16 * R4_TOKEN
    spec = CATALOG["H100-80GB"]
    weights = math.ceil(spec.usable_bytes * 0.9) - int(8.11 * GiB)  # rank 0 logs 8.11 GiB
    tight = math.ceil((weights + 11_180 * block + block // 2) / 0.9)  # a rank with 11,180.5 blocks of room
    devices = [SimulatedDevice(i, spec, bytes_limit=spec.usable_bytes if i < 3 else tight) for i in range(4)]
    mesh = DeviceMesh.from_devices(devices)
    q235 = ModelSpec(name="Qwen3-235B-A22B-FP8", model_type="qwen3_moe", num_layers=94, hidden_size=4096,
                     num_attention_heads=64, num_kv_heads=4, head_dim=128, vocab_size=151936,
                     intermediate_size=12288, max_position_embeddings=40960, qk_norm=True, num_experts=128,
                     num_experts_per_token=8, moe_intermediate_size=1536)
    p = engine_plan(q235, mesh, "tp4", engine="vllm", version="0.2x", gpu_memory_utilization=0.9,
                    weights_bytes=weights, activation_bytes=0, non_torch_bytes=0, cuda_graph_bytes=0)
    assert int(8.11 * GiB) // block == 11_308  # rank 0 alone would give 180,928 tokens
    assert p.num_blocks == 11_180 and "GPU KV cache size: 178,880 tokens" in p.log_lines


def test_r4_sglang_exact():
    k_bytes = (367_404 + 1) * R4_TOKEN // 2  # the pool holds size + one page; K is half of each token
    assert f"{k_bytes / GiB:.2f}" == "8.23"
    q235 = ModelSpec(name="Qwen3-235B-A22B-FP8", model_type="qwen3_moe", num_layers=94, hidden_size=4096,
                     num_attention_heads=64, num_kv_heads=4, head_dim=128, vocab_size=151936,
                     intermediate_size=12288, max_position_embeddings=40960, qk_norm=True, num_experts=128,
                     num_experts_per_token=8, moe_intermediate_size=1536, weight_quant="fp8_block")
    p = engine_plan(q235, "4xH100-80GB", "tp4", engine="sglang", mem_fraction_static=0.93,
                    max_total_tokens=367_404)
    assert "KV Cache is allocated. #tokens: 367404, K size: 8.23 GB, V size: 8.23 GB" in p.log_lines
    assert p.kv_bytes_per_token == R4_TOKEN


def test_r4_sglang_config_and_card(hf_config):
    q235 = load_hf_config(hf_config("Qwen/Qwen3-235B-A22B-FP8"))
    assert q235.weight_quant == "fp8_block"
    weights = geometry(q235, Layout(tensor=4), page_size=1).stages[0].weight_bytes
    assert 54 * GiB < weights < 56 * GiB  # fp8 experts and projections, bf16 embeddings and LM head
    p = engine_plan(q235, "4xH100-80GB", "tp4", engine="sglang", mem_fraction_static=0.93)
    assert p.starts and within(p.kv_tokens, 367_404)


# ----------------------------------------------------------------------------- R5, R6
def test_r5_exact():
    bpt = 24 * 2 * 64 * 2 * 2
    assert bpt == 12_288
    assert 12_368 in rounding_window(4.53, bpt, ceil=True, per=32)
    p = engine_plan(QWEN25_05B, "1xRTXA4000-16GB", engine="trtllm", version="trt-engine",
                    max_gpu_total_bytes=395_776 * bpt)
    assert "[MemUsageChange] Allocated 4.53 GiB for max tokens in paged KV cache (395776)." in p.log_lines
    assert "Number of blocks in KV cache primary pool: 12368" in p.log_lines


def test_r5_config_and_card_with_logged_buffers():
    # the log states: engine 875 MiB, execution context 773.51 MiB, runtime buffers 2.66 GB, decoder 5.76 GB
    p = engine_plan(QWEN25_05B, "1xRTXA4000-16GB", engine="trtllm", version="trt-engine",
                    weights_bytes=875 * MiB, activation_bytes=int(773.51 * MiB + 2.66 * GiB),
                    non_torch_bytes=int(5.76 * GiB))
    assert p.starts and within(p.pool_tokens, 395_776)


def test_r6_exact():
    assert 132_608 * 32 * 32 * 128 * 2 * 2 == 69_524_783_104
    # the logged bytes as the KV budget (a cap above what free memory allows would not bind)
    p = engine_plan("llama-2-7b", "1xA100-80GB", engine="trtllm", version="trt-engine",
                    weights_bytes=6683 * MiB, activation_bytes=0, non_torch_bytes=0,
                    max_gpu_total_bytes=69_524_783_104)
    assert "Allocate 69524783104 bytes for k/v cache." in p.log_lines
    assert "Using 132608 tokens in paged KV cache." in p.log_lines
    assert "[MemUsageChange] Allocated 64.75 GiB for max tokens in paged KV cache (132608)." in p.log_lines


def test_r6_config_and_card_with_logged_engine():
    # GPU 6683 MiB after engine and execution context (logged); trtllm-build --max_batch_size 1
    # --max_input_len 4096 --max_output_len 1024 --max_num_tokens 4096 --max_beam_width 5
    p = engine_plan("llama-2-7b", "1xA100-80GB", engine="trtllm", version="trt-engine",
                    weights_bytes=6683 * MiB, max_batch_size=1, max_num_tokens=4096, max_beam_width=5,
                    max_seq_len=4096)
    assert p.starts and within(p.pool_tokens, 132_608)


# ----------------------------------------------------------------------------- R7, R8
R7_BLOCK = 32 * 256 * 16 * 128 * 2  # 32 layers × 1 MiB: 256 tokens × 16 K/V slots × 128 × bf16


def test_r7_exact():
    assert MiB == 256 * 16 * 128 * 2
    p = engine_plan(LLAMA3_8B, "v6e-4", engine="tpu", version="legacy", max_model_len=4096,
                    kv_cache_memory_bytes=3168 * R7_BLOCK)
    assert p.block_size == 256 and p.num_blocks == 3168
    assert "GPU KV cache size: 811,008 tokens" in p.log_lines
    assert "Maximum concurrency for 4,096 tokens per request: 198.00x" in p.log_lines
    assert "Init kv-cache | num_layers=32 | shape=(num_blocks, (3168, 256, 16, 128))" in p.log_lines
    assert 3168 * R7_BLOCK / 4 / GiB == 24.75  # per chip, as logged (3.74 → 28.49 GiB)


def test_r7_config_and_card():
    legacy = engine_plan(LLAMA3_8B, "v6e-4", engine="tpu", version="legacy", max_model_len=4096)
    assert legacy.num_blocks == 3168 and legacy.kv_tokens == 811_008  # 0.9 × (Σ limit − weights)
    current = engine_plan(LLAMA3_8B, "v6e-4", engine="tpu", max_model_len=4096)
    assert within(current.kv_tokens, 811_008)  # 0.9 × Σ limit − weights (after PR #734)


def test_r8_exact():
    assert 16 * GiB == 131_072 * 131_072
    p = engine_plan("llama-3.1-8b", "v5e-8", engine="tpu", version="legacy", block_size=256,
                    kv_cache_memory_bytes=int(0.71 * GiB))
    assert not p.starts
    assert ("(16.00 GiB KV cache is needed, which is larger than the available KV cache memory "
            "(0.71 GiB)") in p.error
    assert "the estimated maximum model length is 5632." in p.error  # floor(0.71 GiB / 32 MiB) × 256


def test_r8_fixed_budget_now_fits():
    p = engine_plan("llama-3.1-8b", "v5e-8", engine="tpu", max_model_len=131072)
    assert p.starts and p.pool_tokens >= 131_072


# the measured values that pin every non-KV term each engine charges (per device)
PINNED_ALL = {
    "vllm": dict(weights_bytes=15 * GiB, activation_bytes=GiB, non_torch_bytes=GiB // 4, cuda_graph_bytes=GiB // 2,
                 context_bytes=GiB // 2),
    "sglang": dict(weights_bytes=15 * GiB, non_torch_bytes=GiB // 4, context_bytes=GiB // 2),
    "trtllm": dict(weights_bytes=15 * GiB, activation_bytes=GiB, non_torch_bytes=GiB // 4,
                   cuda_graph_bytes=GiB // 2, context_bytes=GiB // 2),
}


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_estimated_log_lines_are_marked(engine):
    # modelled non-KV terms: the capacity lines are estimates; vLLM's budget line is not
    # (H100: 85,018,542,080 B = 79.18 GiB; × 0.9 = 71.26 GiB, computed by hand)
    modelled = engine_plan("llama-3.1-8b", "1xH100-80GB", engine=engine, band=False)
    assert len(modelled.estimated_lines) == len(modelled.log_lines)
    assert any(modelled.estimated_lines)
    if engine == "vllm":  # V0's budget line is exact (V1 prints no budget line)
        v0 = engine_plan("llama-3.1-8b", "1xH100-80GB", engine=engine, version="v0", band=False)
        budget = ("the current vLLM instance can use total_gpu_memory (79.18GiB) x gpu_memory_utilization "
                  "(0.90) = 71.26GiB")
        assert v0.log_lines[0] == budget and not v0.estimated_lines[0]
        assert not any(line.startswith("the current vLLM instance") for line in modelled.log_lines)
    # every term pinned by a measured value: nothing is an estimate
    pinned = engine_plan("llama-3.1-8b", "1xH100-80GB", engine=engine, **PINNED_ALL[engine])
    assert not any(pinned.estimated_lines)
    assert pinned.tokens_band.low == pinned.tokens_band.high == pinned.kv_tokens
