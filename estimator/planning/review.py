"""Design review: compare candidate layouts, explain a miss, and find the fewest devices that fit.

All three are thin loops over plan(): every number they show is a plan() number, so a review
table and `kvfit plan` can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from estimator.core.geometry import geometry
from estimator.core.layout import Layout
from estimator.model.resolve import resolve_model
from estimator.model.spec import ModelSpec
from estimator.planning.plan import MemoryPlan, plan
from meshes.catalog import GiB, MiB, device_spec
from meshes.mesh import DeviceMesh
from meshes.validation import InputError, check_int


@dataclass(frozen=True)
class Candidate:
    """One (mesh, layout) under review, and its plan."""

    mesh: str
    layout: str
    plan: MemoryPlan

    @property
    def label(self) -> str:
        return f"{self.mesh} {self.layout}"


def _mesh(mesh: DeviceMesh | str) -> tuple[DeviceMesh, str]:
    if isinstance(mesh, str):
        return DeviceMesh.from_preset(mesh), mesh
    return mesh, mesh.describe()


def compare(model: ModelSpec | str, candidates: Sequence[tuple[DeviceMesh | str, Layout | str | None]],
            **plan_kwargs: Any) -> tuple[Candidate, ...]:
    """Plan ``model`` on every (mesh, layout) candidate with the same knobs."""
    if not candidates:
        raise InputError("candidates", [], "at least one (mesh, layout) pair")
    spec = resolve_model(model)
    out = []
    for mesh, layout in candidates:
        dm, name = _mesh(mesh)
        p = plan(spec, dm, layout, **plan_kwargs)
        out.append(Candidate(name, p.layout, p))
    return tuple(out)


def tightest_row(p: MemoryPlan) -> Any:
    """The device row that sets the page count."""
    return next(r for r in p.devices if r.device == p.tightest_device)


def comparison_rows(candidates: Sequence[Candidate]) -> list[tuple[str, list[str]]]:
    """(metric, one value per candidate) rows for a side-by-side table; bytes in GiB. The batch row
    is at each plan's own planned length (named in the label when all candidates share it)."""
    lengths = {c.plan.planned_max_length for c in candidates}
    at = f"{next(iter(lengths)):,} tokens" if len(lengths) == 1 else "each planned length"

    def per_device(attr: str) -> list[str]:
        return [f"{getattr(tightest_row(c.plan), attr) / GiB:,.2f}" for c in candidates]

    rows = [("devices", [str(len(c.plan.devices)) for c in candidates]),
            ("weights / device (GiB)", per_device("weights_bytes")),
            ("activations / device (GiB)", per_device("activation_bytes")),
            ("signal buffers / device (GiB)", per_device("signal_bytes")),
            ("KV pool / device (GiB)", per_device("kv_pool_bytes")),
            ("free left / device (GiB)", per_device("free_bytes")),
            ("page / device (MiB)", [f"{tightest_row(c.plan).page_bytes / MiB:,.2f}" for c in candidates]),
            ("pages per replica", [f"{c.plan.pages_per_replica:,}" for c in candidates]),
            ("replicas", [str(c.plan.num_replicas) for c in candidates]),
            ("max sequence length", [f"{c.plan.max_supported_sequence_length:,}" for c in candidates]),
            (f"max batch at {at}", [f"{c.plan.max_batch_size:,}" + ("" if len(lengths) == 1 else
                                     f" at {c.plan.planned_max_length:,}") for c in candidates]),
            ("replicated KV / device (GiB)", [f"{c.plan.waste_bytes / GiB:,.2f}" for c in candidates]),
            ("fits", ["yes" if c.plan.fits else "no" for c in candidates])]
    return rows


@dataclass(frozen=True)
class Alternative:
    """A nearby configuration that fits, and the command that plans it."""

    change: str
    plan: MemoryPlan
    command: str


@dataclass(frozen=True)
class Explanation:
    """Why a configuration does or does not fit, and the nearest ones that do."""

    plan: MemoryPlan
    reasons: tuple[str, ...]
    alternatives: tuple[Alternative, ...]


def _command(model: str, mesh: str, layout: str, length: int | None, batch: int | None,
             kv: str | None) -> str:
    parts = [f"kvfit plan --model {model} --mesh {mesh} --layout {layout}"]
    if length:
        parts.append(f"--max-length {length}")
    if batch:
        parts.append(f"--max-batch-size {batch}")
    if kv:
        parts.append(f"--kv-cache-dtype {kv}")
    return " ".join(parts)


