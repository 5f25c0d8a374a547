"""Partition rules: regexes on weight names → PartitionSpecs over mesh axes → exact bytes per device.

A rule set is an ordered list of ``(regex, spec)`` pairs; the first rule whose regex is found in a
tensor's name (``re.search``) gives its spec, a tuple with one entry per leading dimension: a mesh
axis name, a tuple of names, or None (trailing dimensions left out are replicated). Each device's
bytes of a tensor are ``NamedSharding(AbstractMesh(sizes, names), P(*spec)).shard_shape(shape)``
× bits per element / 8, so any mesh can be planned without devices.

Splits must be even. Where engines pad instead, a rule says so: ``pad="multiple"`` pads the split
dimension up to a multiple of the shard count (vocab-parallel embeddings: rows up to a multiple of
tp), ``pad="replicate"`` stores each block several times when there are fewer blocks than shards
(KV heads replicated up to tp: 8 heads on TP16 → every head on two devices). ``block`` is the
unit a split may not cut (``head_dim`` for attention heads). With these, :func:`default_rules`
charges HF Llama/Qwen/Mistral/Mixtral checkpoints exactly what ``estimator.core.geometry`` charges.

Bad input raises :class:`~meshes.validation.InputError`: a tensor no rule matches (unless a
``fallback`` spec is given), a rule that matches nothing (``unused="error"``, the default), an
uneven split (naming tensor, dimension and mesh axes), an unknown mesh axis.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from estimator.core.sharding import layout_stage_mesh, spec_entry
from estimator.model.checkpoint import SAFETENSORS_DTYPE_BITS
from meshes.validation import InputError, check_choice, check_int

Axes = str | tuple[str, ...] | None
Spec = tuple[Axes, ...]
REPLICATED: Spec = ()  # the spec of a tensor every device holds whole
PAD_MODES = ("", "multiple", "replicate")
UNUSED_MODES = ("error", "warn", "ignore")
FALLBACK = "<fallback>"  # the rule label of tensors matched by the fallback spec

# bits per element of array dtypes by their numpy/JAX names (safetensors codes come from checkpoint)
ARRAY_DTYPE_BITS: dict[str, int] = {
    "bool": 8, "int8": 8, "uint8": 8,
    "float8_e4m3fn": 8, "float8_e5m2": 8, "float8_e4m3fnuz": 8, "float8_e5m2fnuz": 8,
    "float8_e4m3b11fnuz": 8, "float8_e8m0fnu": 8, "float8_e3m4": 8, "float8_e4m3": 8,
    "int16": 16, "uint16": 16, "float16": 16, "bfloat16": 16,
    "int32": 32, "uint32": 32, "float32": 32,
    "int64": 64, "uint64": 64, "float64": 64, "complex64": 64, "complex128": 128,
    "int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2,
}


def dtype_bits(dtype: object) -> int:
    """Bits per element of a safetensors dtype code (``BF16``, ``F4``) or an array dtype name."""
    key = str(getattr(dtype, "name", dtype))
    if key in SAFETENSORS_DTYPE_BITS:
        return SAFETENSORS_DTYPE_BITS[key]
    if key in ARRAY_DTYPE_BITS:
        return ARRAY_DTYPE_BITS[key]
    return ARRAY_DTYPE_BITS[check_choice("dtype", key, [*SAFETENSORS_DTYPE_BITS, *ARRAY_DTYPE_BITS])]


# ------------------------------------------------------------------------------------ rules
def _spec(value: object, where: str) -> Spec:
    """A spec as a tuple of None / axis name / tuple of names (accepts jax PartitionSpec)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InputError(where, value, "a sequence with one entry per dimension: a mesh axis name, "
                         "a tuple of names or None (e.g. ('tensor', None))")
    out: list[Axes] = []
    for entry in value:
        if entry is None or isinstance(entry, str):
            out.append(entry)
        elif isinstance(entry, (tuple, list)) and all(isinstance(a, str) for a in entry):
            out.append(tuple(entry) if len(entry) > 1 else (entry[0] if entry else None))
        else:
            raise InputError(where, value, "entries that are a mesh axis name, a tuple of names or None")
    return tuple(out)


