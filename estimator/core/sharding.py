"""The sharding table: every weight as stored arrays with PartitionSpecs over named mesh axes.

One pipeline stage's devices form a sub-mesh with three named axes, ``('data', 'expert',
'tensor')``, factored from the layout so that every expert degree the engines accept is a set of
whole axes:

- ``ep ≤ tp`` (ep divides tp): data = dp, expert = ep, tensor = tp / ep. The tensor group is
  ('expert', 'tensor'); experts are split whole over 'expert' and each expert's width over
  'tensor' (vLLM's EP inside a TP group).
- ``ep > tp`` (ep = k · tp, k divides dp): data = dp / k, expert = k, tensor = tp. The data
  group is ('data', 'expert'); experts are split whole over ('expert', 'tensor') (vLLM/SGLang
  DP+EP: the expert group spans k replicas' tensor groups).

An axis of size 1 is left out of a group, so a dense model's specs read 'tensor' and 'data'.
Global shapes carry the padding engines apply — vocab rows up to a multiple of tp, KV heads
replicated up to tp, quantisation scales per shard (a shard's scale grid is the ceiling of its
own slice) — so ``NamedSharding(AbstractMesh(sizes, AXES), P(*spec)).shard_shape(shape)`` of
every array is exactly one device's slice. Geometry's weight bytes, the sharded arrays serving
allocates and the XLA reference decoder compiles, and the checkpoint partition rules' mesh all
come from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from estimator.core.layout import Layout
from estimator.model.dtypes import dtype_bytes
from estimator.model.spec import ModelSpec
from estimator.model.weights import (
    COLUMN,
    EXPERTS,
    KV,
    ROW,
    VOCAB,
    WeightTensor,
    is_quantized,
    kv_heads_per_shard,
    weight_tensors,
)
from meshes.validation import InputError

AXES = ("data", "expert", "tensor")  # the named axes of one pipeline stage's sub-mesh
Axes = tuple[str, ...]  # one dimension's mesh axes, major to minor (() = not split)


@dataclass(frozen=True)
class StageMesh:
    """One stage's dp × tp devices as the named axes ('data', 'expert', 'tensor') for an expert
    degree ep, and which axes each parallel role spans."""

    dp: int
    tp: int
    ep: int = 1

    def __post_init__(self) -> None:
        if self.tp % self.ep and self.ep % self.tp:
            raise InputError("expert_parallel_size", self.ep,
                             f"a divisor or a multiple of tensor_parallel_size={self.tp}")
        if self.ep > self.tp and self.dp % (self.ep // self.tp):
            raise InputError("expert_parallel_size", self.ep,
                             f"a divisor of data × tensor = {self.dp * self.tp}")

    @property
    def _inside_tensor(self) -> bool:  # ep ≤ tp: the expert axis is part of the tensor group
        return self.tp % self.ep == 0

    @property
    def sizes(self) -> dict[str, int]:
        if self._inside_tensor:
            return {"data": self.dp, "expert": self.ep, "tensor": self.tp // self.ep}
        k = self.ep // self.tp
        return {"data": self.dp // k, "expert": k, "tensor": self.tp}

    def _present(self, *names: str) -> Axes:
        return tuple(n for n in names if n != "expert" or self.sizes["expert"] > 1)

    @property
    def tensor_group(self) -> Axes:
        """Axes of one replica's tensor-parallel group (attention heads, dense widths, vocab)."""
        return self._present("expert", "tensor") if self._inside_tensor else ("tensor",)

    @property
    def data_group(self) -> Axes:
        """Axes across replicas (each its own KV pages and requests)."""
        return ("data",) if self._inside_tensor else self._present("data", "expert")

    @property
    def expert_group(self) -> Axes:
        """Axes whole experts are split over (() when every device holds every expert)."""
        if self.ep == 1:
            return ()
        return ("expert",) if self._inside_tensor else self._present("expert", "tensor")

    @property
    def expert_width_axes(self) -> Axes:
        """Axes each expert's width is split over: the rest of the tensor group (ep < tp)."""
        return ("tensor",) if self.ep < self.tp and self._inside_tensor else ()


