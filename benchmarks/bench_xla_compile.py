"""What ``activations="xla"`` costs: compile time of the reference decoder per model / mesh on CPU.

Each row lowers and compiles the prefill and the decode step abstractly (nothing allocated) on
simulated CPU devices, and prints the seconds spent with XLA's per-device argument and temp bytes.
CPU temp bytes are XLA:CPU's (bf16 dots upcast to f32: weights are copied to f32 in temp), not a
GPU/TPU budget: they are printed to show that, next to the argument bytes.

    python benchmarks/bench_xla_compile.py            # the full table (a few minutes on 2 cores)
    python benchmarks/bench_xla_compile.py --quick    # two rows
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30
TOKENS, BATCH = 8192, 256

# (model, mesh, layout, layer loop)
ROWS = [
    ("tiny", "1xCPU-host", "tp1", "scan"),
    ("llama-3.1-8b", "1xCPU-host", "tp1", "scan"),
    ("llama-3.1-8b", "1xCPU-host", "tp1", "unroll"),
    ("llama-3.1-8b", "8xCPU-host", "tp8", "scan"),
    ("llama-3.1-70b", "8xCPU-host", "tp8", "scan"),
    ("llama-3.1-70b", "8xCPU-host", "pp2xtp4", "scan"),
    ("llama-3.1-70b", "8xCPU-host", "tp8", "unroll"),
    ("qwen3-30b-a3b", "8xCPU-host", "tp8xep8", "scan"),
    ("mixtral-8x7b", "8xCPU-host", "dp2xtp4xep8", "scan"),
]


def model(name: str):
    from estimator import ModelSpec, load_preset

    if name == "tiny":
        return ModelSpec(name="tiny", model_type="llama", num_layers=4, hidden_size=256,
                         num_attention_heads=8, num_kv_heads=2, head_dim=32, vocab_size=1000,
                         intermediate_size=512, max_position_embeddings=4096)
    return load_preset(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    import jax

    from estimator.xla import compile_report

    print(f"jax {jax.__version__} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {len(jax.devices())} CPU devices; "
          f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"prefill {TOKENS} tokens/replica, decode batch {BATCH}; seconds = lower + compile\n")
    print("| model | mesh | layout | loop | prefill s | decode s | total s | argument GiB | "
          "prefill temp GiB | decode temp GiB | temp / argument |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = ROWS[:2] if args.quick else ROWS
    for name, mesh, layout, loop in rows:
        t0 = time.perf_counter()
        r = compile_report(model(name), mesh, layout, prefill_tokens=TOKENS, decode_batch=BATCH,
                           layer_loop=loop)
        wall = time.perf_counter() - t0
        p, d = r.step("prefill"), r.step("decode")
        args_b = max(s.argument_bytes for s in r.steps)
        temp = max(s.temp_bytes for s in r.steps)
        sec = {k: sum(s.lower_seconds + s.compile_seconds for s in r.steps if s.step == k)
               for k in ("prefill", "decode")}
        print(f"| {name} | {mesh} | {layout} | {loop} | {sec['prefill']:.2f} | {sec['decode']:.2f} | "
              f"{wall:.2f} | {args_b / GiB:.2f} | {p.temp_bytes / GiB:.2f} | "
              f"{d.temp_bytes / GiB:.2f} | {temp / args_b:.2f} |", flush=True)
    print("\nCPU temp bytes include XLA:CPU's f32 copies of bf16 weights; on an H100 the same "
          "steps' temp is a few % of the arguments (benchmarks/gpu_xla_validate.py).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