def layouts_for(devices: int, model: ModelSpec, per_host: int | None = None) -> list[Layout]:
    """Every data × tensor (× pipeline) layout of ``devices`` whose tensor degree the model allows."""
    out = []
    for tp in (t for t in range(1, devices + 1) if devices % t == 0):
        if model.num_attention_heads % tp or (model.num_kv_heads % tp and tp % model.num_kv_heads
                                              and not model.is_mla):
            continue
        if per_host and tp > per_host:  # a tensor group stays inside one host
            continue
        rest = devices // tp
        for pp in (p for p in range(1, rest + 1) if rest % p == 0 and p <= model.num_layers):
            if pp > 1 and tp * pp > devices:
                continue
            out.append(Layout(data=rest // pp, tensor=tp, pipeline=pp))
            experts = (rest // pp) * tp  # MoE: experts over the data × tensor devices of a stage
            if model.is_moe and experts > 1 and model.num_experts % experts == 0:
                out.append(Layout(data=rest // pp, tensor=tp, pipeline=pp, expert=experts))
    return out


def explain(model: ModelSpec | str, mesh: DeviceMesh | str, layout: Layout | str | None = None, *,
            max_length: int | None = None, max_batch_size: int | None = None,
            **plan_kwargs: Any) -> Explanation:
    """Plan, say why it misses, and try the nearest fixes: a shorter length, a smaller batch,
    an fp8 KV cache, another layout of the same mesh, twice the devices."""
    spec = resolve_model(model)
    dm, mesh_name = _mesh(mesh)
    base = plan(spec, dm, layout, max_length=max_length, max_batch_size=max_batch_size, **plan_kwargs)
    reasons = list(base.warnings) + list(base.suggestions)
    if base.fits:
        return Explanation(base, tuple(reasons) or ("fits",), ())
    row = tightest_row(base)
    reasons.insert(0, f"{row.device}: {row.budget_bytes:,} B budget − {row.weights_bytes:,} B weights − "
                      f"{row.activation_bytes:,} B activations − {row.signal_bytes:,} B signal buffers leaves "
                      f"{row.kv_budget_bytes:,} B = {base.pages_per_replica:,} pages of {row.page_bytes:,} B")
    name, alts = spec.name, []

    def attempt(change: str, mesh_: DeviceMesh | str, layout_: Layout | str | None, length: int | None,
                batch: int | None, **extra: Any) -> None:
        try:
            p = plan(spec, mesh_, layout_, max_length=length, max_batch_size=batch, **{**plan_kwargs, **extra})
        except InputError:
            return
        if p.fits:
            mesh_text = mesh_ if isinstance(mesh_, str) else mesh_name
            alts.append(Alternative(change, p, _command(name, mesh_text, p.layout, length, batch,
                                                        extra.get("kv_cache_dtype"))))

    if base.pages_per_replica > base.reserved_pages and max_length and max_batch_size:
        attempt("shorter requests", dm, layout, _longest(spec, dm, layout, max_batch_size, plan_kwargs),
                max_batch_size)
        attempt("fewer requests at once", dm, layout, max_length, base.max_batch_size or None)
    elif base.pages_per_replica > base.reserved_pages and max_length:
        attempt("shorter requests", dm, layout, base.max_supported_sequence_length, max_batch_size)
    if plan_kwargs.get("kv_cache_dtype") not in ("fp8", "float8_e4m3fn"):
        attempt("fp8 KV cache", dm, layout, max_length, max_batch_size, kv_cache_dtype="fp8")
    for other in layouts_for(dm.size, spec):
        if other.name != base.layout:
            attempt(f"layout {other.name}", dm, other, max_length, max_batch_size)
    kinds = {getattr(d, "spec", None) for d in dm.devices}
    if len(kinds) == 1 and None not in kinds:  # more devices: at least one request of one page
        kind = next(iter(kinds)).name
        sizes = [n for n in (dm.size * 2**k for k in range(1, 5)) if n <= MAX_FIT_DEVICES]
        more = fit(spec, target_length=max_length or base.page_size, target_concurrency=max_batch_size or 1,
                   device=kind, max_devices=max(sizes), sizes=sizes, **plan_kwargs) if sizes else ()
        for option in more[:2]:  # shown as planned for what was asked (the defaults where nothing was)
            shown = plan(spec, option.mesh, option.layout, max_length=max_length, max_batch_size=max_batch_size,
                         **plan_kwargs)
            alts.append(Alternative(f"{option.devices} devices, {option.layout}", shown,
                                    _command(name, option.mesh, option.layout, max_length,
                                             max_batch_size, plan_kwargs.get("kv_cache_dtype"))))
    return Explanation(base, tuple(reasons), tuple(alts))


def _longest(spec: ModelSpec, mesh: DeviceMesh, layout: Layout | str | None, batch: int,
             plan_kwargs: dict) -> int | None:
    """Longest length at which ``batch`` requests fit (binary search over plan())."""
    lo, hi = 0, spec.max_position_embeddings
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan(spec, mesh, layout, max_length=mid, max_batch_size=batch, **plan_kwargs).fits:
            lo = mid
        else:
            hi = mid - 1
    return lo or None


MAX_FIT_DEVICES = 256  # 8 sizes of one host + 31 multi-host sizes, every layout of each: ~2 s worst case


@dataclass(frozen=True)
class FitOption:
    """A mesh size and layout that reaches the target, with its headroom."""

    devices: int
    mesh: str  # the preset, e.g. 2x8xH100-80GB
    layout: str
    headroom_bytes: int  # unused KV budget on the tightest device at the target load
    plan: MemoryPlan


def _headroom(spec: ModelSpec, layout: Layout, p: MemoryPlan, length: int, concurrency: int,
              plan_kwargs: dict) -> int:
    """KV bytes left on the tightest device once ``concurrency`` requests of ``length`` are in."""
    geom = geometry(spec, layout, kv_cache_dtype=plan_kwargs.get("kv_cache_dtype"), page_size=p.page_size,
                    kv_scale_block=plan_kwargs.get("kv_scale_block"))
    per_replica = -(-concurrency // p.num_replicas)
    left = []
    for row in p.devices:
        stage = geom.stages[row.stage]
        if stage.page_bytes:
            need = per_replica * stage.pool.pages(length + p.speculative_slack_tokens) + p.reserved_pages
            left.append(row.kv_budget_bytes - need * stage.page_bytes)
    return min(left) if left else 0


def fit(model: ModelSpec | str, *, target_length: int, target_concurrency: int,
        device: str = "H100-80GB", max_devices: int = 64, per_host: int = 8,
        sizes: Iterable[int] | None = None, **plan_kwargs: Any) -> tuple[FitOption, ...]:
    """Fewest devices of one kind, and the layouts on them, that serve ``target_concurrency``
    requests of ``target_length`` tokens; ranked by device count, then headroom."""
    spec = resolve_model(model)
    kind = device_spec(device)
    target_length = check_int("target_length", target_length, maximum=2**40)
    target_concurrency = check_int("target_concurrency", target_concurrency, maximum=2**31 - 1)
    max_devices = check_int("max_devices", max_devices, maximum=MAX_FIT_DEVICES)
    per_host = check_int("per_host", per_host, maximum=MAX_FIT_DEVICES)
    # every size: 3 devices may serve what 4 do, 12 (3 hosts of 4) what 16 do
    if sizes is None:
        sizes = range(1, max_devices + 1)
    elif isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise InputError("sizes", sizes, f"device counts in [1, {max_devices}]")
    sizes = sorted({check_int("sizes", n, maximum=max_devices) for n in sizes})
    if not sizes:
        raise InputError("sizes", [], f"at least one device count in [1, {max_devices}]")
    # bad knobs (dtype, utilisation, ...) are the caller's error, not "nothing fits": plan once
    # outside the search so that its InputError reaches the caller
    plan(spec, f"1x{kind.name}", None, max_length=target_length, max_batch_size=target_concurrency,
         **plan_kwargs)
    found: list[FitOption] = []
    meshes: dict[str, DeviceMesh] = {}
    for n in sizes:
        for layout in layouts_for(n, spec, per_host):
            # the fullest hosts whose size the tensor group divides (a tensor group stays in one host)
            local = max(d for d in range(1, min(n, per_host) + 1) if n % d == 0 and d % layout.tensor == 0)
            preset = f"{n // local}x{local}x{kind.name}" if n > local else f"{local}x{kind.name}"
            mesh = meshes.setdefault(preset, DeviceMesh.from_preset(preset))
            try:
                p = plan(spec, mesh, layout, max_length=target_length, max_batch_size=target_concurrency,
                         **plan_kwargs)
            except InputError:
                continue
            if p.fits:
                found.append(FitOption(n, preset, layout.name, _headroom(spec, layout, p, target_length,
                                                                 target_concurrency, plan_kwargs), p))
        if found:
            break
    return tuple(sorted(found, key=lambda o: (o.devices, -o.headroom_bytes)))
