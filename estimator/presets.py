"""Embedded model presets, in the project's own format (ModelSpec field names), so kvfit runs with
no files and no network. Each entry was written from the model's published architecture facts
(its HF config.json); tests check them against those configs where they are available.
"""

from __future__ import annotations

from types import MappingProxyType

_LLAMA3 = dict(model_type="llama", num_kv_heads=8, head_dim=128,
               vocab_size=128256, max_position_embeddings=131072, weight_dtype="bfloat16")


def _llama3(**kw: object) -> dict[str, object]:
    return {**_LLAMA3, **kw}


PRESETS = MappingProxyType({
    # meta-llama/Llama-3.1-8B: 8.03 B parameters
    "llama-3.1-8b": _llama3(num_layers=32, hidden_size=4096, num_attention_heads=32,
                            intermediate_size=14336),
    # meta-llama/Llama-3.1-70B (Llama-3.3-70B shares the architecture): 70.6 B
    "llama-3.1-70b": _llama3(num_layers=80, hidden_size=8192, num_attention_heads=64,
                             intermediate_size=28672),
    # meta-llama/Llama-3.1-405B: 405.9 B
    "llama-3.1-405b": _llama3(num_layers=126, hidden_size=16384, num_attention_heads=128,
                              intermediate_size=53248),
    # meta-llama/Llama-2-7b-hf: MHA (32 KV heads), fp16 checkpoint
    "llama-2-7b": dict(model_type="llama", num_layers=32, hidden_size=4096,
                       num_attention_heads=32, num_kv_heads=32, head_dim=128, vocab_size=32000,
                       intermediate_size=11008, max_position_embeddings=4096,
                       weight_dtype="float16"),
    # mistralai/Mistral-7B-v0.3 (no sliding window)
    "mistral-7b-v0.3": dict(model_type="mistral", num_layers=32, hidden_size=4096,
                            num_attention_heads=32, num_kv_heads=8, head_dim=128,
                            vocab_size=32768, intermediate_size=14336,
                            max_position_embeddings=32768),
    # Qwen/Qwen2.5-7B: biases on q, k, v
    "qwen2.5-7b": dict(model_type="qwen2", num_layers=28, hidden_size=3584,
                       num_attention_heads=28, num_kv_heads=4, head_dim=128, vocab_size=152064,
                       intermediate_size=18944, max_position_embeddings=131072,
                       attention_bias=True),
    # Qwen/Qwen2.5-72B
    "qwen2.5-72b": dict(model_type="qwen2", num_layers=80, hidden_size=8192,
                        num_attention_heads=64, num_kv_heads=8, head_dim=128, vocab_size=152064,
                        intermediate_size=29568, max_position_embeddings=131072,
                        attention_bias=True),
    # Qwen/Qwen3-8B: q/k RMSNorm
    "qwen3-8b": dict(model_type="qwen3", num_layers=36, hidden_size=4096, num_attention_heads=32,
                     num_kv_heads=8, head_dim=128, vocab_size=151936, intermediate_size=12288,
                     max_position_embeddings=40960, qk_norm=True),
    # Qwen/Qwen3-14B
    "qwen3-14b": dict(model_type="qwen3", num_layers=40, hidden_size=5120, num_attention_heads=40,
                      num_kv_heads=8, head_dim=128, vocab_size=151936, intermediate_size=17408,
                      max_position_embeddings=40960, qk_norm=True),
    # Qwen/Qwen3-32B
    "qwen3-32b": dict(model_type="qwen3", num_layers=64, hidden_size=5120, num_attention_heads=64,
                      num_kv_heads=8, head_dim=128, vocab_size=151936, intermediate_size=25600,
                      max_position_embeddings=40960, qk_norm=True),
    # microsoft/Phi-3-mini-4k-instruct: MHA, 3.8 B, every layer a 2047-token sliding window
    "phi-3-mini-4k": dict(model_type="phi3", num_layers=32, hidden_size=3072,
                          num_attention_heads=32, num_kv_heads=32, head_dim=96, vocab_size=32064,
                          intermediate_size=8192, max_position_embeddings=4096,
                          layer_types=("sliding_attention",) * 32, sliding_window=2047),
    # mistralai/Mixtral-8x7B-v0.1: 8 experts, 2 per token, 46.7 B
    "mixtral-8x7b": dict(model_type="mixtral", num_layers=32, hidden_size=4096,
                         num_attention_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32000,
                         intermediate_size=14336, max_position_embeddings=32768, num_experts=8,
                         num_experts_per_token=2, moe_intermediate_size=14336),
    # Qwen/Qwen3-30B-A3B: 128 experts, 8 per token, 30.5 B
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", num_layers=48, hidden_size=2048,
                          num_attention_heads=32, num_kv_heads=4, head_dim=128,
                          vocab_size=151936, intermediate_size=6144,
                          max_position_embeddings=40960, qk_norm=True, num_experts=128,
                          num_experts_per_token=8, moe_intermediate_size=768),
})

DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_MESH = "1xH100-80GB"
