"""Exact weight bytes per device of a flax NNX model, from its abstract state: nothing is allocated.

The model constructor runs under ``nnx.eval_shape`` inside
``jax.sharding.use_abstract_mesh(AbstractMesh(sizes, names))``, so every parameter is a
``ShapeDtypeStruct`` and any mesh can be planned without its devices. Each parameter's spec
comes either from its sharding annotation (``nnx.with_partitioning(init, ('embed', 'mlp'))``)
mapped through a logical → mesh rules table, or from a regex table
(:class:`estimator.core.partition_rules.PartitionRules`) applied to the state paths
(``layers.0.attn.q.kernel``). Bytes per device are
``NamedSharding(mesh, spec).shard_shape(shape)`` × bits per element / 8.

Eager sharding is switched off while the abstract model is built: the specs are computed here,
so an uneven split names the variable (instead of failing inside flax) and padding can apply
before the split — KV heads replicated up to tp, vocab rows padded to a multiple of tp — as
engines lay them out and as ``estimator.core.geometry`` charges them. :func:`flax_abstract_shardings`
gives flax's own eager shardings, to check the two agree where no padding is involved.

This is the only module of the project that imports flax (lazily, inside the functions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from estimator.core.partition_rules import (
    PAD_MODES,
    PartitionRules,
    SpecItem,
    Tensor,
    WeightShards,
    mesh_axis_sizes,
    shard_specs,
    shard_weights,
)
from meshes.validation import InputError, check_choice, check_int

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def _abstract_params(model_fn: Callable[[], Any], sizes: Mapping[str, int] | None, *, param_filter: Any,
                     eager: bool, logical_rules: LogicalRules = ()) -> list[tuple[str, Any, dict]]:
    """(dotted path, ShapeDtypeStruct, metadata) of every parameter, built abstractly.

    With ``sizes``, the model is built under that abstract mesh and ``logical_rules`` (flax then
    attaches a NamedSharding to each abstract value); without, outside any mesh.
    """
    import contextlib

    import jax
    from flax import nnx
    from flax.core import spmd as core_spmd

    with contextlib.ExitStack() as stack:
        if sizes is not None:
            abstract = jax.sharding.AbstractMesh(tuple(sizes.values()), tuple(sizes))
            stack.enter_context(jax.sharding.use_abstract_mesh(abstract))
            stack.enter_context(core_spmd.logical_axis_rules(tuple(logical_rules)))
        stack.enter_context(nnx.use_eager_sharding(eager))
        model = nnx.eval_shape(model_fn)
    state = nnx.state(model, param_filter if param_filter is not None else nnx.Param)
    out = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if hasattr(var, "get_value") else var
        meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
        out.append((".".join(str(p) for p in path), value, dict(meta)))
    return out


def _pads(padding: Mapping[str, object] | None) -> dict[str, tuple[str, int]]:
    out = {}
    for name, value in (padding or {}).items():
        try:
            mode, block = (value, 1) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InputError(f"padding[{name!r}]", value, "'multiple', 'replicate', '' or (mode, block) "
                             "such as ('replicate', head_dim)") from None
        out[name] = (check_choice(f"padding[{name!r}]", mode, PAD_MODES),
                     check_int(f"padding[{name!r}] block", block))
    return out


def _mesh_spec(name: str, annotation: object, rules: Mapping[str, object], sizes: Mapping[str, int],
               pads: Mapping[str, tuple[str, int]]) -> tuple[tuple[object, ...], tuple[tuple[str, int], ...]]:
    """Logical annotation → (mesh spec, per-dimension padding)."""
    spec, dim_pads = [], []
    for entry in annotation:  # type: ignore[attr-defined]
        logical = entry if isinstance(entry, (tuple, list)) else (entry,)
        axes: list[str] = []
        for n in logical:
            if n is None:
                continue
            if n in rules:
                target = rules[n]
            elif n in sizes:
                target = n
            else:
                raise InputError(f"flax variable {name} logical axis", n,
                                 f"a name in logical_rules ({', '.join(map(str, rules)) or 'none given'}) "
                                 f"or a mesh axis ({', '.join(sizes)})")
            axes += [target] if isinstance(target, str) else list(target or ())  # type: ignore[arg-type]
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
        single = logical[0] if len(logical) == 1 else None
        dim_pads.append(pads.get(single, ("", 1)) if isinstance(single, str) else ("", 1))
    return tuple(spec), tuple(dim_pads)


def flax_weight_shards(model_fn: Callable[[], Any], mesh: object, *,
                       logical_rules: LogicalRules | Mapping[str, object] | None = None,
                       padding: Mapping[str, object] | None = None,
                       rules: PartitionRules | Iterable[object] | None = None,
                       param_filter: Any = None) -> WeightShards:
    """Every parameter of ``model_fn()`` sharded over ``mesh``, built abstractly (no allocation).

    ``model_fn``: a zero-argument constructor, e.g. ``lambda: Llama(cfg, rngs=nnx.Rngs(0))``.
    ``mesh``: ``{axis: size}``, a DeviceMesh, a jax Mesh or an AbstractMesh.

    Logical mode (``rules`` None): each parameter's ``with_partitioning`` names are mapped by
    ``logical_rules`` (``[("embed", None), ("mlp", "tensor"), ...]``; names that are mesh axes
    map to themselves; unannotated parameters are replicated). ``padding`` maps a logical name
    to how its uneven splits are made even: ``"multiple"`` (pad to a multiple of the shard
    count), ``("replicate", head_dim)`` (replicate whole heads up to the shard count) or
    ``("", head_dim)`` (refuse splits that cut a head).

    Regex mode: ``rules`` (a PartitionRules or ``(regex, spec[, options])`` pairs) are applied to
    the dotted state paths; annotations are ignored.

    ``param_filter``: an nnx filter of the variables counted (default ``nnx.Param``).
    """
    sizes = mesh_axis_sizes(mesh)
    if rules is not None:
        if logical_rules is not None or padding is not None:
            raise InputError("flax_weight_shards", "rules with logical_rules/padding",
                             "either regex rules or logical rules (+ padding), not both")
        try:
            params = _abstract_params(model_fn, sizes, param_filter=param_filter, eager=False)
        except ValueError:  # annotations naming no mesh axis: build outside the mesh, ignore them
            params = _abstract_params(model_fn, None, param_filter=param_filter, eager=False)
        return shard_weights([Tensor(n, tuple(v.shape), str(v.dtype)) for n, v, _ in params], rules, sizes)
    table = dict(logical_rules.items() if isinstance(logical_rules, Mapping) else (logical_rules or ()))
    pads = _pads(padding)
    try:
        params = _abstract_params(model_fn, sizes, param_filter=param_filter, eager=False,
                                  logical_rules=tuple(table.items()))
    except ValueError as err:  # e.g. a logical name with no rule: find the variable and name it
        for name, _, meta in _abstract_params(model_fn, None, param_filter=param_filter, eager=False):
            if meta.get("out_sharding"):
                _mesh_spec(name, _names(meta["out_sharding"]),
                           {**table, **dict(meta.get("sharding_rules") or ())}, sizes, pads)
        raise InputError("flax model", type(err).__name__, f"an abstract build under the mesh ({err})"
                         ) from err
    items = []
    for name, value, meta in params:
        annotation = meta.get("out_sharding")
        sharding = getattr(value, "sharding", None)
        if annotation:
            rules_here = {**table, **dict(meta.get("sharding_rules") or ())}
            spec, dim_pads = _mesh_spec(name, _names(annotation), rules_here, sizes, pads)
            label = repr(_names(annotation))
        elif sharding is not None and hasattr(sharding, "spec"):  # set by the model itself
            spec, dim_pads, label = tuple(sharding.spec), (), "array sharding"
        else:
            spec, dim_pads, label = (), (), "unannotated"
        items.append(SpecItem(name, tuple(value.shape), str(value.dtype), spec, dim_pads, label))
    return shard_specs(items, sizes)


def _names(annotation: object) -> tuple[object, ...]:
    """An ``out_sharding`` annotation as a tuple of names (a NamedSharding gives its spec)."""
    return tuple(annotation.spec if hasattr(annotation, "spec") else annotation)  # type: ignore[arg-type]


def flax_abstract_shardings(model_fn: Callable[[], Any], mesh: object, *,
                            logical_rules: LogicalRules = (), param_filter: Any = None) -> dict[str, Any]:
    """Flax's own view: ``{path: ShapeDtypeStruct with NamedSharding}`` from an eager-sharded
    ``nnx.eval_shape`` under the abstract mesh and ``logical_rules`` (no padding; uneven splits
    raise inside JAX)."""
    sizes = mesh_axis_sizes(mesh)
    params = _abstract_params(model_fn, sizes, param_filter=param_filter, eager=True,
                              logical_rules=logical_rules)
    return {name: value for name, value, _ in params}


__all__ = ["flax_abstract_shardings", "flax_weight_shards"]
