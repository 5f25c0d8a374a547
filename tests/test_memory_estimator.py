"""The seed API against MAX's own test cases (reference/max-semantics.md §9, §11)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator import Layout, load_preset, plan
from estimator.kv_params import KVCacheParams
from estimator.memory_estimator import (
    ArchConfig,
    KVCacheConfig,
    MAXModelConfig,
    MemoryEstimator,
    PipelineConfig,
)
from meshes import CATALOG, DeviceMesh, SimulatedDevice

MiB, GiB = 2**20, 2**30


class Dev:
    """A MAX driver device: ``stats`` with free and total memory."""

    def __init__(self, free: int, total: int | None = None) -> None:
        self.stats = {"free_memory": free, "total_memory": total if total is not None else free}


DUMMY_LLAMA = KVCacheParams("bfloat16", n_kv_heads=8, head_dim=128, num_layers=4)


def _configs(max_length=4096, user=None, util=0.9, **pipeline):
    model = MAXModelConfig(max_length=max_length, max_length_is_user_provided=user,
                           kv_cache=KVCacheConfig(device_memory_utilization=util))
    return PipelineConfig(model=model, **pipeline), model


def test_dummy_llama_page_is_2_mib():
    assert DUMMY_LLAMA.bytes_per_block == 2 * 4 * 128 * 8 * 128 * 2 == 2 * MiB


def test_free_memory_pools_devices_and_falls_back_to_total():
    assert MemoryEstimator.free_memory([Dev(3), Dev(4)]) == 7
    assert MemoryEstimator.free_memory([Dev(0, 10), Dev(0, 5)]) == 15
    sim = SimulatedDevice(0, CATALOG["A100-80GB"], bytes_in_use=GiB)
    assert MemoryEstimator.free_memory([sim]) == CATALOG["A100-80GB"].usable_bytes - GiB


def test_static_memory_and_budget():
    assert MemoryEstimator.static_memory_size(10, 20) == 30
    assert MemoryEstimator.static_memory_size(10, 20, signal_buffer_size=5) == 35
    pc, mc = _configs()
    k = MemoryEstimator.available_kv_cache_memory(pc, mc, [Dev(64 * MiB)], 1000, 0)
    assert k == int(0.9 * 67_108_864) - 1000 == 60_396_977  # M1's K


def test_m1_kv_clamp_with_null_page():
    # K = 60,396,977 → 28 pages of 2 MiB; MAX 26.7.0 keeps one null page → 27 · 128 = 3456
    pc, mc = _configs(4096, user=True)
    plan_ = MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                      [Dev(64 * MiB)], 1000, 0)
    assert plan_.planned_max_length == 27 * 128 == 3456
    assert plan_.planned_max_batch_size == 512
    # 512 requests need more than the budget: MAX 26.7.0's Jenga manager commits the whole,
    # unfloored budget K (its legacy manager would commit 28 whole pages)
    assert plan_.available_cache_memory == 60_396_977
    assert any("Clamping max_length from 4096 to 3456" in w for w in plan_.warnings)
    assert mc.max_length == 4096  # the config is left as it was


def test_m1_batch_total_tokens_default_when_arch_requires():
    pc, mc = _configs(4096, user=True)
    arch = ArchConfig(DUMMY_LLAMA, 4096, requires_max_batch_context_length=True)
    est = MemoryEstimator.estimate_memory_footprint(pc, mc, arch, [Dev(64 * MiB)], 1000, 0)
    assert est.planned_max_batch_total_tokens == 3456
    pc2, mc2 = _configs(4096, user=True, max_batch_total_tokens=2048)
    est2 = MemoryEstimator.estimate_memory_footprint(pc2, mc2, arch, [Dev(64 * MiB)], 1000, 0)
    assert est2.planned_max_batch_total_tokens == 2048


def test_m2_shrink_to_fit_for_a_default_length():
    # util 1.5: K = int(96 MiB) − 50 MiB = 46 MiB → 23 pages; 50 + 46 > 64 MiB → truncate
    pc, mc = _configs(4096, user=False, util=1.5)
    est = MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                    [Dev(64 * MiB)], 10 * MiB, 40 * MiB)
    assert est.available_cache_memory == 23 * 2 * MiB == 48_234_496
    assert est.planned_max_length == 22 * 128 == 2816
    assert any("Truncated model's default max_length" in w for w in est.warnings)


def _oom(max_length, batch):
    pc, mc = _configs(max_length, user=True, util=1.5)
    with pytest.raises(RuntimeError, match="exceeds available memory") as e:
        MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, max_length),
                                                  [Dev(64 * MiB)], 10 * MiB, 40 * MiB,
                                                  max_batch_size=batch)
    text = str(e.value)
    found = [re.search(rf"--{k} to (\d+)", text) for k in ("max-length", "max-batch-size")]
    return text, [int(m.group(1)) if m else None for m in found]


def test_m2_user_length_raises_with_suggestions_that_really_fit():
    # static 50 MiB of 64 MiB free leaves 14 MiB = 7 pages of 2 MiB (the budget allows 23);
    # a batch of B requests of L tokens needs B · ceil(L / 128) + 1 (null) pages.
    text, (length, batch) = _oom(4096, 4)
    assert length == 128 and batch is None  # 4 · 1 + 1 ≤ 7; at 4096, even 1 · 32 + 1 > 7
    assert "4095" not in text  # MAX's dead suggestion (its need is capped at the budget)
    text, (length, batch) = _oom(256, 4)  # 4 · 2 + 1 = 9 pages > 7
    assert length == 128 and batch == 3  # 3 · 2 + 1 = 7 ≤ 7


def test_m3_draft_bound():
    pc, mc = _configs(4096, user=True, draft_max_length=1500)
    est = MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                    [Dev(100 * GiB)], GiB, 0)
    assert est.planned_max_length == 1500


def test_m4_model_size_exceeds_available_memory():
    pc, mc = _configs()
    with pytest.raises(RuntimeError, match="Model size exceeds available memory"):
        MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                  [Dev(5 * MiB)], 50 * MiB, 0)


def test_unresolved_max_length():
    pc, mc = _configs(None)
    with pytest.raises(ValueError, match="max_length is unresolved"):
        MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                  [Dev(GiB)], 0, 0)


def test_m6_q4k_llama_8b_f32_page():
    p = KVCacheParams("float32", n_kv_heads=8, head_dim=128, num_layers=32)
    assert p.bytes_per_block == 2 * 32 * 128 * 8 * 128 * 4 == 33_554_432


def test_m9_tp2_bytes_per_block_still_16_mib():
    p = KVCacheParams("bf16", n_kv_heads=8, head_dim=128, num_layers=32, n_devices=2)
    assert p.n_kv_heads_per_device == 4 and p.bytes_per_block == 16 * MiB


def test_m10_deepseek_mla_replicated_over_tp8():
    p = KVCacheParams("bf16", n_kv_heads=1, head_dim=576, num_layers=61, n_devices=8,
                      is_mla=True, num_q_heads=128)
    assert p.bytes_per_block == 61 * 128 * 576 * 2 * 8 == 71_958_528


def test_m11_end_to_end_one_h100():
    pc, mc = _configs(131072, user=True)
    params = KVCacheParams("bf16", n_kv_heads=8, head_dim=128, num_layers=32)
    est = MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(params, 131072),
                                                    [Dev(80 * GiB)], 16 * GiB, 0)
    assert est.available_cache_memory == 56 * GiB  # 3584 pages of 16 MiB
    assert est.footprint == 72 * GiB and est.planned_max_length == 131072
    cap = MemoryEstimator.max_supported_sequence_length(pc, mc, ArchConfig(params, 131072),
                                                        [Dev(80 * GiB)], 16 * GiB, 0)
    assert cap == 3583 * 128


def test_speculative_slack_and_replication_rules():
    p = KVCacheParams("bf16", 8, 128, 4, num_draft_tokens=3, speculative_method="eagle")
    assert p.slack == 3 * 3 + 0 + 1
    assert KVCacheParams("bf16", 8, 128, 4, num_draft_tokens=1).slack == 3 + 1 + 1
    with pytest.raises(ValueError, match="divisible by the tensor-parallel degree"):
        KVCacheParams("bf16", 8, 128, 4, n_devices=16)
    rep = KVCacheParams("bf16", 8, 128, 4, n_devices=16, allow_kv_head_replication=True)
    assert rep.n_kv_heads_per_device == 1


def test_insufficient_memory_for_a_single_page():
    with pytest.raises(RuntimeError, match="even a single page"):
        DUMMY_LLAMA.compute_num_device_blocks(MiB)


@settings(max_examples=80, deadline=None)
@given(capacity=st.integers(2**34, 2**40), act=st.integers(0, 2**32),
       util=st.sampled_from([0.5, 0.9, 1.0]), preset=st.sampled_from(["llama-3.1-8b", "qwen3-8b"]))
def test_seed_api_and_plan_agree_on_one_device(capacity, act, util, preset):
    model = load_preset(preset)
    mesh = DeviceMesh.from_devices([SimulatedDevice(0, CATALOG["H100-80GB"], bytes_limit=capacity)])
    p = plan(model, mesh, Layout(), activation_bytes=act, device_memory_utilization=util)
    weights = p.devices[0].weights_bytes
    pc, mc = _configs(1024, user=True, util=util)
    k = MemoryEstimator.available_kv_cache_memory(pc, mc, [Dev(capacity)], weights, act)
    exact = p.devices[0].kv_budget_bytes
    assert abs(k - exact) <= 1  # MAX truncates a float product; plan() is exact
    if k <= 0:
        assert p.pages_per_replica == 0
        return
    params = KVCacheParams(model.weight_dtype, model.num_kv_heads, model.head_dim, model.num_layers)
    assert params.bytes_per_block == p.devices[0].page_bytes
    if exact // params.bytes_per_block == (exact - 1) // params.bytes_per_block:
        assert params.compute_num_device_blocks(k) == p.usable_pages_per_replica
