"""Embedded model presets, usable offline by name (``kvfit models`` lists them).

Two kinds, one format out: every ``PRESETS[name]`` is a dict of ModelSpec field names (the
project's own format) that ``estimator.model.resolve.load_preset`` turns into a ModelSpec.

* Presets written by hand in that format (``_SPEC_PRESETS``): the first thirteen, each from its
  model's HF config.json (tests check them against the real configs), and the models whose
  family ``estimator.model.hf_config`` has no reader for (MiniMax-M2 and M2.5).
* Presets kept as their HF config.json (``estimator.model.preset_configs``), parsed by the same reader
  as a user's config.json on first use, so a preset says exactly what its config says and costs
  nothing at ``import estimator``.

``PRESET_SOURCES[name]`` names each preset's HF repo id and where its numbers come from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from estimator.model.preset_configs import HF_PRESETS

_LLAMA3 = dict(model_type="llama", num_kv_heads=8, head_dim=128,
               vocab_size=128256, max_position_embeddings=131072, weight_dtype="bfloat16")


def _llama3(**kw: object) -> dict[str, object]:
    return {**_LLAMA3, **kw}


_SPEC_PRESETS: dict[str, dict[str, Any]] = {
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
    # MiniMaxAI/MiniMax-M2.5 (~230 B total, 10 B active), written from its config.json as copied in
    # ai-dynamo/aiconfigurator@095f58a51c aic-core/src/aiconfigurator_core/model_configs/
    # MiniMaxAI--MiniMax-M2.5_config.json, because estimator.model.hf_config has no minimax_m2 reader:
    # 62 layers of full attention (48 query / 8 KV heads of 128), 256 routed experts of width 1536,
    # 8 per token, no shared expert, no dense layer (intermediate_size 1536 is the expert width, and
    # is unused here), sigmoid routing with a correction bias (use_routing_bias), QK norm, untied
    # 200064-token vocabulary, 196608 positions, fp8 weights in 128 x 128 blocks with the config's
    # modules_to_not_convert. Approximations: the config's qk_norm_type "per_layer" normalises the
    # whole q / k projection (48·128 + 8·128 weights per layer) where ModelSpec counts per-head norms
    # (2·128): 0.4 M parameters in all; its MTP modules (use_mtp, 3 modules) are not counted, as for
    # models whose engines do not load them by default.
    "minimax-m2.5": dict(model_type="minimax_m2", num_layers=62, hidden_size=3072,
                         num_attention_heads=48, num_kv_heads=8, head_dim=128, vocab_size=200064,
                         intermediate_size=1536, max_position_embeddings=196608, qk_norm=True,
                         num_experts=256, num_experts_per_token=8, moe_intermediate_size=1536,
                         router_bias=True, weight_quant="fp8_block", quant_block=128,
                         quant_exclude=("gate", "e_score_correction_bias", "lm_head")),
}
# MiniMaxAI/MiniMax-M2, the release M2.5 continues. Its HF config.json (the hub page of
# MiniMaxAI/MiniMax-M2 at refs/pr/57, and the diff of its commit 35c5c79) has the same shape key for
# key: 62 x 3072, 48 / 8 heads of 128, 256 experts of 1536, 8 per token, qk_norm_type per_layer,
# use_routing_bias, vocab 200064, 196608 positions, untied. Its quantization_config opens as M2.5's
# does (activation_scheme dynamic, fmt float8_e4m3fn, quant_method fp8). The part not read here
# (128 x 128 blocks; gate, e_score_correction_bias and lm_head kept in bf16) is M2.5's, and is also the
# fp8 quantization_config that hf-internal-testing/MiniMax-M2-Small dropped in commit fec1feb.
_SPEC_PRESETS["minimax-m2"] = dict(_SPEC_PRESETS["minimax-m2.5"])

_SPEC_SOURCES = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B", "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
    "llama-3.1-405b": "meta-llama/Llama-3.1-405B", "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "mistral-7b-v0.3": "mistralai/Mistral-7B-v0.3", "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B", "qwen3-8b": "Qwen/Qwen3-8B", "qwen3-14b": "Qwen/Qwen3-14B",
    "qwen3-32b": "Qwen/Qwen3-32B", "phi-3-mini-4k": "microsoft/Phi-3-mini-4k-instruct",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-v0.1", "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
    "minimax-m2.5": "MiniMaxAI/MiniMax-M2.5 (config.json copied in ai-dynamo/aiconfigurator@095f58a51c "
                    "aic-core/src/aiconfigurator_core/model_configs/MiniMaxAI--MiniMax-M2.5_config.json)",
    "minimax-m2": "MiniMaxAI/MiniMax-M2 (config.json on its HF page, refs/pr/57; fp8 blocks as carried by "
                  "hf-internal-testing/MiniMax-M2-Small@fec1feb)",
}


class _Presets(Mapping[str, dict[str, Any]]):
    """Preset name → ModelSpec fields (a fresh dict, without ``name``).

    HF-config presets are parsed on first access and cached: ``import estimator`` stays free of
    that work, and a reader error shows up on the preset that needs it, not on every import.
    """

    def __init__(self, specs: Mapping[str, dict[str, Any]], hf: Mapping[str, Any]) -> None:
        clash = sorted(set(specs) & set(hf))
        if clash:
            raise ValueError(f"preset names defined twice: {clash}")
        self._specs, self._hf = specs, hf
        self._parsed: dict[str, dict[str, Any]] = {}

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key in self._specs:
            return dict(self._specs[key])
        if key not in self._hf:
            raise KeyError(key)
        if key not in self._parsed:
            from estimator.model.hf_config import spec_from_hf_config

            fields = spec_from_hf_config(self._hf[key].config, key).to_dict()
            fields.pop("name")
            self._parsed[key] = fields
        return dict(self._parsed[key])

    def __contains__(self, key: object) -> bool:
        return key in self._specs or key in self._hf

    def __iter__(self) -> Iterator[str]:
        yield from self._specs
        yield from self._hf

    def __len__(self) -> int:
        return len(self._specs) + len(self._hf)


PRESETS: Mapping[str, dict[str, Any]] = _Presets(_SPEC_PRESETS, HF_PRESETS)
PRESET_SOURCES: Mapping[str, str] = MappingProxyType({
    **_SPEC_SOURCES,
    **{name: f"{p.hf_id} (config.json: {p.source})" for name, p in HF_PRESETS.items()},
})

DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_MESH = "1xH100-80GB"
