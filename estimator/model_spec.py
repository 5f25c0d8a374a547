"""ModelSpec: the architecture facts a memory plan needs, read from an HF ``config.json`` as data.

The config is parsed as JSON and never executed: no model code is imported, nothing is fetched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from estimator.dtypes import canonical_dtype, dtype_bytes
from meshes.validation import InputError, check_int

DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")
SUPPORTED_MODEL_TYPES = DENSE_TYPES + MOE_TYPES


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as numbers: enough to count every weight and every KV byte."""

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
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    num_experts: int = 0  # routed experts per MoE layer; 0 for a dense model
    num_experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False  # Qwen2-MoE's sigmoid gate on the shared expert
    first_dense_layers: int = 0  # leading layers with a dense MLP instead of experts

    def __post_init__(self) -> None:
        for f in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
                  "vocab_size", "intermediate_size", "max_position_embeddings"):
            check_int(f"{self.name}.{f}", getattr(self, f))
        for f in ("num_experts", "num_experts_per_token", "moe_intermediate_size",
                  "num_shared_experts", "shared_expert_intermediate_size", "first_dense_layers"):
            check_int(f"{self.name}.{f}", getattr(self, f), minimum=0)
        if self.num_attention_heads % self.num_kv_heads:
            raise InputError(f"{self.name}.num_kv_heads", self.num_kv_heads,
                             f"a divisor of num_attention_heads={self.num_attention_heads}")
        if self.num_experts and not (self.moe_intermediate_size and self.num_experts_per_token):
            raise InputError(f"{self.name}.moe_intermediate_size", self.moe_intermediate_size,
                             "a positive width (and num_experts_per_token) when num_experts > 0")
        if self.first_dense_layers > self.num_layers:
            raise InputError(f"{self.name}.first_dense_layers", self.first_dense_layers,
                             f"at most num_layers={self.num_layers}")
        object.__setattr__(self, "weight_dtype", canonical_dtype(self.weight_dtype, "weight_dtype"))

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def weight_bytes_per_param(self) -> int:
        return dtype_bytes(self.weight_dtype)

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.first_dense_layers

    def with_weight_dtype(self, dtype: str) -> ModelSpec:
        return replace(self, weight_dtype=dtype)

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

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], name: str | None = None) -> ModelSpec:
        """Architecture facts from a parsed HF ``config.json`` (dense and MoE decoders)."""
        return _from_hf(config, name or str(config.get("_name_or_path") or "model"))

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelSpec:
        """Read an HF ``config.json`` from disk as JSON data."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError("model", str(path), "an existing config.json file or a preset name "
                             "(kvfit models lists them)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise InputError("model", str(path), f"a readable UTF-8 JSON file ({err})") from None
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError("model", str(path), f"valid JSON (line {err.lineno}: {err.msg})") \
                from None
        if not isinstance(config, dict):
            raise InputError("model", str(path), "a JSON object (an HF config.json)")
        return cls.from_hf_config(config, name=path.parent.name or path.stem)


def _from_hf(config: Mapping[str, Any], name: str) -> ModelSpec:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError("model_type", model_type,
                         f"one of {', '.join(SUPPORTED_MODEL_TYPES)}")

    def need(key: str, *alternatives: str) -> Any:
        for k in (key, *alternatives):
            if config.get(k) is not None:
                return config[k]
        raise InputError(f"config.json[{key!r}]", None, f"present for model_type {model_type!r}")

    hidden = check_int("hidden_size", need("hidden_size"))
    heads = check_int("num_attention_heads", need("num_attention_heads"))
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    spec: dict[str, Any] = dict(
        name=name, model_type=model_type,
        num_layers=need("num_hidden_layers"), hidden_size=hidden,
        num_attention_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        vocab_size=need("vocab_size"), intermediate_size=need("intermediate_size"),
        max_position_embeddings=need("max_position_embeddings"), weight_dtype=dtype,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", model_type in ("qwen2", "qwen2_moe"))),
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
    )
    if model_type == "mixtral":
        spec.update(num_experts=need("num_local_experts"),
                    num_experts_per_token=need("num_experts_per_tok"),
                    moe_intermediate_size=need("intermediate_size"))
    elif model_type in ("qwen2_moe", "qwen3_moe"):
        sparse_step = config.get("decoder_sparse_step", 1)
        if sparse_step != 1 or config.get("mlp_only_layers"):
            raise InputError("decoder_sparse_step/mlp_only_layers",
                             (sparse_step, config.get("mlp_only_layers")),
                             "1 and [] (every layer an MoE layer)")
        shared = config.get("shared_expert_intermediate_size") or 0
        spec.update(num_experts=need("num_experts"),
                    num_experts_per_token=need("num_experts_per_tok"),
                    moe_intermediate_size=need("moe_intermediate_size"),
                    num_shared_experts=1 if shared else 0,
                    shared_expert_intermediate_size=shared,
                    shared_expert_gate=bool(shared))
    return ModelSpec(**spec)
