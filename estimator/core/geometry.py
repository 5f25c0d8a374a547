"""Per-device geometry: weight bytes and KV pages on every device of a layout.

The one place page bytes are computed for plans, sweeps and serving: each stage's layers are
grouped into one page pool by their KV specs (estimator.core.kv_spec), so one pool serves full,
sliding-window and MLA layers, and recurrent state takes whole pages per request. Byte counts
are Python ints (exact at any size).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

from estimator.core.kv_spec import KVSpecs, PoolGroups, kv_specs
from estimator.core.layout import Layout, stage_layers
from estimator.core.sharding import layout_stage_mesh, weight_table
from estimator.model.dtypes import canonical_dtype
from estimator.model.spec import ModelSpec
from estimator.model.weights import kv_heads_per_shard
from meshes.validation import InputError, check_int


@dataclass(frozen=True)
class StageGeometry:
    """What one device of a given pipeline stage holds (all tensor ranks of a stage are alike)."""

    stage: int
    layers: range
    weight_bytes: int
    page_bytes: int  # bytes of one page of this device's KV pool (0: the stage holds no KV)
    kv_bytes_per_token: int  # KV bytes of one token over this device's token-indexed layers
    state_bytes: int  # recurrent state of one request on this device
    pool: PoolGroups  # how the stage's layers share the pool; pages one request holds here


@dataclass(frozen=True)
class Geometry:
    """Shard arithmetic of one (model, layout, KV dtype, page size)."""

    model: ModelSpec
    layout: Layout
    kv_cache_dtype: str
    page_size: int
    kv_heads_per_shard: int
    stages: tuple[StageGeometry, ...]
    kv: KVSpecs  # every layer's KV spec on one device of a tensor group

    @property
    def replication(self) -> int:
        """How many devices of a tensor group store each KV head (1 = no waste; MLA: tp)."""
        if self.kv.replicated_across_tensor:
            return self.layout.tensor
        if not self.model.num_kv_heads or not any(s.holds_tokens for s in self.kv):
            return 1
        return self.kv_heads_per_shard * self.layout.tensor // self.model.num_kv_heads

    @property
    def bytes_per_block(self) -> int:
        """One page summed over a replica's devices (MAX's ``bytes_per_block`` at pp = 1)."""
        return sum(s.page_bytes for s in self.stages) * self.layout.tensor

    def wasted_fraction(self) -> float:
        """Share of each device's KV pool holding replicated copies of heads."""
        return 1 - 1 / self.replication


def geometry(model: ModelSpec, layout: Layout, *, kv_cache_dtype: str | None = None,
             page_size: int = 128, kv_scale_block: int | None = None,
             include_mtp: bool = False) -> Geometry:
    """Weights and KV pages per device for ``model`` under ``layout``.

    Cached per validated arguments (every input is a frozen value): plan() and a sweep's set-up
    ask for the same geometry.
    """
    page_size = check_int("page_size", page_size, maximum=2**31 - 1)
    kv_dtype = canonical_dtype(model.weight_dtype if kv_cache_dtype is None else kv_cache_dtype, "kv_cache_dtype")
    return _geometry(model, layout, kv_dtype, page_size, kv_scale_block, bool(include_mtp))


@lru_cache(maxsize=256)
def _geometry(model: ModelSpec, layout: Layout, kv_dtype: str, page_size: int, kv_scale_block: int | None,
              include_mtp: bool) -> Geometry:
    attention = any(model.is_attention_layer(i) for i in range(model.num_layers))
    if attention and model.num_attention_heads % layout.tensor:
        raise InputError("tensor_parallel_size", layout.tensor,
                         f"a divisor of num_attention_heads={model.num_attention_heads}")
    kv = kv_specs(model, layout.tensor, kv_dtype, kv_scale_block)
    heads = 1 if kv.replicated_across_tensor or not attention else kv_heads_per_shard(model.num_kv_heads,
                                                                                      layout.tensor)
    table = weight_table(model, layout_stage_mesh(layout, model), include_mtp)
    ranges = stage_layers(model.num_layers, layout.pipeline)
    stages = []
    for stage, layers in enumerate(ranges):
        first, last = stage == 0, stage == len(ranges) - 1
        weights = 0
        for row in table:
            t = row.tensor
            if t.placement == "layer":  # t.layers ascending, layers a contiguous range
                copies = bisect_left(t.layers, layers.stop) - bisect_left(t.layers, layers.start)
            else:
                copies = int((t.placement == "first" and first) or (t.placement == "last" and last))
            weights += copies * row.bytes_per_device
        if model.tie_word_embeddings and last and not first:  # last stage keeps its own LM head
            weights += next(r.bytes_per_device for r in table if r.tensor.name == "embed_tokens")
        pool = kv.pool(page_size, layers)
        stages.append(StageGeometry(stage, layers, weights, pool.page_bytes, kv.token_bytes(layers),
                                    kv.state_bytes(layers), pool))
    return Geometry(model, layout, kv_dtype, page_size, heads, tuple(stages), kv)
