"""Every weight tensor of a ModelSpec, with where it lives and how tensor/expert parallelism splits it.

Shapes follow the HF checkpoint (``[out, in]`` for linear layers), so counts match published
parameter totals and safetensors headers tensor by tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from estimator.model_spec import ModelSpec
from meshes.validation import InputError

# how a tensor is split over the tensor-parallel group (and experts over the expert group)
REPLICATED, VOCAB, COLUMN, ROW, KV, EXPERTS = "replicated", "vocab", "column", "row", "kv", "experts"


@dataclass(frozen=True)
class WeightTensor:
    """One named tensor, repeated once per layer in ``layers`` (or once, on the first/last stage)."""

    name: str
    shape: tuple[int, ...]
    split: str
    placement: str = "layer"  # "first" (embedding), "last" (final norm, LM head) or "layer"
    layers: tuple[int, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def copies(self) -> int:
        return len(self.layers) if self.placement == "layer" else 1


def weight_tensors(spec: ModelSpec) -> tuple[WeightTensor, ...]:
    """All weights of ``spec``; layer tensors carry the layer indices that hold them."""
    h, hd, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
    q_out, kv_out = spec.num_attention_heads * hd, spec.num_kv_heads * hd
    every = tuple(range(spec.num_layers))
    dense = tuple(i for i in every if not spec.is_moe_layer(i))
    moe = tuple(i for i in every if spec.is_moe_layer(i))

    out = [WeightTensor("embed_tokens", (spec.vocab_size, h), VOCAB, "first")]
    layer = [
        WeightTensor("input_layernorm", (h,), REPLICATED),
        WeightTensor("post_attention_layernorm", (h,), REPLICATED),
        WeightTensor("q_proj", (q_out, h), COLUMN),
        WeightTensor("k_proj", (kv_out, h), KV),
        WeightTensor("v_proj", (kv_out, h), KV),
        WeightTensor("o_proj", (h, q_out), ROW),
    ]
    if spec.attention_bias:
        layer += [WeightTensor("q_proj.bias", (q_out,), COLUMN),
                  WeightTensor("k_proj.bias", (kv_out,), KV),
                  WeightTensor("v_proj.bias", (kv_out,), KV)]
    if spec.qk_norm:
        layer += [WeightTensor("q_norm", (hd,), REPLICATED), WeightTensor("k_norm", (hd,), REPLICATED)]
    out += [WeightTensor(t.name, t.shape, t.split, "layer", every) for t in layer]
    if dense:
        out += [WeightTensor(n, s, sp, "layer", dense) for n, s, sp in (
            ("mlp.gate_proj", (inter, h), COLUMN), ("mlp.up_proj", (inter, h), COLUMN),
            ("mlp.down_proj", (h, inter), ROW))]
    if moe:
        e, mi = spec.num_experts, spec.moe_intermediate_size
        out += [WeightTensor("mlp.router", (e, h), REPLICATED, "layer", moe),
                WeightTensor("mlp.experts.gate_up_proj", (e, 2 * mi, h), EXPERTS, "layer", moe),
                WeightTensor("mlp.experts.down_proj", (e, h, mi), EXPERTS, "layer", moe)]
        if spec.num_shared_experts:
            si = spec.shared_expert_intermediate_size or mi * spec.num_shared_experts
            out += [WeightTensor(n, s, sp, "layer", moe) for n, s, sp in (
                ("mlp.shared_expert.gate_proj", (si, h), COLUMN),
                ("mlp.shared_expert.up_proj", (si, h), COLUMN),
                ("mlp.shared_expert.down_proj", (h, si), ROW))]
            if spec.shared_expert_gate:
                out.append(WeightTensor("mlp.shared_expert_gate", (1, h), REPLICATED, "layer", moe))
    out.append(WeightTensor("norm", (h,), REPLICATED, "last"))
    if not spec.tie_word_embeddings:
        out.append(WeightTensor("lm_head", (spec.vocab_size, h), VOCAB, "last"))
    return tuple(out)


def parameter_count(spec: ModelSpec) -> int:
    """Total parameters (tied embeddings counted once)."""
    return sum(t.numel * t.copies for t in weight_tensors(spec))


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


def shard_numel(tensor: WeightTensor, spec: ModelSpec, tp: int, ep: int) -> int:
    """Elements of ``tensor`` one device holds under tensor degree ``tp`` and expert degree ``ep``."""
    n = tensor.numel
    if tensor.split == REPLICATED:
        return n
    if tensor.split == VOCAB:  # vocab-parallel: rows padded up to a multiple of tp
        return -(-tensor.shape[0] // tp) * (n // tensor.shape[0])
    if tensor.split == KV:
        return n // spec.num_kv_heads * kv_heads_per_shard(spec.num_kv_heads, tp)
    if tensor.split in (COLUMN, ROW):
        dim = tensor.shape[0] if tensor.split == COLUMN else tensor.shape[-1]
        if dim % tp:
            raise InputError("tensor_parallel_size", tp,
                             f"a divisor of {tensor.name}'s split dimension {dim}")
        return n // tp
    # experts: whole experts over ep devices, the rest of the tensor group splits each expert
    experts = tensor.shape[0]
    if experts % ep:
        raise InputError("expert_parallel_size", ep, f"a divisor of num_experts={experts}")
    inner = max(tp // ep, 1) if tp % ep == 0 else None
    if inner is None and ep % tp:
        raise InputError("expert_parallel_size", ep,
                         f"a divisor or a multiple of tensor_parallel_size={tp}")
    inner = inner or 1
    width = tensor.shape[1] if tensor.name.endswith("gate_up_proj") else tensor.shape[2]
    if width % inner:
        raise InputError("tensor_parallel_size", tp,
                         f"a split of {tensor.name}'s width {width} into {inner} even parts")
    return n // ep // inner
