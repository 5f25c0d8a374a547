"""benchmarks/gpu_validate.py without a GPU: its CPU smoke run, case choice, 'fill' sizing and table.

The GPU measurement itself is run by hand on H100s; these tests make sure the program that does it
runs end to end (on 8 simulated CPU devices) and renders GPU-shaped results.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from estimator import Layout
from meshes import CATALOG, DeviceMesh, SimulatedDevice

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_validate.py"


@pytest.fixture(scope="module")
def gv():
    spec = importlib.util.spec_from_file_location("gpu_validate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_run_end_to_end(tmp_path):
    out, raw = tmp_path / "r.md", tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--cases",
                           "tiny-llama:dp8,tiny-qwen3:dp2xtp4", "--out", str(out), "--json", str(raw)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    assert text.count("| pass |") == 2 and "not judged (CPU has no allocator cap)" in text
    assert "| tiny-qwen3 | dp2xtp4 | 8 |" in text and "platform cpu" in text


def test_no_gpu_without_smoke_flag_exits_2(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.md")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "no GPU visible" in proc.stderr


def test_default_cases_cover_tp_and_dp(gv):
    assert gv.default_cases(1, cpu=False) == [("llama-3.1-8b", "tp1"), ("qwen3-14b", "tp1"), ("fill", "tp1")]
    two = gv.default_cases(2, cpu=False)
    assert ("llama-3.1-8b", "dp2") in two and ("qwen3-14b", "tp2") in two and ("fill", "tp2") in two
    assert ("qwen3-14b", "dp2xtp2") in gv.default_cases(4, cpu=False)


def _h100s(n, fraction):
    spec = CATALOG["H100-80GB"]
    return DeviceMesh.from_devices([SimulatedDevice(i, spec, bytes_limit=int(spec.usable_bytes * fraction))
                                    for i in range(n)])


def test_fill_is_a_whole_model_when_it_fits(gv):
    model, label = gv._model_for("fill", _h100s(1, 0.95), Layout(), {"slack": 64 * 2**20})
    assert model.name == "qwen3-32b" and "fills the card" in label
    model, _ = gv._model_for("fill", _h100s(2, 0.95), Layout(tensor=2), {"slack": 64 * 2**20})
    assert model.name == "llama-3.1-70b"


@pytest.mark.parametrize(("n", "layout"), [(1, Layout()), (2, Layout(tensor=2))])
def test_fill_cuts_a_70b_to_about_85_percent_when_it_does_not(gv, n, layout):
    from estimator import geometry

    mesh = _h100s(n, 0.75)  # JAX's default cap: neither qwen3-32b nor a whole 70B at tp2 fits
    model, label = gv._model_for("fill", mesh, layout, {"slack": 64 * 2**20})
    assert model.name.startswith("llama-3.1-70b-") and "cut to" in label
    share = geometry(model, layout).stages[0].weight_bytes / (mesh.stats[0].free - 64 * 2**20)
    assert 0.8 < share <= 0.85


def test_render_gpu_shaped_results(gv):
    rows = [{"device": f"cuda:{i}", "bytes_limit": 80_000, "bytes_in_use": 100, "weights_bytes": 50_000,
             "page_bytes": 100, "kv_pool_bytes": 29_000, "reserve_bytes": 500, "free_bytes": 400}
            for i in range(2)]
    ok = {"case": {"model": "llama-3.1-8b", "layout": "tp2"}, "label": "llama-3.1-8b", "ok": True,
          "plan": {"pages_per_replica": 290, "kv_cache_dtype": "bfloat16", "max_supported_sequence_length": 1,
                   "warnings": [], "rows": rows},
          "devices": [{"device": f"cuda:{i}", "planned": 79_100, "measured": 79_356, "diff": 256 / 79_100,
                       "peak": 79_356, "pool_bytes": 80_000, "largest_free_block": 600, "ok": True}
                      for i in range(2)],
          "exact_problems": [], "fit_check": "still fits", "readings": ["cuda:0: budget ..."],
          "grow": {"pages": 296, "extra_bytes": 600, "headroom_bytes": 900, "expected": "allocated",
                   "outcome": "allocated", "ok": True}}
    bad = {"case": {"model": "fill", "layout": "tp2"}, "ok": False, "error": "Traceback ...\nValueError: boom"}
    meta = {"card": "NVIDIA H100 80GB HBM3 × 2", "driver": "550.54.15", "jax": "0.10.2", "jaxlib": "0.10.2",
            "platform": "gpu", "date": "today", "allocator": "default", "page_size": 128, "slack_mib": 64,
            "seconds": 12.0}
    text = gv.render(meta, [ok, bad])
    assert "| llama-3.1-8b | tp2 | 2 | 50,000 | 290 | 29,000 | 79,100 | 79,356 | +0.3236% | yes |" in text
    assert "allocated (expected allocated: +600 B vs 900 B left by the plan) | pass |" in text
    assert "| fill | tp2 |" in text and "**FAIL**: ValueError: boom" in text
    assert "| cuda:1 | 80,000 | 100 | 50,000 | 29,000 | 79,100 | 79,356 | +0.3236% | 79,356 | 600 |" in text
