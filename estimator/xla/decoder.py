"""kvfit's reference decoder: a flax nnx model built from a ModelSpec, sharded by the partitioning table.

One ``Decoder`` is one pipeline stage. Its parameters are exactly ``partitioning.weight_arrays``
for that stage — same global (padded) shapes, same dtypes, same PartitionSpecs over the sharding
table's axes ('data', 'expert', 'tensor') — so the weight bytes XLA sees per device are plan()'s weight bytes per
device. Consecutive layers with identical tensors are stacked into one group (a leading layer dim,
no bytes added) and run with ``lax.scan`` (or unrolled, one group per layer).

The step functions (``prefill``, ``decode``) are written per device (they run inside
``jax.shard_map``): tensor-parallel matmuls with an all-reduce over the tensor group after the
row-split projections, a vocab-parallel embedding and LM head, pages split over the data group,
experts split whole over the expert group (tokens gathered over the replicas it spans) and, when
that group is smaller than the tensor group, each expert's width over the rest. The paged KV pool
``[2 (K, V), layers, pages, page_size, kv_heads, head_dim]`` is the one ``kv_pool_arrays``
describes; it is updated in place and donated by the compiler (compile.py).

What it is, and is not: a memory-faithful stand-in for a serving step (the same weights, the same
pool, the activations a blockwise "flash" attention and a sorted, block-grouped MoE keep live), with
random or zero weights; not a checkpoint-faithful implementation (gate/up halves, RoPE variants,
router normalisation are simplified). Features it cannot express raise ``InputError`` naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from estimator.core.geometry import Geometry
from estimator.core.partitioning import ShardedTensor, bytes_per_device, kv_pool_arrays, weight_arrays
from estimator.core.sharding import AXES, layout_stage_mesh, spec_entry
from meshes.validation import InputError

ATTENTION_BLOCK = 256  # query / key block of the prefill attention (flash-style, bounded scores)
# rows per grouped-matmul block of the MoE dispatch: vLLM's fused_moe get_default_config
# (vllm/model_executor/layers/fused_moe/fused_moe.py) uses BLOCK_SIZE_M = 64 for bf16 batches
# (sorted_token_ids are padded per expert to a multiple of it)
MOE_BLOCK_ROWS = 64
EXPERTS = "mlp.experts."  # table names of the routed experts' stacked tensors
NEG_INF = -1e30

# table names outside the layer stack, by role
EMBED, VISION, FINAL_NORM, LM_HEAD, LM_HEAD_BIAS = (
    "embed_tokens", "vision_tower", "norm", "lm_head", "lm_head.bias")


def unsupported_features(geom: Geometry) -> list[tuple[str, str]]:
    """(field, feature) pairs of ``geom.model`` the reference decoder cannot express yet."""
    m = geom.model
    out = []
    if m.is_mla:
        out.append(("kv_lora_rank", "multi-head latent attention (MLA, kv_lora_rank > 0)"))
    kinds = sorted({m.layer_type(i) for i in range(m.num_layers)} - {"full_attention"})
    for kind in kinds:
        label = {"sliding_attention": "sliding-window attention layers",
                 "chunked_attention": "chunked attention layers",
                 "mlp_only": "MLP-only layers (no sequence mixer)"}.get(kind, f"recurrent '{kind}' layers")
        out.append(("layer_types", label))
    if m.kv_shared_layers:
        out.append(("kv_shared_layers", "layers that reuse an earlier layer's KV"))
    if m.weight_quant:
        out.append(("weight_quant", f"quantised weights ({m.weight_quant}: packed values and scales)"))
    if m.norms_per_layer not in (1, 2, 4):
        out.append(("norms_per_layer", f"{m.norms_per_layer} norms per layer (1, 2 or 4 are expressible)"))
    return out


def check_expressible(geom: Geometry) -> None:
    """Raise InputError naming the first feature of the model the decoder cannot express."""
    missing = unsupported_features(geom)
    if missing:
        field, feature = missing[0]
        value = getattr(geom.model, field)
        raise InputError(f"{geom.model.name}.{field}", value,
                         f"a model the XLA reference decoder can express; {feature} is not "
                         "expressible yet (use activations='analytic')")


@dataclass(frozen=True)
class StageConfig:
    """Static facts of one pipeline stage's step, per device (local shard sizes)."""

    name: str
    stage: int
    first: bool
    last: bool
    layers: tuple[int, ...]
    hidden: int
    head_dim: int
    q_heads: int  # per tensor shard
    kv_heads: int  # per tensor shard (replicated heads included)
    vocab: int  # real vocabulary (padded rows are masked out of sampling)
    tensor: int
    data: int
    expert_axes: tuple[str, ...]  # mesh axes whole experts are split over, major to minor (() = none)
    experts: int
    experts_per_token: int
    gated_mlp: bool
    gated_attention: bool
    attention_sinks: bool
    qk_norm: bool
    norms_per_layer: int
    tie_embeddings: bool  # the LM head is this stage's embedding (pp = 1 and tied)
    page_size: int
    kv_dtype: str
    act_dtype: str
    tensor_axis: str | tuple[str, ...] = "tensor"  # the tensor group's mesh axes
    data_axis: str | tuple[str, ...] = "data"  # the data group's mesh axes
    expert_gather_axes: tuple[str, ...] = ()  # data-group axes an expert group spans (tokens gathered)
    expert_width_axis: str | None = None  # the axis each expert's width is split over, if any
    kv_view: str = ""  # the pool argument's dtype when it is an unsigned view of kv_dtype (XLA:CPU)


