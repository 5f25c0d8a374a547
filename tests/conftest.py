"""Shared fixtures: the vendored HF configs (tests/model_configs) and the oracle policy.

Under ``KVFIT_REQUIRE_ORACLES=1`` (set by CI) a missing oracle — the MAX 26.7.0 interpreter, libtpu,
a vendored config — fails the test instead of skipping it, so a green CI never hides a skipped group.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every test runs on the CPU; with the tpu extra (libtpu) installed JAX would otherwise also start the
# TPU plugin in this process and hold libtpu's lockfile against tests/test_xla_tpu.py's subprocesses.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
REQUIRE_ORACLES = os.environ.get("KVFIT_REQUIRE_ORACLES", "").strip().lower() in ("1", "true", "yes")


def missing_oracle(reason: str) -> None:
    """Skip for ``reason`` — or fail, when CI requires every oracle (``KVFIT_REQUIRE_ORACLES=1``)."""
    if REQUIRE_ORACLES:
        pytest.fail(f"required oracle missing: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def hf_config():
    """Path of a real HF config.json vendored under tests/model_configs (see its SOURCES.md)."""

    def path(hf_id: str) -> Path:
        p = MODEL_CONFIGS / (hf_id.replace("/", "__") + ".json")
        if not p.exists():
            missing_oracle(f"{p.name} is not vendored under {MODEL_CONFIGS}")
        return p

    return path


ORACLE_MARKERS = ("maxref", "oracle")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under KVFIT_REQUIRE_ORACLES, a skipped test of an oracle group (marker maxref or oracle) fails."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ORACLES and report.skipped and any(item.get_closest_marker(m) for m in ORACLE_MARKERS):
        report.outcome = "failed"
        report.longrepr = f"required oracle missing (KVFIT_REQUIRE_ORACLES=1): {report.longrepr}"


@pytest.fixture(scope="session")
def sliding_model():
    """A 12-layer gemma3_text model with a full layer every 6th (2 full, 10 sliding, window 1024;
    4 KV heads × 128): the hybrid-pool cases of several engines' tests."""
    from estimator.model.spec import ModelSpec

    kinds = tuple("full_attention" if i % 6 == 5 else "sliding_attention" for i in range(12))
    return ModelSpec(name="swa", model_type="gemma3_text", num_layers=12, hidden_size=1024,
                     num_attention_heads=8, num_kv_heads=4, head_dim=128, vocab_size=32000,
                     intermediate_size=4096, max_position_embeddings=32768, layer_types=kinds,
                     sliding_window=1024)