def layout_stage_mesh(layout: Layout, model: ModelSpec | None = None) -> StageMesh:
    """The stage sub-mesh of ``layout``; with ``model``, its experts are checked to split evenly
    over the expert degree first (the error a user can act on)."""
    if model is not None and model.num_experts and model.num_experts % layout.expert:
        raise InputError("expert_parallel_size", layout.expert, f"a divisor of num_experts={model.num_experts}")
    return StageMesh(layout.data, layout.tensor, layout.expert)


Entry = str | tuple[str, ...] | None  # one PartitionSpec entry


def spec_entry(axes: Axes) -> Entry:
    """A group of axes as one PartitionSpec entry: None, one name, or a tuple of names."""
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _parts(entry: Entry, sizes: dict[str, int]) -> int:
    names = (entry,) if isinstance(entry, str) else (entry or ())
    return math.prod(sizes[a] for a in names)


@dataclass(frozen=True)
class StoredArray:
    """One array a weight is stored as: global (padded) shape, PartitionSpec entries, dtype."""

    suffix: str  # "" for the values; ".scale", ".scales", ".zeros", ".blocks", ".g_idx" beside them
    shape: tuple[int, ...]
    spec: tuple[Entry, ...]
    dtype: str


@dataclass(frozen=True)
class WeightLayout:
    """A weight tensor (every layer that holds it) as its stored arrays and one device's bytes."""

    tensor: WeightTensor
    arrays: tuple[StoredArray, ...]
    bytes_per_device: int


