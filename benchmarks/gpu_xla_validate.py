"""Does XLA's compile-time memory analysis predict what a step really uses on one GPU?

For several model sizes (scaled to fit one 80 GB card), compile kvfit's reference decoder step
(estimator.xla) on the local GPU, allocate its real weights (zeros) and KV pool, run it, and
compare XLA's predicted bytes with the allocator's ``peak_bytes_in_use``:

    predicted = argument + temp + output − alias   (the pool is donated: output ≈ alias)

Each (model, step) runs in a fresh process, so every peak is that step's own. Prints the card,
JAX version and date, a table, and PASS/FAIL at a 10 % tolerance.

    python benchmarks/gpu_xla_validate.py            # all cases, < 3 minutes on an H100
    python benchmarks/gpu_xla_validate.py --quick    # the smallest model only

Self-contained: imports the project from the repository root (no install needed), needs JAX
with a CUDA backend and flax.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOLERANCE = 0.10
GiB = 2**30

# name -> (ModelSpec fields or preset, overrides, prefill tokens, decode batch, pages)
CASES: dict[str, dict] = {
    # a 2-layer toy for a dry run on any platform (--any-platform --cases tiny-2L); not a default
    "tiny-2L": dict(spec=dict(model_type="llama", num_layers=2, hidden_size=256,
                              num_attention_heads=4, num_kv_heads=2, head_dim=64, vocab_size=1000,
                              intermediate_size=512, max_position_embeddings=8192), pages=64),
    "llama-1b-8L": dict(spec=dict(model_type="llama", num_layers=8, hidden_size=2048,
                                  num_attention_heads=16, num_kv_heads=8, head_dim=128,
                                  vocab_size=128256, intermediate_size=8192,
                                  max_position_embeddings=8192), pages=4096),
    "llama-3.1-8b": dict(preset="llama-3.1-8b", pages=1024),
    "qwen3-30b-a3b-12L": dict(preset="qwen3-30b-a3b", num_layers=12, pages=4096),
    "llama-3.1-70b-16L": dict(preset="llama-3.1-70b", num_layers=16, pages=2048),
}
PREFILL_TOKENS = 8192
DECODE_BATCH = 64
DECODE_CONTEXT = 4096


def model_for(name: str):
    from dataclasses import replace

    from estimator import ModelSpec, load_preset

    case = CASES[name]
    if "preset" in case:
        m = load_preset(case["preset"])
        if "num_layers" in case:
            m = replace(m, name=name, num_layers=case["num_layers"])
        return m
    return ModelSpec(name=name, **case["spec"])


DEFAULT_CASES = ("llama-1b-8L", "llama-3.1-8b", "qwen3-30b-a3b-12L", "llama-3.1-70b-16L")


def run_one(name: str, step: str, layer_loop: str, any_platform: bool = False) -> dict:
    """Compile, allocate, run one step; return XLA's numbers and the allocator's."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from estimator.xla import compile_steps
    from meshes import DeviceMesh

    dev = jax.devices()[0]
    if dev.platform != "gpu" and not any_platform:
        raise SystemExit(f"needs a GPU; JAX's first device is {dev} ({dev.platform})")
    mesh = DeviceMesh.from_jax([dev], capacity_bytes=None if dev.memory_stats() else 64 * GiB)
    model = model_for(name)
    stats0 = dev.memory_stats() or {}
    t0 = time.perf_counter()
    (cs,), facts = compile_steps(model, mesh, "tp1", prefill_tokens=PREFILL_TOKENS,
                                 decode_batch=DECODE_BATCH, decode_context_tokens=DECODE_CONTEXT,
                                 pages_per_replica=CASES[name]["pages"], steps=(step,),
                                 layer_loop=layer_loop)
    compile_s = time.perf_counter() - t0
    after_compile = dev.memory_stats() or {}
    mem = cs.memory

    weights, pool, *inputs = cs.args
    zeros = jax.tree.map(lambda s: jax.jit(lambda: jnp.zeros(s.shape, s.dtype),
                                           out_shardings=s.sharding)(), (weights, pool))
    rng = np.random.default_rng(0)
    pages = pool.shape[2]
    page = pool.shape[3]
    host = []
    if step == "prefill":
        t, seqs = inputs[0].shape[0], inputs[4].shape[0]
        per = t // seqs
        positions = np.arange(t) % per
        segments = np.minimum(np.arange(t) // per, seqs - 1)
        slots = np.arange(t) % (pages * page)
        host = [rng.integers(0, model.vocab_size, t), positions, segments, slots,
                np.arange(1, seqs + 1) * per - 1]
    else:
        b, ctx_pages = inputs[2].shape
        host = [rng.integers(0, model.vocab_size, b),
                rng.integers(ctx_pages * page // 2, ctx_pages * page, b),
                rng.integers(0, pages, (b, ctx_pages))]
    args_in = [jax.device_put(np.asarray(h, np.int32), s.sharding) for h, s in zip(host, inputs, strict=True)]
    jax.block_until_ready((zeros, args_in))
    before = dev.memory_stats() or {}
    t1 = time.perf_counter()
    out = cs.compiled(zeros[0], zeros[1], *args_in)
    jax.block_until_ready(out)
    run_s = time.perf_counter() - t1
    after = dev.memory_stats() or {}
    predicted = (mem.argument_bytes or 0) + (mem.temp_bytes or 0) + (mem.output_bytes or 0) \
        - (mem.alias_bytes or 0)
    return dict(case=name, step=step, layer_loop=layer_loop, weight_bytes=mem.weight_bytes,
                kv_pool_bytes=mem.kv_pool_bytes, argument_bytes=mem.argument_bytes,
                output_bytes=mem.output_bytes, alias_bytes=mem.alias_bytes, temp_bytes=mem.temp_bytes,
                xla_peak_bytes=mem.peak_bytes, predicted_bytes=predicted,
                in_use_before_run=before.get("bytes_in_use"), peak_before_run=before.get("peak_bytes_in_use"),
                peak_after_compile=after_compile.get("peak_bytes_in_use"),
                peak_at_start=stats0.get("peak_bytes_in_use"),
                peak_bytes_in_use=after.get("peak_bytes_in_use"), bytes_limit=after.get("bytes_limit"),
                compile_s=compile_s, run_s=run_s, backend=facts["backend"], device_kind=facts["device_kind"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=2, metavar=("CASE", "STEP"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="only the smallest model")
    ap.add_argument("--cases", nargs="*", default=None, help=f"subset of {', '.join(CASES)}")
    ap.add_argument("--layer-loop", default="scan", choices=("scan", "unroll"))
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--any-platform", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], args.one[1], args.layer_loop,
                                             args.any_platform)))
        return 0

    import jax

    dev = jax.devices()[0]
    print(f"card: {dev.device_kind} ({dev.platform}); jax {jax.__version__}; "
          f"date {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"prefill {PREFILL_TOKENS} tokens, decode batch {DECODE_BATCH} × {DECODE_CONTEXT} context, "
          f"layer loop {args.layer_loop}; predicted = argument + temp + output − alias; "
          f"pass within {TOLERANCE:.0%} of peak_bytes_in_use")
    cases = args.cases or (list(DEFAULT_CASES)[:1] if args.quick else list(DEFAULT_CASES))
    rows, start = [], time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in cases:
        for step in ("prefill", "decode"):
            cmd = [sys.executable, __file__, "--one", name, step, "--layer-loop", args.layer_loop]
            cmd += ["--any-platform"] if args.any_platform else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{name} {step}: FAILED (rc {proc.returncode})\n{proc.stderr[-3000:]}")
                rows.append(dict(case=name, step=step, error=proc.stderr[-500:]))
                continue
            rows.append(json.loads(line[7:]))
    print()
    head = ("| case | step | weights GiB | pool GiB | argument GiB | temp GiB | predicted GiB | "
            "peak_bytes_in_use GiB | error | compile s | run s |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    ok = True
    for r in rows:
        if "error" in r:
            ok = False
            print(f"| {r['case']} | {r['step']} | failed | | | | | | | | |")
            continue
        peak = r["peak_bytes_in_use"] or 0
        err = (r["predicted_bytes"] - peak) / peak if peak else float("nan")
        r["relative_error"] = err
        ok &= abs(err) <= TOLERANCE
        print(f"| {r['case']} | {r['step']} | {r['weight_bytes'] / GiB:.3f} | {r['kv_pool_bytes'] / GiB:.3f} | "
              f"{r['argument_bytes'] / GiB:.3f} | {r['temp_bytes'] / GiB:.3f} | "
              f"{r['predicted_bytes'] / GiB:.3f} | {peak / GiB:.3f} | {err:+.2%} | "
              f"{r['compile_s']:.1f} | {r['run_s']:.2f} |")
    print(f"\nraw bytes: {json.dumps(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{'PASS' if ok else 'FAIL'}: every step within {TOLERANCE:.0%}"
          f" ({time.perf_counter() - start:.0f} s total)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
