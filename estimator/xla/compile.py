"""Abstract lowering of the reference decoder's prefill and decode steps, and XLA's memory analysis.

Nothing is allocated: every argument is a ``jax.ShapeDtypeStruct`` carrying a ``NamedSharding``
on the stage's compile mesh ('data' × 'expert' × 'tensor'), the step is lowered with the KV pool donated,
compiled, and ``compiled.memory_analysis()`` is read per device.

Which devices compile it:
- a live mesh (real ``jax.Device``s): those devices, stage by stage;
- a simulated mesh: the locally available devices of the mesh's platform, as many as one stage
  needs (data × tensor); for 8 simulated CPU devices set
  ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts;
- a simulated TPU mesh (or ``tpu_topology=``): a deviceless TPU topology through libtpu
  (``pip install 'kvfit[tpu]'``), giving per-chip numbers with no TPU attached.
A mesh of one platform is never silently compiled on another: a GPU mesh on a CPU-only host raises
InputError unless ``allow_cpu_proxy=True``, which warns and marks the report as a proxy.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from estimator.core.geometry import Geometry, geometry
from estimator.core.layout import Layout
from estimator.core.partitioning import ShardedTensor
from estimator.core.sharding import AXES, layout_stage_mesh
from estimator.model.resolve import resolve_model
from estimator.model.spec import ModelSpec
from estimator.xla.decoder import Decoder, StageArrays, stage_arrays, stage_config
from estimator.xla.errors import XlaCompileError
from estimator.xla.limits import MAX_CPU_PROXY_DEVICES
from estimator.xla.report import (
    BASE_CAVEAT,
    CPU_CAVEAT,
    PROXY_CAVEAT,
    TPU_CAVEAT,
    CompileReport,
    StepMemory,
    read_memory_analysis,
)
from meshes.mesh import DeviceMesh
from meshes.validation import InputError, check_choice, check_int

STEPS = ("prefill", "decode")
LOGICAL_AXES = AXES  # the axes of a stage sub-mesh in the sharding table
DEFAULT_RULES: Mapping[str, str] = {a: a for a in AXES}
DEFAULT_DECODE_CONTEXT = 2048  # tokens of context behind each decode query (page-table width)
_TOPOLOGY_2D = ((2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16))
_TOPOLOGY_3D = ((2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8), (4, 8, 8), (8, 8, 8))


@dataclass(frozen=True)
class Target:
    """Where one stage compiles: a (data, tensor) grid of devices and what they are."""

    devices: np.ndarray  # shape (data, tensor), jax devices
    backend: str
    device_kind: str
    target_platform: str
    proxy: bool
    topology: str | None


@dataclass
class CompiledStep:
    """One lowered and compiled step: the executable, its abstract arguments, XLA's numbers."""

    step: str
    stage: int
    compiled: Any  # jax.stages.Compiled
    args: tuple  # (weights, pool, *inputs) as ShapeDtypeStructs with NamedShardings
    mesh: jax.sharding.Mesh
    memory: StepMemory


# ------------------------------------------------------------------ devices
def libtpu_available() -> bool:
    """Whether deviceless TPU compiles can run here (the libtpu wheel is importable)."""
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def topology_name(device_name: str, chips: int) -> str:
    """Smallest standard topology of this TPU generation with at least ``chips`` devices."""
    gen = device_name.lower().removeprefix("tpu-").removeprefix("tpu ").replace(" ", "")
    shapes = _TOPOLOGY_3D if gen in ("v4", "v5p") else _TOPOLOGY_2D
    for shape in shapes:
        if math.prod(shape) * (2 if gen == "v4" else 1) >= chips:
            return f"{gen}:{'x'.join(map(str, shape))}"
    raise InputError("tpu_topology", f"{chips} chips of {device_name}",
                     "a slice of at most 512 chips, or an explicit tpu_topology name")


def _topology_devices(name: str, needed: int) -> list[Any]:
    if not libtpu_available():
        raise InputError("tpu_topology", name, "libtpu installed for deviceless TPU compiles: "
                         "pip install 'kvfit[tpu]' (libtpu pinned to your jax), or pass allow_cpu_proxy=True "
                         "(kvfit: --allow-cpu-proxy) to compile on CPU instead (a proxy, not a TPU budget)")
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as err:
        raise InputError("tpu_topology", name, f"a topology libtpu knows, e.g. v5e:2x2, v5e:4x4, "
                         f"v5p:2x2x1, v6e:2x2 ({str(err).splitlines()[0][:200]})") from None
    if len(topo.devices) < needed:
        raise InputError("tpu_topology", name, f"a topology with at least {needed} devices "
                         f"(it has {len(topo.devices)})")
    return list(topo.devices[:needed])


