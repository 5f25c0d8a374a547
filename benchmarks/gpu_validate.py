"""Show on real GPUs that a kvfit plan is exact: what it says fits allocates, and 2 % more does not.

For each case (a model and a layout over the first N visible GPUs), in a fresh process:

1. read every GPU's ``memory_stats()`` (``DeviceMesh.from_jax``; the budget is ``bytes_limit``,
   which already is JAX's allocator cap, so ``device_memory_utilization=1.0``);
2. ``plan()`` the KV pool with ``activation_bytes=0`` and ``signal_bytes=0`` — this program runs no
   model, so nothing but weights and the pool is ever allocated; charging the analytic
   activation peak or MAX's allreduce signal buffers would leave that memory free and the
   "+2 % pages" check below would pass for the wrong reason — and a small explicit
   ``runtime_reserve_bytes`` (``--slack-mib``, default 256 MiB) for allocator slack (BFC rounds every
   buffer up to 256 B, and does not split a free chunk whose remainder would be under 128 MiB: with
   less left free, the last buffer takes the whole tail and bytes_in_use reads bytes_limit);
3. allocate placeholder weights (``allocate_weights_like``) and the pool (``allocate_kv_pool``),
   both by jitted zeros constructors with ``out_shardings``, and check:
   * the allocation succeeds, and every device's shards (``addressable_shards[i].data.nbytes``)
     equal the plan's rows to the byte;
   * per device, ``bytes_in_use`` after allocation is within 1 % of the plan:
     ``bytes_in_use before planning + weights + KV pool``;
4. free the pool and allocate it with 2 % more pages (at least one more): it must fail with
   RESOURCE_EXHAUSTED — unless the extra bytes fit in what the plan left over on every device
   (its ``free_bytes`` plus the explicit slack), in which case it must succeed; either way the
   output says which was expected and why.

Each case runs in its own subprocess (nothing leaks between cases; the parent never starts JAX on
the GPUs), with ``XLA_CLIENT_MEM_FRACTION`` set by ``--mem-fraction`` (default 0.95, so a model
can fill the card; ``env`` keeps the environment's settings) and ``CUDA_VISIBLE_DEVICES`` narrowed
to the GPUs the case uses.

Default cases, by the number of GPUs used (``--gpus``, default: all visible, rounded down to a
power of two, at most 8):
  1 GPU : llama-3.1-8b tp1, qwen3-14b tp1, and a model that fills the card (qwen3-32b in bf16 if
          its weights take at most 92 % of the budget, else Llama-3.1-70B's architecture cut to as
          many layers as fill about 85 % — labelled so in the table);
  N ≥ 2 : llama-3.1-8b tp1, llama-3.1-8b dpN, qwen3-14b tpN, qwen3-14b dpN (dp2xtpN/2 too when
          N ≥ 4), and llama-3.1-70b tpN (cut to fewer layers, labelled, if it does not fit).

Usage (repository root, the project's venv):
  python benchmarks/gpu_validate.py --out benchmarks/RESULTS-1xH100.md
  python benchmarks/gpu_validate.py --gpus 2 --out benchmarks/RESULTS-2xH100.md --json results.json
  python benchmarks/gpu_validate.py --out benchmarks/RESULTS.md --append   # add a run's section
  python benchmarks/gpu_validate.py --cases llama-3.1-8b:tp1,fill:tp2 --out /tmp/r.md
  python benchmarks/gpu_validate.py --cpu-smoke --out /tmp/smoke.md   # the machinery, on 8 CPU devices
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

TITLE = ("# kvfit GPU validation: planned vs measured bytes\n\n"
         "Written by `benchmarks/gpu_validate.py` (its docstring says what is checked and why); one section "
         "per run.\n\n")
TOLERANCE = 0.01  # |measured − planned| ≤ 1 % of planned bytes_in_use, per device
GROW_PERCENT = 2
FILL_FRACTION = 0.85  # a cut 70B's weights take about this share of the budget
MAX_WHOLE_MODEL_SHARE = 0.92  # a whole model "fills the card" when its weights take at most this
CPU_CAPACITY = 64 * 2**20  # --cpu-smoke: bytes per simulated device for weights and pages (plus the slack)
CPU_MODELS = {  # --cpu-smoke stand-ins, small enough for 8 CPU devices
    "tiny-llama": dict(model_type="llama", num_layers=4, hidden_size=512, num_attention_heads=8,
                       num_kv_heads=4, head_dim=64, vocab_size=4099, intermediate_size=1024,
                       max_position_embeddings=8192),
    "tiny-qwen3": dict(model_type="qwen3", num_layers=6, hidden_size=512, num_attention_heads=8,
                       num_kv_heads=8, head_dim=64, vocab_size=8192, intermediate_size=1536,
                       max_position_embeddings=8192, qk_norm=True),
}


# =============================================================================== child process
def _model_for(name: str, mesh, layout, settings: dict):
    """(ModelSpec, label): a preset, a --cpu-smoke stand-in, or 'fill' sized to the budget."""
    from dataclasses import replace

    from estimator import ModelSpec, geometry, load_preset

    if name in CPU_MODELS:
        return ModelSpec(name=name, **CPU_MODELS[name]), name
    if name != "fill":
        return load_preset(name), name
    budget = min(s.free for s in mesh.stats) - settings["slack"]
    first = "qwen3-32b" if layout.tensor == 1 and layout.pipeline == 1 else "llama-3.1-70b"
    spec = load_preset(first)
    weights = max(s.weight_bytes for s in geometry(spec, layout).stages)
    if weights <= MAX_WHOLE_MODEL_SHARE * budget:
        return spec, f"{first} (fills the card: weights {weights / budget:.0%} of the budget)"
    base = load_preset("llama-3.1-70b")
    one, two = (max(s.weight_bytes for s in geometry(replace(base, num_layers=n), layout).stages)
                for n in (max(layout.pipeline, 1), max(layout.pipeline, 1) + 1))
    per_layer = two - one
    layers = max(int((FILL_FRACTION * budget - (one - per_layer * layout.pipeline)) // per_layer),
                 layout.pipeline)
    layers = min(layers, base.num_layers)
    spec = replace(base, num_layers=layers, name=f"llama-3.1-70b-{layers}L")
    return spec, (f"llama-3.1-70b cut to {layers} of {base.num_layers} layers (fills the card; "
                  f"the whole model's {weights:,} B of weights per device exceed the budget)")


def _stats(devices) -> list[dict]:
    return [dict(d.memory_stats() or {}) for d in devices]


def run_case(case: dict) -> dict:
    """Plan, allocate, measure, over-allocate; everything the table needs, as JSON-able data."""
    import jax

    from estimator import Layout, plan
    from estimator.planning.serving import (
        allocate_kv_pool,
        allocate_weights_like,
        check_allocation,
        check_plan_still_fits,
        clear_caches,
        device_bytes,
        grown_pages,
    )
    from meshes import DeviceMesh
    from meshes.live import read_mesh_stats

    out: dict = {"case": case, "ok": False}
    layout = Layout.parse(case["layout"])
    devices = jax.devices()[: layout.size]
    if len(devices) < layout.size:
        out["error"] = f"layout {layout.name} needs {layout.size} devices, {len(devices)} visible"
        return out
    cpu = devices[0].platform == "cpu"
    capacity = CPU_CAPACITY + case["slack_mib"] * 2**20 if cpu else None
    out["readings"] = [r.describe() for r in read_mesh_stats(devices, capacity_bytes=capacity, warn=False)]
    mesh = DeviceMesh.from_jax(devices, capacity_bytes=capacity)
    settings = {"slack": case["slack_mib"] * 2**20}
    model, label = _model_for(case["model"], mesh, layout, settings)
    out["label"] = label
    p = plan(model, mesh, layout, page_size=case["page_size"], kv_cache_dtype=case.get("kv_dtype"),
             device_memory_utilization=1.0, activation_bytes=0, signal_bytes=0,
             runtime_reserve_bytes=settings["slack"], max_length=None)
    out["plan"] = {"pages_per_replica": p.pages_per_replica, "kv_cache_dtype": p.kv_cache_dtype,
                   "max_supported_sequence_length": p.max_supported_sequence_length,
                   "warnings": list(p.warnings),
                   "rows": [{k: getattr(r, k) for k in ("device", "bytes_limit", "bytes_in_use", "weights_bytes",
                                                         "page_bytes", "kv_pool_bytes", "reserve_bytes",
                                                         "free_bytes")} for r in p.devices]}
    if p.pages_per_replica < 1:
        out["error"] = "the plan fits no KV page: " + "; ".join(p.warnings)
        return out

    t0 = time.perf_counter()
    weights = None
    try:
        weights = allocate_weights_like(p, mesh, model=model)
        pool = allocate_kv_pool(p, mesh, model=model)
    except Exception as err:  # the planned allocation must succeed: report it as the failure it is
        stats = _stats(devices)
        out["error"] = (f"the planned allocation failed ({'KV pool' if weights else 'weights'}): "
                        f"{type(err).__name__}: {str(err)[:1500]}\nbytes_in_use now: "
                        f"{[s.get('bytes_in_use') for s in stats]}; if the shortfall is a few MiB of "
                        "allocator overhead, rerun with a larger --slack-mib")
        return out
    out["alloc_seconds"] = round(time.perf_counter() - t0, 2)
    after = _stats(devices)
    out["exact_problems"] = check_allocation(p, mesh, weights, pool)
    out["shard_bytes"] = device_bytes(mesh, [weights, pool])
    out["fit_check"] = check_plan_still_fits(p, mesh, allocated=[weights, pool]).summary
    per_device = []
    for i, row in enumerate(p.devices):
        planned = row.bytes_in_use + row.weights_bytes + row.kv_pool_bytes
        measured = after[i].get("bytes_in_use") if not cpu else None
        diff = None if measured is None else (measured - planned) / planned
        per_device.append({"device": row.device, "planned": planned, "measured": measured, "diff": diff,
                           "peak": after[i].get("peak_bytes_in_use"), "pool_bytes": after[i].get("pool_bytes"),
                           "largest_free_block": after[i].get("largest_free_block_bytes"),
                           "ok": None if diff is None else abs(diff) <= TOLERANCE})
    out["devices"] = per_device

    # 2 % more pages than planned, after freeing the planned pool
    pool.delete()
    del pool
    gc.collect()
    more = grown_pages(p.pages_per_replica, GROW_PERCENT)
    extra = [(more - p.pages_per_replica) * r.page_bytes for r in p.devices]
    headroom = [r.free_bytes + r.reserve_bytes for r in p.devices]
    expect_oom = any(e > h for e, h in zip(extra, headroom, strict=True))
    grow = {"pages": more, "extra_bytes": max(extra), "headroom_bytes": min(headroom),
            "expected": "RESOURCE_EXHAUSTED" if expect_oom else "allocated"}
    try:
        big = allocate_kv_pool(p, mesh, model=model, pages_per_replica=more, check_fit=False)
        grow["outcome"] = "allocated"
        big.delete()
        del big
    except Exception as err:  # XlaRuntimeError / JaxRuntimeError
        text = str(err)
        grow["outcome"] = ("RESOURCE_EXHAUSTED" if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text
                           else f"error {type(err).__name__}: {text[:300]}")
    if cpu:  # the attempt still runs the code path; CPU has no cap, so its outcome proves nothing
        grow["outcome"], grow["ok"] = f"{grow['outcome']}, not judged (CPU has no allocator cap)", None
    else:
        grow["ok"] = grow["outcome"] == grow["expected"]
    out["grow"] = grow
    weights.delete()
    del weights
    gc.collect()
    clear_caches()
    oks = [not out["exact_problems"]] + [d["ok"] for d in per_device if d["ok"] is not None]
    oks += [grow["ok"]] if grow["ok"] is not None else []
    out["ok"] = all(oks)
    return out


def _child(spec: str) -> None:
    case = json.loads(spec)
    try:
        result = run_case(case)
    except Exception:
        result = {"case": case, "ok": False, "error": traceback.format_exc()[-4000:]}
    print("RESULT " + json.dumps(result), flush=True)


def _probe() -> None:
    import jax
    import jaxlib

    from meshes.live import AllocatorSettings

    devices = jax.devices()
    print("RESULT " + json.dumps({
        "platform": devices[0].platform, "count": len(devices),
        "kinds": [d.device_kind for d in devices], "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "allocator": AllocatorSettings.from_env().describe(),
        "stats0": dict(devices[0].memory_stats() or {}),
    }), flush=True)


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


def _visible(env: dict, n: int) -> str:
    listed = [x for x in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return ",".join(listed[:n] if listed else [str(i) for i in range(n)])


def _env(args, gpus: int | None) -> dict:
    env = dict(os.environ)
    if args.cpu_smoke:
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    elif args.mem_fraction != "env":
        env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)  # JAX refuses both names at once
        env["XLA_CLIENT_MEM_FRACTION"] = str(float(args.mem_fraction))
    if gpus and not args.cpu_smoke:
        env["CUDA_VISIBLE_DEVICES"] = _visible(os.environ, gpus)
    return env


def default_cases(n: int, cpu: bool) -> list[tuple[str, str]]:
    small, medium = ("tiny-llama", "tiny-qwen3") if cpu else ("llama-3.1-8b", "qwen3-14b")
    if n == 1:
        return [(small, "tp1"), (medium, "tp1"), ("fill", "tp1")] if not cpu else [(small, "tp1"),
                                                                                 (medium, "tp1")]
    cases = [(small, "tp1"), (small, f"dp{n}"), (medium, f"tp{n}"), (medium, f"dp{n}")]
    if n >= 4:
        cases.append((medium, f"dp2xtp{n // 2}"))
    if not cpu:
        cases.append(("fill", f"tp{n}"))
    return cases


def _nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi failed: {err}"
    lines = sorted(set(x.strip() for x in out.stdout.splitlines() if x.strip()))
    return "; ".join(lines) or f"nvidia-smi: {out.stderr.strip()[:200]}"


def _b(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def render(meta: dict, results: list[dict]) -> str:
    lines = [
        f"## {meta['card']} — {meta['date']}",
        "",
        f"- card: {meta['card']}",
        f"- driver (nvidia-smi name, driver, memory): {meta['driver']}",
        f"- JAX {meta['jax']} (jaxlib {meta['jaxlib']}), platform {meta['platform']}",
        f"- date: {meta['date']}",
        f"- allocator: {meta['allocator']}",
        f"- plan settings: page size {meta['page_size']}, device_memory_utilization=1.0 (bytes_limit already "
        "is the allocator's cap), activation_bytes=0 and signal_bytes=0 (only weights and the KV pool are "
        f"allocated), runtime_reserve_bytes={meta['slack_mib']} MiB (allocator slack)",
        f"- pass: every device's shards equal the plan's rows to the byte; bytes_in_use after allocation "
        f"within {TOLERANCE:.0%} of (bytes_in_use before + weights + KV pool); the pool with "
        f"{GROW_PERCENT} % more pages fails with RESOURCE_EXHAUSTED unless the plan left that much free",
        f"- total runtime: {meta['seconds']:.0f} s",
        "",
        "| model | layout | GPUs | weights / GPU (B) | pages / replica | KV pool / GPU (B) | planned bytes_in_use "
        "| measured bytes_in_use | Δ | shards = plan | +2 % pages | result |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    notes = []
    for r in results:
        case = r.get("case", {})
        layout = case.get("layout", "?")
        label = r.get("label", case.get("model", "?"))
        if "devices" not in r:
            err = (r.get("error") or "no result").strip().splitlines()
            lines.append(f"| {label} | {layout} | — | — | — | — | — | — | — | — | — | **FAIL**: "
                         f"{err[-1][:150] if err else ''} |")
            notes.append(f"#### {label} {layout}: error\n\n```\n{r.get('error', '')[-2500:]}\n```")
            continue
        worst = max(r["devices"], key=lambda d: abs(d["diff"] or 0))
        row0 = r["plan"]["rows"][0]
        grow = r["grow"]
        grow_text = (f"{grow['outcome']} (expected {grow['expected']}: +{grow['extra_bytes']:,} B vs "
                     f"{grow['headroom_bytes']:,} B left by the plan)")
        diff = "—" if worst["diff"] is None else f"{worst['diff']:+.4%}"
        lines.append(
            f"| {label} | {layout} | {len(r['devices'])} | {row0['weights_bytes']:,} | "
            f"{r['plan']['pages_per_replica']:,} | {row0['kv_pool_bytes']:,} | {worst['planned']:,} | "
            f"{_b(worst['measured'])} | {diff} | {'yes' if not r['exact_problems'] else 'NO'} | {grow_text} | "
            f"{'pass' if r['ok'] else '**FAIL**'} |")
        detail = [f"#### {label} {layout}", "",
                  f"KV dtype {r['plan']['kv_cache_dtype']}, longest request "
                  f"{r['plan']['max_supported_sequence_length']:,} tokens, allocation took "
                  f"{r.get('alloc_seconds', 0)} s; {r.get('fit_check', '')}", "",
                  "| device | bytes_limit | in use before | weights | KV pool | planned | measured | Δ | "
                  "peak | largest free block |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for d, row in zip(r["devices"], r["plan"]["rows"], strict=True):
            delta = "—" if d["diff"] is None else f"{d['diff']:+.4%}"
            detail.append(f"| {d['device']} | {row['bytes_limit']:,} | {row['bytes_in_use']:,} | "
                          f"{row['weights_bytes']:,} | {row['kv_pool_bytes']:,} | {d['planned']:,} | "
                          f"{_b(d['measured'])} | {delta} | {_b(d['peak'])} | {_b(d['largest_free_block'])} |")
        detail += ["", *(f"- {x}" for x in r.get("readings", [])[:2]), *(f"- problem: {x}" for x in
                                                                         r["exact_problems"])]
        if r["plan"]["warnings"]:
            detail += [f"- plan warning: {w}" for w in r["plan"]["warnings"]]
        notes.append("\n".join(detail))
    return "\n".join([*lines, "", "### Per device", "", *("\n\n".join(notes).splitlines()), ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=False, help="write the markdown table here")
    ap.add_argument("--append", action="store_true", help="append this run's section to --out if it exists")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--gpus", type=int, help="use the first N visible GPUs (default: all, power of two, ≤ 8)")
    ap.add_argument("--cases", help="comma-separated model:layout (model: a preset, or 'fill')")
    ap.add_argument("--mem-fraction", default="0.95",
                    help="XLA_CLIENT_MEM_FRACTION for each case ('env': keep the environment's)")
    ap.add_argument("--page-size", type=int, default=128)
    ap.add_argument("--kv-dtype", default=None, help="KV cache dtype (default: the model's)")
    ap.add_argument("--slack-mib", type=int, default=256,
                    help="runtime_reserve_bytes, in MiB (above BFC's 128 MiB split threshold)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per case")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the machinery on 8 simulated CPU devices")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        _probe()
        return 0
    if args.case:
        _child(args.case)
        return 0
    if args.mem_fraction != "env":
        try:
            frac = float(args.mem_fraction)
        except ValueError:
            frac = -1.0
        if not 0 < frac <= 1:
            ap.error("--mem-fraction must be a number in (0, 1] or 'env'")

    started = time.perf_counter()
    probe = _run_child(["--probe"], _env(args, None), args.timeout)
    if "platform" not in probe:
        print(f"probe failed: {probe.get('error')}", file=sys.stderr)
        return 2
    cpu = probe["platform"] == "cpu"
    if cpu and not args.cpu_smoke:
        print("no GPU visible to JAX (platform cpu). The same code paths run on 8 simulated CPU devices in "
              "tests/test_serving_cpu.py; --cpu-smoke runs this program's machinery there.", file=sys.stderr)
        return 2
    visible = probe["count"]
    n = args.gpus or visible
    if n > visible:
        print(f"--gpus {n}, but {visible} visible", file=sys.stderr)
        return 2
    if not args.gpus:
        n = 1 << (min(n, 8).bit_length() - 1)
    if args.cases:
        cases = [tuple(c.strip().split(":", 1)) for c in args.cases.split(",") if c.strip()]
        if any(len(c) != 2 for c in cases):
            ap.error("--cases takes model:layout pairs, e.g. llama-3.1-8b:tp1,fill:tp2")
    else:
        cases = default_cases(n, cpu)
    from estimator import Layout  # light import: no JAX in the parent

    results = []
    for model, layout in cases:
        size = Layout.parse(layout).size
        case = {"model": model, "layout": layout, "page_size": args.page_size, "kv_dtype": args.kv_dtype,
                "slack_mib": args.slack_mib}
        print(f"[{time.perf_counter() - started:6.1f} s] {model} {layout} on {size} device(s) ...",
              file=sys.stderr, flush=True)
        result = _run_child(["--case", json.dumps(case)], _env(args, size), args.timeout)
        result.setdefault("case", case)
        results.append(result)
        print(f"           {'pass' if result.get('ok') else 'FAIL'} {result.get('error', '')[-300:]}",
              file=sys.stderr, flush=True)
    kinds = sorted(set(probe["kinds"]))
    used = max((Layout.parse(layout).size for _, layout in cases), default=0)
    meta = {"card": f"{', '.join(kinds)} × {visible} visible (cases use up to {used})",
            "driver": "none (CPU smoke run)" if cpu else _nvidia_smi(),
            "jax": probe["jax"], "jaxlib": probe["jaxlib"], "platform": probe["platform"],
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "allocator": probe["allocator"], "page_size": args.page_size, "slack_mib": args.slack_mib,
            "seconds": time.perf_counter() - started}
    text = render(meta, results)
    print(text)
    if args.out:
        out = Path(args.out)
        if args.append and out.exists():
            out.write_text(out.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + text, encoding="utf-8")
        else:
            out.write_text(TITLE + text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1), encoding="utf-8")
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
