"""Analytic activation peak per device: the largest live set of one prefill step, and the sampler.

A deliberately simple, stated model (the XLA-backed measurement replaces it where compiled):
one layer's live tensors at ``tokens`` prefill tokens on a tensor shard,
``tokens · act_bytes · (2·hidden + max(qkv + attn_out, 3·intermediate / tp))``, against the
fp32 logits of ``sampler_rows`` sequences over this shard's vocabulary slice; the larger wins.
"""

from __future__ import annotations

from estimator.geometry import Geometry

LOGITS_BYTES = 4  # samplers compute logits in fp32


def analytic_activation_bytes(geom: Geometry, tokens: int, sampler_rows: int) -> int:
    """Per-device activation peak, in bytes, for ``tokens`` batched prefill tokens."""
    m, tp = geom.model, geom.layout.tensor
    act = m.weight_bytes_per_param if m.weight_bytes_per_param >= 2 else 2
    q_shard = m.num_attention_heads // tp * m.head_dim
    kv_shard = geom.kv_heads_per_shard * m.head_dim
    attention = 2 * q_shard + 2 * kv_shard
    inter = max(m.intermediate_size, m.moe_intermediate_size * max(m.num_experts_per_token, 1))
    mlp = 3 * (-(-inter // tp))
    layer_peak = tokens * act * (2 * m.hidden_size + max(attention, mlp))
    logits = sampler_rows * (-(-m.vocab_size // tp)) * LOGITS_BYTES
    return max(layer_peak, logits)
