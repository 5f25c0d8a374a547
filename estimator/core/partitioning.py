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

from estimator.core.geometry import Geometry
from estimator.model.weights import (
    COLUMN,
    EXPERTS,
    KV,
    REPLICATED,
    ROW,
    VOCAB,
    WeightTensor,
    is_quantized,
    weight_tensors,
)
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


def _quantized_parts(t: WeightTensor, shape: list[int], spec: list, quant: str, block: int
                     ) -> list[tuple[str, tuple[int, ...], tuple, str]]:
    """(suffix, shape, spec, dtype) of the arrays a quantised linear weight is stored as."""
    *lead, out, inp = shape
    *lead_spec, out_spec, in_spec = spec
    lead, lead_spec = list(lead), list(lead_spec)
    if quant in ("fp8_block", "fp8"):
        scale = ([-(-out // block), -(-inp // block)] if quant == "fp8_block" else [1, 1])
        scale_spec = [out_spec, in_spec] if quant == "fp8_block" else [None, None]
        return [("", (*lead, out, inp), (*lead_spec, out_spec, in_spec), "float8_e4m3fn"),
                (".scale", (*lead, *scale), (*lead_spec, *scale_spec), "float32")]
    if quant == "mxfp4":
        return [(".blocks", (*lead, out, inp // 2), (*lead_spec, out_spec, in_spec), "uint8"),
                (".scales", (*lead, out, -(-inp // block)), (*lead_spec, out_spec, in_spec), "uint8")]
    groups = -(-inp // block)  # AWQ / GPTQ int4
    parts = [("", (*lead, out, inp // 2), (*lead_spec, out_spec, in_spec), "uint8"),
             (".scales", (*lead, groups, out), (*lead_spec, in_spec, out_spec), "float16"),
             (".zeros", (*lead, groups, out // 2), (*lead_spec, in_spec, out_spec), "uint8")]
    if quant == "gptq":
        parts.append((".g_idx", (*lead, inp), (*lead_spec, in_spec), "int32"))
    return parts


def weight_arrays(geom: Geometry) -> tuple[ShardedTensor, ...]:
    """Every weight as sharded global arrays (quantised ones with their scales), one per layer."""
    m, tp = geom.model, geom.layout.tensor
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
            shape[0], spec[0] = heads_padded * (shape[0] // m.num_kv_heads), "tensor"
        elif t.split == EXPERTS:
            spec[0] = _expert_axes(geom)
            if geom.layout.expert < tp and t.expert_inner_dim is not None:
                spec[t.expert_inner_dim] = "tensor"
        else:
            assert t.split == REPLICATED
        if is_quantized(t, m):
            parts = _quantized_parts(t, shape, spec, m.weight_quant, m.quant_block)
        else:
            parts = [("", tuple(shape), tuple(spec), m.weight_dtype)]
        if t.placement == "layer":
            names = [(f"layers.{i}.{t.name}", stage_of[i]) for i in t.layers]
        elif t.placement == "first":
            names = [(t.name, 0)] + ([("lm_head", last)] if t.name == "embed_tokens"
                                     and m.tie_word_embeddings and last else [])
        else:
            names = [(t.name, last)]
        out += [ShardedTensor(name + suffix, stage, tuple(pshape), tuple(pspec), dtype)
                for name, stage in names for suffix, pshape, pspec, dtype in parts]
    return tuple(out)


def kv_pool_arrays(geom: Geometry, pages_per_replica: int) -> tuple[ShardedTensor, ...]:
    """The paged KV pool, one array per stage; pages split over 'data' (a pool per replica).

    A stage whose layers form one group of dense caches (kv_spec ``dense_shape``) gets the engines'
    layout [2 (K, V), layers, pages, page, heads, head_dim] with heads over 'tensor' (replicated
    heads stored explicitly); any other stage (MLA latent, mixed groups, scales, recurrent state) a
    byte pool [pages, tp, page_bytes].
    """
    layout = geom.layout
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
                                     (None, None, "data", None, "tensor", None), geom.kv_cache_dtype))
        elif s.page_bytes:
            out.append(ShardedTensor(name, s.stage, (pages, layout.tensor, s.page_bytes),
                                     ("data", "tensor", None), "uint8"))
    return tuple(out)


def bytes_per_device(arrays: tuple[ShardedTensor, ...], geom: Geometry) -> dict[int, int]:
    """Bytes one device of each stage holds of ``arrays``."""
    from estimator.model.dtypes import dtype_bytes

    sizes = {"data": geom.layout.data, "tensor": geom.layout.tensor}
    totals = {s.stage: 0 for s in geom.stages}
    for a in arrays:
        totals[a.stage] += math.prod(a.shard_shape(sizes)) * dtype_bytes(a.dtype)
    return totals
