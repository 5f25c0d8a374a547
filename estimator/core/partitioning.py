"""Weights and KV pages as global arrays with PartitionSpecs over a layout's logical mesh.

Each tensor lives on one pipeline stage's sub-mesh, whose named axes ('data', 'expert', 'tensor')
come from the sharding table (``estimator.core.sharding``, which also gives the specs, padded
global shapes and dtypes); this module names them per layer and adds the paged KV pool, so the
per-device shard of every array is exactly what geometry() charges — the allocators and the XLA
reference decoder read this one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from estimator.core.geometry import Geometry
from estimator.core.sharding import AXES, Entry, layout_stage_mesh, shard_shape, spec_entry, weight_table
from estimator.model.dtypes import dtype_bytes

STAGE_AXES = AXES  # axes of one pipeline stage's sub-mesh


@dataclass(frozen=True)
class ShardedTensor:
    """One array on one stage: its global (padded) shape and how its dims map to mesh axes."""

    name: str
    stage: int
    shape: tuple[int, ...]
    spec: tuple[Entry, ...]
    dtype: str

    def shard_shape(self, axis_sizes: dict[str, int]) -> tuple[int, ...]:
        """Per-device shape on a stage sub-mesh with these axis sizes."""
        return shard_shape(self.shape, self.spec, axis_sizes, self.name)


def weight_arrays(geom: Geometry) -> tuple[ShardedTensor, ...]:
    """Every weight as sharded global arrays (quantised ones with their scales), one per layer."""
    m = geom.model
    stage_of = {layer: s.stage for s in geom.stages for layer in s.layers}
    last = len(geom.stages) - 1
    out = []
    for row in weight_table(m, layout_stage_mesh(geom.layout, m)):
        t = row.tensor
        if t.placement == "layer":
            names = [(f"layers.{i}.{t.name}", stage_of[i]) for i in t.layers]
        elif t.placement == "first":
            names = [(t.name, 0)] + ([("lm_head", last)] if t.name == "embed_tokens"
                                     and m.tie_word_embeddings and last else [])
        else:
            names = [(t.name, last)]
        out += [ShardedTensor(name + a.suffix, stage, a.shape, a.spec, a.dtype)
                for name, stage in names for a in row.arrays]
    return tuple(out)


def kv_pool_arrays(geom: Geometry, pages_per_replica: int) -> tuple[ShardedTensor, ...]:
    """The paged KV pool, one array per stage; pages split over the data group (a pool per replica).

    A stage whose layers form one group of dense caches (kv_spec ``dense_shape``) gets the engines'
    layout [2 (K, V), layers, pages, page, heads, head_dim] with heads over the tensor group
    (replicated heads stored explicitly); any other stage (MLA latent, mixed groups, scales,
    recurrent state) a byte pool [pages, tp, page_bytes].
    """
    layout = geom.layout
    mesh = layout_stage_mesh(layout)
    data, tensor = spec_entry(mesh.data_group), spec_entry(mesh.tensor_group)
    pages = pages_per_replica * layout.data
    out = []
    for s in geom.stages:
        name = f"kv_pool.stage{s.stage}"
        shapes = {geom.kv[i].dense_shape for i in s.layers}
        if len(shapes) == 1 and None not in shapes and len(s.pool.groups) == 1 and not s.pool.state_pages:
            kv_dim, _, head_dim = shapes.pop()
            heads = geom.kv_heads_per_shard * layout.tensor
            out.append(ShardedTensor(name, s.stage, (kv_dim, len(s.layers), pages, geom.page_size, heads,
                                                     head_dim),
                                     (None, None, data, None, tensor, None), geom.kv_cache_dtype))
        elif s.page_bytes:
            out.append(ShardedTensor(name, s.stage, (pages, layout.tensor, s.page_bytes),
                                     (data, tensor, None), "uint8"))
    return tuple(out)


def bytes_per_device(arrays: tuple[ShardedTensor, ...], geom: Geometry) -> dict[int, int]:
    """Bytes one device of each stage holds of ``arrays``."""
    sizes = layout_stage_mesh(geom.layout).sizes
    totals = {s.stage: 0 for s in geom.stages}
    for a in arrays:
        totals[a.stage] += math.prod(a.shard_shape(sizes)) * dtype_bytes(a.dtype)
    return totals
