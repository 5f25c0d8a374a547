"""vLLM 0.34's extensible KV cache, recomputed by hand from vllm/v1/worker/extensible_kv_cache.py
(``measure_kv_cache_bytes``, ``blocks_within``) and gpu_worker.py (``peak_activation_memory``):
the pool is what the device has free after warmup less a margin and the transient reserve."""

from __future__ import annotations

import math

import pytest

from estimator.engines import engine_plan
from meshes import CATALOG, DeviceMesh, InputError

GiB, MiB = 2**30, 2**20
H100 = CATALOG["H100-80GB"].usable_bytes  # torch's total on an H100 80GB: 85,018,542,080 B
LAYER_PAGE = 16 * 8 * 128 * 2 * 2  # one Llama-3.1-8B layer's block: 16 tokens × 8 KV heads × 128 × (K, V) × bf16
SEGMENTS = 32  # one segment per layer, each committed in 2 MiB granules
# every non-KV input pinned: weights 15 GiB, profiled peak 1 GiB, non-torch 0.25 GiB, CUDA graphs 0.5 GiB
# (resident and, as the profile's estimate, in the transient reserve too), CUDA context 0.5 GiB
PINNED = dict(weights_bytes=15 * GiB, activation_bytes=GiB, non_torch_bytes=GiB // 4, cuda_graph_bytes=GiB // 2,
              context_bytes=GiB // 2)
# Model Runner V2's penalty state at the H100's default 1024 sequences: [1024, 128,256] int32 counts and
# [1024, ⌈128,256 / 32⌉] int32 bit masks
STATE = 1024 * (4 * 128_256 + 4 * 4_008)


def blocks_within(available: int) -> int:
    """Blocks whose 32 per-layer segments, each rounded up to 2 MiB, fit ``available`` bytes."""
    n = available // (SEGMENTS * LAYER_PAGE)
    while n and SEGMENTS * math.ceil(n * LAYER_PAGE / (2 * MiB)) * 2 * MiB > available:
        n -= 1
    return n


def vllm(mesh: str | DeviceMesh = "1xH100-80GB", **knobs):
    return engine_plan("llama-3.1-8b", mesh, engine="vllm", version="0.34.0", max_model_len=32768,
                       **{**PINNED, **knobs})


def test_default_sizes_from_the_headroom_after_warmup():
    p = vllm()
    assert p.non_kv.get("sampler_state") == STATE == 541_753_344
    used = 15 * GiB + GiB // 4 + GiB // 2 + STATE  # resident after warmup: weights, non-torch, graphs, state
    transient = GiB + GiB // 2  # the profiled peak + the CUDA-graph estimate
    margin = max(GiB, int(0.75 * transient))  # 1.125 GiB
    headroom = H100 - GiB // 2 - used  # free at start-up (after the context) less what stays resident
    by_request = math.ceil(H100 * 1.0) - used - transient  # utilization 1.0: never the smaller branch
    available = min(by_request, headroom - margin - transient)
    assert available == headroom - margin - transient and p.budget_bytes == H100  # the free memory binds
    assert p.knobs["gpu_memory_utilization"] == 1.0
    assert p.num_blocks == blocks_within(available)
    # the same in closed form: whole 2 MiB granules of one segment's share, then whole 64 KiB pages
    assert p.num_blocks == (available // SEGMENTS // (2 * MiB)) * (2 * MiB) // LAYER_PAGE
    physical = SEGMENTS * math.ceil(p.num_blocks * LAYER_PAGE / (2 * MiB)) * 2 * MiB
    assert f"Extended KV cache to {p.num_blocks} blocks ({physical / GiB:.2f} GiB)." in p.log_lines
    x = (p.num_blocks) / (32768 // 16)  # the capacity line is 0.33's
    assert (f"GPU KV cache size: {int(x * 32768):,} tokens, Maximum concurrency for 32,768 tokens per "
            f"request: {x:.2f}x") in p.log_lines
    # the reserved capacity the profile prints first: requested − (profile's non-KV + graph estimate)
    capacity = math.ceil(H100 * 1.0) - (15 * GiB + GiB // 4 + STATE + GiB + GiB // 2)
    assert f"Available KV cache memory: {round(capacity / GiB, 2)} GiB" in p.log_lines
    assert not any(p.estimated_lines)  # every input pinned


def test_a_small_transient_still_keeps_a_gib_of_margin():
    p = vllm(activation_bytes=GiB // 5, cuda_graph_bytes=GiB // 10)
    used = 15 * GiB + GiB // 4 + GiB // 10 + STATE
    transient = GiB // 5 + GiB // 10
    available = H100 - GiB // 2 - used - GiB - transient  # 0.75 × 0.3 GiB < the 1 GiB floor
    assert p.num_blocks == blocks_within(available)


def test_an_explicit_utilization_caps_the_budget():
    p = vllm(gpu_memory_utilization=0.8)
    used = 15 * GiB + GiB // 4 + GiB // 2 + STATE
    requested = math.ceil(H100 * 0.8)
    available = requested - used - (GiB + GiB // 2)  # smaller than the headroom branch
    assert p.budget_bytes == requested and p.num_blocks == blocks_within(available)


def test_other_processes_shrink_the_headroom_without_a_startup_check():
    mesh = DeviceMesh.from_preset("1xH100-80GB", bytes_in_use=20 * GiB)
    p = vllm(mesh)
    used = 15 * GiB + GiB // 4 + GiB // 2 + STATE
    available = (H100 - 20 * GiB) - GiB // 2 - used - int(0.75 * 1.5 * GiB) - (GiB + GiB // 2)
    assert p.starts and p.num_blocks == blocks_within(available)
    older = engine_plan("llama-3.1-8b", mesh, engine="vllm", version="0.33.0", max_model_len=32768, **PINNED)
    assert not older.starts and "on startup is less than desired" in older.error


def test_a_pinned_pool_or_the_flag_turns_it_off():
    pinned = vllm(kv_cache_memory_bytes=40 * GiB)
    assert pinned.knobs["gpu_memory_utilization"] == 0.92
    assert pinned.num_blocks == 40 * GiB // (SEGMENTS * LAYER_PAGE)
    assert not any(line.startswith("Extended KV cache") for line in pinned.log_lines)
    off = vllm(enable_extensible_kv_cache=False)
    used = 15 * GiB + GiB + GiB // 4 + GiB // 2 + STATE  # 0.33's sizing: the graph estimate once
    assert off.num_blocks == (math.ceil(H100 * 0.92) - used) // (SEGMENTS * LAYER_PAGE)


def test_a_pool_that_cannot_hold_one_request_fails_where_0_34_checks():
    # 0.34 checks the capacity it reserves before warmup (requested − the profile's non-KV − the
    # CUDA-graph estimate, less the null block) with the advice of that stage, and the measured size
    # after warmup with its own: a 32,768-token request needs 2,048 blocks of 2 MiB = 4 GiB
    def capacity(weights: int) -> int:
        return math.ceil(H100 * 1.0) - (weights + GiB // 4 + STATE + GiB + GiB // 2)

    early = vllm(weights_bytes=73 * GiB)  # 3.93 GiB reserved
    assert not early.starts
    assert early.error.startswith(
        "To serve at least one request with the model's max seq len (32768), (4.0 GiB KV cache is needed, "
        f"which is larger than the available KV cache memory ({round((capacity(73 * GiB) - 2 * MiB) / GiB, 2)} "
        "GiB).")
    assert ("The extensible KV cache already takes all device memory left after the model and its "
            "activations; decrease `max_model_len` or `max_num_seqs`, or the model needs a device with more "
            "memory. Decreasing `max_model_len` also reduces what is needed.") in early.error
    weights = H100 - 7 * GiB - STATE  # 5.25 GiB reserved, but 3.125 GiB left after warmup
    assert capacity(weights) - 2 * MiB >= 4 * GiB
    late = vllm(weights_bytes=weights)
    assert not late.starts
    assert f"Available KV cache memory: {round(capacity(weights) / GiB, 2)} GiB" in late.log_lines
    measured = blocks_within(H100 - GiB // 2 - (weights + GiB // 4 + GiB // 2 + STATE) - int(0.75 * 1.5 * GiB)
                             - (GiB + GiB // 2))
    assert f"available KV cache memory ({round((measured - 1) * 2 * MiB / GiB, 2)} GiB)" in late.error
    assert ("The extensible KV cache already takes all device memory left after the model, its activations, "
            "CUDA graphs and warmup; decrease `max_model_len` or `max_num_seqs`, or the model needs a device "
            "with more memory. CUDA graphs take less with fewer or smaller capture sizes in the compilation "
            "config. Decreasing `max_model_len` also reduces what is needed.") in late.error


def test_each_end_of_the_band_takes_its_own_smaller_branch():
    # near the crossover (utilization ≈ 0.97 on an H100) the low and high ends of the band may bind on
    # different branches: each end is the smaller of its two
    for util in (0.96, 0.97, 0.975, 0.98):
        p = vllm(gpu_memory_utilization=util, activation_bytes=None, cuda_graph_bytes=None)
        assert p.tokens_band.low <= p.kv_tokens <= p.tokens_band.high
        lower = vllm(gpu_memory_utilization=util - 0.005, activation_bytes=None, cuda_graph_bytes=None)
        assert lower.tokens_band.low <= p.tokens_band.low and lower.tokens_band.high <= p.tokens_band.high


@pytest.mark.parametrize("knobs, says", [
    (dict(version="0.33.0", enable_extensible_kv_cache=True), "new in vLLM 0.34"),
    (dict(version="0.33.0", enable_extensible_kv_cache=False), "new in vLLM 0.34"),
    (dict(version="0.34.0", enable_extensible_kv_cache=True, num_gpu_blocks_override=1000),
     "num_gpu_blocks_override"),
])
def test_asking_for_it_where_it_cannot_be_is_refused(knobs, says):
    with pytest.raises(InputError) as err:
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", **knobs)
    assert err.value.field == "enable_extensible_kv_cache" and says in str(err.value)


def test_rocm_keeps_a_3_gib_margin_floor():
    # AMD cards: KV_CACHE_MARGIN_FLOOR_BYTES is 3 GiB (kernel scratch ROCr maps outside the allocator)
    mi300x = CATALOG["MI300X-192GB"].usable_bytes
    p = engine_plan("llama-3.1-8b", "1xMI300X-192GB", engine="vllm", version="0.34.0", max_model_len=32768,
                    **PINNED)
    used = 15 * GiB + GiB // 4 + GiB // 2 + STATE  # 1024 sequences on a ≥ 160 GiB card too
    available = mi300x - GiB // 2 - used - 3 * GiB - (GiB + GiB // 2)  # 0.75 × 1.5 GiB < 3 GiB
    assert p.num_blocks == blocks_within(available)


def test_a_measured_non_torch_figure_keeps_the_communicators_set_up_before_the_snapshot():
    # where free memory at start-up binds, every communicator byte is gone from it, yet a measured
    # non-torch figure is only the increase after the snapshot: at TP8 on H100s the rest is half the
    # fitted NCCL term and the custom all-reduce buffers (the NCCL that 0.34's torch bundles sets its
    # NVLS buffers up lazily, in the profile run, so none of them predates the snapshot)
    from estimator.engines.non_kv import custom_all_reduce_bytes, fitted

    p = engine_plan("llama-3.1-70b", "8xH100-80GB", "tp8", engine="vllm", version="0.34.0", max_model_len=8192,
                    **{**PINNED, "weights_bytes": 17 * GiB, "non_torch_bytes": 3 * GiB // 4})
    nccl = int(fitted("vllm", "nccl_tp_gib", "0.34", "nvlink") * GiB)
    expected = nccl - nccl // 2 + custom_all_reduce_bytes(8, "nvlink")
    assert abs(p.non_kv.get("pre_snapshot_communicators") - expected) <= 1
    assert p.non_kv.get("non_torch") == 3 * GiB // 4