def _axes(entry: Axes) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else (entry or ())


@dataclass(frozen=True)
class PartitionRule:
    """``pattern`` (searched in the name) → ``spec``; ``spec=None`` marks tensors engines skip.

    ``pad`` says how an uneven split of a sharded dimension is made even: "" (refuse),
    "multiple" (pad the dimension up to a multiple of the shard count) or "replicate" (fewer
    blocks than shards: store each block shards/blocks times). ``block`` is the unit a split may
    not cut, counted in elements (``head_dim`` for heads); it applies to every sharded dimension.
    """

    pattern: str
    spec: Spec | None
    pad: str = ""
    block: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise InputError("partition rule pattern", self.pattern, "a non-empty regular expression")
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise InputError("partition rule pattern", self.pattern, f"a valid regular expression ({err})"
                             ) from None
        if self.spec is not None:
            object.__setattr__(self, "spec", _spec(self.spec, f"partition rule {self.pattern!r} spec"))
            used = [a for entry in self.spec for a in _axes(entry)]
            if len(used) != len(set(used)):
                raise InputError(f"partition rule {self.pattern!r} spec", self.spec,
                                 "each mesh axis on at most one dimension")
        check_choice(f"partition rule {self.pattern!r} pad", self.pad, PAD_MODES)
        check_int(f"partition rule {self.pattern!r} block", self.block)

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


def _rule(item: object) -> PartitionRule:
    if isinstance(item, PartitionRule):
        return item
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        options = item[2] if len(item) == 3 else {}
        if not isinstance(options, Mapping):
            raise InputError("partition rule", item, "(regex, spec) or (regex, spec, {'pad': ..., 'block': ...})")
        return PartitionRule(item[0], item[1], **options)
    raise InputError("partition rule", item, "(regex, spec) or (regex, spec, {'pad': ..., 'block': ...})")


@dataclass(frozen=True)
class PartitionRules:
    """An ordered rule table; the first matching rule wins.

    ``fallback``: the spec of tensors no rule matches (``REPLICATED`` = ``()``); None (default)
    makes an unmatched tensor an error. ``unused``: what a rule that matches no tensor does —
    "error" (default), "warn" or "ignore" (tables meant for several architectures).
    ``stack_experts``: first stack per-expert tensors ``….experts.{j}.…`` into one array
    ``….experts.…`` of shape [experts, …], so a rule can split whole experts over mesh axes.
    """

    rules: tuple[PartitionRule, ...]
    fallback: Spec | None = None
    unused: str = "error"
    stack_experts: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(_rule(r) for r in self.rules))
        if self.fallback is not None:
            object.__setattr__(self, "fallback", _spec(self.fallback, "partition rules fallback"))
        check_choice("partition rules unused", self.unused, UNUSED_MODES)

    @classmethod
    def from_pairs(cls, pairs: Iterable[object], *, fallback: Spec | None = None, unused: str = "error",
                   stack_experts: bool = False) -> PartitionRules:
        """From ``[(regex, spec), (regex, spec, {"pad": "multiple"}), PartitionRule(...), ...]``."""
        return cls(tuple(_rule(p) for p in pairs), fallback, unused, stack_experts)

    def match(self, name: str) -> PartitionRule | None:
        """The first rule whose pattern is found in ``name``."""
        for rule in self.rules:
            if rule.regex.search(name):
                return rule
        return None


