"""Every weight tensor of a ModelSpec: where it lives, how parallelism splits it, what it costs.

Shapes follow the HF checkpoint (``[out, in]`` for linear layers, ``[experts, out, in]`` for
experts), so counts match published totals and safetensors headers tensor by tensor. Quantised
linear weights are priced with their scales (fp8 blocks, int4 groups with zeros, MXFP4 blocks).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from functools import lru_cache

from estimator.model.spec import ModelSpec
from meshes.validation import InputError

# how a tensor is split over the tensor-parallel group (and experts over the expert group)
REPLICATED, VOCAB, COLUMN, ROW, KV, EXPERTS = "replicated", "vocab", "column", "row", "kv", "experts"


@dataclass(frozen=True)
class WeightTensor:
    """One named tensor, repeated once per layer in ``layers`` (or once on the first/last stage)."""

    name: str
    shape: tuple[int, ...]
    split: str
    placement: str = "layer"  # "first" (embedding, vision), "last" (final norm, LM head, MTP), "layer"
    layers: tuple[int, ...] = ()
    linear: bool = False  # a matmul weight that weight quantisation applies to
    expert_inner_dim: int | None = None  # for experts: the dim the tensor group splits, if any

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def copies(self) -> int:
        return len(self.layers) if self.placement == "layer" else 1


def _t(name: str, shape: tuple[int, ...], split: str, linear: bool = False,
       inner: int | None = None) -> WeightTensor:
    return WeightTensor(name, shape, split, linear=linear, expert_inner_dim=inner)


def _attention(m: ModelSpec) -> list[WeightTensor]:
    h, hd = m.hidden_size, m.head_dim
    if m.is_mla:
        heads, nope, rope, v = m.num_attention_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
        out = []
        if m.q_lora_rank:
            out += [_t("self_attn.q_a_proj", (m.q_lora_rank, h), REPLICATED, True),
                    _t("self_attn.q_a_layernorm", (m.q_lora_rank,), REPLICATED),
                    _t("self_attn.q_b_proj", (heads * (nope + rope), m.q_lora_rank), COLUMN, True)]
        else:
            out.append(_t("self_attn.q_proj", (heads * (nope + rope), h), COLUMN, True))
        out += [_t("self_attn.kv_a_proj_with_mqa", (m.kv_lora_rank + rope, h), REPLICATED, True),
                _t("self_attn.kv_a_layernorm", (m.kv_lora_rank,), REPLICATED),
                _t("self_attn.kv_b_proj", (heads * (nope + v), m.kv_lora_rank), COLUMN, True),
                _t("self_attn.o_proj", (h, heads * v), ROW, True)]
        if m.index_head_dim:  # DeepSeek V3.2 lightning indexer
            ih, n = m.index_head_dim, m.index_n_heads
            out += [_t("self_attn.indexer.wq_b", (n * ih, m.q_lora_rank or h), REPLICATED, True),
                    _t("self_attn.indexer.wk", (ih, h), REPLICATED, True),
                    _t("self_attn.indexer.k_norm", (2 * ih,), REPLICATED),
                    _t("self_attn.indexer.weights_proj", (n, h), REPLICATED)]
        return out
    q_out, kv_out = m.num_attention_heads * hd, m.num_kv_heads * hd
    out = [_t("self_attn.q_proj", (q_out * (2 if m.gated_attention else 1), h), COLUMN, True),
           _t("self_attn.k_proj", (kv_out, h), KV, True), _t("self_attn.v_proj", (kv_out, h), KV, True),
           _t("self_attn.o_proj", (h, q_out), ROW, True)]
    if m.attention_bias:
        out += [_t("self_attn.q_proj.bias", (q_out,), COLUMN), _t("self_attn.k_proj.bias", (kv_out,), KV),
                _t("self_attn.v_proj.bias", (kv_out,), KV)]
    if m.attention_out_bias:
        out.append(_t("self_attn.o_proj.bias", (h,), REPLICATED))
    if m.attention_sinks:
        out.append(_t("self_attn.sinks", (m.num_attention_heads,), COLUMN))
    if m.qk_norm:
        out += [_t("self_attn.q_norm", (hd,), REPLICATED), _t("self_attn.k_norm", (hd,), REPLICATED)]
    return out


def _recurrent(m: ModelSpec, kind: str) -> list[WeightTensor]:
    h, k = m.hidden_size, m.ssm_conv_kernel
    if kind == "mamba":  # Mamba-1 (Jamba)
        inner, ds, rank = m.ssm_inner_size, m.ssm_state_size, -(-h // 16)
        return [_t("mamba.in_proj", (2 * inner, h), COLUMN, True), _t("mamba.conv1d", (inner, 1, k), COLUMN),
                _t("mamba.conv1d.bias", (inner,), COLUMN), _t("mamba.x_proj", (rank + 2 * ds, inner), ROW, True),
                _t("mamba.dt_proj", (inner, rank), COLUMN, True), _t("mamba.dt_proj.bias", (inner,), COLUMN),
                _t("mamba.A_log", (inner, ds), COLUMN), _t("mamba.D", (inner,), COLUMN),
                _t("mamba.out_proj", (h, inner), ROW, True)]
    if kind == "mamba2":
        inner, ng, ds, nh = m.ssm_inner_size, m.ssm_n_groups, m.ssm_state_size, m.ssm_n_heads
        conv = inner + 2 * ng * ds
        return [_t("mamba.in_proj", (inner + conv + nh, h), COLUMN, True), _t("mamba.conv1d", (conv, 1, k), COLUMN),
                _t("mamba.conv1d.bias", (conv,), COLUMN), _t("mamba.dt_bias", (nh,), COLUMN),
                _t("mamba.A_log", (nh,), COLUMN), _t("mamba.D", (nh,), COLUMN), _t("mamba.norm", (inner,), COLUMN),
                _t("mamba.out_proj", (h, inner), ROW, True)]
    # gated delta net (Qwen3-Next linear attention)
    key, value = m.linear_key_heads * m.linear_key_dim, m.linear_value_heads * m.linear_value_dim
    nv = m.linear_value_heads
    return [_t("linear_attn.in_proj_qkvz", (2 * key + 2 * value, h), COLUMN, True),
            _t("linear_attn.in_proj_ba", (2 * nv, h), COLUMN, True),
            _t("linear_attn.conv1d", (2 * key + value, 1, k), COLUMN), _t("linear_attn.dt_bias", (nv,), COLUMN),
            _t("linear_attn.A_log", (nv,), COLUMN), _t("linear_attn.norm", (m.linear_value_dim,), REPLICATED),
            _t("linear_attn.out_proj", (h, value), ROW, True)]


def _mlp(m: ModelSpec, moe: bool) -> list[WeightTensor]:
    h = m.hidden_size
    if not moe:
        i = m.intermediate_size
        if not m.gated_mlp:
            out = [_t("mlp.fc1", (i, h), COLUMN, True), _t("mlp.fc2", (h, i), ROW, True)]
            return out + ([_t("mlp.fc1.bias", (i,), COLUMN), _t("mlp.fc2.bias", (h,), REPLICATED)]
                          if m.mlp_bias else [])
        return [_t("mlp.gate_proj", (i, h), COLUMN, True), _t("mlp.up_proj", (i, h), COLUMN, True),
                _t("mlp.down_proj", (h, i), ROW, True)]
    e, mi = m.num_experts, m.moe_intermediate_size
    out = [_t("mlp.router", (e, h), REPLICATED),
           _t("mlp.experts.gate_up_proj", (e, 2 * mi, h), EXPERTS, True, 1),
           _t("mlp.experts.down_proj", (e, h, mi), EXPERTS, True, 2)]
    if m.router_bias:
        out.append(_t("mlp.router.bias", (e,), REPLICATED))
    if m.expert_bias:
        out += [_t("mlp.experts.gate_up_proj.bias", (e, 2 * mi), EXPERTS, False, 1),
                _t("mlp.experts.down_proj.bias", (e, h), EXPERTS)]
    if m.num_shared_experts:
        si = m.shared_expert_intermediate_size or mi * m.num_shared_experts
        out += [_t("mlp.shared_expert.gate_proj", (si, h), COLUMN, True),
                _t("mlp.shared_expert.up_proj", (si, h), COLUMN, True),
                _t("mlp.shared_expert.down_proj", (h, si), ROW, True)]
        if m.shared_expert_gate:
            out.append(_t("mlp.shared_expert_gate", (1, h), REPLICATED))
    return out


def _layer(m: ModelSpec, layer: int) -> list[WeightTensor]:
    kind = m.layer_type(layer)
    norms = [_t(f"norm{j}", (m.hidden_size * (2 if m.layernorm_bias else 1),), REPLICATED)
             for j in range(m.norms_per_layer)]
    if kind == "mlp_only":
        return norms + _mlp(m, m.is_moe_layer(layer))
    mixer = _recurrent(m, kind) if kind in ("mamba", "mamba2", "linear_attention") else _attention(m)
    mlp = [] if kind in ("mamba", "mamba2") and m.model_type in ("mamba", "mamba2", "nemotron_h") \
        else _mlp(m, m.is_moe_layer(layer))
    return norms + mixer + mlp


@lru_cache(maxsize=64)
def weight_tensors(spec: ModelSpec, include_mtp: bool = False) -> tuple[WeightTensor, ...]:
    """All weights of ``spec``; layer tensors carry the layer indices that hold them.

    ``include_mtp`` adds the multi-token-prediction layers (loaded only for MTP speculation).
    Cached: specs are frozen, and sweeps and comparisons plan one model under many layouts.
    """
    h = spec.hidden_size
    by_shape: dict[tuple, list[int]] = {}
    by_kind: dict[tuple[str, bool], list[WeightTensor]] = {}  # a layer's tensors follow from its kind
    for layer in range(spec.num_layers):
        kind = (spec.layer_type(layer), spec.is_moe_layer(layer))
        if kind not in by_kind:
            by_kind[kind] = _layer(spec, layer)
        for t in by_kind[kind]:
            by_shape.setdefault((t.name, t.shape, t.split, t.linear, t.expert_inner_dim), []).append(layer)
    out = [WeightTensor("embed_tokens", (spec.vocab_size, h), VOCAB, "first")]
    if spec.vision_params:
        out.append(WeightTensor("vision_tower", (spec.vision_params,), REPLICATED, "first"))
    out += [WeightTensor(n, s, sp, "layer", tuple(layers), lin, inner)
            for (n, s, sp, lin, inner), layers in by_shape.items()]
    out.append(WeightTensor("norm", (h * (2 if spec.layernorm_bias else 1),), REPLICATED, "last"))
    if not spec.tie_word_embeddings:
        out.append(WeightTensor("lm_head", (spec.vocab_size, h), VOCAB, "last"))
    if spec.lm_head_bias:
        out.append(WeightTensor("lm_head.bias", (spec.vocab_size,), VOCAB, "last"))
    if include_mtp and spec.mtp_layers:
        last = spec.num_layers - 1
        for j in range(spec.mtp_layers):
            extra = [_t("eh_proj", (h, 2 * h), REPLICATED, True), _t("enorm", (h,), REPLICATED),
                     _t("hnorm", (h,), REPLICATED), _t("shared_head.norm", (h,), REPLICATED),
                     _t("embed_tokens", (spec.vocab_size, h), VOCAB),
                     _t("shared_head.head", (spec.vocab_size, h), VOCAB)]
            out += [WeightTensor(f"mtp.{j}.{t.name}", t.shape, t.split, "last", (), t.linear,
                                 t.expert_inner_dim) for t in _layer(spec, last) + extra]
    return tuple(out)


def parameter_count(spec: ModelSpec, include_mtp: bool = False) -> int:
    """Total parameters (tied embeddings counted once; MTP layers only when asked)."""
    return sum(t.numel * t.copies for t in weight_tensors(spec, include_mtp))


def kv_heads_per_shard(num_kv_heads: int, tensor: int) -> int:
    """KV heads each tensor shard holds; below one head per shard, heads are replicated.

    8 heads over TP4 → 2 each; over TP16 → 1 each, every head stored twice. A split that is
    neither (e.g. 8 heads over TP3 or TP12) cannot be laid out and is refused.
    """
    if num_kv_heads % tensor == 0:
        return num_kv_heads // tensor
    if tensor % num_kv_heads == 0:
        return 1
    raise InputError("tensor_parallel_size", tensor,
                     f"a divisor or a multiple of num_kv_heads={num_kv_heads} (so heads split "
                     f"evenly or replicate evenly)")


def _excluded(spec: ModelSpec, name: str) -> bool:
    full = f"model.layers.0.{name}"
    for pattern in spec.quant_exclude:
        pattern = re.sub(r"model\.layers\.(\d+|\*)", "model.layers.0", pattern)
        if fnmatch.fnmatch(full, pattern) or fnmatch.fnmatch(full, pattern + ".*") or pattern == name:
            return True
    return False


def is_quantized(tensor: WeightTensor, spec: ModelSpec) -> bool:
    """Whether the checkpoint stores ``tensor`` quantised (linear weights; MXFP4: experts only)."""
    if not spec.weight_quant or not tensor.linear or _excluded(spec, tensor.name.split(".", 2)[-1]
                                                                if tensor.name.startswith("mtp.")
                                                                else tensor.name):
        return False
    return spec.weight_quant != "mxfp4" or tensor.split == EXPERTS
