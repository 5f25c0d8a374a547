"""Weights and KV pages as global arrays with PartitionSpecs over a layout's logical mesh.

The logical mesh has axes ('data', 'pipeline', 'tensor') (Layout.logical_mesh). Each tensor lives
on one pipeline stage's sub-mesh ('data', 'tensor'); global shapes carry the padding engines
apply (vocab rows up to a multiple of tp, KV heads replicated up to tp), so the per-device shard
of every array is exactly what geometry() charges — the allocators, the flax reference model and
the checkpoint partition rules all read this one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from estimator.geometry import Geometry
from estimator.weights import COLUMN, EXPERTS, KV, REPLICATED, ROW, VOCAB, weight_tensors
from meshes.validation import InputError

STAGE_AXES = ("data", "tensor")  # axes of one pipeline stage's sub-mesh


@dataclass(frozen=True)
class ShardedTensor:
    """One array on one stage: its global (padded) shape and how its dims map to mesh axes."""

    name: str
    stage: int
    shape: tuple[int, ...]
    spec: tuple[str | tuple[str, ...] | None, ...]
    dtype: str

    def shard_shape(self, axis_sizes: dict[str, int]) -> tuple[int, ...]:
        """Per-device shape on a stage sub-mesh with these axis sizes."""
        out = []
        for dim, axes in zip(self.shape, self.spec, strict=True):
            names = (axes,) if isinstance(axes, str) else (axes or ())
            div = math.prod(axis_sizes[a] for a in names)
            if dim % div:
                raise InputError("partition", f"{self.name}{self.shape}",
                                 f"dimension {dim} divisible by {div} ({'×'.join(names)})")
            out.append(dim // div)
        return tuple(out)


def _expert_axes(geom: Geometry) -> str | tuple[str, ...] | None:
    layout = geom.layout
    if layout.expert == 1:
        return None
    if layout.expert == layout.tensor:
        return "tensor"
    if layout.expert == layout.tensor * layout.data:
        return ("data", "tensor")
    raise InputError("expert_parallel_size", layout.expert,
                     f"1, tensor ({layout.tensor}) or data × tensor "
                     f"({layout.data * layout.tensor}) to lay experts on mesh axes")


def weight_arrays(geom: Geometry) -> tuple[ShardedTensor, ...]:
    """Every weight as a sharded global array, one per layer (layers are stage-local)."""
    m, tp = geom.model, geom.layout.tensor
    dtype = m.weight_dtype
    stage_of = {layer: s.stage for s in geom.stages for layer in s.layers}
    last = len(geom.stages) - 1
    heads_padded = geom.kv_heads_per_shard * tp
    out = []
    for t in weight_tensors(m):
        shape, spec = list(t.shape), [None] * len(t.shape)
        if t.split == VOCAB:
            shape[0], spec[0] = -(-shape[0] // tp) * tp, "tensor"
        elif t.split == COLUMN:
            spec[0] = "tensor"
        elif t.split == ROW:
            spec[-1] = "tensor"
        elif t.split == KV:
            shape[0], spec[0] = heads_padded * m.head_dim, "tensor"
        elif t.split == EXPERTS:
            axes = _expert_axes(geom)
            spec[0] = axes
            if geom.layout.expert < tp:  # the tensor group also splits each expert's width
                spec[1 if t.name.endswith("gate_up_proj") else 2] = "tensor"
        else:
            assert t.split == REPLICATED
        if t.placement == "layer":
            stages = [(f"layers.{i}.{t.name}", stage_of[i]) for i in t.layers]
        elif t.placement == "first":
            stages = [(t.name, 0)] + ([("lm_head", last)] if m.tie_word_embeddings and last else [])
        else:
            stages = [(t.name, last)]
        out += [ShardedTensor(name, stage, tuple(shape), tuple(spec), dtype) for name, stage in stages]
    return tuple(out)


def kv_pool_arrays(geom: Geometry, pages_per_replica: int) -> tuple[ShardedTensor, ...]:
    """The paged KV pool: per stage, [2 (K, V), layers, pages × replicas, page, heads, head_dim].

    Pages are split over 'data' (each replica its own pool), heads over 'tensor' (replicated
    heads stored explicitly, as the pool really holds them).
    """
    m, layout = geom.model, geom.layout
    heads = geom.kv_heads_per_shard * layout.tensor
    return tuple(
        ShardedTensor(f"kv_pool.stage{s.stage}", s.stage,
                      (2, len(s.layers), pages_per_replica * layout.data, geom.page_size, heads,
                       m.head_dim),
                      (None, None, "data", None, "tensor", None), geom.kv_cache_dtype)
        for s in geom.stages)


def bytes_per_device(arrays: tuple[ShardedTensor, ...], geom: Geometry) -> dict[int, int]:
    """Bytes one device of each stage holds of ``arrays``."""
    from estimator.dtypes import dtype_bytes

    sizes = {"data": geom.layout.data, "tensor": geom.layout.tensor}
    totals = {s.stage: 0 for s in geom.stages}
    for a in arrays:
        totals[a.stage] += math.prod(a.shard_shape(sizes)) * dtype_bytes(a.dtype)
    return totals
