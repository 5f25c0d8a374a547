"""A frontier sweep on a 2-process JAX runtime (jax.distributed, 4 simulated CPU devices each)
gives the frontiers of one process.

Two ``python -m estimator.sweeps.distributed`` processes on localhost (a free port, gloo CPU
collectives), the grid's batch axis sharded over their 8 devices; process 0 writes the frontiers,
which must equal those of the same sweep in a third, single-device process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = "tp8,dp2xtp4,pp2xtp4"
BATCHES, LENGTHS = "1:300:1", "512:65536:512"  # 300 batch values × 128 lengths
ARGS = ["--model", "llama-3.1-8b", "--mesh", "8xH100-80GB", "--layouts", LAYOUTS,
        "--batch-sizes", BATCHES, "--lengths", LENGTHS, "--chunk-cells", "4096"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def test_two_processes_give_the_one_process_frontiers(tmp_path):
    pytest.importorskip("jax")
    port = _free_port()
    cmd = [sys.executable, "-m", "estimator.sweeps.distributed", *ARGS]
    procs = [subprocess.Popen([*cmd, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i), "--out", str(tmp_path / "two.npz")],
                              cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert "process 0 of 2: 8 devices" in outs[0] and "process 1 of 2: 8 devices" in outs[1]
    one = subprocess.run([*cmd, "--out", str(tmp_path / "one.npz")], cwd=ROOT, env=_env(1),
                         capture_output=True, text=True, timeout=90)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "process 0 of 1: 1 devices" in one.stdout
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert int(b["reason_counts"].sum()) == 3 * 300 * 128  # every cell counted once, by hand
    assert b["max_batch"].any() and b["max_length"].any()
