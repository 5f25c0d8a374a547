"""Analytic activation peak per device: the largest live set of one prefill step, and the sampler.

A deliberately simple, stated model (the XLA-backed measurement replaces it where compiled):
one layer's live tensors at ``tokens`` prefill tokens on a tensor shard — the residual stream and
its normed copy (``2 · hidden``) plus the largest of

* attention: ``q + attention output + k + v`` of the shard,
* a dense MLP: ``3 · intermediate / tp`` (gate, up, their product),
* routed experts, dispatched as vLLM's fused MoE does (vllm/model_executor/layers/fused_moe/
  fused_moe.py, ``fused_experts_impl``): for every (token, expert) pair
  ``intermediate_cache1`` (2·I), ``intermediate_cache2`` (I) and ``intermediate_cache3``
  (hidden), i.e. ``tokens · top_k · (3·I + hidden)`` values, I being the expert width a
  device holds (split over the part of the tensor group the experts are not split over);

all in the activation dtype, against the fp32 logits of ``sampler_rows`` sequences over this
shard's vocabulary slice; the larger wins.

Evidence for the MoE term (no fitted constant; one H200, JAX 0.11.2, 2026-12-02,
benchmarks/RESULTS.md §5): XLA's temp bytes of the reference decoder, whose MoE keeps these
caches, over this model: Qwen3-30B-A3B 1.11–1.12× at 2k–16k prefill tokens, Mixtral-8x7B
0.96–1.35× at 2k–16k (the same steps compiled for a full-card pool: 0.81× and 0.97×). The term it
replaces (``3 · moe_intermediate · top_k`` per token, no ``hidden``-wide cache3) read 2.1× under
XLA for Qwen3-30B-A3B in a run of the same day.
"""

from __future__ import annotations

import math
from typing import Any

from estimator.core.geometry import Geometry
from estimator.core.kv_spec import cdiv, maximum
from estimator.core.sharding import layout_stage_mesh

LOGITS_BYTES = 4  # samplers compute logits in fp32


def moe_dispatch_bytes(geom: Geometry, tokens: int, act: int) -> int:
    """Per-device bytes of the fused-MoE caches for ``tokens`` tokens (0 for a dense model).

    The expert width a device holds and the tokens it dispatches come from the sharding table's
    stage mesh: width split over the rest of the tensor group when experts are fewer groups than
    tp; an expert group spanning k replicas gathers their tokens first (estimator.xla).
    """
    m = geom.model
    if not m.is_moe:
        return 0
    mesh = layout_stage_mesh(geom.layout, m)
    sizes = mesh.sizes
    inner = cdiv(m.moe_intermediate_size, math.prod(sizes[a] for a in mesh.expert_width_axes))
    gathered = tokens * math.prod(sizes[a] for a in mesh.expert_group if a in mesh.data_group)
    return gathered * m.num_experts_per_token * (3 * inner + m.hidden_size) * act


def analytic_activation_bytes(geom: Geometry, tokens: int, sampler_rows: Any) -> Any:
    """Per-device activation peak, in bytes, for ``tokens`` batched prefill tokens; ``sampler_rows``
    an int, or an integer array (one peak per row count: the sweep asks for every batch at once)."""
    m, tp = geom.model, geom.layout.tensor
    act = m.weight_bytes_per_param if m.weight_bytes_per_param >= 2 else 2
    q_shard = m.num_attention_heads // tp * m.head_dim
    kv_shard = geom.kv_heads_per_shard * m.head_dim
    attention = tokens * act * (2 * q_shard + 2 * kv_shard)
    dense_layers = m.has_dense_layers
    mlp = tokens * act * 3 * cdiv(m.intermediate_size, tp) if dense_layers else 0
    layer_peak = tokens * act * 2 * m.hidden_size + max(attention, mlp, moe_dispatch_bytes(geom, tokens, act))
    logits = sampler_rows * cdiv(m.vocab_size, tp) * LOGITS_BYTES
    return maximum(layer_peak, logits)