# ------------------------------------------------------------------------------------ sharding
@dataclass(frozen=True)
class Tensor:
    """The facts sharding needs: a name, a shape, a dtype (safetensors code or array dtype name)."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ShardedWeight:
    """One tensor on the mesh: its stored shape, padded global shape, spec and per-device shard."""

    name: str
    shape: tuple[int, ...]
    global_shape: tuple[int, ...]  # after padding / replication
    spec: Spec  # one entry per dimension
    shard_shape: tuple[int, ...]
    dtype: str
    bits: int
    rule: str  # the matching rule's pattern, or FALLBACK
    bytes_per_device: int

    @property
    def stored_bytes(self) -> int:
        return -(-math.prod(self.shape) * self.bits // 8)

    @property
    def padding_bytes(self) -> int:
        """Bytes the padding / replication adds to the global array (summed over devices)."""
        return -(-math.prod(self.global_shape) * self.bits // 8) - self.stored_bytes


@dataclass(frozen=True)
class WeightShards:
    """Every tensor sharded over one mesh. Splits are even, so all devices hold the same bytes."""

    mesh: dict[str, int]
    tensors: tuple[ShardedWeight, ...]
    skipped: tuple[str, ...] = ()  # tensors a rule marks as not loaded
    unused_rules: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def bytes_per_device(self) -> int:
        """Weight bytes each device holds (the whole model on one pipeline stage)."""
        return sum(t.bytes_per_device for t in self.tensors)

    @property
    def total_bytes(self) -> int:
        """Stored bytes of the sharded tensors (the checkpoint's size, less skipped tensors)."""
        return sum(t.stored_bytes for t in self.tensors)

    def by_rule(self) -> dict[str, int]:
        """Bytes per device per matching rule (in rule order of first use)."""
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.rule] = out.get(t.rule, 0) + t.bytes_per_device
        return out

    def stage_bytes(self, num_layers: int, pipeline: int = 1, *, tie_word_embeddings: bool = False,
                    first_stage: str = r"embed|vision|visual|multi_modal_projector",
                    embedding: str = r"(^|\.)(embed_tokens|embed|wte|word_embeddings)\.(weight|embedding)$",
                    ) -> dict[int, int]:
        """Bytes per device of each pipeline stage (layers split as ``estimator.core.layout.stage_layers``).

        Names in which ``first_stage`` is found (embeddings, vision towers) go to the first stage;
        other names with ``layers.{i}.`` to the stage holding layer i; the rest to the last
        (final norm, LM head). With tied embeddings and no LM-head tensor, the last stage of a
        multi-stage pipeline also holds the token embedding (names matching ``embedding``) as its
        LM head, as geometry() charges it.
        """
        from estimator.core.layout import stage_layers

        ranges = stage_layers(check_int("num_layers", num_layers), check_int("pipeline", pipeline))
        stage_of = {layer: s for s, r in enumerate(ranges) for layer in r}
        last = len(ranges) - 1
        totals = dict.fromkeys(range(len(ranges)), 0)
        first_re, embed_re = re.compile(first_stage), re.compile(embedding)
        has_head = any("lm_head" in t.name for t in self.tensors)
        for t in self.tensors:
            m = _LAYER.search(t.name)
            if first_re.search(t.name):
                totals[0] += t.bytes_per_device
                if tie_word_embeddings and last and not has_head and embed_re.search(t.name):
                    totals[last] += t.bytes_per_device
            elif m:
                layer = int(m.group(1))
                if layer not in stage_of:
                    raise InputError(f"tensor {t.name!r} layer", layer, f"a layer index below num_layers="
                                     f"{num_layers}")
                totals[stage_of[layer]] += t.bytes_per_device
            else:
                totals[last] += t.bytes_per_device
        return totals


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EXPERT = re.compile(r"^(?P<pre>.*\.experts)\.(?P<idx>\d+)\.(?P<post>.+)$")


def mesh_axis_sizes(mesh: object) -> dict[str, int]:
    """``{axis: size}`` of a mapping, a ``DeviceMesh``, a ``jax.sharding.Mesh`` or ``AbstractMesh``."""
    shape = mesh if isinstance(mesh, Mapping) else getattr(mesh, "shape", None)
    if not isinstance(shape, Mapping) or not shape:
        raise InputError("mesh", mesh, "a mapping {axis name: size}, a DeviceMesh, a jax Mesh or "
                         "an AbstractMesh")
    return {str(k): check_int(f"mesh axis {k!r} size", v) for k, v in shape.items()}


