"""Per-device geometry: weight bytes and KV bytes per page on every device of a layout.

This is the one place page bytes are computed; the seed API, plan() and the sweeps all use it.
Byte counts are Python ints (exact at any size).
"""

from __future__ import annotations

from dataclasses import dataclass

from estimator.dtypes import canonical_dtype, dtype_bytes
from estimator.layout import Layout, stage_layers
from estimator.model_spec import ModelSpec
from estimator.weights import kv_heads_per_shard, shard_numel, weight_tensors
from meshes.validation import InputError, check_int


@dataclass(frozen=True)
class StageGeometry:
    """What one device of a given pipeline stage holds (all tensor ranks of a stage are alike)."""

    stage: int
    layers: range
    weight_bytes: int
    page_bytes: int  # KV bytes of one page on this device
    kv_bytes_per_token: int  # KV bytes of one token on this device


@dataclass(frozen=True)
class Geometry:
    """Shard arithmetic of one (model, layout, KV dtype, page size)."""

    model: ModelSpec
    layout: Layout
    kv_cache_dtype: str
    page_size: int
    kv_heads_per_shard: int
    stages: tuple[StageGeometry, ...]

    @property
    def replication(self) -> int:
        """How many devices of a tensor group store each KV head (1 = no waste)."""
        return self.kv_heads_per_shard * self.layout.tensor // self.model.num_kv_heads

    @property
    def bytes_per_block(self) -> int:
        """One page summed over a replica's devices (MAX's ``bytes_per_block`` at pp = 1)."""
        return sum(s.page_bytes for s in self.stages) * self.layout.tensor

    def wasted_fraction(self) -> float:
        """Share of each device's KV pool holding replicated copies of heads."""
        return 1 - 1 / self.replication


def page_bytes_per_device(*, num_layers: int, kv_heads_per_device: int, head_dim: int,
                          dtype: str, page_size: int, kv_dim: int = 2) -> int:
    """One page on one device: shape [kv_dim, layers, page_size, heads, head_dim] × dtype bytes.

    ``kv_dim`` is 2 for K and V, 1 for a latent (MLA) cache.
    """
    return kv_dim * num_layers * page_size * kv_heads_per_device * head_dim * dtype_bytes(dtype)


def geometry(model: ModelSpec, layout: Layout, *, kv_cache_dtype: str | None = None,
             page_size: int = 128) -> Geometry:
    """Weights and page bytes per device for ``model`` under ``layout``."""
    page_size = check_int("page_size", page_size, maximum=2**31 - 1)
    kv_dtype = canonical_dtype(kv_cache_dtype or model.weight_dtype, "kv_cache_dtype")
    if model.num_attention_heads % layout.tensor:
        raise InputError("tensor_parallel_size", layout.tensor,
                         f"a divisor of num_attention_heads={model.num_attention_heads}")
    heads = kv_heads_per_shard(model.num_kv_heads, layout.tensor)
    per_layer_token = page_bytes_per_device(num_layers=1, kv_heads_per_device=heads,
                                            head_dim=model.head_dim, dtype=kv_dtype, page_size=1)
    tensors = weight_tensors(model)
    width = model.weight_bytes_per_param
    ranges = stage_layers(model.num_layers, layout.pipeline)
    stages = []
    for stage, layers in enumerate(ranges):
        first, last = stage == 0, stage == len(ranges) - 1
        elements = 0
        for t in tensors:
            if t.placement == "layer":
                copies = sum(1 for i in t.layers if i in layers)
            else:
                copies = int((t.placement == "first" and first) or (t.placement == "last" and last))
            if copies:
                elements += copies * shard_numel(t, model, layout.tensor, layout.expert)
        if model.tie_word_embeddings and last and not first:  # last stage keeps its own LM head
            embed = next(t for t in tensors if t.name == "embed_tokens")
            elements += shard_numel(embed, model, layout.tensor, layout.expert)
        token = per_layer_token * len(layers)
        stages.append(StageGeometry(stage, layers, elements * width, token * page_size, token))
    return Geometry(model, layout, kv_dtype, page_size, heads, tuple(stages))
