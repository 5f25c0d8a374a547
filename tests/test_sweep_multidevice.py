"""Sharded sweeps over 8 simulated CPU devices give exactly the one-device answer.

Runs in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8, so the rest of the
test session keeps its single CPU device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import jax
    import numpy as np

    import estimator.sweeps.grid as sm
    from meshes import CATALOG, DeviceMesh, SimulatedDevice

    assert len(jax.devices()) == 8, jax.devices()
    seen = []
    for name in ("grid_full_jit", "grid_aggregate_jit"):
        original = getattr(sm, name)

        def spy(*args, _original=original):
            seen.append(len(args[0].sharding.device_set))
            return _original(*args)

        setattr(sm, name, spy)

    def check(model, mesh, **kw):
        one = sm.sweep(model, mesh, **kw)
        assert set(seen) == {1}, seen
        seen.clear()
        for devices in (jax.devices(), jax.make_mesh((2, 4), ("a", "b")), jax.devices()[:3]):
            many = sm.sweep(model, mesh, compute_devices=devices, **kw)
            for k in ("reason", "pages_needed", "pages_available", "headroom_bytes"):
                np.testing.assert_array_equal(getattr(one, k), getattr(many, k), err_msg=k)
            agg = sm.sweep_frontier(model, mesh, compute_devices=devices, **kw)
            ref = one.frontier()
            for k in ("max_batch", "max_length", "reason_counts"):
                np.testing.assert_array_equal(getattr(agg, k), getattr(ref, k), err_msg=k)
            n = 3 if isinstance(devices, list) and len(devices) == 3 else 8
            assert set(seen) == {n}, seen  # every chunk ran on all the devices
            seen.clear()
        return one

    r = check("llama-3.1-8b", "4xL4-24GB", layouts=["tp4", "dp2xtp2", "dp4"],
              batch_sizes=range(1, 100, 7), lengths=[1, 100, 5000, 70000, 131072],
              kv_cache_dtypes=[None, "fp8"], chunk_cells=64)
    assert r.feasible.any() and not r.feasible.all()
    # page counts beyond int32: the int64 kernels, sharded the same way
    huge = DeviceMesh.from_devices([SimulatedDevice(0, CATALOG["H100-80GB"], bytes_limit=2**62)])
    check("llama-3.1-8b", huge, batch_sizes=[1, 5, 2**20, 2**31 - 1], lengths=[1, 2**27, 2**31 - 1],
          max_batch_input_tokens=2**31 - 1)
    print("SHARDED-OK")
""")


def test_eight_simulated_devices_match_one():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "SHARDED-OK" in proc.stdout, proc.stderr[-4000:]