def stack_experts(tensors: Iterable[Any]) -> list[Tensor]:
    """Per-expert tensors ``….experts.{j}.…`` (j = 0..E−1, alike) → one ``….experts.…`` [E, …]."""
    out: list[Tensor] = []
    groups: dict[str, dict[int, Any]] = {}
    for t in tensors:
        m = _EXPERT.match(t.name)
        if m:
            groups.setdefault(f"{m['pre']}.{m['post']}", {})[int(m["idx"])] = t
        else:
            out.append(Tensor(t.name, tuple(t.shape), str(t.dtype)))
    for name, members in groups.items():
        first = members[min(members)]
        if sorted(members) != list(range(len(members))):
            missing = sorted(set(range(max(members) + 1)) - set(members))
            raise InputError(f"experts of {name}", f"{len(members)} tensors",
                             f"experts numbered 0..{max(members)} without gaps (missing {missing[:5]})")
        for _, t in sorted(members.items()):
            if tuple(t.shape) != tuple(first.shape) or str(t.dtype) != str(first.dtype):
                raise InputError(f"tensor {t.name!r}", f"{t.dtype}{list(t.shape)}",
                                 f"the dtype and shape of expert 0 ({first.dtype}{list(first.shape)}) "
                                 "to stack experts")
        out.append(Tensor(name, (len(members), *first.shape), str(first.dtype)))
    return out