@dataclass(frozen=True)
class StageArrays:
    """The arrays of one stage: weights (table rows), how they group, and the pool."""

    weights: tuple[ShardedTensor, ...]
    groups: tuple[tuple[int, ...], ...]  # layer indices of each stacked group
    group_keys: tuple[tuple[str, ...], ...]  # tensor suffixes of each group
    pool: ShardedTensor


def _act_dtype(geom: Geometry) -> str:
    w = geom.model.weight_dtype
    return w if w in ("bfloat16", "float16", "float32") else "bfloat16"


def stage_config(geom: Geometry, stage: int, *, axis_names: Mapping[str, str] | None = None,
                 backend: str = "") -> StageConfig:
    """The stage's static config. ``axis_names`` maps the sharding table's axes ('data', 'expert',
    'tensor') to the compile mesh's (default: the same names). On XLA:CPU the pool argument is typed
    as an unsigned integer of the KV dtype's width (same bytes; values bitcast on the way in and
    out): XLA:CPU would otherwise upcast every bf16/fp8 scatter and gather on the pool to f32,
    copying the whole pool into temp, which no GPU/TPU does."""
    m, layout = geom.model, geom.layout
    s = geom.stages[stage]
    last = stage == len(geom.stages) - 1
    names = {a: a for a in AXES} | dict(axis_names or {})
    mesh = layout_stage_mesh(layout, m)

    def physical(axes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(names[a] for a in axes)

    experts = physical(mesh.expert_group) if m.is_moe else ()
    return StageConfig(
        name=m.name, stage=stage, first=stage == 0, last=last, layers=tuple(s.layers),
        hidden=m.hidden_size, head_dim=m.head_dim, q_heads=m.num_attention_heads // layout.tensor,
        kv_heads=geom.kv_heads_per_shard, vocab=m.vocab_size, tensor=layout.tensor,
        data=layout.data, expert_axes=experts, experts=m.num_experts,
        experts_per_token=m.num_experts_per_token, gated_mlp=m.gated_mlp,
        gated_attention=m.gated_attention, attention_sinks=m.attention_sinks, qk_norm=m.qk_norm,
        norms_per_layer=m.norms_per_layer, tie_embeddings=m.tie_word_embeddings and stage == 0 and last,
        page_size=geom.page_size, kv_dtype=geom.kv_cache_dtype, act_dtype=_act_dtype(geom),
        tensor_axis=spec_entry(physical(mesh.tensor_group)), data_axis=spec_entry(physical(mesh.data_group)),
        expert_gather_axes=tuple(a for a in experts if a in physical(mesh.data_group)),
        expert_width_axis=spec_entry(physical(mesh.expert_width_axes)) if m.is_moe else None,
        kv_view=f"uint{8 * jnp.dtype(geom.kv_cache_dtype).itemsize}" if backend == "cpu" else "")


def stage_arrays(geom: Geometry, stage: int, pages_per_replica: int, *,
                 layer_loop: str = "scan") -> StageArrays:
    """The table's arrays of ``stage``, grouped for the layer loop, checked against geometry()."""
    check_expressible(geom)
    weights = tuple(a for a in weight_arrays(geom) if a.stage == stage)
    table = bytes_per_device(weights, geom).get(stage, 0)
    expected = geom.stages[stage].weight_bytes
    if table != expected:
        raise InputError(f"{geom.model.name}.weights", f"{table:,} B per device in the sharded-array "
                         f"table vs {expected:,} B in geometry()",
                         "a model whose weights the partitioning table prices as geometry() does "
                         "(MTP layers or packed quantised tensors are not expressible yet)")
    pool = next(a for a in kv_pool_arrays(geom, pages_per_replica) if a.stage == stage)
    pool_bytes = bytes_per_device((pool,), geom)[stage]
    if pool_bytes != pages_per_replica * geom.stages[stage].page_bytes:
        raise InputError("kv_cache", f"{pool_bytes:,} B per device for {pages_per_replica} pages",
                         f"pages of {geom.stages[stage].page_bytes:,} B as geometry() prices them "
                         "(KV scales or grouped pages are not expressible yet)")
    by_layer: dict[int, list[ShardedTensor]] = {}
    for a in weights:
        if a.name.startswith("layers."):
            by_layer.setdefault(int(a.name.split(".")[1]), []).append(a)
    groups: list[list[int]] = []
    signature = None
    for layer in geom.stages[stage].layers:
        sig = tuple(sorted((a.name.split(".", 2)[2], a.shape, a.spec, a.dtype) for a in by_layer[layer]))
        if layer_loop == "scan" and groups and sig == signature:
            groups[-1].append(layer)
        else:
            groups.append([layer])
        signature = sig
    keys = tuple(tuple(sorted(a.name.split(".", 2)[2] for a in by_layer[g[0]])) for g in groups)
    return StageArrays(weights, tuple(tuple(g) for g in groups), keys, pool)


# ------------------------------------------------------------------ the nnx module
def _param(shape: tuple[int, ...], dtype: str, spec: tuple) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, jnp.dtype(dtype)), out_sharding=spec, eager_sharding=False)