def shard_shape(shape: tuple[int, ...], spec: tuple[Entry, ...], sizes: dict[str, int],
                name: str = "array") -> tuple[int, ...]:
    """One device's slice of a global ``shape`` split by ``spec`` over axes of ``sizes`` (what
    ``NamedSharding(AbstractMesh(...), P(*spec)).shard_shape`` gives, with an InputError naming the
    array on an uneven split)."""
    out = []
    for dim, entry in zip(shape, spec, strict=True):
        parts = _parts(entry, sizes)
        if dim % parts:
            names = (entry,) if isinstance(entry, str) else entry
            raise InputError("partition", f"{name}{shape}", f"dimension {dim} divisible by {parts} "
                             f"({'×'.join(names)})")
        out.append(dim // parts)
    return tuple(out)


def _divide(tensor: WeightTensor, dim: int, parts: int, field: str, degree: int) -> int:
    size = tensor.shape[dim]
    if size % parts:
        raise InputError(field, degree, f"a divisor of {tensor.name}'s split dimension {size}")
    return size // parts


def _split(t: WeightTensor, m: ModelSpec, mesh: StageMesh) -> tuple[list[int], list[Entry]]:
    """One device's dims of ``t`` and the axes each dim is split over (engine padding applied)."""
    shard, spec = list(t.shape), [None] * len(t.shape)
    tp, group = mesh.tp, spec_entry(mesh.tensor_group)
    if t.split == VOCAB:  # vocab-parallel: rows padded up to a multiple of tp
        shard[0], spec[0] = -(-shard[0] // tp), group
    elif t.split == KV:  # whole heads; fewer heads than shards: each head on tp / heads shards
        shard[0], spec[0] = shard[0] // m.num_kv_heads * kv_heads_per_shard(m.num_kv_heads, tp), group
    elif t.split == COLUMN:
        shard[0], spec[0] = _divide(t, 0, tp, "tensor_parallel_size", tp), group
    elif t.split == ROW:
        shard[-1], spec[-1] = _divide(t, len(shard) - 1, tp, "tensor_parallel_size", tp), group
    elif t.split == EXPERTS:
        if shard[0] % mesh.ep:
            raise InputError("expert_parallel_size", mesh.ep, f"a divisor of num_experts={shard[0]}")
        shard[0], spec[0] = shard[0] // mesh.ep, spec_entry(mesh.expert_group)
        inner = t.expert_inner_dim
        if mesh.expert_width_axes and inner is not None:
            shard[inner] = _divide(t, inner, tp // mesh.ep, "tensor_parallel_size", tp)
            spec[inner] = spec_entry(mesh.expert_width_axes)
    return shard, spec


def _quantized(shard: list[int], spec: list[Entry], quant: str, block: int
               ) -> list[tuple[str, tuple[int, ...], tuple[Entry, ...], str]]:
    """(suffix, one device's shape, spec, dtype) of the arrays a quantised linear weight is stored as."""
    *lead, out, inp = shard
    *lead_spec, out_spec, in_spec = spec
    if quant == "fp8_block":  # e4m3 values + one fp32 scale per block × block tile of the shard
        return [("", (*lead, out, inp), (*lead_spec, out_spec, in_spec), "float8_e4m3fn"),
                (".scale", (*lead, -(-out // block), -(-inp // block)), (*lead_spec, out_spec, in_spec), "float32")]
    if quant == "fp8":  # e4m3 values + one fp32 scale per matrix
        return [("", (*lead, out, inp), (*lead_spec, out_spec, in_spec), "float8_e4m3fn"),
                (".scale", (*lead, 1, 1), (*lead_spec, None, None), "float32")]
    if quant == "mxfp4":  # 4-bit values + one e8m0 scale per 32 values
        return [(".blocks", (*lead, out, inp // 2), (*lead_spec, out_spec, in_spec), "uint8"),
                (".scales", (*lead, out, -(-inp // block)), (*lead_spec, out_spec, in_spec), "uint8")]
    groups = -(-inp // block)  # AWQ / GPTQ int4: packed values, fp16 scale and packed zero per group
    parts = [("", (*lead, out, inp // 2), (*lead_spec, out_spec, in_spec), "uint8"),
             (".scales", (*lead, groups, out), (*lead_spec, in_spec, out_spec), "float16"),
             (".zeros", (*lead, groups, out // 2), (*lead_spec, in_spec, out_spec), "uint8")]
    if quant == "gptq":
        parts.append((".g_idx", (*lead, inp), (*lead_spec, in_spec), "int32"))
    return parts


def weight_layout(t: WeightTensor, m: ModelSpec, mesh: StageMesh) -> WeightLayout:
    """The table row of ``t``: its stored arrays (global shapes = one device's × the shard count
    of each dim) and the bytes one device holds of one copy."""
    shard, spec = _split(t, m, mesh)
    if is_quantized(t, m):
        parts = _quantized(shard, spec, m.weight_quant, m.quant_block)
    else:
        parts = [("", tuple(shard), tuple(spec), m.weight_dtype)]
    sizes = mesh.sizes
    arrays = tuple(StoredArray(suffix, tuple(d * _parts(e, sizes) for d, e in zip(shape, pspec, strict=True)),
                               pspec, dtype) for suffix, shape, pspec, dtype in parts)
    return WeightLayout(t, arrays, sum(math.prod(shape) * dtype_bytes(dtype) for _, shape, _, dtype in parts))


@lru_cache(maxsize=128)
def weight_table(m: ModelSpec, mesh: StageMesh, include_mtp: bool = False) -> tuple[WeightLayout, ...]:
    """Every weight of ``m`` (weights.weight_tensors order) on a stage sub-mesh. Cached: specs
    and meshes are frozen values, and plans, sweeps and serving ask for the same table."""
    return tuple(weight_layout(t, m, mesh) for t in weight_tensors(m, include_mtp))


__all__ = [
    "AXES",
    "Entry",
    "StageMesh",
    "StoredArray",
    "WeightLayout",
    "layout_stage_mesh",
    "shard_shape",
    "spec_entry",
    "weight_layout",
    "weight_table",
]