@dataclass(frozen=True)
class SpecItem:
    """A tensor with its spec already chosen; ``pads`` holds (pad, block) per dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    spec: Spec
    pads: tuple[tuple[str, int], ...] = ()  # empty: ("", 1) on every dimension
    label: str = ""  # where the spec came from (a rule pattern, a logical annotation)


def shard_specs(items: Iterable[SpecItem], mesh: object, *, skipped: Sequence[str] = (),
                unused_rules: Sequence[str] = (), notes: Sequence[str] = ()) -> WeightShards:
    """Shard tensors whose specs are known: pad as asked, then ``NamedSharding.shard_shape``."""
    from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

    sizes = mesh_axis_sizes(mesh)
    abstract = AbstractMesh(tuple(sizes.values()), tuple(sizes))
    shardings: dict[Spec, Any] = {}
    out = []
    for it in items:
        shape = tuple(int(d) for d in it.shape)
        full, padded = _padded(it.name, shape, it.spec, it.pads, sizes, it.label)
        if full not in shardings:
            shardings[full] = NamedSharding(abstract, PartitionSpec(*full))
        shard = tuple(shardings[full].shard_shape(padded))
        bits = dtype_bits(it.dtype)
        out.append(ShardedWeight(it.name, shape, padded, full, shard, str(it.dtype), bits, it.label,
                                 -(-math.prod(shard) * bits // 8)))
    return WeightShards(sizes, tuple(out), tuple(skipped), tuple(unused_rules), tuple(notes))


def shard_weights(tensors: Iterable[Any], rules: PartitionRules | Iterable[object], mesh: object
                  ) -> WeightShards:
    """Each tensor (anything with ``name``, ``shape``, ``dtype``) sharded over ``mesh`` by ``rules``."""
    if not isinstance(rules, PartitionRules):
        rules = PartitionRules.from_pairs(rules)
    tensors = stack_experts(tensors) if rules.stack_experts else list(tensors)
    used: set[str] = set()
    items, skipped, unmatched = [], [], []
    for t in tensors:
        rule = rules.match(t.name)
        if rule is None and rules.fallback is None:
            unmatched.append(t.name)
            continue
        if rule is not None:
            used.add(rule.pattern)
            if rule.spec is None:
                skipped.append(t.name)
                continue
        shape = tuple(int(d) for d in t.shape)
        if rule is None:
            items.append(SpecItem(t.name, shape, str(t.dtype), rules.fallback, (), FALLBACK))
        else:
            items.append(SpecItem(t.name, shape, str(t.dtype), rule.spec,
                                  ((rule.pad, rule.block),) * len(shape), rule.pattern))
    if unmatched:
        more = f" and {len(unmatched) - 1} more" if len(unmatched) > 1 else ""
        raise InputError("partition rules", f"tensor {unmatched[0]!r}{more}",
                         "a rule matching every tensor name (or fallback=REPLICATED to replicate the rest)")
    unused = tuple(r.pattern for r in rules.rules if r.pattern not in used)
    notes: tuple[str, ...] = ()
    if unused and rules.unused == "error":
        raise InputError("partition rule", unused[0], "a pattern that matches at least one tensor name "
                         f"(none of {len(tensors)} names, e.g. {tensors[0].name if tensors else '-'!r})")
    if unused and rules.unused == "warn":
        notes = (f"partition rules that match no tensor: {', '.join(unused)}",)
        warnings.warn(notes[0], stacklevel=2)
    return shard_specs(items, mesh, skipped=skipped, unused_rules=unused, notes=notes)


def _padded(name: str, shape: tuple[int, ...], spec: Spec, pads: Sequence[tuple[str, int]],
            sizes: Mapping[str, int], label: str) -> tuple[Spec, tuple[int, ...]]:
    """The full-length spec and the global shape after padding; refuses uneven splits."""
    if len(spec) > len(shape):
        raise InputError(f"partition of {name}{list(shape)}", spec,
                         f"a spec of at most {len(shape)} entries (from {label!r})")
    full = spec + (None,) * (len(shape) - len(spec))
    used = [a for entry in full for a in _axes(entry)]
    if len(used) != len(set(used)):
        raise InputError(f"partition of {name}{list(shape)}", full, f"each mesh axis on at most one "
                         f"dimension (from {label!r})")
    padded = list(shape)
    for i, entry in enumerate(full):
        names = _axes(entry)
        if not names:
            continue
        for a in names:
            if a not in sizes:
                raise InputError(f"partition of {name} (from {label!r})", a,
                                 f"a mesh axis: one of {', '.join(sizes)}")
        pad, block = pads[i] if i < len(pads) else ("", 1)
        shards = math.prod(sizes[a] for a in names)
        dim, axes = shape[i], f"{'×'.join(names)} = {shards}"
        if dim % block:
            raise InputError(f"partition of {name}{list(shape)} dim {i}", dim,
                             f"a whole number of blocks of {block} elements (from {label!r})")
        blocks = dim // block
        unit = f" blocks of {block}" if block > 1 else ""
        if blocks % shards == 0:
            continue
        if pad == "multiple":
            blocks = -(-blocks // shards) * shards
        elif pad == "replicate" and shards % blocks == 0:
            blocks = shards
        elif pad == "replicate":
            raise InputError(f"partition of {name}{list(shape)} dim {i}", f"{blocks}{unit}",
                             f"a divisor or a multiple of the {shards} shards over mesh axes {axes} "
                             f"(from {label!r})")
        else:
            raise InputError(f"partition of {name}{list(shape)} dim {i}", f"{blocks}{unit}",
                             f"a multiple of the {shards} shards over mesh axes {axes} (from {label!r}; "
                             "pad='multiple' or 'replicate' pads it)")
        padded[i] = blocks * block
    return full, tuple(padded)


# ------------------------------------------------------------------------------------ defaults
_NORMS = r"(^|\.)(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|" \
         r"post_feedforward_layernorm|norm)\.weight$"


def default_rules(head_dim: int, *, tensor: Axes = "tensor", expert_axes: Axes = None,
                  expert_width: Axes = None) -> PartitionRules:
    """Rules for HF Llama / Mistral / Qwen2 / Qwen3 / Mixtral / Qwen-MoE tensor names.

    The split kinds of ``estimator.model.weights``: embedding and LM head vocab-parallel (rows padded to
    a multiple of tp), q/gate/up column-parallel, k/v column-parallel over whole heads with heads
    replicated up to tp, o/down row-parallel, norms and routers replicated. Experts: with
    ``expert_axes`` None each expert is split like a dense MLP over ``tensor``; with mesh axes
    experts are stacked and whole experts split over them, each expert's width over
    ``expert_width`` when the expert group is smaller than the tensor group.
    Unused rules are ignored (the table serves several architectures); unmatched tensors are errors.
    """
    head_dim = check_int("head_dim", head_dim)
    t = tensor
    heads = {"block": head_dim}
    rules: list[object] = [
        (r"rotary_emb\.inv_freq$", None),  # a buffer old checkpoints carry; engines skip it
        (r"(^|\.)embed_tokens\.weight$", (t, None), {"pad": "multiple"}),
        (r"(^|\.)lm_head\.weight$", (t, None), {"pad": "multiple"}),
        (r"self_attn\.q_proj\.(weight|bias)$", (t,), heads),
        (r"self_attn\.[kv]_proj\.(weight|bias)$", (t,), {"pad": "replicate", **heads}),
        (r"self_attn\.o_proj\.weight$", (None, t), heads),
        (r"self_attn\.o_proj\.bias$", REPLICATED),
        (r"self_attn\.[qk]_norm\.weight$", REPLICATED),
    ]
    if expert_axes is None:
        rules += [(r"experts\.\d+\.(w1|w3|gate_proj|up_proj)\.weight$", (t, None)),
                  (r"experts\.\d+\.(w2|down_proj)\.weight$", (None, t))]
    else:
        rules += [(r"experts\.(w1|w3|gate_proj|up_proj)\.weight$", (expert_axes, expert_width)),
                  (r"experts\.(w2|down_proj)\.weight$", (expert_axes, None, expert_width))]
    rules += [
        (r"mlp\.(shared_expert\.)?(gate|up)_proj\.(weight|bias)$", (t,)),
        (r"mlp\.(shared_expert\.)?down_proj\.weight$", (None, t)),
        (r"mlp\.(shared_expert\.)?down_proj\.bias$", REPLICATED),
        (r"(mlp|block_sparse_moe)\.gate\.weight$", REPLICATED),  # MoE routers
        (r"mlp\.shared_expert_gate\.weight$", REPLICATED),
        (_NORMS, REPLICATED),
    ]
    return PartitionRules.from_pairs(rules, unused="ignore", stack_experts=expert_axes is not None)


def layout_mesh(layout: Any) -> dict[str, int]:
    """The mesh one pipeline stage's weights are split over: the sharding table's
    ('data', 'expert', 'tensor') sub-mesh (estimator.core.sharding)."""
    return layout_stage_mesh(layout).sizes


def rules_for(model: Any, layout: Any) -> PartitionRules:
    """:func:`default_rules` for a ModelSpec under a Layout, on the sharding table's axes."""
    mesh = layout_stage_mesh(layout, model)
    experts = spec_entry(mesh.expert_group) if model.num_experts and layout.expert > 1 else None
    return default_rules(model.head_dim, tensor=spec_entry(mesh.tensor_group), expert_axes=experts,
                         expert_width=spec_entry(mesh.expert_width_axes) if experts else None)


def weight_bytes_per_stage(tensors: Iterable[Any], model: Any, layout: Any,
                           rules: PartitionRules | Sequence[object] | None = None) -> dict[int, int]:
    """Bytes per device of each pipeline stage for named tensors under ``layout`` (default rules)."""
    shards = shard_weights(tensors, rules if rules is not None else rules_for(model, layout),
                           layout_mesh(layout))
    return shards.stage_bytes(model.num_layers, layout.pipeline,
                              tie_word_embeddings=model.tie_word_embeddings)


__all__ = ["FALLBACK", "REPLICATED", "PartitionRule", "PartitionRules", "ShardedWeight", "SpecItem", "Tensor",
           "WeightShards", "default_rules", "dtype_bits", "layout_mesh", "mesh_axis_sizes",
           "rules_for", "shard_specs", "shard_weights", "stack_experts", "weight_bytes_per_stage"]
