"""Differential tests: the seed API against Modular MAX 26.7.0 itself, on thousands of inputs.

MAX runs in its own interpreter (``KVFIT_MAX_PYTHON``; .ci/run builds one) through
``max_oracle``; the group skips where MAX is absent. Error types and texts must match too,
except the out-of-memory suggestions, which kvfit computes so that they really fit.
"""

from __future__ import annotations

import random

import pytest

from estimator.kv_params import KVCacheParams
from estimator.memory_estimator import (
    ArchConfig,
    KVCacheConfig,
    MAXModelConfig,
    MemoryEstimator,
    PipelineConfig,
)
from tests.max_reference import max_oracle

pytestmark = [pytest.mark.maxref,
              pytest.mark.skipif(not max_oracle.available(),
                                 reason="Modular MAX 26.7.0 not installed (set KVFIT_MAX_PYTHON; "
                                        ".ci/run installs tests/max_reference/requirements.txt)")]

MiB, GiB = 2**20, 2**30
DTYPES = ["bfloat16", "float32", "float16", "float8_e4m3fn"]
METHODS = [None, "eagle", "mtp", "dflash"]


class FakeDevice:
    def __init__(self, free: int, host: bool) -> None:
        self.stats = {"free_memory": free, "total_memory": free}
        self.is_host = host
        self.max_single_alloc_size = free


def random_geometry(rng: random.Random) -> dict:
    is_mla = rng.random() < 0.2
    dp = rng.choice([1, 1, 2, 4])
    tp = rng.choice([1, 2, 4, 8])
    kv = rng.choice([1, 2, 4, 8, 16, 32])
    replicate = not is_mla and kv % tp != 0
    if replicate and tp % kv:
        kv = tp
    n_draft = rng.choice([0, 0, 1, 3])
    return dict(n_kv_heads=kv, head_dim=rng.choice([64, 96, 128, 576]),
                num_layers=rng.randint(1, 128), dtype=rng.choice(DTYPES),
                page_size=rng.choice([16, 128, 256]), n_devices=dp * tp, dp=dp, is_mla=is_mla,
                num_q_heads=tp * rng.choice([1, 8, 16]) if is_mla else None,
                allow_replication=replicate, num_draft_tokens=n_draft,
                speculative_method=rng.choice(METHODS) if n_draft else None)


def ours(g: dict) -> KVCacheParams:
    return KVCacheParams(g["dtype"], g["n_kv_heads"], g["head_dim"], g["num_layers"],
                         page_size=g["page_size"], n_devices=g["n_devices"],
                         data_parallel_degree=g["dp"], is_mla=g["is_mla"],
                         num_q_heads=g["num_q_heads"],
                         allow_kv_head_replication=g["allow_replication"],
                         num_draft_tokens=g["num_draft_tokens"],
                         speculative_method=g["speculative_method"] or "none")


def outcome(fn, *args, **kwargs):
    """("ok", result) or (exception type name, message): what a call did."""
    try:
        return ("ok", fn(*args, **kwargs))
    except (RuntimeError, ValueError) as e:
        return (type(e).__name__, str(e))


def test_version():
    assert max_oracle.max_version().startswith("26.7.0")


def test_bytes_per_block_and_slack_on_1000_geometries():
    rng = random.Random(1)
    for _ in range(1000):
        g = random_geometry(rng)
        p = ours(g)
        assert p.bytes_per_block == max_oracle.bytes_per_block(**g), g
        assert p.slack == max_oracle.spec_slack(**g), g


def test_page_counts_and_length_caps_on_2000_budgets():
    rng = random.Random(2)
    for _ in range(2000):
        g = random_geometry(rng)
        p = ours(g)
        bpb = p.bytes_per_block * g["dp"]
        budget = rng.choice([rng.randint(0, 4 * bpb), rng.randint(0, 2**40), rng.randint(0, 2**62)])
        batch, length = rng.randint(1, 1024), rng.randint(1, 1 << 20)
        theirs = outcome(max_oracle.kv_cache_memory_size, available_cache_memory=budget,
                         max_batch_size=batch, max_seq_len=length, **g)
        assert outcome(p.kv_cache_memory_size, budget, batch, length) == theirs, g
        theirs = outcome(max_oracle.max_seq_len_fitting_in_cache, available_cache_memory=budget, **g)
        assert outcome(p.max_seq_len_fitting_in_cache, budget) == theirs, g
        theirs = outcome(max_oracle.max_seq_len_fitting, available_cache_memory=budget,
                         include_null_block=True, **g)
        assert outcome(p.compute_max_seq_len_fitting_in_cache, budget) == theirs, g


