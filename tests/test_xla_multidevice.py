"""estimator.xla on 8 simulated CPU devices: every layout's weight and pool shards are plan()'s.

Runs in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 so the rest of the
test session keeps its single CPU device. Expected bytes are computed by hand in the script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("flax")

SCRIPT = textwrap.dedent("""
    import dataclasses, warnings
    import jax
    from estimator import ModelSpec, plan, parameter_count
    from estimator.xla import compile_report
    from meshes import InputError

    assert len(jax.devices()) == 8, jax.devices()
    dense = ModelSpec(name="dense", model_type="llama", num_layers=4, hidden_size=128,
                      num_attention_heads=8, num_kv_heads=2, head_dim=32, vocab_size=1001,
                      intermediate_size=256, max_position_embeddings=4096)
    moe = ModelSpec(name="moe", model_type="qwen3_moe", num_layers=3, hidden_size=64,
                    num_attention_heads=8, num_kv_heads=4, head_dim=16, vocab_size=999,
                    intermediate_size=128, max_position_embeddings=4096, num_experts=8,
                    num_experts_per_token=2, moe_intermediate_size=32, first_dense_layers=1,
                    num_shared_experts=1, shared_expert_intermediate_size=64,
                    shared_expert_gate=True, qk_norm=True, tie_word_embeddings=True,
                    attention_sinks=True, attention_bias=True)
    PAGE, PAGES, T, B = 16, 50, 128, 16

    def check(model, layout, steps, layers_per_stage, kv_heads_per_device, weights_per_stage=None):
        p = plan(model, "8xCPU-host", layout, page_size=PAGE, max_batch_size=B)
        r = compile_report(model, "8xCPU-host", layout, page_size=PAGE, pages_per_replica=PAGES,
                           prefill_tokens=T, decode_batch=B, decode_context_tokens=4 * PAGE,
                           steps=steps)
        rows = {d.stage: d.weights_bytes for d in p.devices}
        for s in r.steps:
            hd = model.head_dim
            pool = 2 * layers_per_stage[s.stage] * PAGES * PAGE * kv_heads_per_device * hd * 2
            assert s.weight_bytes == rows[s.stage], (layout, s.stage, s.weight_bytes, rows)
            if weights_per_stage:
                assert s.weight_bytes == weights_per_stage[s.stage], (layout, s.weight_bytes)
            assert s.kv_pool_bytes == pool, (layout, s.kv_pool_bytes, pool)
            assert s.argument_bytes == s.weight_bytes + pool + s.input_bytes, (layout, s)
            assert s.alias_bytes >= pool and s.pool_donated, (layout, s)
            assert 0 < s.temp_bytes < 64 * 2**20, (layout, s.temp_bytes)
        return r

    # tp8: 1001 vocab rows padded to 1008 (126 per device), 2 KV heads replicated to 8 (1 each)
    h, v, i, hd = 128, 1001, 256, 32
    layer = 2 * h + (8 * hd) * h // 8 + 2 * (hd * h) + h * (8 * hd) // 8 + 3 * i * h // 8
    dense_tp8 = 2 * (2 * 126 * h + h + 4 * layer)
    check(dense, "tp8", ("prefill", "decode"), {0: 4}, 1, {0: dense_tp8})
    check(dense, "dp2xtp4", ("decode",), {0: 4}, 1)
    check(dense, "pp2xtp4", ("decode",), {0: 2, 1: 2}, 1)
    # experts over data × tensor: each device holds one whole expert
    r = check(moe, "dp2xtp4xep8", ("prefill", "decode"), {0: 3}, 1)
    assert parameter_count(moe) > 0
    # expert degree 1: every device holds every expert, its width split over tensor
    check(moe, "dp4xtp2", ("decode",), {0: 3}, 2)
    # expert groups inside the tensor group: 4 whole experts per device, a quarter of each one's width
    check(moe, "tp8xep2", ("prefill", "decode"), {0: 3}, 1)
    # an expert group spanning 2 replicas (tp2 · ep4 over dp4): 2 whole experts per device
    check(moe, "dp4xtp2xep4", ("prefill", "decode"), {0: 3}, 2)

    try:
        compile_report(dense, "8xCPU-host", "tp8", tpu_topology="v5e:2x4")
    except InputError as err:
        assert "TPU mesh" in str(err)
    else:
        raise AssertionError("tpu_topology on a CPU mesh was accepted")
    print("XLA-MULTIDEVICE-OK")
""")


def test_xla_on_eight_simulated_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)
    assert out.returncode == 0 and "XLA-MULTIDEVICE-OK" in out.stdout, out.stdout + out.stderr[-5000:]