def _local_devices(platform: str) -> list[Any]:
    try:
        return list(jax.devices(platform))
    except RuntimeError:
        return []


def compile_target(mesh: DeviceMesh, layout: Layout, stage: int, *, allow_cpu_proxy: bool = False,
                   tpu_topology: str | None = None) -> Target:
    """The devices that compile ``stage`` of ``mesh`` under ``layout`` (see the module doc)."""
    dp, tp = layout.data, layout.tensor
    needed = dp * tp
    target = mesh.platform
    if target == "mixed":
        raise InputError("mesh", mesh.describe(), "devices of one platform to compile for")
    if not mesh.is_simulated:
        grid = np.array(mesh.devices, dtype=object).reshape(dp, layout.pipeline, tp)[:, stage, :]
        first = grid.flat[0]
        return Target(grid, first.platform, first.device_kind, first.platform, False, None)
    if tpu_topology is not None and target != "tpu":
        raise InputError("tpu_topology", tpu_topology, f"a TPU mesh to compile for (this mesh is "
                         f"{target}: {mesh.describe()})")
    if target == "tpu" and (libtpu_available() or not allow_cpu_proxy):
        spec = getattr(mesh.devices[0], "spec", None)
        topology = tpu_topology or topology_name(spec.name if spec else "v5e", needed)
        devices = _topology_devices(topology, needed)
        grid = np.array(devices, dtype=object).reshape(dp, tp)
        return Target(grid, "tpu", devices[0].device_kind, target, False, topology)
    local = _local_devices(target) if target != "tpu" else []
    proxy = False
    if not local:
        if not allow_cpu_proxy:
            raise InputError("mesh", mesh.describe(),
                             f"a mesh whose platform ({target}) this host can compile for; "
                             f"JAX here has {_platforms()}. CPU temp bytes are not a {target} "
                             "budget: run on a {0} host, use a TPU topology (kvfit[tpu]) for TPU "
                             "meshes, or pass allow_cpu_proxy=True (kvfit: --allow-cpu-proxy) to get CPU "
                             "numbers marked as a proxy".format(target))
        if needed > MAX_CPU_PROXY_DEVICES:
            raise InputError("mesh", mesh.describe(), f"at most {MAX_CPU_PROXY_DEVICES:,} devices a pipeline "
                             f"stage for a CPU-proxy compile (this one needs {needed:,}); use the analytic "
                             "activations or compile on the mesh's own hardware")
        local, proxy = _local_devices("cpu"), True
        warnings.warn(f"compiling a {target} mesh ({mesh.describe()}) on XLA:CPU: temp bytes are a "
                      f"CPU proxy, not a {target} budget (allow_cpu_proxy=True)",
                      RuntimeWarning, stacklevel=3)
    if len(local) < needed:
        platform = local[0].platform
        hint = (f"set XLA_FLAGS=--xla_force_host_platform_device_count={needed} (or "
                f"jax.config.update('jax_num_cpu_devices', {needed})) before JAX starts"
                if platform == "cpu" else f"a host with {needed} {platform} devices")
        raise InputError("mesh", mesh.describe(),
                         f"{needed} local {platform} devices to compile one pipeline stage "
                         f"(data {dp} × tensor {tp}); JAX sees {len(local)}: {hint}")
    grid = np.array(local[:needed], dtype=object).reshape(dp, tp)
    return Target(grid, local[0].platform, local[0].device_kind, target, proxy, None)


def _platforms() -> str:
    try:
        return ", ".join(sorted({d.platform for d in jax.devices()}))
    except RuntimeError:  # pragma: no cover
        return "no backend"


