"""The seed API against MAX 26.7.0's own rules: cases worked by hand from MAX's source (modular/modular,
max/pipelines/lib/memory_estimation.py and max/nn/kv_cache/) and texts observed from MAX itself."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator import Layout, load_preset, plan
from estimator.seed.kv_manager import kv_cache_memory_size, legacy_total_num_pages
from estimator.seed.kv_params import KVCacheParams, compute_num_device_blocks
from estimator.seed.kv_quant import (
    KVCacheQuantizationConfig,
    cache_dtype_for_encoding,
    scale_bytes_per_token,
)
from estimator.seed.memory_estimator import (
    ArchConfig,
    Architecture,
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


class Host(Dev):
    """A host (CPU) device: MAX infers a batch of 1 on a single one."""

    is_host = True


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


def test_m2_user_length_raises_with_maxs_own_words():
    # MAX 26.7.0 searches a need it already capped at the budget, so its suggestion is L0 − 1
    # (text observed from MAX itself, tests/max_reference/FINDINGS.md §5); kvfit says the same.
    pc, mc = _configs(4096, user=True, util=1.5)
    with pytest.raises(RuntimeError) as e:
        MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                  [Host(64 * MiB)], 10 * MiB, 40 * MiB)
    assert str(e.value) == (
        "Estimated model and kv cache memory use exceeds available memory (96.00 MiB  / 64.00 MiB "
        "free). Try reducing --max-length to 4095 (supports batch size of 1).")


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
    # no method: 0 drafts per step (MAX's default); eagle drafts 1 per step, so n = 1 adds one
    assert KVCacheParams("bf16", 8, 128, 4, num_draft_tokens=1).slack == 3 + 0 + 1
    assert KVCacheParams("bf16", 8, 128, 4, num_draft_tokens=1,
                         speculative_method="eagle").slack == 3 + 1 + 1
    assert KVCacheParams("bf16", 8, 128, 4, num_draft_tokens=3,
                         speculative_method="dflash").slack == 3 * 3 + 1 + 1
    with pytest.raises(ValueError, match=r"^Number of KV heads \(8\) must be divisible by the "
                                         r"tensor parallel degree \(16\)$"):
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
    if exact // params.bytes_per_block != (exact - 1) // params.bytes_per_block:
        return
    if exact // params.bytes_per_block < 2:  # MAX needs the null page plus one request page
        with pytest.raises(RuntimeError, match="Insufficient cache memory to allocate"):
            params.compute_num_device_blocks(k)
        assert p.usable_pages_per_replica == 0
    else:
        assert params.compute_num_device_blocks(k) == p.usable_pages_per_replica


# ----------------------------------------------------------------- quantised caches (issue 12)
L8B = dict(n_kv_heads=8, head_dim=128, num_layers=32)
F32_SCALES = KVCacheQuantizationConfig("float32", 128)


def test_fp8_with_f32_scales_splits_value_and_scale_bytes():
    # values 2·32·128·4·128·1 B per device; one f32 scale per 128 elements: 2·32·128·4·1·4 B
    p = KVCacheParams("fp8", **L8B, n_devices=2, kvcache_quant_config=F32_SCALES)
    assert p.quantized_kv_cache and p.tensor_parallel_degree == 2 and p.kv_dim == 2
    assert p.bytes_per_value_block == 2 * 32 * 128 * 4 * 128 * 2 == 8_388_608
    assert p.bytes_per_scale_block == 2 * 32 * 128 * 4 * 1 * 4 * 2 == 262_144
    assert p.bytes_per_block == 8_650_752
    assert p.shape_per_block == [2, 32, 128, 4, 128]
    leaves = p.leaves()
    assert list(leaves) == ["full_group", "full_group/scales"]
    assert (leaves["full_group"].bytes_per_page, leaves["full_group"].row_bytes) == (4_194_304, 512)
    # a scale row is 4 heads · 1 scale · 4 B = 16 B (already the 16-byte TMA alignment)
    assert (leaves["full_group/scales"].bytes_per_page, leaves["full_group/scales"].row_bytes) == (
        131_072, 16)


def test_scales_only_for_maxs_value_and_scale_pairs():
    no_config = KVCacheParams("float8_e4m3fn", **L8B)
    assert not no_config.quantized_kv_cache and no_config.bytes_per_block == 8 * MiB
    deepseek_style = KVCacheParams("fp8", **L8B, kvcache_quant_config=KVCacheQuantizationConfig(
        "int8", 32))  # int8 scales are not a scale dtype MAX stores
    assert not deepseek_style.quantized_kv_cache and deepseek_style.bytes_per_scale_block == 0
    fnuz = KVCacheParams("float8_e4m3fnuz", **L8B, kvcache_quant_config=F32_SCALES)
    assert fnuz.quantized_kv_cache and fnuz.bytes_per_block == 8 * MiB + 256 * 1024
    int8_f16 = KVCacheParams("int8", **L8B, kvcache_quant_config=KVCacheQuantizationConfig(
        "float16", 64))  # two f16 scales per 128-wide head row
    assert int8_f16.bytes_per_scale_block == 2 * 32 * 128 * 8 * 2 * 2
    bf16 = KVCacheParams("bf16", **L8B, kvcache_quant_config=F32_SCALES)
    assert not bf16.quantized_kv_cache and bf16.bytes_per_block == 16 * MiB


def test_nvfp4_packs_two_values_per_byte_with_fp8_scales():
    p = KVCacheParams("uint8", **L8B, kvcache_quant_config=KVCacheQuantizationConfig(
        "float8_e4m3fn", 16))
    assert p.is_nvfp4_kv_cache and p.storage_head_dim == 64
    assert p.bytes_per_value_block == 2 * 32 * 128 * 8 * 64 == 4 * MiB
    assert p.bytes_per_scale_block == 2 * 32 * 128 * 8 * (128 // 16) * 1 == 512 * 1024
    with pytest.raises(ValueError) as e:
        KVCacheParams("uint8", **L8B, kvcache_quant_config=KVCacheQuantizationConfig(
            "float8_e4m3fn", 32))
    assert str(e.value) == ("An NVFP4 KV cache has one scale per 16 elements, got a quantization "
                            "granularity of 32.")


def test_granularity_must_divide_the_head_dim():
    with pytest.raises(ValueError) as e:
        KVCacheParams("fp8", 8, 96, 32, kvcache_quant_config=F32_SCALES)
    assert str(e.value) == "KVCache quantization granularity must evenly divide KV head dimension."


def test_scale_bytes_per_token_for_the_kv_spec_classes():
    # per device and token: 2 (K, V) · 32 layers · 8 heads · 1 scale · 4 B
    assert scale_bytes_per_token(head_dim=128, dtype="fp8", quant=F32_SCALES, kv_heads=8,
                                 num_layers=32) == 2 * 32 * 8 * 4
    assert scale_bytes_per_token(head_dim=128, dtype="bf16", quant=F32_SCALES) == 0
    assert scale_bytes_per_token(head_dim=128, dtype="fp8", quant=None) == 0


def test_cache_dtype_for_encoding_and_format_override():
    assert cache_dtype_for_encoding("q4_k") == "float32"
    assert cache_dtype_for_encoding("float8_e4m3fn") == "bfloat16"
    assert cache_dtype_for_encoding("bfloat16", "float4_e2m1fn") == "uint8"
    with pytest.raises(ValueError, match=r"^Unrecognized kv_cache_format override: 'int4'\."):
        cache_dtype_for_encoding(None, "int4")


# ----------------------------------------------------------------- page counting, managers
def test_negative_budget_without_null_block_returns_negative_pages(caplog):
    # MAX tests allocable == 0 only: -1 // 2 MiB = -1 page, and it warns that 1 request won't fit
    with caplog.at_level("WARNING", logger="kvfit.max"):
        assert compute_num_device_blocks(DUMMY_LLAMA, -1, 1, 128) == -1
    assert caplog.messages == [
        "Insufficient cache memory to support a batch containing 1 requests with one token per "
        "request. Need to allocate at least 1 pages (2.00 MiB), but only have enough memory for "
        "-1 pages (-0.00 KiB)."]


def test_unknown_speculative_method_is_refused_where_slack_is_used():
    p = KVCacheParams("bf16", 8, 128, 4, num_draft_tokens=2, speculative_method="medusa")
    with pytest.raises(ValueError) as e:
        p.compute_num_device_blocks(GiB, 1, 128)
    assert str(e.value) == "Unrecognized speculative_method: 'medusa'"


def test_require_max_seq_len_fits():
    # 100 MiB of 16 MiB pages = 6 pages; 1000 tokens need ceil(1000 / 128) = 8
    p = KVCacheParams("bf16", **L8B)
    with pytest.raises(RuntimeError) as e:
        compute_num_device_blocks(p, 100 * MiB, 1, 1000, require_max_seq_len_fits=True)
    assert "Need to allocate at least 8 pages (128.00 MiB), but only have enough memory for 6 " \
           "pages (100.00 MiB)." in str(e.value)
    assert "Reduce --max-length to at most 768 " in str(e.value)


def test_jenga_commits_the_unfloored_budget_legacy_whole_pages(monkeypatch):
    # M1: K = 60,396,977 holds 28 pages of 2 MiB; 512 requests need more. MAX 26.7.0 (FINDINGS
    # §5): Jenga commits K itself, the legacy manager 28 · 2 MiB = 58,720,256.
    k = 60_396_977
    assert kv_cache_memory_size(DUMMY_LLAMA, k, 512, 4096, legacy=False) == k
    assert kv_cache_memory_size(DUMMY_LLAMA, k, 512, 4096, legacy=True) == 28 * 2 * MiB
    monkeypatch.setenv("MODULAR_USE_LEGACY_KV_CACHE", "Yes")
    assert kv_cache_memory_size(DUMMY_LLAMA, k, 512, 4096) == 28 * 2 * MiB
    monkeypatch.setenv("MODULAR_USE_LEGACY_KV_CACHE", "on")  # not one of 1/true/yes/y
    assert kv_cache_memory_size(DUMMY_LLAMA, k, 512, 4096) == k


def test_legacy_manager_pages_leave_the_null_page_out():
    # 56 GiB of 16 MiB pages = 3584; the manager allocates the null page on top, so it is sized
    # from 56 GiB − 16 MiB: 3583 pages. A request of 131072 tokens needs 1024 of them, so one
    # request is sized to 1024 pages and 512 of them are capped at 3583.
    p = KVCacheParams("bf16", **L8B)
    assert legacy_total_num_pages(p, 56 * GiB, 1, 131072) == 1024
    assert legacy_total_num_pages(p, 56 * GiB, 512, 131072) == 3583
    with pytest.raises(ValueError, match=r"^Page size must be a multiple of 128 and at least 128\.$"):
        legacy_total_num_pages(KVCacheParams("bf16", **L8B, page_size=64), 56 * GiB, 1, 128)
    with pytest.raises(RuntimeError, match="Reduce --max-length to at most 458624 "):
        legacy_total_num_pages(p, 56 * GiB, 1, 2**20)  # 8192 pages > 3583; 3583 · 128 = 458,624


def test_legacy_manager_refuses_disaggregation():
    with pytest.raises(ValueError) as e:
        kv_cache_memory_size(DUMMY_LLAMA, GiB, 1, 128, is_di_enabled=True, legacy=True)
    assert str(e.value) == (
        "Disaggregated inference is incompatible with the legacy KV manager selected by "
        "MODULAR_USE_LEGACY_KV_CACHE. Unset MODULAR_USE_LEGACY_KV_CACHE.")


# ----------------------------------------------------------------- planner paths and words
def test_model_without_kv_cache_plans_batch_one():
    pc, mc = _configs(4096, user=True)
    est = MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(None, 4096), [Dev(GiB)],
                                                    100, 20)
    assert (est.planned_max_batch_size, est.footprint, est.available_cache_memory,
            est.planned_max_length) == (1, 120, 0, 4096)


def test_vision_blocks_m5():
    # M5: K = 1 GiB, util 0.001, rows of 10 uint8 → 128-token blocks of 1280 B;
    # int(2**30 · 0.001) = 1,073,741 → 838 blocks = 1,072,640 B
    pc = PipelineConfig(vision_cache_utilization=0.001)
    total, vplan = MemoryEstimator._reserve_vision_cache_blocks(pc, (10, "uint8"), GiB, 1)
    assert total == 838 * 1280 == 1_072_640 and vplan.bytes_per_device == 1_072_640
    with pytest.raises(ValueError, match="too small to fit one 128-token block"):
        MemoryEstimator._reserve_vision_cache_blocks(pc, (2**20, "uint8"), 10 * MiB, 1)


def test_vision_reservation_comes_off_the_kv_budget(caplog):
    # 64 MiB free, util 0.9, w 1000: K = 60,396,977; 5 % of it = 3,019,848 B → 11 blocks of
    # 128 · 1024 · 2 = 262,144 B = 2,883,584 B reserved, leaving 57,513,393 B = 27 pages
    pc, mc = _configs(4096, user=True)
    arch = Architecture("vlm", vision_cache_entry_bytes=1, vision_cache_row_spec=(1024, "bf16"))
    with caplog.at_level("INFO", logger="kvfit.max"):
        est = MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                        [Host(64 * MiB)], 1000, 0, arch=arch)
    assert est.vision_cache_plan.bytes_per_device == 2_883_584
    assert est.planned_max_length == (27 - 1) * 128
    assert caplog.messages[0] == ("Vision encoder cache: 11 blocks x 128 tokens sharded across 1 "
                                  "device(s), 2.75 MiB reserved (2.75 MiB per device).")


def test_truncation_is_logged_before_the_oom_error(caplog):
    # FINDINGS §7 (MAX 26.7.0): Llama-8B, 24 GiB, w 16 GiB, util 1.2, default length 131072
    pc, mc = _configs(131072, user=False, util=1.2)
    params = KVCacheParams("bf16", **L8B)
    with caplog.at_level("INFO", logger="kvfit.max"), pytest.raises(RuntimeError) as e:
        MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(params, 131072),
                                                  [Dev(24 * GiB)], 16 * GiB, 0)
    assert str(e.value) == (
        "Estimated model and kv cache memory use exceeds available memory (28.80 GiB  / 24.00 GiB "
        "free). Try setting --max-length to 131070 and --max-batch-size to 512).")
    assert "Truncated model's default max_length from 131072 to 131071 to fit in memory." in \
        caplog.messages


def test_batch_clamp_is_an_info_line():
    pc, mc = _configs(4096, user=True, max_batch_input_tokens=100)
    est = MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                    [Dev(GiB)], 0, 0)
    assert est.planned_max_batch_size == 100
    assert est.logs[0] == ("INFO", "max_batch_size of 512 cannot be larger than "
                                   "max_batch_input_tokens of 100, overriding max_batch_size to 100")


def test_virtual_device_mode_plans_without_memory():
    # MAX's cross-compilation mode: batch given or 1, no footprint, a 1 TiB cache budget
    from estimator.seed.memory_estimator import set_virtual_device_count

    pc, mc = _configs(4096, user=True)
    set_virtual_device_count(8)
    try:
        est = MemoryEstimator.estimate_memory_footprint(pc, mc, ArchConfig(DUMMY_LLAMA, 4096),
                                                        [Dev(MiB)], 10 * GiB, 0)
    finally:
        set_virtual_device_count(0)
    assert (est.planned_max_batch_size, est.footprint, est.available_cache_memory,
            est.planned_max_length) == (1, 0, 1024**4, 4096)


def test_a_quant_config_that_is_no_config_is_refused_not_defaulted():
    """A dict has neither field: it used to become f32 scales at granularity 128 silently."""
    from meshes import InputError

    with pytest.raises(InputError) as err:
        KVCacheParams("float8_e4m3fn", 8, 128, 4, kvcache_quant_config={"scale_dtype": "float16"})
    assert err.value.field == "kvcache_quant_config"


def test_public_methods_check_their_byte_counts_and_devices():
    # numpy's int64 would wrap: 2^62 + 2^62 is -2^63 there, 2^63 as Python ints (a sum MAX's own
    # arithmetic does in Python ints); floats, bools, None, negatives and an empty device list are
    # refused at the boundary, naming the argument
    import numpy as np

    from meshes import InputError

    assert MemoryEstimator.static_memory_size(np.int64(2**62), np.int64(2**62)) == 2**63
    pc, mc = _configs()
    for args, name in (((1.5, 0), "model_weights_size"), ((True, 0), "model_weights_size"),
                       ((None, 0), "model_weights_size"), ((0, -1), "activation_memory_size"),
                       ((0, 0, float("nan")), "signal_buffer_size")):
        with pytest.raises(InputError, match=name):
            MemoryEstimator.static_memory_size(*args)
    with pytest.raises(InputError, match="devices"):
        MemoryEstimator.free_memory([])
    with pytest.raises(InputError, match="model_weights_size"):
        MemoryEstimator.available_kv_cache_memory(pc, mc, [Dev(GiB)], -2**40, 0)
    for util in ("0.9", float("nan"), -0.5):  # "0.9" × free bytes would build a huge string
        pc, mc = _configs(util=util)
        with pytest.raises(InputError, match="device_memory_utilization"):
            MemoryEstimator.available_kv_cache_memory(pc, mc, [Dev(GiB)], 0, 0)
