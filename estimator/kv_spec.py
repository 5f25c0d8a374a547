"""KV cache specs, one kind per layer: what one token (or one request) costs on one device.

- full attention: K and V of this shard's KV heads, per token;
- sliding window / chunked: the same per token, but a request holds at most window/page + 1 pages;
- MLA latent: one latent "head" (kv_lora_rank + rope dims) replicated on every tensor shard,
  plus DeepSeek V3.2's indexer keys (fp8 values and an fp32 scale per 128);
- recurrent state (Mamba, Mamba2, gated delta net): conv + SSM state, per request, not per token;
- shared: a layer that reuses an earlier layer's KV holds nothing.
8-bit caches may carry per-block scales: one fp32 per ``scale_block`` values of each head.
"""

from __future__ import annotations

from dataclasses import dataclass

from estimator.dtypes import canonical_dtype, dtype_bytes
from estimator.model_spec import ModelSpec
from estimator.weights import kv_heads_per_shard
from meshes.validation import InputError

FULL, SLIDING, MLA, RECURRENT, SHARED = "full", "sliding", "mla", "recurrent", "shared"
INDEXER_SCALE_BLOCK = 128


@dataclass(frozen=True)
class LayerKV:
    """One layer's KV cost on one device of a tensor group."""

    kind: str
    token_bytes: int = 0  # per token (full, sliding, mla)
    state_bytes: int = 0  # per request (recurrent)
    window: int = 0  # sliding / chunked: tokens a request keeps

    def pages_for(self, tokens: int, page_size: int) -> int:
        """Pages of this layer one request of ``tokens`` tokens holds."""
        if self.kind in (RECURRENT, SHARED):
            return 0
        pages = -(-tokens // page_size)
        if self.kind == SLIDING:
            return min(pages, -(-self.window // page_size) + 1)
        return pages

    def request_bytes(self, tokens: int, page_size: int) -> int:
        """Worst-case bytes of one request of ``tokens`` tokens in this layer."""
        return self.pages_for(tokens, page_size) * page_size * self.token_bytes + self.state_bytes


def _scale_bytes(values: int, dtype: str, scale_block: int | None) -> int:
    if scale_block is None or dtype_bytes(dtype) != 1:
        return 0
    return -(-values // scale_block) * 4


def _recurrent_state(m: ModelSpec, kind: str, tp: int, dtype: str) -> int:
    conv_b = dtype_bytes(dtype)
    ssm_b = dtype_bytes(m.ssm_state_dtype or dtype)
    k = m.ssm_conv_kernel - 1
    if kind == "mamba":  # conv (inner, k) and SSM (inner, d_state), inner split over tp
        inner = m.ssm_inner_size // tp
        return inner * k * conv_b + inner * m.ssm_state_size * ssm_b
    if kind == "mamba2":  # conv over x, B, C; SSM (heads, head_dim, d_state)
        conv = (m.ssm_inner_size + 2 * m.ssm_n_groups * m.ssm_state_size) // tp
        return conv * k * conv_b + m.ssm_n_heads // tp * m.ssm_head_dim * m.ssm_state_size * ssm_b
    conv = (2 * m.linear_key_heads * m.linear_key_dim + m.linear_value_heads * m.linear_value_dim) // tp
    state = m.linear_value_heads // tp * m.linear_value_dim * m.linear_key_dim
    return conv * k * conv_b + state * ssm_b


def layer_kv(m: ModelSpec, tp: int, kv_cache_dtype: str | None = None,
             scale_block: int | None = None) -> tuple[LayerKV, ...]:
    """The KV cost of every layer of ``m`` on one device of a ``tp``-way tensor group."""
    dtype = canonical_dtype(kv_cache_dtype or m.weight_dtype, "kv_cache_dtype")
    width = dtype_bytes(dtype)
    shared_from = m.num_layers - m.kv_shared_layers
    out = []
    for layer in range(m.num_layers):
        kind = m.layer_type(layer)
        if layer >= shared_from:
            out.append(LayerKV(SHARED))
        elif kind in ("mamba", "mamba2", "linear_attention"):
            out.append(LayerKV(RECURRENT, state_bytes=_recurrent_state(m, kind, tp, dtype)))
        elif kind == "mlp_only":
            out.append(LayerKV(SHARED))
        elif m.is_mla:
            latent = m.kv_lora_rank + m.qk_rope_head_dim
            token = latent * width + _scale_bytes(latent, dtype, scale_block)
            if m.index_head_dim:
                token += m.index_head_dim + _scale_bytes(m.index_head_dim, "int8", INDEXER_SCALE_BLOCK)
            out.append(LayerKV(MLA, token_bytes=token))
        else:
            heads = kv_heads_per_shard(m.num_kv_heads, tp)
            token = 2 * heads * (m.head_dim * width + _scale_bytes(m.head_dim, dtype, scale_block))
            if kind == "full_attention":
                out.append(LayerKV(FULL, token_bytes=token))
            else:
                out.append(LayerKV(SLIDING, token_bytes=token, window=m.sliding_window))
    if scale_block is not None and width != 1:
        raise InputError("kv_scale_block", scale_block, f"unset for a {dtype} cache (scales are for 8-bit caches)")
    return tuple(out)