# ------------------------------------------------------------------ sharding rules
def check_rules(rules: Mapping[str, str], arrays: Sequence[ShardedTensor],
                axis_sizes: Mapping[str, int]) -> None:
    """Every logical axis the table uses maps to one distinct mesh axis; every split is even."""
    used = {a for t in arrays for axes in t.spec for a in ((axes,) if isinstance(axes, str) else axes or ())}
    for axis in sorted(used | set(LOGICAL_AXES)):
        if axis not in rules:
            raise InputError("sharding rules", dict(rules), f"a mesh axis for logical axis "
                             f"{axis!r} (the partitioning table shards over it); it is unmapped")
    targets = [rules[a] for a in LOGICAL_AXES]
    if len(set(targets)) != len(targets) or not all(isinstance(t, str) and t for t in targets):
        raise InputError("sharding rules", dict(rules), "distinct mesh axis names for "
                         f"{', '.join(LOGICAL_AXES)}")
    extra = sorted(set(rules) - set(LOGICAL_AXES))
    if extra:
        raise InputError("sharding rules", dict(rules), f"rules only for the logical axes "
                         f"{', '.join(LOGICAL_AXES)} (got {', '.join(extra)})")
    for t in arrays:
        t.shard_shape(dict(axis_sizes))  # raises InputError naming the tensor on an uneven split


def mesh_spec(spec: tuple, rules: Mapping[str, str]) -> P:
    """A table spec over logical axes as a PartitionSpec over the compile mesh's axes."""
    def one(axes):
        if axes is None:
            return None
        if isinstance(axes, str):
            return rules[axes]
        return tuple(rules[a] for a in axes)

    return P(*(one(a) for a in spec))


# ------------------------------------------------------------------ one step
def _sds(shape, dtype, mesh, spec) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=NamedSharding(mesh, spec))


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
    return math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize


def _spec_tree(state: nnx.State, rules: Mapping[str, str]) -> dict:
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = mesh_spec(var.get_metadata("out_sharding"), rules)
    return out


def build_step(geom: Geometry, stage: int, step: str, target: Target, *, pages_per_replica: int,
               prefill_tokens: int, decode_batch: int, prefill_seqs: int, context_pages: int,
               rules: Mapping[str, str] = DEFAULT_RULES, layer_loop: str = "scan",
               mesh_label: str = "") -> CompiledStep:
    """Lower and compile ``step`` of ``stage`` on ``target``; read its memory analysis."""
    layout = geom.layout
    dp, tp = layout.data, layout.tensor
    arrays: StageArrays = stage_arrays(geom, stage, pages_per_replica, layer_loop=layer_loop)
    rules = {"expert": "expert", **rules}  # rules written before the expert axis existed keep working
    sizes = layout_stage_mesh(layout, geom.model).sizes
    check_rules(rules, (*arrays.weights, arrays.pool), sizes)
    mesh = jax.sharding.Mesh(target.devices.reshape(tuple(sizes[a] for a in AXES)), tuple(rules[a] for a in AXES))
    cfg = stage_config(geom, stage, axis_names=rules, backend=target.backend)
    d_ax = cfg.data_axis
    abstract = nnx.eval_shape(lambda: Decoder(cfg, arrays))
    graphdef, state = nnx.split(abstract)
    specs = _spec_tree(state, rules)
    weights = jax.tree.map(lambda v, s: _sds(v.shape, v.dtype, mesh, s), nnx.to_pure_dict(state), specs)
    pool_spec = mesh_spec(arrays.pool.spec, rules)
    pool = _sds(arrays.pool.shape, cfg.kv_view or arrays.pool.dtype, mesh, pool_spec)
    hidden, act = geom.model.hidden_size, cfg.act_dtype
    rows = prefill_tokens if step == "prefill" else decode_batch
    row, row2 = P(d_ax), P(d_ax, None)
    x_in = (_sds((dp * rows,), jnp.int32, mesh, row) if cfg.first
            else _sds((dp * rows, hidden), act, mesh, row2))
    x_spec = row if cfg.first else row2
    i32 = jnp.int32
    if step == "prefill":
        inputs = (x_in, _sds((dp * rows,), i32, mesh, row), _sds((dp * rows,), i32, mesh, row),
                  _sds((dp * rows,), i32, mesh, row), _sds((dp * prefill_seqs,), i32, mesh, row))
        in_specs = (x_spec, row, row, row, row)
        sampled = prefill_seqs
    else:
        inputs = (x_in, _sds((dp * rows,), i32, mesh, row),
                  _sds((dp * rows, context_pages), i32, mesh, row2))
        in_specs = (x_spec, row, row2)
        sampled = rows
    out_spec = row if cfg.last else row2

    def local(params, pool, *xs):
        st = jax.tree.map(lambda v: v, state)
        nnx.replace_by_pure_dict(st, params)
        model = nnx.merge(graphdef, st)
        return getattr(model, step)(pool, *xs)

    def fn(params, pool, *xs):
        return jax.shard_map(local, mesh=mesh, in_specs=(specs, pool_spec, *in_specs),
                             out_specs=(out_spec, pool_spec), check_vma=False)(params, pool, *xs)

    out_shardings = (NamedSharding(mesh, out_spec), NamedSharding(mesh, pool_spec))
    jitted = jax.jit(fn, donate_argnums=(1,), keep_unused=True, out_shardings=out_shardings)
    args = (weights, pool, *inputs)
    try:
        t0 = time.perf_counter()
        lowered = jitted.lower(*args)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Dd]onat.*")
            compiled = lowered.compile()
        t2 = time.perf_counter()
    except InputError:
        raise
    except Exception as err:
        raise XlaCompileError(step, stage, mesh_label or str(dict(mesh.shape)), target.backend,
                              err) from err
    stats = read_memory_analysis(compiled)
    memory = StepMemory(
        step=step, stage=stage, devices=dp * tp, tokens_per_replica=rows,
        sequences_per_replica=sampled if cfg.last else 0, **stats,
        weight_bytes=sum(_shard_bytes(x) for x in jax.tree.leaves(weights)),
        kv_pool_bytes=_shard_bytes(pool), input_bytes=sum(_shard_bytes(x) for x in inputs),
        lower_seconds=t1 - t0, compile_seconds=t2 - t1)
    return CompiledStep(step, stage, compiled, args, mesh, memory)


