"""Serve a kvfit plan on a live GPU: every planned step runs, the measured peak is the plan.

For each case (a model, a KV dtype, a one-stage layout: tp1 by default, tpN / dpN / dpMxtpN with
``--pairs``), in a fresh process on the first ``layout.size`` visible devices:

1. ``DeviceMesh.from_jax()`` reads the live budgets (``bytes_limit``, JAX's allocator cap);
2. ``plan(..., activations="xla", max_length=L, max_batch_input_tokens=T, max_batch_size=B)``:
   kvfit's reference decoder compiled for the plan's prefill chunk (T tokens) and decode batch
   (B requests × L context). B is found by iterating: start from the analytic plan's batch,
   re-plan with ``max_batch_size=B`` until the plan fits (the decode batch changes XLA's temp);
   ``device_memory_utilization=1.0`` (bytes_limit already is the cap), ``runtime_reserve_bytes``
   half a KV page (BFC rounding; less than a page so the growth check below is meaningful);
3. compile the same two steps with the plan's real pool size (before anything is allocated, so
   GPU autotuning scratch stays under the serving peak), allocate the weights (zeros, the
   decoder's stacked arrays: their bytes must equal the plan's ``weights_bytes``) and the pool
   with ``estimator.planning.serving.allocate_kv_pool``;
4. serve: B requests of L tokens (B / dp per replica, each replica its own pages), laid out
   right-aligned so the last request ends on the pool's last usable page (page 0 is the null
   page). Prefill packs them in chunks of T tokens (``--max-prefill-steps`` caps how many chunks
   run: the first ones and the chunk that writes the last usable page; the table says how many
   ran of how many); then decode steps at batch B with every request's full block table
   (positions L−2 and L−1, so the last page is written);
5. pass when every step ran and, on every device, ``peak_bytes_in_use`` ≤ ``bytes_limit`` and the
   peak is within 1 % of its row's ``bytes_in_use before + weights + KV pool + activation bytes``;
6. free the pool, compile the prefill step for a pool grown by the plan's ``free_bytes`` plus one
   page, allocate it and run one chunk: it must fail (RESOURCE_EXHAUSTED at allocation or at the
   step).

The analytic activation estimate (``activations="analytic"``) is printed beside XLA's prefill and
decode temp bytes. ``--compile-only`` adds rows of XLA temp bytes for more (model, tokens, batch)
points without allocating (the evidence for the MoE term in estimator/activations.py).

Usage (repository root; flax on JAX 0.11.2 needs benchmarks/device_shims on PYTHONPATH):
  PYTHONPATH=benchmarks/device_shims python benchmarks/gpu_serve_validate.py --kv-dtypes bfloat16
  PYTHONPATH=benchmarks/device_shims python benchmarks/gpu_serve_validate.py \
      --pairs llama-3.1-8b:bfloat16:tp2,llama-3.1-8b:bfloat16:dp2,qwen3-30b-a3b:bfloat16:tp2,fill:bfloat16:tp2
  python benchmarks/gpu_serve_validate.py --cpu-smoke --cpu-devices 8 --length 512 --tokens 256 \
      --pairs tiny-dense:bfloat16:tp2,tiny-moe:bfloat16:dp2   # the machinery on simulated CPUs
Exit status: 0 when every case passes, 1 otherwise, 2 when no GPU is visible.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOLERANCE = 0.01
FILL_FRACTION = 0.80  # 'fill': Llama-3.1-70B cut to the layers whose weights take about this share
CPU_CAPACITY = 2 * 2**30
TINY = {
    "tiny-dense": dict(model_type="llama", num_layers=2, hidden_size=256, num_attention_heads=4,
                       num_kv_heads=2, head_dim=64, vocab_size=1000, intermediate_size=512,
                       max_position_embeddings=8192),
    "tiny-moe": dict(model_type="qwen3_moe", num_layers=2, hidden_size=256, num_attention_heads=4,
                     num_kv_heads=2, head_dim=64, vocab_size=1000, intermediate_size=512,
                     max_position_embeddings=8192, num_experts=8, num_experts_per_token=2,
                     moe_intermediate_size=128, qk_norm=True),
}
GPU_CASES = ("llama-3.1-8b", "qwen3-14b", "qwen3-30b-a3b", "fill")
CPU_CASES = ("tiny-dense", "tiny-moe")
COMPILE_ONLY = (  # (model, tokens, decode batch): extra XLA temp points, nothing allocated
    ("qwen3-30b-a3b", 2048, 64), ("qwen3-30b-a3b", 4096, 128), ("qwen3-30b-a3b", 16384, 256),
    ("mixtral-8x7b", 2048, 64), ("mixtral-8x7b", 16384, 256), ("qwen3-32b", 8192, 256),
)


# =============================================================================== child process
def _model(name: str, budget: int):
    from dataclasses import replace

    from estimator import Layout, ModelSpec, geometry, load_preset

    if name in TINY:
        return ModelSpec(name=name, **TINY[name]), name
    if name != "fill":
        return load_preset(name), name
    base = load_preset("llama-3.1-70b")
    one, two = (geometry(replace(base, num_layers=n), Layout.parse("tp1")).stages[0].weight_bytes
                for n in (1, 2))  # whole-model bytes: ``budget`` is the budget of all tensor shards
    layers = min(int((FILL_FRACTION * budget - (one - (two - one))) // (two - one)), base.num_layers)
    return replace(base, num_layers=layers, name=f"llama-3.1-70b-{layers}L"), (
        f"llama-3.1-70b cut to {layers} of {base.num_layers} layers (weights ≈ {FILL_FRACTION:.0%} of the "
        "budget: fills the card)")


def _stats(dev) -> dict:
    return dict(dev.memory_stats() or {})


def _plan(model, mesh, layout, kv, length, tokens, batch, reserve, activations):
    from estimator import plan

    return plan(model, mesh, layout, kv_cache_dtype=kv, page_size=128, max_length=length,
                max_batch_input_tokens=tokens, max_batch_size=batch, activations=activations,
                device_memory_utilization=1.0, runtime_reserve_bytes=reserve, signal_bytes=0,
                xla_options={"decode_context_tokens": length} if activations == "xla" else None)


def _is_oom(err: BaseException) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def run_case(case: dict) -> dict:
    """Plan, compile, allocate, serve, grow: one case on the first ``layout.size`` devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from estimator import Layout, geometry
    from estimator.planning.serving import allocate_kv_pool
    from estimator.xla import compile_steps
    from meshes import DeviceMesh
    from meshes.live import read_mesh_stats

    out: dict = {"case": case, "ok": False}
    layout = Layout.parse(case.get("layout", "tp1"))
    if layout.pipeline != 1:
        out["error"] = f"layout {layout.name}: one pipeline stage only (data × tensor)"
        return out
    devices = jax.devices()[: layout.size]
    if len(devices) < layout.size:
        out["error"] = f"layout {layout.name} needs {layout.size} devices, {len(devices)} visible"
        return out
    cpu = devices[0].platform == "cpu"
    capacity = CPU_CAPACITY if cpu else None
    mesh = DeviceMesh.from_jax(devices, capacity_bytes=capacity)
    out["reading"] = read_mesh_stats(devices[:1], capacity_bytes=capacity, warn=False)[0].describe()
    model, label = _model(case["model"], min(s.free for s in mesh.stats) * layout.tensor)
    out["label"] = label
    kv, length, tokens = case["kv_dtype"], case["length"], case["tokens"]
    page_bytes = geometry(model, layout, kv_cache_dtype=kv, page_size=128).stages[0].page_bytes
    reserve = page_bytes // 2
    t0 = time.perf_counter()
    analytic = _plan(model, mesh, layout, kv, length, tokens, None, reserve, "analytic")
    batch = max(analytic.max_batch_size, layout.data)
    tries = []
    for _ in range(5):
        p = _plan(model, mesh, layout, kv, length, tokens, batch, reserve, "xla")
        tries.append((batch, p.fits, p.max_batch_size, p.devices[0].activation_bytes))
        if p.fits:
            break
        batch = max(p.max_batch_size, layout.data)
    out["plan_seconds"] = round(time.perf_counter() - t0, 1)
    out["batch_tries"] = tries
    row = p.devices[0]
    out["plan"] = {k: getattr(row, k) for k in ("bytes_limit", "bytes_in_use", "weights_bytes",
                                                "activation_bytes", "reserve_bytes", "page_bytes",
                                                "kv_pool_bytes", "free_bytes")}
    out["plan"].update(pages=p.pages_per_replica, usable=p.usable_pages_per_replica, batch=batch,
                       length=length, tokens=tokens, fits=p.fits, kv_dtype=p.kv_cache_dtype,
                       layout=layout.name, analytic_activation_bytes=analytic.devices[0].activation_bytes,
                       analytic_pages=analytic.pages_per_replica, warnings=list(p.warnings))
    if not p.fits:
        out["error"] = f"no fitting plan after {tries}"
        return out

    # compile the served steps for the real pool, before allocating anything
    t0 = time.perf_counter()
    steps, _ = compile_steps(model, mesh, layout, kv_cache_dtype=kv, page_size=128, prefill_tokens=tokens,
                             decode_batch=batch, pages_per_replica=p.pages_per_replica,
                             decode_context_tokens=length)
    prefill, decode = steps
    out["compile_seconds"] = round(time.perf_counter() - t0, 1)
    out["xla"] = {s.step: {"temp": s.memory.temp_bytes, "argument": s.memory.argument_bytes,
                           "output": s.memory.output_bytes, "alias": s.memory.alias_bytes,
                           "weights": s.memory.weight_bytes, "pool": s.memory.kv_pool_bytes}
                  for s in steps}

    weights_sds, pool_sds, *_ = prefill.args
    before = [_stats(d) for d in devices]
    weights = jax.tree.map(lambda s: jax.jit(lambda: jnp.zeros(s.shape, s.dtype), out_shardings=s.sharding)(),
                           weights_sds)
    jax.block_until_ready(weights)
    per_device = {}
    for x in jax.tree.leaves(weights):
        for shard in x.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    out["weights_equal_plan"] = all(per_device.get(d, 0) == r.weights_bytes
                                    for d, r in zip(devices, p.devices, strict=True))
    pool_alloc = allocate_kv_pool(p, mesh, model=model)
    pool = pool_alloc.arrays[0]
    if not pool.sharding.is_equivalent_to(pool_sds.sharding, pool.ndim):
        out["error"] = f"allocate_kv_pool's sharding {pool.sharding} is not the step's {pool_sds.sharding}"
        return out
    if cpu:  # XLA:CPU types the pool as an unsigned view of the KV dtype (estimator.xla.decoder)
        pool = jax.lax.bitcast_convert_type(pool, pool_sds.dtype)
    after_alloc = [_stats(d) for d in devices]

    # ---- each replica: b requests × ceil(L / page) pages, right-aligned to its last usable page
    page, dp = 128, layout.data
    b = -(-batch // dp)  # requests per replica, as compile_steps splits the decode batch
    per_req = -(-length // page)
    last = p.pages_per_replica - 1  # page 0 is the null page
    if b * per_req > p.usable_pages_per_replica:
        out["error"] = f"{b} × {per_req} pages exceed {p.usable_pages_per_replica} usable pages per replica"
        return out
    table = (last - b * per_req + 1 + np.arange(b * per_req, dtype=np.int32)).reshape(b, per_req)
    seqs = prefill.args[6].shape[0] // dp
    total = b * length
    chunks = -(-total // tokens)
    cap = case["max_prefill_steps"]
    run_chunks = list(range(chunks)) if chunks <= cap else [*range(cap - 1), chunks - 1]
    rng = np.random.default_rng(0)
    step_log = []

    def put(x, sds):  # every replica serves the same layout of its own pages: tile over 'data'
        return jax.device_put(np.tile(np.asarray(x, np.int32), (dp,) + (1,) * (np.ndim(x) - 1)), sds.sharding)

    def peaks() -> list:
        return [_stats(d).get("peak_bytes_in_use") for d in devices]

    pa, da = prefill.args[2:], decode.args[2:]
    try:
        for c in run_chunks:
            flat = np.arange(c * tokens, (c + 1) * tokens)
            valid = flat < total
            flat = np.minimum(flat, total - 1)
            req, pos = flat // length, flat % length
            slots = np.where(valid, table[req, pos // page] * page + pos % page, 0)  # pads: null page
            ends = np.flatnonzero(valid & ((pos == length - 1) | (np.arange(tokens) == tokens - 1)))
            sample = np.resize(ends if ends.size else np.array([tokens - 1]), seqs)
            ids = rng.integers(0, model.vocab_size, tokens)
            toks, pool = prefill.compiled(weights, pool, put(ids, pa[0]), put(pos, pa[1]), put(req, pa[2]),
                                          put(slots, pa[3]), put(sample, pa[4]))
            jax.block_until_ready(toks)
            step_log.append(("prefill", c, peaks()))
        toks = put(rng.integers(0, model.vocab_size, b), da[0])
        for position in (length - 2, length - 1):
            toks, pool = decode.compiled(weights, pool, toks, put(np.full(b, position), da[1]),
                                         put(table, da[2]))
            jax.block_until_ready(toks)
            step_log.append(("decode", position, peaks()))
    except Exception as err:  # a planned step must run: report it as the failure it is
        out["error"] = f"a planned step failed: {type(err).__name__}: {str(err)[:1200]}"
        out["steps"] = step_log
        return out
    end = [_stats(d) for d in devices]
    out["steps"] = step_log
    out["prefill_chunks"] = [len(run_chunks), chunks]
    out["decode_steps"] = 2
    rows = []
    for r, e, bf, af in zip(p.devices, end, before, after_alloc, strict=True):
        planned = r.bytes_in_use + r.weights_bytes + r.kv_pool_bytes + r.activation_bytes
        peak = None if cpu else e.get("peak_bytes_in_use")
        rows.append({"device": r.device, "before": bf.get("bytes_in_use"), "after_alloc": af.get("bytes_in_use"),
                     "peak": peak, "bytes_limit": e.get("bytes_limit"), "planned": planned,
                     "diff": None if peak is None else (peak - planned) / planned,
                     "largest_free_block": e.get("largest_free_block_bytes")})
    out["devices"] = rows
    out["measure"] = max(rows, key=lambda m: abs(m["diff"] or 0))
    ok_peak = cpu or all(m["peak"] <= m["bytes_limit"] and abs(m["diff"]) <= TOLERANCE for m in rows)

    # ---- grow the pool by the plan's free bytes plus one page (the tightest device): it must fail
    pool.delete()
    del pool
    pool_alloc.delete()
    gc.collect()
    extra = min(-(-(r.free_bytes + r.page_bytes) // r.page_bytes) for r in p.devices)
    grown = p.pages_per_replica + extra
    grow = {"pages": grown, "extra_pages": extra, "extra_bytes": extra * row.page_bytes,
            "left_by_plan": row.free_bytes + row.reserve_bytes}
    try:
        (bigger,), _ = compile_steps(model, mesh, layout, kv_cache_dtype=kv, page_size=128,
                                     prefill_tokens=tokens, decode_batch=batch, pages_per_replica=grown,
                                     decode_context_tokens=length, steps=("prefill",))
        big = allocate_kv_pool(p, mesh, model=model, pages_per_replica=grown, check_fit=False).arrays[0]
        if cpu:
            big = jax.lax.bitcast_convert_type(big, bigger.args[1].dtype)
        grow["allocated"] = True
        ba = bigger.args[2:]
        zeros = np.zeros(tokens)
        toks, big = bigger.compiled(weights, big, put(zeros, ba[0]), put(np.arange(tokens) % length, ba[1]),
                                    put(zeros, ba[2]), put(zeros, ba[3]),
                                    put(np.resize([tokens - 1], seqs), ba[4]))
        jax.block_until_ready(toks)
        grow["outcome"] = "ran"
        big.delete()
    except Exception as err:
        grow["outcome"] = ("RESOURCE_EXHAUSTED" if _is_oom(err) else f"error {type(err).__name__}: "
                           f"{str(err)[:300]}") + (" at the step" if grow.get("allocated") else
                                                   " at allocation")
    grow["ok"] = None if cpu else grow["outcome"].startswith("RESOURCE_EXHAUSTED")
    out["grow"] = grow
    jax.tree.map(lambda x: x.delete(), weights)
    out["ok"] = bool(out["weights_equal_plan"] and ok_peak and (grow["ok"] in (True, None)))
    return out


def compile_point(model_name: str, tokens: int, batch: int, kv: str) -> dict:
    """XLA temp bytes of prefill and decode (nothing allocated) and the analytic estimate."""
    import jax

    from estimator import Layout, geometry, load_preset
    from estimator.planning.activations import analytic_activation_bytes
    from estimator.xla import compile_report
    from meshes import DeviceMesh

    dev = jax.devices()[0]
    mesh = DeviceMesh.from_jax([dev], capacity_bytes=CPU_CAPACITY if dev.platform == "cpu" else None)
    model = load_preset(model_name) if model_name not in TINY else None
    if model is None:
        from estimator import ModelSpec

        model = ModelSpec(name=model_name, **TINY[model_name])
    r = compile_report(model, mesh, "tp1", kv_cache_dtype=kv, prefill_tokens=tokens, decode_batch=batch,
                       decode_context_tokens=4096)
    geom = geometry(model, Layout.parse("tp1"), kv_cache_dtype=kv, page_size=128)
    return {"model": model_name, "tokens": tokens, "batch": batch,
            "prefill_temp": r.step("prefill").temp_bytes, "decode_temp": r.step("decode").temp_bytes,
            "analytic": analytic_activation_bytes(geom, tokens, min(batch, tokens))}


def _child(spec: str) -> None:
    case = json.loads(spec)
    try:
        if case.get("compile_only"):
            result = compile_point(case["model"], case["tokens"], case["batch"], case["kv_dtype"])
        else:
            result = run_case(case)
    except Exception:
        result = {"case": case, "ok": False, "error": traceback.format_exc()[-4000:]}
    print("RESULT " + json.dumps(result), flush=True)


def _probe() -> None:
    import jax
    import jaxlib

    from meshes.live import AllocatorSettings

    d = jax.devices()
    print("RESULT " + json.dumps({"platform": d[0].platform, "count": len(d), "kind": d[0].device_kind,
                                  "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                                  "allocator": AllocatorSettings.from_env().describe(),
                                  "stats": dict(d[0].memory_stats() or {})}), flush=True)


# =============================================================================== parent process
def _run_child(args: list[str], env: dict, timeout: int) -> dict:
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return {"ok": False, "error": f"timed out after {timeout} s: {str(err.stderr or '')[-1500:]}"}
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
    if line is None:
        return {"ok": False, "error": f"exit {proc.returncode}, no result: {proc.stderr[-3000:]}"}
    return json.loads(line.removeprefix("RESULT "))


def _nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi failed: {err}"
    return "; ".join(sorted({x.strip() for x in out.stdout.splitlines() if x.strip()}))


def _gib(n) -> str:
    return "—" if n is None else f"{n / 2**30:.2f}"


def render(meta: dict, results: list[dict], points: list[dict]) -> str:
    lines = [f"### {meta['card']}, {meta['date']}", "",
             f"card {meta['card']}; driver {meta['driver']}; JAX {meta['jax']} (jaxlib {meta['jaxlib']}); "
             f"{meta['allocator']}; {meta['seconds']:.0f} s.", "",
             "| model | KV | budget GiB | weights GiB | pages (XLA / analytic) | batch × length | "
             "activations GiB: plan (XLA) / analytic | XLA temp GiB prefill / decode | XLA / analytic | "
             "steps run | planned GiB | peak GiB | Δ | +free+1 page | result |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---|---|"]
    notes = []
    for r in results:
        case = r.get("case", {})
        label = r.get("label", case.get("model", "?"))
        lay = case.get("layout", "tp1")
        label += "" if lay == "tp1" else f" ({lay})"
        pl, m, x = r.get("plan", {}), r.get("measure", {}), r.get("xla", {})
        if "measure" not in r:
            lines.append(f"| {label} | {case.get('kv_dtype')} | | | | | | | | | | | | | **FAIL** |")
            notes.append(f"- {label} {case.get('kv_dtype')}: {str(r.get('error', ''))[-600:]}")
            continue
        act, ana = pl["activation_bytes"], pl["analytic_activation_bytes"]
        g = r["grow"]
        diff = "—" if m["diff"] is None else f"{m['diff']:+.3%}"
        lines.append(
            f"| {label} | {pl['kv_dtype']} | {_gib(pl['bytes_limit'])} | {_gib(pl['weights_bytes'])} | "
            f"{pl['pages']:,} / {pl['analytic_pages']:,} | {pl['batch']} × {pl['length']:,} | "
            f"{_gib(act)} / {_gib(ana)} | {_gib(x['prefill']['temp'])} / {_gib(x['decode']['temp'])} | "
            f"{act / ana:.2f}× | {r['prefill_chunks'][0]} of {r['prefill_chunks'][1]} prefill + "
            f"{r['decode_steps']} decode | {_gib(m['planned'])} | {_gib(m['peak'])} | {diff} | "
            f"{g['outcome']} | {'pass' if r['ok'] else '**FAIL**'} |")
        notes.append(f"- {label} {pl['kv_dtype']}: planned {m['planned']:,} B, peak {m['peak']}, bytes_limit "
                     f"{m['bytes_limit']}, plan free {pl['free_bytes']:,} B + reserve {pl['reserve_bytes']:,} B, "
                     f"grown by {g['extra_pages']} pages ({g['extra_bytes']:,} B); batch tries "
                     f"{r.get('batch_tries')}; plan {r.get('plan_seconds')} s, compile {r.get('compile_seconds')} s")
    text = [*lines, "", *notes]
    if points:
        text += ["", "| model | tokens | decode batch | XLA prefill temp GiB | XLA decode temp GiB | "
                 "analytic GiB | XLA / analytic |", "|---|---:|---:|---:|---:|---:|---:|"]
        for q in points:
            if "prefill_temp" not in q:
                text.append(f"| {q.get('case', {}).get('model')} | failed: {str(q.get('error'))[-200:]} |")
                continue
            worst = max(q["prefill_temp"], q["decode_temp"])
            text.append(f"| {q['model']} | {q['tokens']:,} | {q['batch']} | {_gib(q['prefill_temp'])} | "
                        f"{_gib(q['decode_temp'])} | {_gib(q['analytic'])} | {worst / q['analytic']:.2f}× |")
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", help=f"comma-separated models (default: {', '.join(GPU_CASES)})")
    ap.add_argument("--kv-dtypes", default="bfloat16,float8_e4m3fn")
    ap.add_argument("--pairs", help="explicit model:kv_dtype[:layout] list, e.g. llama-3.1-8b:fp8:dp2 "
                    "(overrides --cases/--kv-dtypes; layouts: data × tensor, default tp1)")
    ap.add_argument("--cpu-devices", type=int, default=1, help="--cpu-smoke: simulated CPU devices")
    ap.add_argument("--length", type=int, default=8192, help="planned request length (max_length)")
    ap.add_argument("--tokens", type=int, default=8192, help="max_batch_input_tokens (prefill chunk)")
    ap.add_argument("--max-prefill-steps", type=int, default=6)
    ap.add_argument("--mem-fraction", default="0.95", help="XLA_CLIENT_MEM_FRACTION ('env': keep)")
    ap.add_argument("--compile-only", action="store_true", help="add the XLA temp points of COMPILE_ONLY")
    ap.add_argument("--timeout", type=int, default=400)
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--out", help="write the markdown here")
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        _probe()
        return 0
    if args.case:
        _child(args.case)
        return 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.cpu_smoke:
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={args.cpu_devices}")
    elif args.mem_fraction != "env":
        env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
        env["XLA_CLIENT_MEM_FRACTION"] = str(float(args.mem_fraction))
    started = time.perf_counter()
    probe = _run_child(["--probe"], env, args.timeout)
    if "platform" not in probe:
        print(f"probe failed: {probe.get('error')}", file=sys.stderr)
        return 2
    if probe["platform"] == "cpu" and not args.cpu_smoke:
        print("no GPU visible to JAX; --cpu-smoke runs the machinery on CPU", file=sys.stderr)
        return 2
    models = [c.strip() for c in args.cases.split(",")] if args.cases else list(
        CPU_CASES if args.cpu_smoke else GPU_CASES)
    results, points = [], []
    pairs = [(m, k.strip()) for k in args.kv_dtypes.split(",") if k.strip() for m in models]
    if args.pairs:
        pairs = [tuple(x.strip().split(":", 2)) for x in args.pairs.split(",") if x.strip()]

    def dump() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"probe": probe, "results": results, "points": points},
                                                  indent=1), encoding="utf-8")

    if True:
        for model, kv, *lay in pairs:
            case = {"model": model, "kv_dtype": kv, "length": args.length, "tokens": args.tokens,
                    "max_prefill_steps": args.max_prefill_steps, "layout": lay[0] if lay else "tp1"}
            print(f"[{time.perf_counter() - started:6.1f} s] {model} {kv} ...", file=sys.stderr, flush=True)
            r = _run_child(["--case", json.dumps(case)], env, args.timeout)
            r.setdefault("case", case)
            results.append(r)
            dump()
            print(f"           {'pass' if r.get('ok') else 'FAIL'} {str(r.get('error', ''))[-400:]}",
                  file=sys.stderr, flush=True)
    if args.compile_only:
        todo = (("tiny-moe", 512, 16),) if args.cpu_smoke else COMPILE_ONLY
        for model, tokens, batch in todo:
            case = {"compile_only": True, "model": model, "tokens": tokens, "batch": batch,
                    "kv_dtype": "bfloat16"}
            points.append(_run_child(["--case", json.dumps(case)], env, args.timeout) | {"case": case})
            dump()
    meta = {"card": f"{probe['kind']} ({probe['platform']})",
            "driver": "none (CPU)" if probe["platform"] == "cpu" else _nvidia_smi(),
            "jax": probe["jax"], "jaxlib": probe["jaxlib"], "allocator": probe["allocator"],
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": time.perf_counter() - started}
    text = render(meta, results, points)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "points": points}, indent=1),
                                   encoding="utf-8")
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
