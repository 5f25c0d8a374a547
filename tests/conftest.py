"""Shared fixtures: where the real HF configs live (../shared/model_configs), skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every test runs on the CPU; with the tpu extra (libtpu) installed JAX would otherwise also start the
# TPU plugin in this process and hold libtpu's lockfile against tests/test_xla_tpu.py's subprocesses.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_CONFIGS = Path(os.environ.get("KVFIT_MODEL_CONFIGS",
                                     Path(__file__).resolve().parents[2] / "shared" / "model_configs"))


@pytest.fixture(scope="session")
def hf_config():
    """Path of a real HF config.json from ../shared/model_configs (copies of the public files)."""
    if not SHARED_CONFIGS.is_dir():
        pytest.skip(f"real HF configs not found at {SHARED_CONFIGS} (set KVFIT_MODEL_CONFIGS)")

    def path(hf_id: str) -> Path:
        p = SHARED_CONFIGS / (hf_id.replace("/", "__") + ".json")
        if not p.exists():
            pytest.skip(f"{p.name} not in {SHARED_CONFIGS}")
        return p

    return path
