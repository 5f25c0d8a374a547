"""kvfit against the public corpus of real start-up logs (tests/engine_logs/), without fitted constants.

- Every vLLM log that prints its whole budget line (total memory, utilization, weights, non-torch,
  activation peak, KV GiB): pinning the logged non-KV figures, kvfit's budget arithmetic must give
  the logged KV memory to the logs' own rounding. This checks the engine arithmetic, not a constant.
- The calibration file: every log a constant was fitted on exists and is not one of the reference
  cases the tests check (``in_tests``), so no test checks a constant against its own fitting data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estimator.engines import engine_plan
from estimator.engines.non_kv import CALIBRATION_PATH, NCCL_TERM_OF
from meshes import CATALOG, DeviceMesh, SimulatedDevice

GiB = 2**30
ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "engine_logs"
LOGS = sorted(CORPUS.glob("*/*.json")) if CORPUS.is_dir() else []


def one(logged: dict, key: str) -> float | None:
    """The single value a log prints for ``key`` (None when absent or different per rank)."""
    entry = logged.get(key)
    items = entry if isinstance(entry, list) else [entry] if entry else []
    values = {float(i["value"]) for i in items if isinstance(i, dict) and i.get("value") is not None}
    return values.pop() if len(values) == 1 else None


def budget_cases() -> list[tuple[str, dict[str, float]]]:
    out = []
    for path in LOGS:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("engine") != "vllm":
            continue
        logged = doc.get("logged") or {}
        keys = ("total_gpu_memory_gib", "gpu_memory_utilization_logged", "weights_gib", "non_torch_gib",
                "activation_peak_gib", "kv_cache_gib")
        values = {k: one(logged, k) for k in keys}
        if all(v is not None for v in values.values()) and values["kv_cache_gib"] > 0:
            out.append((doc["id"], values))
    return out


CASES = budget_cases()


@pytest.mark.skipif(not CASES, reason="no vLLM log in tests/engine_logs prints its whole budget line")
@pytest.mark.parametrize(("log_id", "v"), CASES, ids=[c[0] for c in CASES])
def test_vllm_budget_arithmetic_reproduces_the_log(log_id, v):
    spec = CATALOG["H100-80GB"]
    limit = round(v["total_gpu_memory_gib"] * GiB)
    mesh = DeviceMesh.from_devices([SimulatedDevice(0, spec, bytes_limit=limit)])
    p = engine_plan("llama-3.1-8b", mesh, engine="vllm", version="v0", max_model_len=2048,
                    gpu_memory_utilization=v["gpu_memory_utilization_logged"],
                    weights_bytes=round(v["weights_gib"] * GiB), non_torch_bytes=round(v["non_torch_gib"] * GiB),
                    activation_bytes=round(v["activation_peak_gib"] * GiB), cuda_graph_bytes=0)
    # four printed figures, each rounded to 0.005 GiB, and the total's rounding × utilization
    assert abs(p.kv_available_bytes / GiB - v["kv_cache_gib"]) <= 0.025
    assert not any(p.estimated_lines)  # every term measured: nothing in the log lines is an estimate


def test_calibration_is_fitted_only_on_logs_no_test_checks():
    cal = json.loads(CALIBRATION_PATH.read_text(encoding="utf-8"))
    for rel in cal["fitted_on"]:
        path = ROOT / rel
        assert path.is_file(), rel
        assert json.loads(path.read_text(encoding="utf-8")).get("in_tests") is False, rel
    for engine in ("vllm", "sglang", "trtllm"):
        const = cal["constants"][engine]
        # an engine whose communicators are another's takes that one's NCCL term (non_kv.NCCL_TERM_OF)
        own_nccl = set() if engine in NCCL_TERM_OF else {"nccl_tp_gib"}
        assert set(const) >= {"non_torch_base_gib", "nccl_pp_gib"} | own_nccl
        lo, hi = cal["residual_gib"][engine]["default"]
        assert lo <= 0 <= hi
