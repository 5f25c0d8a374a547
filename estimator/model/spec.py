"""ModelSpec: the architecture facts a memory plan needs, as plain numbers.

Enough to count every weight (dense, MoE, MLA, recurrent, quantised) and every KV byte (full,
sliding-window, MLA latent, recurrent state). Read from an HF ``config.json`` by
``estimator.model.hf_config`` (parsed as data, never executed) or written as a preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from estimator.model.dtypes import canonical_dtype, dtype_bytes
from meshes.validation import MAX_BYTES, InputError, check_choice, check_int, plain_text

# what one layer's sequence mixer is; the KV kind follows from it (estimator.core.kv_spec)
ATTENTION_TYPES = ("full_attention", "sliding_attention", "chunked_attention")
RECURRENT_TYPES = ("mamba", "mamba2", "linear_attention")
LAYER_TYPES = (*ATTENTION_TYPES, *RECURRENT_TYPES, "mlp_only")
WEIGHT_QUANT = ("", "fp8_block", "fp8", "awq", "gptq", "mxfp4")

# The most layers a spec may have: checked before any per-layer tuple is built (real decoders have
# at most a few hundred; planning cost grows linearly with the count).
MAX_LAYERS = 4096

_POSITIVE = ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
             "vocab_size", "intermediate_size", "max_position_embeddings")
# Ceilings far above any real decoder (the largest today: hidden 16,384, vocabulary 262,208, MLP
# 73,728, 384 experts): a config past them is a typo, and its byte counts would run to 10^30
_FIELD_MAX = {"hidden_size": 2**20, "num_attention_heads": 2**16, "num_kv_heads": 2**16, "head_dim": 2**16,
              "vocab_size": 2**26, "intermediate_size": 2**26, "moe_intermediate_size": 2**26,
              "num_experts": 2**16, "max_position_embeddings": 2**40}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only model as numbers. Fields left at 0 / empty mean "the model has none"."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int  # dense MLP width (and the dense layers of an MoE model)
    max_position_embeddings: int
    weight_dtype: str = "bfloat16"
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q, k, v
    attention_out_bias: bool = False  # bias on o_proj (gpt-oss, phi)
    attention_sinks: bool = False  # one learned sink logit per head (gpt-oss)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3, Gemma 3)
    gated_attention: bool = False  # q_proj also emits an output gate (Qwen3-Next)
    norms_per_layer: int = 2  # Gemma 2/3 have four
    layernorm_bias: bool = False  # LayerNorm (weight and bias) instead of RMSNorm (phi-2)
    gated_mlp: bool = True  # gate/up/down; False: fc1/fc2 (phi-2)
    mlp_bias: bool = False
    lm_head_bias: bool = False
    # mixture of experts
    num_experts: int = 0  # routed experts per MoE layer; 0 for a dense model
    num_experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False  # sigmoid gate on the shared expert (Qwen2-MoE, Qwen3-Next)
    first_dense_layers: int = 0  # leading layers with a dense MLP instead of experts
    moe_layer_step: int = 1  # every n-th layer is MoE, the others dense (Llama-4 interleave_moe_layer_step)
    router_bias: bool = False  # e_score_correction_bias (DeepSeek V3) / router bias (gpt-oss)
    expert_bias: bool = False  # biases on every expert's projections (gpt-oss)
    # per-layer sequence mixers: empty = every layer full attention (or MLA when kv_lora_rank)
    layer_types: tuple[str, ...] = ()
    sliding_window: int = 0  # tokens a sliding/chunked layer attends to
    kv_shared_layers: int = 0  # trailing layers that reuse an earlier layer's KV (no cache)
    # multi-head latent attention (DeepSeek V2/V3, Kimi K2)
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    index_n_heads: int = 0  # DeepSeek V3.2 lightning indexer
    index_head_dim: int = 0
    # recurrent state (Mamba, Mamba2, gated delta net)
    ssm_inner_size: int = 0  # Mamba: expand · hidden
    ssm_state_size: int = 0  # d_state
    ssm_conv_kernel: int = 0
    ssm_n_groups: int = 0  # Mamba2 B/C groups
    ssm_n_heads: int = 0  # Mamba2 heads
    ssm_head_dim: int = 0
    linear_key_heads: int = 0  # gated delta net (Qwen3-Next)
    linear_key_dim: int = 0
    linear_value_heads: int = 0
    linear_value_dim: int = 0
    ssm_state_dtype: str = ""  # "" = the KV cache dtype
    # quantised weights
    weight_quant: str = ""
    quant_block: int = 128  # fp8 block edge / int4 and mxfp4 group size
    quant_exclude: tuple[str, ...] = ()  # tensor-name fragments kept in weight_dtype
    # extra parameters outside the decoder stack
    mtp_layers: int = 0  # multi-token-prediction layers (DeepSeek V3, GLM-4.5)
    vision_params: int = 0  # vision tower + projector, counted on the first stage
    vision_sharded_params: int = 0  # of vision_params: the per-layer matrices TP engines split
    # the vision encoder's shape, for the engines' dummy encoder run (0: no encoder to profile):
    vision_hidden_size: int = 0
    vision_mlp_width: int = 0  # MLP elements live at its peak per position (fc1 + act 2·I; gated 3·I)
    vision_patches_per_item: int = 0  # encoder positions of one largest image (class tokens incl.)
    vision_tokens_per_item: int = 0  # embeddings it hands the language model
    vision_pixels_per_item: int = 0  # values of its pixel tensor (channels × height × width)
    vision_video: bool = False  # also takes videos, which vLLM V0 profiles beside the images (Qwen2.5-VL)
    vision_config_layers: int = 0  # vision_config.num_hidden_layers as written (0: the key is absent)
    # positions of each RoPE cos/sin table the reference code precomputes (() = one table of
    # max_position_embeddings); rope scaling and per-layer-kind bases change it (hf_config.rope_tables)
    rope_positions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not plain_text(self.name).strip():
            raise InputError("model name", self.name, "a non-empty string")
        object.__setattr__(self, "name", plain_text(self.name).strip())  # no ESC/CR reaches a terminal
        check_int(f"{self.name}.num_layers", self.num_layers, maximum=MAX_LAYERS)
        if isinstance(self.layer_types, (str, bytes)) or len(self.layer_types) > MAX_LAYERS:
            raise InputError(f"{self.name}.layer_types", plain_text(self.layer_types, 60),
                             f"a sequence of at most {MAX_LAYERS:,} layer kinds")
        for f in fields(self):  # 8.0 from a config.json becomes 8: counts stay Python ints
            if f.type == "int":
                maximum = _FIELD_MAX.get(f.name, MAX_BYTES)
                object.__setattr__(self, f.name, check_int(f"{self.name}.{f.name}", getattr(self, f.name),
                                                           minimum=int(f.name in _POSITIVE), maximum=maximum))
        if self.num_attention_heads % self.num_kv_heads:
            raise InputError(f"{self.name}.num_kv_heads", self.num_kv_heads,
                             f"a divisor of num_attention_heads={self.num_attention_heads}")
        if self.num_experts and not self.moe_intermediate_size:
            raise InputError(f"{self.name}.moe_intermediate_size", self.moe_intermediate_size,
                             "a positive width when num_experts > 0")
        if self.num_experts and not 1 <= self.num_experts_per_token <= self.num_experts:
            raise InputError(f"{self.name}.num_experts_per_token", self.num_experts_per_token,
                             f"an integer in [1, num_experts={self.num_experts}]")
        check_int(f"{self.name}.moe_layer_step", self.moe_layer_step, maximum=max(self.num_layers, 1))
        if self.first_dense_layers > self.num_layers:
            raise InputError(f"{self.name}.first_dense_layers", self.first_dense_layers,
                             f"at most num_layers={self.num_layers}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise InputError(f"{self.name}.layer_types", f"{len(self.layer_types)} entries",
                             f"one entry per layer (num_layers={self.num_layers})")
        for kind in self.layer_types:
            check_choice(f"{self.name}.layer_types", kind, LAYER_TYPES)
        windowed = {"sliding_attention", "chunked_attention"} & set(self.layer_types)
        if windowed and not self.sliding_window:
            raise InputError(f"{self.name}.sliding_window", self.sliding_window,
                             f"a positive window for {', '.join(sorted(windowed))} layers")
        if self.kv_shared_layers >= self.num_layers:
            raise InputError(f"{self.name}.kv_shared_layers", self.kv_shared_layers,
                             f"fewer than num_layers={self.num_layers}")
        if self.vision_sharded_params > self.vision_params:
            raise InputError(f"{self.name}.vision_sharded_params", self.vision_sharded_params,
                             f"at most vision_params={self.vision_params}")
        if not isinstance(self.rope_positions, (tuple, list)) or len(self.rope_positions) > 8:
            raise InputError(f"{self.name}.rope_positions", plain_text(self.rope_positions, 60),
                             "a sequence of at most 8 table lengths")
        object.__setattr__(self, "rope_positions", tuple(
            check_int(f"{self.name}.rope_positions", positions, maximum=2**40) for positions in self.rope_positions))
        check_choice(f"{self.name}.weight_quant", self.weight_quant, WEIGHT_QUANT)
        object.__setattr__(self, "weight_dtype", canonical_dtype(self.weight_dtype, "weight_dtype"))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "quant_exclude", tuple(self.quant_exclude))

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def weight_bytes_per_param(self) -> int:
        return dtype_bytes(self.weight_dtype)

    def layer_type(self, layer: int) -> str:
        return self.layer_types[layer] if self.layer_types else "full_attention"

    def is_attention_layer(self, layer: int) -> bool:
        return self.layer_type(layer) in ATTENTION_TYPES

    def is_moe_layer(self, layer: int) -> bool:
        """Routed experts in this layer: past the leading dense layers, every ``moe_layer_step``-th
        (HF Llama-4: ``moe_layers = range(step − 1, layers, step)``)."""
        return self.is_moe and layer >= self.first_dense_layers and (layer + 1) % self.moe_layer_step == 0

    @property
    def has_dense_layers(self) -> bool:
        """Some layer has a dense MLP (a dense model, leading dense layers, or interleaved MoE)."""
        return not self.is_moe or self.first_dense_layers > 0 or self.moe_layer_step > 1

    def with_weight_dtype(self, dtype: str) -> ModelSpec:
        return replace(self, weight_dtype=dtype, weight_quant="")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build from the project's own preset format: the field names of this class."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError("model field", unknown[0], f"one of {', '.join(sorted(known))}")
        return cls(**data)