class Decoder(nnx.Module):
    """One pipeline stage of the reference decoder; parameters are the table's arrays.

    Build abstractly with ``nnx.eval_shape(lambda: Decoder(cfg, arrays))``; every ``nnx.Param``
    carries the table's logical PartitionSpec as ``out_sharding`` metadata.
    """

    def __init__(self, cfg: StageConfig, arrays: StageArrays) -> None:
        self.cfg = cfg
        by_name = {a.name: a for a in arrays.weights}

        def param(name: str) -> nnx.Param | None:
            a = by_name.get(name)
            return None if a is None else _param(a.shape, a.dtype, a.spec)

        self.embed = param(EMBED)
        self.vision = param(VISION)  # held (and counted) only: the decoder runs text
        self.final_norm = param(FINAL_NORM)
        self.lm_head = param(LM_HEAD)
        self.lm_head_bias = param(LM_HEAD_BIAS)
        groups = []
        for layers, keys in zip(arrays.groups, arrays.group_keys, strict=True):
            params = {}
            for key in keys:
                a = by_name[f"layers.{layers[0]}.{key}"]
                params[key] = _param((len(layers), *a.shape), a.dtype, (None, *a.spec))
            groups.append(nnx.Dict(params))
        self.groups = nnx.List(groups)
        self.group_layers = tuple(tuple(i - cfg.layers[0] for i in g) for g in arrays.groups)

    # -------------------------------------------------------------- steps (per device)
    def prefill(self, pool, x_in, positions, segments, slots, sample_index):
        """Prefill ``T`` packed tokens of this replica; sample one token per sequence.

        ``x_in``: token ids [T] (first stage) or hidden states [T, hidden]; ``slots``: where each
        token's K/V goes in this replica's pages (page · page_size + offset); ``sample_index``:
        the last token of each sequence [S]. Returns (next tokens [S] or hidden [T, h], pool).
        """
        cfg = self.cfg
        x = self._embed(x_in) if cfg.first else x_in.astype(cfg.act_dtype)
        pages, offsets = slots // cfg.page_size, slots % cfg.page_size

        def attend(p, layer, pool, q, k, v):
            pool = self._write(pool, layer, pages, offsets, k, v)
            return pool, _flash_prefill(q, k, v, segments, p.get("self_attn.sinks"))

        x, pool = self._layers(x, pool, positions, attend)
        if not cfg.last:
            return x, pool
        return self._sample(x[sample_index]), pool

    def decode(self, pool, x_in, positions, page_table):
        """One decode token for each of ``B`` sequences of this replica.

        ``positions`` [B] are the new tokens' positions (context = position + 1 tokens);
        ``page_table`` [B, P] lists each sequence's pages in order.
        """
        cfg = self.cfg
        x = self._embed(x_in) if cfg.first else x_in.astype(cfg.act_dtype)
        rows = jnp.arange(positions.shape[0])
        pages = page_table[rows, positions // cfg.page_size]
        offsets = positions % cfg.page_size

        def attend(p, layer, pool, q, k, v):
            pool = self._write(pool, layer, pages, offsets, k, v)
            return pool, _paged_decode(q, pool, layer, page_table, positions + 1, cfg.page_size,
                                       p.get("self_attn.sinks"), self._load)

        x, pool = self._layers(x, pool, positions, attend)
        if not cfg.last:
            return x, pool
        return self._sample(x), pool

    # -------------------------------------------------------------- pieces
    def _write(self, pool, layer, pages, offsets, k, v):
        """Scatter K and V of the new tokens into their slots, in place (two scatters: one
        with a size-2 K/V window makes XLA:TPU relayout, i.e. copy, the whole pool)."""
        pool = pool.at[0, layer, pages, offsets].set(self._store(k))
        return pool.at[1, layer, pages, offsets].set(self._store(v))

    def _store(self, kv):
        """K/V values as the pool holds them (bitcast to ``kv_view`` when the pool is so typed)."""
        kv = kv.astype(self.cfg.kv_dtype)
        return jax.lax.bitcast_convert_type(kv, self.cfg.kv_view) if self.cfg.kv_view else kv

    def _load(self, stored, dtype):
        if self.cfg.kv_view:
            stored = jax.lax.bitcast_convert_type(stored, self.cfg.kv_dtype)
        return stored.astype(dtype)

    def _layers(self, x, pool, positions, attend):
        """Run every layer group: one layer alone, or ``lax.scan`` over a stacked group.

        Routed-expert tensors (``mlp.experts.*``) are not sliced by the scan: the body gets the
        whole stacked array and the layer's index in it (an ``_Indexed``), and the expert loop
        reads one expert of one layer at a time. Slicing them per iteration would copy a whole
        layer's experts (1.2 GB for Qwen3-30B-A3B) into temp, which no serving engine does.
        """
        cos, sin = _rope(positions, self.cfg.head_dim)
        for group, layers in zip(self.groups, self.group_layers, strict=True):
            stacked = {k: v[...] for k, v in group.items()}
            whole = {k: v for k, v in stacked.items() if k.startswith(EXPERTS)}
            sliced = {k: v for k, v in stacked.items() if not k.startswith(EXPERTS)}
            if len(layers) == 1:
                p = {k: v[0] for k, v in sliced.items()} | {k: _Indexed(v, 0) for k, v in whole.items()}
                x, pool = self._layer(p, layers[0], x, pool, cos, sin, attend)
                continue

            def body(carry, xs, whole=whole):
                h, pool = carry
                p, layer, index = xs
                p = p | {k: _Indexed(v, index) for k, v in whole.items()}
                h, pool = self._layer(p, layer, h, pool, cos, sin, attend)
                return (h, pool), None

            xs = (sliced, jnp.asarray(layers, jnp.int32), jnp.arange(len(layers), dtype=jnp.int32))
            (x, pool), _ = jax.lax.scan(body, (x, pool), xs)
        return x, pool

    def _layer(self, p, layer, x, pool, cos, sin, attend):
        cfg = self.cfg
        n = cfg.norms_per_layer
        h = _norm(x, p["norm0"])
        a, pool = self._attention(p, layer, h, pool, cos, sin, attend)
        if n == 1:  # parallel block (phi-2): attention and MLP read the same normed input
            return x + a + self._mlp(p, h), pool
        if n == 4:
            a = _norm(a, p["norm1"])
        x = x + a
        m = self._mlp(p, _norm(x, p["norm2" if n == 4 else "norm1"]))
        if n == 4:
            m = _norm(m, p["norm3"])
        return x + m, pool

    def _attention(self, p, layer, x, pool, cos, sin, attend):
        cfg = self.cfg
        t, d, hq, hk = x.shape[0], cfg.head_dim, cfg.q_heads, cfg.kv_heads
        q = _linear(x, p["self_attn.q_proj"], p.get("self_attn.q_proj.bias"))
        gate = None
        if cfg.gated_attention:
            q, gate = jnp.split(q, 2, axis=-1)
        q = q.reshape(t, hq, d)
        k = _linear(x, p["self_attn.k_proj"], p.get("self_attn.k_proj.bias")).reshape(t, hk, d)
        v = _linear(x, p["self_attn.v_proj"], p.get("self_attn.v_proj.bias")).reshape(t, hk, d)
        if cfg.qk_norm:
            q, k = _norm(q, p["self_attn.q_norm"]), _norm(k, p["self_attn.k_norm"])
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        pool, o = attend(p, layer, pool, q.reshape(t, hk, hq // hk, d), k, v)
        o = o.reshape(t, hq * d).astype(x.dtype)
        if gate is not None:
            o = o * jax.nn.sigmoid(gate)
        out = jax.lax.psum(_linear(o, p["self_attn.o_proj"]), cfg.tensor_axis)
        if "self_attn.o_proj.bias" in p:
            out = out + p["self_attn.o_proj.bias"].astype(out.dtype)
        return out, pool

    def _mlp(self, p, x):
        cfg = self.cfg
        if "mlp.router" in p:
            return self._moe(p, x)
        if not cfg.gated_mlp:
            h = jax.nn.gelu(_linear(x, p["mlp.fc1"], p.get("mlp.fc1.bias")))
            out = jax.lax.psum(_linear(h, p["mlp.fc2"]), cfg.tensor_axis)
            return out + p["mlp.fc2.bias"].astype(out.dtype) if "mlp.fc2.bias" in p else out
        h = jax.nn.silu(_linear(x, p["mlp.gate_proj"])) * _linear(x, p["mlp.up_proj"])
        return jax.lax.psum(_linear(h, p["mlp.down_proj"]), cfg.tensor_axis)

    def _moe(self, p, x):
        """Routed experts dispatched as vLLM's fused MoE does, + the shared expert.

        vLLM (vllm/model_executor/layers/fused_moe/moe_align_block_size.py and fused_moe.py,
        ``fused_experts_impl``): the ``tokens · top_k`` (token, expert) pairs are sorted by expert
        and each expert's run padded to a multiple of the kernel's row block
        (``sorted_token_ids``, at most ``pairs + experts · (block − 1)`` entries); one grouped
        matmul reads its rows through those ids and writes ``intermediate_cache1`` [tokens, top_k,
        2·I]; SiLU-and-mul gives ``intermediate_cache2`` [tokens · top_k, I]; the second grouped
        matmul, scaled by the routing weight, writes ``intermediate_cache3`` [tokens, top_k,
        hidden]; ``moe_sum`` adds the top_k rows. Here the same arrays, each grouped matmul a
        ``lax.scan`` over row blocks (one expert's weights per block; a block past the last
        expert's run is skipped). Never every expert over every token, never a dropped token.
        """
        cfg = self.cfg
        gather = cfg.expert_gather_axes  # an expert group spanning replicas sees all their tokens
        xs = jax.lax.all_gather(x, gather, tiled=True) if gather else x
        n_tok, k, hidden = xs.shape[0], cfg.experts_per_token, xs.shape[1]
        logits = _linear(xs, p["mlp.router"], p.get("mlp.router.bias"), out=jnp.float32)
        weights, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        gate_up, down = p["mlp.experts.gate_up_proj"], p["mlp.experts.down_proj"]
        gu_bias, dn_bias = p.get("mlp.experts.gate_up_proj.bias"), p.get("mlp.experts.down_proj.bias")
        local, inter2 = gate_up.shape[0], gate_up.shape[1]
        rank = jnp.int32(0)
        for axis in cfg.expert_axes:  # shard index over the expert axes, major to minor
            rank = rank * jax.lax.axis_size(axis) + jax.lax.axis_index(axis)
        pairs = n_tok * k
        block = MOE_BLOCK_ROWS
        n_blocks = -(-(pairs + local * (block - 1)) // block)
        rows = n_blocks * block
        expert = ids.reshape(-1) - rank * local
        mine = (expert >= 0) & (expert < local)
        key = jnp.where(mine, expert, local).astype(jnp.int32)
        counts = jnp.zeros(local + 1, jnp.int32).at[key].add(1)
        padded = -(-counts[:local] // block) * block
        ends = jnp.cumsum(padded)
        starts = ends - padded
        order = jnp.argsort(key, stable=True).astype(jnp.int32)
        sorted_key = key[order]
        rank_in = jnp.arange(pairs, dtype=jnp.int32) - (jnp.cumsum(counts) - counts)[sorted_key]
        row_of = jnp.where(sorted_key < local, starts[jnp.minimum(sorted_key, local - 1)] + rank_in, rows)
        # sorted_token_ids: the pair each padded row holds; padding (and other shards' pairs) → pairs
        pair_of_row = jnp.full(rows + 1, pairs, jnp.int32).at[row_of].set(order)[:rows]
        block_expert = jnp.searchsorted(ends, jnp.arange(n_blocks, dtype=jnp.int32) * block, side="right")
        x_rows = jnp.concatenate([xs, jnp.zeros((1, hidden), xs.dtype)])  # row n_tok: padding reads zeros
        scale = jnp.concatenate([(weights.reshape(-1) * mine).astype(xs.dtype), jnp.zeros(1, xs.dtype)])
        # a bias is added once per expert: by the first of the shards splitting its width
        first = (jax.lax.axis_index(cfg.expert_width_axis) == 0) if cfg.expert_width_axis else True

        def grouped(cache, b, compute):
            """One row block of a grouped matmul: read by pair id, write by pair id."""
            e = jnp.minimum(block_expert[b], local - 1)
            pair = jax.lax.dynamic_slice_in_dim(pair_of_row, b * block, block)

            def run(cache):
                return cache.at[pair].set(compute(e, pair).astype(cache.dtype))

            return jax.lax.cond(block_expert[b] < local, run, lambda c: c, cache), None

        def up(e, pair):
            h = _linear(x_rows[pair // k], gate_up.at(e))
            return h if gu_bias is None else h + gu_bias.at(e).astype(h.dtype)

        blocks = jnp.arange(n_blocks, dtype=jnp.int32)
        cache1, _ = jax.lax.scan(lambda c, b: grouped(c, b, up),
                                 jnp.zeros((pairs + 1, inter2), xs.dtype), blocks)
        g, u = jnp.split(cache1, 2, axis=-1)
        cache2 = jax.nn.silu(g) * u

        def down_proj(e, pair):
            y = _linear(cache2[pair], down.at(e))
            if dn_bias is not None:
                y = y + jnp.where(first, dn_bias.at(e), 0).astype(y.dtype)
            return y * scale[pair][:, None]

        cache3, _ = jax.lax.scan(lambda c, b: grouped(c, b, down_proj),
                                 jnp.zeros((pairs + 1, hidden), xs.dtype), blocks)
        out = cache3[:pairs].reshape(n_tok, k, hidden).sum(axis=1)
        if gather:
            out = jax.lax.psum_scatter(out, gather, scatter_dimension=0, tiled=True)
        out = jax.lax.psum(out, cfg.tensor_axis)
        if "mlp.shared_expert.gate_proj" in p:
            s = jax.nn.silu(_linear(x, p["mlp.shared_expert.gate_proj"])) * \
                _linear(x, p["mlp.shared_expert.up_proj"])
            s = jax.lax.psum(_linear(s, p["mlp.shared_expert.down_proj"]), cfg.tensor_axis)
            if "mlp.shared_expert_gate" in p:
                s = s * jax.nn.sigmoid(_linear(x, p["mlp.shared_expert_gate"]))
            out = out + s
        return out

    def _embed(self, ids):
        """Vocab-parallel lookup: each shard holds rows [rank · V/tp, (rank+1) · V/tp)."""
        cfg = self.cfg
        table = self.embed[...]
        rows = table.shape[0]
        local = ids - jax.lax.axis_index(cfg.tensor_axis) * rows
        hit = (local >= 0) & (local < rows)
        x = jnp.where(hit[:, None], table[jnp.clip(local, 0, rows - 1)], 0).astype(cfg.act_dtype)
        return jax.lax.psum(x, cfg.tensor_axis)

    def _sample(self, x):
        """Greedy sampling from vocab-parallel fp32 logits (padded rows masked)."""
        cfg = self.cfg
        head = (self.embed if cfg.tie_embeddings else self.lm_head)[...]
        bias = None if self.lm_head_bias is None else self.lm_head_bias[...]
        if self.final_norm is not None:
            x = _norm(x, self.final_norm[...])
        logits = _linear(x, head, bias, out=jnp.float32)
        rows = head.shape[0]
        first = jax.lax.axis_index(cfg.tensor_axis) * rows
        logits = jnp.where(first + jnp.arange(rows) < cfg.vocab, logits, -jnp.inf)
        best = jnp.max(logits, axis=-1)
        index = (jnp.argmax(logits, axis=-1) + first).astype(jnp.int32)
        all_best = jax.lax.all_gather(best, cfg.tensor_axis)  # [tp, S]
        all_index = jax.lax.all_gather(index, cfg.tensor_axis)
        pick = jnp.argmax(all_best, axis=0)
        return jnp.take_along_axis(all_index, pick[None], axis=0)[0]


# ------------------------------------------------------------------ math (per device)
@dataclass(frozen=True)
class _Indexed:
    """A stacked expert tensor [layers, experts, ...] and this layer's index in it: ``at(e)``
    reads one expert of one layer (a single dynamic slice, never the whole layer)."""

    array: jax.Array
    index: jax.Array | int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    def at(self, expert):
        return self.array[self.index, expert]


def _linear(x, w, b=None, out=None):
    """``x @ w.T`` for an HF ``[out, in]`` weight (stored dtype upcast to the activation dtype)."""
    y = jnp.einsum("...i,oi->...o", x, w.astype(x.dtype), preferred_element_type=out)
    return y if b is None else y + b.astype(y.dtype)


def _norm(x, w, eps: float = 1e-6):
    """RMSNorm over the last dim; a weight of twice the width is LayerNorm's (scale, bias)."""
    xf = x.astype(jnp.float32)
    if w.shape[-1] == 2 * x.shape[-1]:
        scale, bias = jnp.split(w.astype(jnp.float32), 2)
        xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps) * scale + bias
    else:
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps) * w.astype(jnp.float32)
    return y.astype(x.dtype)


def _rope(positions, head_dim: int, theta: float = 500000.0):
    half = head_dim // 2
    freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    angle = positions.astype(jnp.float32)[:, None] * freq[None, :]
    return jnp.cos(angle), jnp.sin(angle)


def _apply_rope(x, cos, sin):
    """Rotate the first 2·(head_dim // 2) dims of ``x`` [T, heads, head_dim] (NeoX halves)."""
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    c, s = cos[:, None, :].astype(x.dtype), sin[:, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, rest], axis=-1)


def _softmax_init(sinks, shape):
    """Running max and denominator of an online softmax over ``shape`` = (..., KV, G, rows).

    A learned sink logit per query head (gpt-oss) starts them: max = sink, denominator = 1.
    """
    if sinks is None:
        return jnp.full(shape, NEG_INF, jnp.float32), jnp.zeros(shape, jnp.float32)
    kv, g = shape[-3], shape[-2]
    m = jnp.broadcast_to(sinks.astype(jnp.float32).reshape(kv, g, 1), shape)
    return m, jnp.ones(shape, jnp.float32)


def _flash_prefill(q, k, v, segments, sinks, block: int = ATTENTION_BLOCK):
    """Causal attention of packed sequences, blockwise with an online softmax.

    q [T, KV, G, D], k/v [T, KV, D], segments [T]; scores live one [KV, G, block, block] tile
    at a time, as a flash-attention kernel keeps them.
    """
    t, kv, g, d = q.shape
    blk = min(block, t)
    n = -(-t // blk)
    pad = n * blk - t
    if pad:
        q = jnp.pad(q, ((0, pad), (0, 0), (0, 0), (0, 0)))
        k = jnp.pad(k, ((0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, pad), (0, 0), (0, 0)))
        segments = jnp.pad(segments, (0, pad), constant_values=-1)
    pos = jnp.arange(n * blk, dtype=jnp.int32).reshape(n, blk)
    seg = segments.reshape(n, blk)
    kb, vb = k.reshape(n, blk, kv, d), v.reshape(n, blk, kv, d)
    scale = d ** -0.5

    def q_block(args):
        qi, sq, pq = args

        def kv_step(carry, kv_args):
            m, den, acc = carry
            kj, vj, sk, pk = kv_args
            s = jnp.einsum("qkgd,pkd->kgqp", qi, kj, preferred_element_type=jnp.float32) * scale
            mask = (sq[:, None] == sk[None, :]) & (pk[None, :] <= pq[:, None])
            return _online_softmax_step(m, den, acc, s, mask, vj, "kgqp,pkd->kgqd"), None

        m0, l0 = _softmax_init(sinks, (kv, g, blk))
        acc0 = jnp.zeros((kv, g, blk, d), jnp.float32)
        (_, den, acc), _ = jax.lax.scan(kv_step, (m0, l0, acc0), (kb, vb, seg, pos))
        o = acc / jnp.maximum(den, 1e-30)[..., None]
        return jnp.transpose(o, (2, 0, 1, 3)).astype(q.dtype)

    out = jax.lax.map(q_block, (q.reshape(n, blk, kv, g, d), seg, pos))
    return out.reshape(n * blk, kv, g, d)[:t]


def _online_softmax_step(m, den, acc, s, mask, v, weights_times_values: str):
    """Fold one block of scores ``s`` (masked by ``mask``) and values ``v`` into the running max
    ``m``, denominator ``den`` and accumulator ``acc`` (flash-attention's online softmax)."""
    s = jnp.where(mask, s, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    w = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
    alpha = jnp.exp(m - m_new)
    den = den * alpha + jnp.sum(w, axis=-1)
    acc = acc * alpha[..., None] + jnp.einsum(weights_times_values, w.astype(v.dtype), v,
                                              preferred_element_type=jnp.float32)
    return m_new, den, acc


def _paged_decode(q, pool, layer, page_table, context, page_size: int, sinks, load):
    """One query per sequence against its pages, one page at a time (online softmax).

    q [B, KV, G, D]; pool [2, L, P, page, KV, D]; page_table [B, pages]; context [B] tokens.
    """
    b, kv, g, d = q.shape
    scale = d ** -0.5

    def page_step(carry, j):
        m, den, acc = carry
        pages = page_table[:, j]
        kj = load(pool[0, layer, pages], q.dtype)  # [B, page, KV, D]
        vj = load(pool[1, layer, pages], q.dtype)
        s = jnp.einsum("bkgd,bpkd->bkgp", q, kj, preferred_element_type=jnp.float32) * scale
        valid = (j * page_size + jnp.arange(page_size))[None, :] < context[:, None]  # [B, page]
        return _online_softmax_step(m, den, acc, s, valid[:, None, None, :], vj, "bkgp,bpkd->bkgd"), None

    m0, l0 = _softmax_init(sinks, (b, kv, g, 1))
    m0, l0 = m0[..., 0], l0[..., 0]
    acc0 = jnp.zeros((b, kv, g, d), jnp.float32)
    (_, den, acc), _ = jax.lax.scan(page_step, (m0, l0, acc0), jnp.arange(page_table.shape[1]))
    return (acc / jnp.maximum(den, 1e-30)[..., None]).astype(q.dtype)


__all__ = ["Decoder", "StageArrays", "StageConfig", "check_expressible", "stage_arrays",
           "stage_config", "unsupported_features"]