# ------------------------------------------------------------------ public API
def _resolve(model: ModelSpec | Geometry | str, mesh: DeviceMesh | str, layout: Layout | str | None,
             kv_cache_dtype: str | None, page_size: int) -> tuple[Geometry, DeviceMesh]:
    mesh = DeviceMesh.from_preset(mesh) if isinstance(mesh, str) else mesh
    if isinstance(model, Geometry):
        if layout is not None:
            raise InputError("layout", layout, "None when a Geometry is given (it has its layout)")
        geom = model
    else:
        if layout is None:
            layout = Layout.default_for(mesh)
        elif isinstance(layout, str):
            layout = Layout.parse(layout)
        geom = geometry(resolve_model(model), layout, kv_cache_dtype=kv_cache_dtype, page_size=page_size)
    geom.layout.check(mesh)
    return geom, mesh


def compile_steps(model: ModelSpec | Geometry | str, mesh: DeviceMesh | str,
                  layout: Layout | str | None = None, *, kv_cache_dtype: str | None = None,
                  page_size: int = 128, prefill_tokens: int = 8192, decode_batch: int = 256,
                  pages_per_replica: int | None = None, prefill_seqs: int | None = None,
                  decode_context_tokens: int = DEFAULT_DECODE_CONTEXT,
                  steps: Sequence[str] = STEPS, allow_cpu_proxy: bool = False,
                  tpu_topology: str | None = None, rules: Mapping[str, str] | None = None,
                  layer_loop: str = "scan") -> tuple[list[CompiledStep], dict[str, Any]]:
    """Compile every requested step of every pipeline stage; return the steps and report facts.

    ``prefill_tokens`` are per replica (one engine's batch of prompt tokens), ``decode_batch`` is
    the total over replicas (split over 'data', rounded up). ``pages_per_replica`` sizes the KV
    pool argument (default: enough for one prefill batch or one decode context).
    """
    geom, mesh = _resolve(model, mesh, layout, kv_cache_dtype, page_size)
    lay = geom.layout
    tokens = check_int("prefill_tokens", prefill_tokens, maximum=2**31 - 1)
    batch = -(-check_int("decode_batch", decode_batch, maximum=2**31 - 1) // lay.data)
    seqs = min(batch, tokens) if prefill_seqs is None else check_int("prefill_seqs", prefill_seqs,
                                                                     maximum=tokens)
    ctx = -(-check_int("decode_context_tokens", decode_context_tokens, maximum=2**31 - 1)
            // geom.page_size)
    if pages_per_replica is None:
        pages_per_replica = max(-(-tokens // geom.page_size), ctx) + 1
    pages = check_int("pages_per_replica", pages_per_replica, maximum=2**31 - 1)
    for s in steps:
        check_choice("steps", s, STEPS)
    check_choice("layer_loop", layer_loop, ("scan", "unroll"))
    rules = dict(DEFAULT_RULES if rules is None else rules)
    out, targets = [], []
    for stage in range(lay.pipeline):
        target = compile_target(mesh, lay, stage, allow_cpu_proxy=allow_cpu_proxy,
                                tpu_topology=tpu_topology)
        targets.append(target)
        for step in steps:
            out.append(build_step(geom, stage, step, target, pages_per_replica=pages,
                                  prefill_tokens=tokens, decode_batch=batch, prefill_seqs=seqs,
                                  context_pages=ctx, rules=rules, layer_loop=layer_loop,
                                  mesh_label=mesh.describe()))
    t = targets[0]
    caveat = [BASE_CAVEAT]
    if layer_loop == "scan":
        caveat.append("Layers run in lax.scan: XLA copies one layer's weights per iteration, which "
                      "is part of temp (routed experts excepted: read one expert at a time; "
                      "layer_loop='unroll' avoids it and compiles slower).")
    if t.backend == "cpu":
        caveat.append(CPU_CAVEAT)
    if t.topology:
        caveat.append(TPU_CAVEAT.format(topology=t.topology))
        if t.topology.startswith("v4"):
            caveat.append("TPU v4 deviceless topologies list each of a chip's two TensorCores as a "
                          "device (no megacore): these numbers are per TensorCore.")
    if t.proxy:
        caveat.insert(0, PROXY_CAVEAT.format(target=t.target_platform, backend=t.backend))
    facts = dict(model=geom.model.name, mesh=mesh.describe(), layout=lay.name,
                 target_platform=t.target_platform, backend=t.backend, device_kind=t.device_kind,
                 proxy=t.proxy, topology=t.topology, jax_version=jax.__version__,
                 pages_per_replica=pages, page_size=geom.page_size, layer_loop=layer_loop,
                 caveat=" ".join(caveat))
    return out, facts


def compile_report(model: ModelSpec | Geometry | str, mesh: DeviceMesh | str,
                   layout: Layout | str | None = None, **kwargs: Any) -> CompileReport:
    """Compile the prefill and decode steps abstractly and report XLA's bytes per device.

    Keyword arguments are those of ``compile_steps`` (kv_cache_dtype, page_size, prefill_tokens,
    decode_batch, pages_per_replica, prefill_seqs, decode_context_tokens, steps,
    allow_cpu_proxy, tpu_topology, rules, layer_loop).
    """
    steps, facts = compile_steps(model, mesh, layout, **kwargs)
    return CompileReport(steps=tuple(s.memory for s in steps), **facts)


def xla_activation_bytes(geom: Geometry, mesh: DeviceMesh, *, prefill_tokens: int, decode_batch: int,
                         allow_cpu_proxy: bool = False, **kwargs: Any) -> int:
    """Per-device activation bytes: the larger of XLA's prefill and decode temp bytes.

    Used by ``plan(..., activations="xla")``. Raises InputError when the mesh's platform cannot be
    compiled here (a GPU mesh on a CPU-only host) unless ``allow_cpu_proxy=True``; results are
    cached per (geometry, mesh, tokens, batch).
    """
    key = (geom, _mesh_key(mesh), prefill_tokens, decode_batch, allow_cpu_proxy,
           tuple(sorted(kwargs.items())))
    try:
        hit = _ACTIVATION_CACHE.get(key)
    except TypeError:  # an unhashable option: no caching
        key, hit = None, None
    if hit is not None:
        return hit
    value = compile_report(geom, mesh, prefill_tokens=prefill_tokens, decode_batch=decode_batch,
                           allow_cpu_proxy=allow_cpu_proxy, **kwargs).activation_bytes
    if key is not None:
        if len(_ACTIVATION_CACHE) >= 64:
            _ACTIVATION_CACHE.pop(next(iter(_ACTIVATION_CACHE)))
        _ACTIVATION_CACHE[key] = value
    return value


_ACTIVATION_CACHE: dict[tuple, int] = {}


def _mesh_key(mesh: DeviceMesh) -> tuple:
    devices = tuple(str(d) for d in mesh.devices) if not mesh.is_simulated else mesh.device_kinds
    return (mesh.axis_sizes, mesh.platform, mesh.size, devices)


__all__ = ["STEPS", "CompiledStep", "Target", "XlaCompileError", "build_step", "check_rules",
           "compile_report", "compile_steps", "compile_target", "libtpu_available", "mesh_spec",
           "topology_name", "xla_activation_bytes"]