def test_available_kv_cache_memory_float_semantics():
    rng = random.Random(3)
    for _ in range(1000):
        free = [rng.randint(0, 2**37) for _ in range(rng.randint(1, 8))]
        util = rng.choice([0.29, 0.7, 0.8, 0.9, 0.95, 1.0, 1.5, rng.random()])
        w, a, s = rng.randint(0, 2**36), rng.randint(0, 2**32), rng.randint(0, 2**29)
        model = MAXModelConfig(max_length=1, kv_cache=KVCacheConfig(util))
        mine = MemoryEstimator.available_kv_cache_memory(
            PipelineConfig(model), model, [FakeDevice(f, False) for f in free], w, a, s)
        assert mine == max_oracle.available_kv_cache_memory(
            free_memory_per_device=free, utilization=util, weights=w, activations=a, signal=s)


def test_estimate_memory_footprint_on_1500_configurations():
    rng = random.Random(4)
    for _ in range(1500):
        g = random_geometry(rng)
        p = ours(g)
        n = g["n_devices"]
        per_device = rng.choice([rng.randint(MiB, GiB), rng.randint(GiB, 200 * GiB)])
        free = [per_device] * n
        util = rng.choice([0.5, 0.9, 0.95, 1.0, 1.2, 1.5])
        w = rng.randint(0, int(per_device * n * rng.random()))
        a = rng.choice([0, rng.randint(0, per_device // 4)])
        s = rng.choice([0, 294_387_728 * n if n > 1 else 0])
        length = rng.choice([1024, 4096, 32768, 131072, rng.randint(1, 300000)])
        user_len = rng.random() < 0.5
        batch = rng.choice([None, None, 1, 8, 512, 9000])
        host = n == 1 and rng.random() < 0.3
        draft = rng.choice([None, None, rng.randint(1, 200000)])
        requires = rng.random() < 0.3
        theirs = outcome(
            max_oracle.estimate_footprint, free_memory_per_device=free, utilization=util,
            weights=w, activations=a, signal=s, max_length=length, max_length_user_provided=user_len,
            max_batch_size=batch, requires_max_batch_context_length=requires,
            draft_max_seq_len=draft, device_kind="cpu" if host else "gpu", **g)
        model = MAXModelConfig(max_length=length, max_length_is_user_provided=user_len,
                               kv_cache=KVCacheConfig(util))
        pipeline = PipelineConfig(model, draft_max_length=draft)
        arch = ArchConfig(p, length, requires_max_batch_context_length=requires)
        mine = outcome(MemoryEstimator.estimate_memory_footprint, pipeline, model, arch,
                       [FakeDevice(f, host) for f in free], w, a, s, max_batch_size=batch)
        case = dict(g, free=per_device, util=util, w=w, a=a, s=s, length=length,
                    user_len=user_len, batch=batch, host=host, draft=draft)
        assert mine[0] == theirs[0], (case, mine, theirs)
        if mine[0] == "ok":
            got = mine[1]
            assert (got.planned_max_length, got.planned_max_batch_size,
                    got.available_cache_memory, got.footprint,
                    got.planned_max_batch_total_tokens) == (
                theirs[1]["planned_max_length"], theirs[1]["planned_max_batch_size"],
                theirs[1]["available_cache_memory"], theirs[1]["footprint"],
                theirs[1]["planned_max_batch_total_tokens"]), case
        elif "exceeds available memory (" in theirs[1] and "Try " in theirs[1]:
            # same text up to the suggestions, which kvfit searches so they really fit
            assert mine[1].split("Try ")[0] == theirs[1].split("Try ")[0], case
        else:
            assert mine[1] == theirs[1], case
