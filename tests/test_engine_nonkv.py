"""The non-KV terms of the engine profiles, each recomputed by hand from the engine code it cites.

Fitted constants are replaced by a synthetic calibration (``calibrated(SYN)``) so every number
below follows from the formulas, not from the corpus the constants were fitted on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estimator.engines import engine_plan
from estimator.engines.non_kv import (
    Band,
    calibrated,
    custom_all_reduce_bytes,
    interconnect,
    lora_slot_bytes,
    nccl_release,
    nvls_band,
    nvls_bytes,
)
from estimator.model.hf_config import load_hf_config
from estimator.model.resolve import load_preset
from meshes import InputError

GiB, MiB = 2**30, 2**20
SYN = {
    "constants": {
        "vllm": {"non_torch_base_gib": {"default": 0.25}, "nccl_tp_gib": {"default": {"nvlink": 1.0, "pcie": 0.5}},
                 "nccl_pp_gib": 0.125, "cuda_graph_per_graph_mib": 2.0},
        "sglang": {"non_torch_base_gib": {"default": 0.0}, "nccl_pp_gib": 0.125},
        "trtllm": {"non_torch_base_gib": {"default": 0.25}, "nccl_tp_gib": {"default": {"nvlink": 1.0, "pcie": 0.5}},
                   "nccl_pp_gib": 0.125, "cuda_graph_gib": {"default": {"large": 0.5, "hbm": 0.5, "other": 0.25}}},
    },
    "residual_gib": {"vllm": {"default": [-0.5, 1.0]}, "sglang": {"default": [-0.5, 1.0]},
                     "trtllm": {"default": [-0.5, 1.0]}},
}
# custom_all_reduce.py: meta (meta_size() + 8 MiB) + IPC buffer (8 MiB) + rank_data (8 MiB)
CUSTOM_AR = 4096 + 2 * 8 * MiB + 8 * MiB


def vllm(mesh: str = "1xH100-80GB", layout: str | None = None, **knobs):
    with calibrated(SYN):
        return engine_plan("llama-3.1-8b", mesh, layout, engine="vllm", **knobs)


@pytest.mark.parametrize(("tensor", "link", "expected"), [
    (1, "nvlink", 0), (2, "nvlink", CUSTOM_AR), (2, "pcie", CUSTOM_AR), (4, "nvlink", CUSTOM_AR),
    (4, "pcie", 0), (3, "nvlink", 0), (8, "nvlink", CUSTOM_AR)])
def test_custom_all_reduce_buffers(tensor, link, expected):
    assert custom_all_reduce_bytes(tensor, link) == expected


def test_interconnect_classes():
    assert [interconnect(k) for k in ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA H200")] == \
        ["nvlink"] * 3
    assert [interconnect(k) for k in ("NVIDIA H100 NVL", "NVIDIA A100 80GB PCIe", "Tesla T4", "NVIDIA L40S",
                                      "NVIDIA A10G", "NVIDIA GeForce RTX 4090", "NVIDIA L4")] == ["pcie"] * 7


def test_tensor_parallel_buffers_and_pipeline_without_them():
    old = {"version": "0.10"}  # the memory snapshot before NCCL init: every communicator byte charged
    assert vllm(**old).non_kv.get("non_torch") == GiB // 4
    assert vllm("4xH100-80GB", "tp4", **old).non_kv.get("non_torch") == GiB // 4 + GiB + CUSTOM_AR
    assert vllm("4xH100-80GB", "tp4", disable_custom_all_reduce=True, **old).non_kv.get("non_torch") == \
        GiB * 5 // 4
    # a pipeline-parallel run holds only the PP group's p2p communicator, no TP buffers
    assert vllm("4xH100-80GB", "pp4", **old).non_kv.get("non_torch") == GiB // 4 + GiB // 8
    assert vllm("2xRTX4090-24GB", "tp2", **old).non_kv.get("non_torch") == GiB // 4 + GiB // 2 + CUSTOM_AR


@pytest.mark.parametrize("version", ["0.11", "0.2x", "0.33"])
def test_nccl_set_up_before_the_snapshot_from_0_11(version):
    # vllm PR #25359: PyNccl and the custom all-reduce buffers predate the snapshot; the torch
    # communicator the logits all-gather creates in the profile run is charged: half the per-link
    # term (SYN: 1 GiB NVLink, 0.5 GiB PCIe), the band from none of it to the ≤ 0.10 charge
    # (+ at its top, two communicators' NVLS buffers, a 4-GPU group possibly sitting on an NVSwitch
    # board; NCCL ≥ 2.26 as torch ≥ 2.8 bundles it: 4 heads × 16 channels × 2 × 1 MiB each, see
    # test_nvls_buffers_by_hand)
    tp4 = vllm("4xH100-80GB", "tp4", version=version).non_kv.terms
    band = next(t.band for t in tp4 if t.name == "non_torch")
    assert (band.low, band.central, band.high) == (GiB // 4, GiB // 4 + GiB // 2,
                                                   GiB // 4 + GiB + CUSTOM_AR + 2 * 4 * 16 * 2 * MiB)
    assert vllm("2xRTX4090-24GB", "tp2", version=version).non_kv.get("non_torch") == GiB // 4 + GiB // 4
    assert vllm("4xH100-80GB", "pp4", version=version).non_kv.get("non_torch") == GiB // 4 + GiB // 8
    assert vllm(version=version).non_kv.get("non_torch") == GiB // 4
    # a DP group's profile-run collectives go through PyNccl (all_gatherv) or gloo: only the band's
    # high end charges its communicator. (The half is read from the code; no 0.11+ TP ≥ 2 log in
    # the corpus can be run to check it.)
    dp2 = next(t.band for t in vllm("2xH100-80GB", "dp2", version=version).non_kv.terms if t.name == "non_torch")
    assert (dp2.low, dp2.central, dp2.high) == (GiB // 4, GiB // 4, GiB // 4 + GiB)


def test_rocm_samples_without_flashinfer():
    # FlashInfer is CUDA-only: on an MI300X vLLM 0.21 (FlashInfer's kernel by default on CUDA: bf16 2 +
    # fp32 4 + probabilities 4 = 10 B a logit) samples natively, through PR #33538's Triton kernel from
    # 8 rows: 2 + 4 + 4 + noise 4 = 14 B; asking for FlashInfer there is refused
    logits, hidden = 1024 * 128256, 2048 * 4096 * 2
    kw = dict(version="0.21.0", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024)
    assert vllm(**kw).non_kv.get("activation") == hidden + logits * 10
    assert vllm("1xMI300X-192GB", **kw).non_kv.get("activation") == hidden + logits * 14
    with pytest.raises(InputError) as err:
        vllm("1xMI300X-192GB", use_flashinfer_sampler=True, **kw)
    assert err.value.field == "use_flashinfer_sampler" and "ROCm" in str(err.value)


def test_sglang_takes_vllms_nccl_term():
    # SGLang's parallel_state and PyNccl are vLLM v0.6.4.post1's: its TP group is charged vLLM V1's
    # fitted per-link NCCL term (SYN: 1 GiB NVLink, 0.5 GiB PCIe) beside custom all-reduce's buffers
    # where it runs (2 PCIe GPUs at most); a change to vLLM's term moves SGLang's with it
    def non_torch(mesh, layout, cal=SYN):
        with calibrated(cal):
            p = engine_plan("llama-3.1-8b", mesh, layout, engine="sglang", context_length=8192)
        return next(t.band.central for t in p.non_kv.terms if t.name == "non_torch")

    assert non_torch("4xH100-80GB", "tp4") == GiB + CUSTOM_AR
    assert non_torch("4xL4-24GB", "tp4") == GiB // 2
    assert non_torch("2xRTX4090-24GB", "tp2") == GiB // 2 + CUSTOM_AR
    other = json.loads(json.dumps(SYN))
    other["constants"]["vllm"]["nccl_tp_gib"]["default"]["nvlink"] = 2.0
    assert non_torch("4xH100-80GB", "tp4", other) == 2 * GiB + CUSTOM_AR


def test_nvls_buffers_by_hand():
    # NCCL ≤ 2.20 (vllm #9699's line on 8 H200s): nHeads 8, buffSize 4,194,304, memSize 2,097,152,
    # nvlsPerRankSize 301,989,888 = 24 channels × 2 × (4 + 2) MiB, nvlsTotalSize 2,415,919,104 = 8 heads
    full = 2_415_919_104
    assert nvls_bytes(8, (2, 20), "NVIDIA H200") == 8 * 301_989_888 == full
    assert nvls_bytes(16, (2, 20), "NVIDIA H200") == full  # one head per GPU of the NVSwitch node
    # NCCL 2.21: buffSize = 128 KiB chunks × 8 steps = 1 MiB beside the 2 MiB of head/tail
    assert nvls_bytes(8, (2, 21), "NVIDIA H200") == 8 * 24 * 2 * (1 + 2) * MiB == 1_207_959_552
    # NCCL ≥ 2.26: 16 NVLS channels on Hopper × 2 × 1 MiB; Blackwell 32, from 2.27 24 inside a node
    assert nvls_bytes(8, (2, 26), "NVIDIA H100 80GB HBM3") == 8 * 16 * 2 * MiB == 268_435_456
    assert nvls_bytes(8, (2, 26), "NVIDIA B200") == 8 * 32 * 2 * MiB
    assert nvls_bytes(8, (2, 27), "B200-180GB") == 8 * 24 * 2 * MiB
    assert nvls_bytes(16, (2, 27), "B200-180GB") == 8 * 32 * 2 * MiB
    # which NCCL a vLLM release runs: the one its torch pin bundles
    assert [nccl_release(r) for r in ((0, 6, 3), (0, 6, 4), (0, 8, 5), (0, 9, 0), (0, 10, 1), (0, 10, 2))] == \
        [(2, 20), (2, 21), (2, 21), (2, 26), (2, 26), (2, 27)]
    # set up with the communicator (≤ 2.21), snapshot before NCCL's set-up: both communicators
    # (PyNccl's and torch's), the band from one
    b = nvls_band(8, "H100-80GB", "nvlink", snapshot_after_init=False, nccl=(2, 20))
    assert (b.low, b.central, b.high) == (full, 2 * full, 2 * full)
    b = nvls_band(8, "H100-80GB", "nvlink", snapshot_after_init=True, nccl=(2, 21))
    assert (b.low, b.central, b.high) == (0, 1_207_959_552, 2 * 1_207_959_552)
    # set up lazily (≥ 2.26) by the profile run's first NVLS collective: both, or none if NCCL picks
    # another algorithm; a 4-GPU group only at the top
    b = nvls_band(8, "H100-80GB", "nvlink", snapshot_after_init=True, nccl=(2, 27))
    assert (b.low, b.central, b.high) == (0, 2 * 268_435_456, 2 * 268_435_456)
    b = nvls_band(4, "H100-80GB", "nvlink", snapshot_after_init=False, nccl=(2, 26))
    assert (b.low, b.central, b.high) == (0, 0, 2 * 4 * 16 * 2 * MiB)
    # NCCL builds none for two GPUs, over PCIe, before Hopper or on AMD cards
    for args in ((2, "H100-80GB", "nvlink"), (8, "H100-PCIe-80GB", "pcie"), (8, "A100-80GB", "nvlink"),
                 (8, "MI300X-192GB", "nvlink")):
        assert nvls_band(*args, snapshot_after_init=False, nccl=(2, 20)) == Band.exact(0)
    # in a profile: 0.6.4 (torch 2.5.1, NCCL 2.21) and 0.10 (torch 2.7, NCCL 2.26) at TP8 on H100s
    # charge them on top of the NCCL term; V0 from 0.6.5 does not
    tp8 = vllm("8xH100-80GB", "tp8", version="0.6.4.post1").non_kv.get("non_torch")
    assert tp8 == GiB // 4 + GiB + CUSTOM_AR + 2 * 1_207_959_552
    tp8 = vllm("8xH100-80GB", "tp8", version="0.10.0").non_kv.get("non_torch")
    assert tp8 == GiB // 4 + GiB + CUSTOM_AR + 2 * 268_435_456
    assert vllm("8xH100-80GB", "tp8", version="v0").non_kv.get("non_torch") == GiB // 4 + GiB + CUSTOM_AR


# Llama-3.1-8B on one H100 (vllm serve defaults: 8192 batched tokens, 1024 seqs): capture sizes up
# to min(2 · 1024, 512) = 512 — 1, 2, 4, 8..248 by 8, 256..512 by 16: 51 PIECEWISE graphs and, all
# being ≤ max_num_seqs, 51 FULL ones. The largest capture holds one layer's activations at 512
# tokens, 110,592 B a token (3 · 4096 hidden + 3 · 14336 MLP, bf16); each further graph 2 MiB (SYN).
GRAPH_8B = 512 * 110_592 + (50 + 50) * 2 * MiB


@pytest.mark.parametrize(("version", "graph"), [("0.33", GRAPH_8B), ("0.2x", GRAPH_8B), ("0.10", 0),
                                                  ("0.9", 0), ("v0", 0)])
def test_cuda_graph_term_by_version(version, graph):
    assert vllm(version=version, max_model_len=8192).non_kv.get("cuda_graph") == graph
    assert vllm(version=version, max_model_len=8192, enforce_eager=True).non_kv.get("cuda_graph") == 0


def test_cuda_graph_term_follows_the_capture_sizes():
    from estimator.engines.non_kv import cudagraph_capture_sizes

    # a vLLM 0.21.0 log at max_num_seqs 256: "PIECEWISE=51 (largest=512), FULL=35 (largest=256)"
    sizes = cudagraph_capture_sizes(256, 8192)
    assert (len(sizes), max(sizes)) == (51, 512) and len([s for s in sizes if s <= 256]) == 35
    # --max-cudagraph-capture-size 64: 1, 2, 4, 8..64 → 11 sizes per mode
    small = vllm(version="0.33", max_model_len=8192, max_cudagraph_capture_size=64)
    assert small.non_kv.get("cuda_graph") == 64 * 110_592 + (10 + 10) * 2 * MiB
    # 48 seqs: PIECEWISE up to 96 (1, 2, 4, 8..96: 15 sizes), FULL up to 48 (9 sizes)
    few = vllm(version="0.33", max_model_len=8192, max_num_seqs=48)
    assert few.non_kv.get("cuda_graph") == 96 * 110_592 + (14 + 8) * 2 * MiB


def test_dummy_sampler_over_max_num_seqs_by_version():
    # 2048 batched tokens: forward 2048 × 110,592 B = 0.21 GiB; the sampler over 1024 rows dominates
    # V1 with FlashInfer top-k/top-p (as pip installs vLLM: from 0.21, whose wheel depends on FlashInfer;
    # in 0.8.0–0.11.0 where the image or the user installed it): bf16 logits 2 + fp32 logits 4 + fp32
    # probabilities 4 = 10 B; the band reaches what runs without FlashInfer: the Triton kernel's 14 + 4 B
    # From 0.9.2 (and in V0) the dummy forward's 2048 × 4096 bf16 hidden states stay alive beside it
    logits, hidden = 1024 * 128256, 2048 * 4096 * 2
    p = vllm(version="0.2x", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024)
    act = next(t for t in p.non_kv.terms if t.name == "activation").band
    assert (act.low, act.central, act.high) == (hidden + logits * 8, hidden + logits * 10, hidden + logits * 18)
    # 0.8.0–0.11.0 enable FlashInfer where installed, but their wheels list it only as an extra: pip's
    # vLLM sorts natively, 38 B (below), the band from FlashInfer's 8 B to the sort's top, 40 B; a log
    # that says FlashInfer ran (use_flashinfer_sampler) gets its 10 B
    for version, held in (("0.10", hidden), ("0.9", 0), ("0.11.0", hidden)):
        p = vllm(version=version, max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024)
        act = next(t for t in p.non_kv.terms if t.name == "activation").band
        assert (act.low, act.central, act.high) == (held + logits * 8, held + logits * 38, held + logits * 40)
        p = vllm(version=version, max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024,
                 use_flashinfer_sampler=True)
        assert p.non_kv.get("activation") == held + logits * 10
    # 0.11.1–0.16 (FlashInfer opt-in: PR #26859 until PR #40376) and V0 sort the fp32 logits; at ≥ 128
    # rows PyTorch's segmented sort holds bf16 2 + fp32 4 + sorted values 4 + int64 indices 8 + int64
    # reverse indices 8 + cub's alternate key/value buffers 4 + 8 = 38 B; band from FlashInfer's 8 B to 40 B
    for version in ("0.11", "v0"):
        p = vllm(version=version, max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024)
        act = next(t for t in p.non_kv.terms if t.name == "activation").band
        assert (act.low, act.central, act.high) == (hidden + logits * 8, hidden + logits * 38,
                                                    hidden + logits * 40)
    # 0.33 profiles with Model Runner V2: a greedy pass, then a warmup-parameter pass through
    # FlashInfer (bf16 2 + fp32 copy 4 + masked copy 4 + probabilities 4 = 14 B; the in-place Triton
    # mask without it, 6 B); beside it, a term of its own, the penalty state its sampler holds from
    # construction: 1024 × (4 · 128,256 + 4 · ⌈128,256 / 32⌉) B of output counts and prompt masks
    p = vllm(version="0.33", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024)
    act = next(t for t in p.non_kv.terms if t.name == "activation").band
    state = 1024 * (4 * 128256 + 4 * 4008)
    assert (act.low, act.central, act.high) == (hidden + logits * 6, hidden + logits * 14, hidden + logits * 14)
    assert p.non_kv.get("sampler_state") == state
    # 0.29–0.32: the greedy pass alone over the bf16 logits (2 B), below the 2048-token forward pass
    p = vllm(version="0.30.0", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024)
    assert p.non_kv.get("activation") == max(2048 * 110_592, hidden + logits * 2)
    assert p.non_kv.get("sampler_state") == state
    # 0.20.x ran the Triton kernel
    p = vllm(version="0.20.2", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024)
    assert p.non_kv.get("activation") == hidden + logits * 14
    # 64 rows: sorted as one array — two int2 index/segment arrays 16 + a key buffer 4 + cub's key
    # and int2 buffers 12 beside the 18 B held = 50 B, which beats the forward pass at 2048 tokens
    few = vllm(version="0.11", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=64)
    assert few.non_kv.get("activation") == max(hidden + 64 * 128256 * 50, 2048 * 110_592)
    small = vllm(version="0.10", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=64,
                 use_flashinfer_sampler=True)
    assert small.non_kv.get("activation") == 2048 * 110_592  # FlashInfer's 10 B: the forward pass wins
    # 0.17–0.19: the Triton kernel (vllm PR #33538) masks the fp32 logits in place from 8 rows on;
    # the peak is random_sample's: bf16 2 + fp32 4 + probabilities 4 + exponential noise 4 = 14 B,
    # the band's top adds the kernel's fp32 [rows, vocab] buffer at most (4 B); below 8 rows the
    # batch is sorted (50 B)
    p = vllm(version="0.17", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=1024)
    act = next(t for t in p.non_kv.terms if t.name == "activation").band
    assert (act.low, act.central, act.high) == (hidden + logits * 8, hidden + logits * 14,
                                                hidden + logits * 18)
    tiny = vllm(version="0.17", max_model_len=8192, max_num_batched_tokens=2048, max_num_seqs=4)
    assert tiny.non_kv.get("activation") == max(hidden + 4 * 128256 * 50, 2048 * 110_592)


def test_torch_sort_peak_by_rows():
    from estimator.engines.non_kv import torch_sort_sampler_bytes

    assert torch_sort_sampler_bytes(1, 151_936) == 38  # one row: its index row and cub buffers
    assert torch_sort_sampler_bytes(2, 151_936) == torch_sort_sampler_bytes(127, 151_936) == 50
    assert torch_sort_sampler_bytes(128, 151_936) == torch_sort_sampler_bytes(4096, 262_208) == 38
    assert torch_sort_sampler_bytes(256, 2_000_000) == 28  # row by row: past the sort, 28 B at the scatter


def test_gpt_oss_120b_sampler_peak_matches_the_vllm_0_11_log():
    # vllm-project/vllm #27508 (0.11, one H100, --gpu-memory-utilization 0.95
    # --max-num-batched-tokens 1024): 1.71 GiB of KV; #23278 logs the weights, 65.97 GiB. What
    # the profile charged beside them: 0.95 × 79.18 − 65.97 − 1.71 = 7.54 GiB. The dummy sampler
    # over 1024 rows × 201,088 logits at 38 B is 7.29 GiB of it (28 B: 5.37 GiB), beside the dummy
    # forward's hidden states (1024 tokens × 2880 × bf16), which stay alive through it
    model = load_preset("gpt-oss-120b")
    with calibrated(SYN):
        p = engine_plan(model, "1xH100-80GB", engine="vllm", version="0.11", gpu_memory_utilization=0.95,
                        max_num_batched_tokens=1024, max_model_len=8192)
    assert p.non_kv.get("activation") == 1024 * 201_088 * 38 + 1024 * 2880 * 2
    assert abs((p.non_kv.get("activation") + p.non_kv.get("non_torch")) / GiB - 7.54) < 0.3


def test_gpt_oss_20b_triton_sampler_matches_the_vllm_0_19_log():
    # myoceane.fr's vLLM 0.19.0 log (gpt-oss-20b, one A100 80GB, --gpu-memory-utilization 0.65
    # --max-model-len 131072): weights 13.72 GiB, KV 36.56 GiB. The A100 is outside vLLM's
    # ≥ 70 GiB batch rule, so 256 sequences; 0.65 × 79.25 − 13.72 − 36.56 = 1.23 GiB charged beside
    # the weights. The Triton sampler over 256 × 201,088 logits at 14 B is 0.67 GiB of it; the sort
    # (38 B) alone would be 1.82 GiB, more than the whole charge. With SYN's synthetic 0.25 GiB
    # non-torch base the two leave 0.31 GiB, within the kernel's fp32 buffer (108 SMs × 201,088 ×
    # 4 B = 0.08 GiB, left to the band) and the log's two-decimal rounding of what remains
    model = load_preset("gpt-oss-20b")
    with calibrated(SYN):
        p = engine_plan(model, "1xA100-80GB", engine="vllm", version="0.17", gpu_memory_utilization=0.65,
                        max_model_len=131072)
    assert p.non_kv.get("activation") == 256 * 201_088 * 14 + 2048 * 2880 * 2  # + 2048 tokens' hidden states
    charged = (p.non_kv.get("activation") + p.non_kv.get("non_torch")) / GiB
    assert 0 < 1.23 - charged < 0.35


def test_lora_slots_by_hand():
    # rank 16, one slot, TP1, per layer: qkv 3·16·4096 + 16·(4096 + 2·1024); o 16·4096 + 16·4096;
    # gate_up 2·16·4096 + 2·16·14336; down 16·14336 + 16·4096 → 1,310,720 values; × 32 layers × 2 B
    assert lora_slot_bytes(load_preset("llama-3.1-8b"), 1, max_loras=1, max_lora_rank=16) == 80 * MiB
    base = vllm(max_model_len=8192).non_kv.get("weights")
    assert vllm(max_model_len=8192, enable_lora=True).non_kv.get("weights") == base + 80 * MiB
    assert vllm(max_model_len=8192, enable_lora=True, max_loras=4, max_lora_rank=64).non_kv.get("weights") == \
        base + 16 * 80 * MiB


def test_cpu_offload_and_model_knobs():
    base = vllm(max_model_len=8192).non_kv.get("weights")
    assert vllm(max_model_len=8192, cpu_offload_gb=4).non_kv.get("weights") == base - 4 * GiB
    assert vllm(max_model_len=8192, dtype="float32").non_kv.get("weights") == 2 * base
    # online fp8: every linear weight (218,103,808 per layer × 32) drops from 2 B to 1 B, plus one
    # fp32 scale per matrix
    fp8 = vllm(max_model_len=8192, quantization="fp8").non_kv.get("weights")
    assert base - fp8 == 32 * 218_103_808 - 32 * 7 * 4
    with pytest.raises(InputError):
        vllm(quantization="int3")
    with pytest.raises(InputError):
        vllm(dtype="float64")


def test_residual_band_widens_only_the_band():
    p = vllm(max_model_len=8192)
    residual = next(t for t in p.non_kv.terms if t.name == "residual")
    # SYN's (−0.5, +1.0) GiB, widened to at least 1.5 % of the H100's 85,018,542,080 B either side
    floor = int(85_018_542_080 * 0.015)  # 1.19 GiB
    assert (residual.band.low, residual.band.central, residual.band.high) == (-floor, 0, floor)
    small = vllm("1xRTX4090-24GB", max_model_len=8192)  # 1.5 % of 23.5 GiB = 0.35 GiB < SYN's bounds
    band = next(t for t in small.non_kv.terms if t.name == "residual").band
    assert (band.low, band.high) == (-GiB // 2, GiB)
    pinned = vllm(max_model_len=8192, weights_bytes=15 * GiB, activation_bytes=GiB, non_torch_bytes=0,
                  cuda_graph_bytes=0, context_bytes=GiB // 2)
    assert all(t.name != "residual" for t in pinned.non_kv.terms)


def test_flags_reach_every_engine():
    with calibrated(SYN):
        s = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang", quantization="fp8", dtype="bfloat16",
                        mem_fraction_static=0.85, chunked_prefill_size=4096, cuda_graph_max_bs=64)
        t = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="trtllm", quantization="fp8", max_batch_size=64,
                        max_input_len=2048, max_num_tokens=4096, max_beam_width=2)
    assert s.knobs["chunked_prefill_size"] == 4096 and s.knobs["cuda_graph_max_bs"] == 64
    assert t.knobs["max_input_len"] == 2048 and t.knobs["max_beam_width"] == 2
    assert s.non_kv.get("weights") < 10 * GiB and t.non_kv.get("weights") < 10 * GiB  # fp8 weights


def test_trt_engine_runtime_buffers_follow_build_limits():
    # fp32 logits + the decoder's copy for max_batch_size × beam slots (8 × 1 × 32,000 × 8 B), and the
    # activation slab for the packed tokens of one step: min(max_num_tokens, batch × max_input_len)
    # × Llama-2-7B's 2 · (3·4096 + 3·11008) = 90,624 B per token
    with calibrated(SYN):
        small = engine_plan("llama-2-7b", "1xA100-80GB", engine="trtllm", version="trt-engine", max_batch_size=8,
                            max_input_len=256, max_num_tokens=8192)
        big = engine_plan("llama-2-7b", "1xA100-80GB", engine="trtllm", version="trt-engine", max_batch_size=8,
                          max_input_len=1024, max_num_tokens=8192)
    assert small.non_kv.get("activation") == 8 * 32000 * 8 + 2048 * 90_624
    assert big.non_kv.get("activation") == 8 * 32000 * 8 + 8192 * 90_624
    assert big.non_kv.get("non_torch") == 8 * 32000 * 20  # decoder buffers


def test_mxfp4_kernel_padding_matches_vllm_logs(hf_config):

    big = load_hf_config(hf_config("openai/gpt-oss-120b"))
    # Marlin path: I 2880 → 2944 (×128), H 2880 → 3072 (×256); 0.5 B + 1/32 B per value, 128 experts, 36 layers
    by_hand = 36 * 128 * (3 * (2944 * 3072 - 2880 * 2880) // 2 + 3 * (2944 * 3072 - 2880 * 2880) // 32)
    from estimator.engines.non_kv import mxfp4_padding_bytes

    assert mxfp4_padding_bytes(big, 1, "NVIDIA H100 80GB HBM3") == by_hand
    with calibrated(SYN):
        p = engine_plan(big, "1xH100-80GB", engine="vllm", version="0.10", max_model_len=8192)
        small = engine_plan(load_hf_config(hf_config("openai/gpt-oss-20b")), "1xA100-80GB",
                            engine="vllm", version="0.10", max_model_len=8192)
    # "model weights take 65.97 GiB" on an H100 (vllm #23278); 13.72 GiB on an A100 (public 0.19 log)
    assert abs(p.non_kv.get("weights") / GiB - 65.97) < 0.1
    assert abs(small.non_kv.get("weights") / GiB - 13.72) < 0.1


def test_dp_expert_parallel_gathers_tokens_before_the_experts() -> None:
    """DP8 + EP8 (vLLM's naive all-to-all, vllm/distributed/device_communicators/all2all.py
    NaiveAll2AllManager.naive_multicast): the fused MoE of Qwen3-Coder-480B runs over 8 × 8192 tokens,
    capped at one 32768-token chunk, and the gathered hidden states (+ combined output) stay live.
    By hand (bf16, h 6144, 96 × 128 query, 8 KV heads, 8 of 160 experts × 2560, dense 8192 × 3):
      per-token with MoE  2 × (3·6144 + 8·(6144 + 2560))         = 176128 B
      per-token without   2 × (3·6144 + max(2·12288 + 2·8·128, 3·8192)) = 90112 B
      8192·90112 + 32768·(176128 − 90112) + 2·(65536 − 8192)·6144·2 = 4,966,055,936 B."""

    from estimator.engines.non_kv import forward_bytes
    from estimator.model.hf_config import load_hf_config

    cfg = Path(__file__).parent / "model_configs" / "Qwen__Qwen3-Coder-480B-A35B-Instruct.json"
    model = load_hf_config(cfg)
    assert forward_bytes(model, 1, 8, 8192, moe_gather=8) == 4_966_055_936
    assert forward_bytes(model, 1, 8, 8192) == 8192 * 176128  # no DP gather: one chunk, all tokens


def test_rope_tables_as_vllm_builds_them(hf_config):
    from estimator.engines.non_kv import rotary_cache_bytes
    from estimator.model.hf_config import spec_from_hf_config

    gemma = load_preset("gemma-3-27b")
    # global layers: LinearScalingRotaryEmbedding, 131,072 × factor 8 positions; sliding layers: their
    # own default table (rope_local_base_freq); head dim 128, bf16
    assert gemma.rope_positions == (1_048_576, 131_072)
    assert rotary_cache_bytes(gemma) == 288 * MiB
    # Gemma 3 1B: no scaling, but local and global bases differ: two tables of 32,768 × 256 × 2 B
    assert rotary_cache_bytes(load_preset("gemma-3-1b")) == 2 * 16 * MiB
    # the real configs: Llama 3 scaling (max_position), YaRN with original × factor = max_position
    # (DeepSeek-V3 4,096 × 40, gpt-oss 4,096 × 32, Kimi-K2 4,096 × 32): one table of max_position
    for hf_id in ("meta-llama/Llama-3.1-8B", "deepseek-ai/DeepSeek-V3", "openai/gpt-oss-120b",
                  "moonshotai/Kimi-K2-Instruct"):
        assert load_hf_config(hf_config(hf_id)).rope_positions == ()
    # transformers v5 keeps Gemma 3's rope parameters per layer kind
    real = json.loads(hf_config("google/gemma-3-27b-it").read_text())
    text = {k: v for k, v in real["text_config"].items()
            if k not in ("rope_scaling", "rope_theta", "rope_local_base_freq")}
    text["rope_parameters"] = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    assert spec_from_hf_config({**real, "text_config": text}).rope_positions == (1_048_576, 131_072)
    # deepseek-coder-6.7b: linear factor 4 over 16,384 positions
    assert load_hf_config(hf_config("deepseek-ai/deepseek-coder-6.7b-instruct")).rope_positions == (65_536,)
    base = {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32, "num_hidden_layers": 32,
            "vocab_size": 32064, "intermediate_size": 8192, "max_position_embeddings": 131072}
    longrope = {"rope_type": "longrope", "factor": 32.0, "original_max_position_embeddings": 4096,
                "long_factor": [1.0] * 48, "short_factor": [1.0] * 48}  # head dim 96: 48 frequencies
    assert spec_from_hf_config({**base, "rope_scaling": longrope}).rope_positions == (4096 + 131072,)
    su = {**longrope, "type": "su"}  # LongRoPE's old name
    del su["rope_type"]
    assert spec_from_hf_config({**base, "rope_scaling": su}).rope_positions == (4096 + 131072,)
    for bad, field in (({"rope_type": "linear", "factor": "8"}, "rope_scaling.factor"),
                       ({"rope_type": "linear", "factor": 0}, "rope_scaling.factor"),
                       ([8.0], "rope_scaling"),
                       ({"rope_type": "bogus", "factor": 8.0}, "rope_scaling.rope_type"),
                       ({"rope_type": "llama3", "factor": -8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}, "rope_scaling.factor"),
                       ({"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}, "rope_scaling.factor"),
                       ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": -1, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}, "rope_scaling.low_freq_factor"),
                       ({**longrope, "long_factor": "abc"}, "rope_scaling.long_factor"),
                       ({**longrope, "long_factor": [1.0] * 3}, "rope_scaling.long_factor"),
                       ({"type": "su", "long_factor": None, "short_factor": [1.0] * 48}, "rope_scaling.long_factor")):
        with pytest.raises(InputError, match=field.replace(".", r"\.")):
            spec_from_hf_config({**base, "rope_scaling": bad})


def test_vision_tower_split_over_the_tensor_group():
    from estimator.core.geometry import geometry
    from estimator.core.layout import Layout

    gemma = load_preset("gemma-3-27b")
    # SigLIP so400m, 27 layers, h 1152, MLP 4304: q/k/v/o matrices + q/k/v biases + fc1 (+ bias) + fc2
    per_layer = 4 * 1152**2 + 3 * 1152 + 2 * 1152 * 4304 + 4304
    assert gemma.vision_sharded_params == 27 * per_layer == 411_279_984
    with calibrated(SYN):
        one, four = (engine_plan(gemma, f"{tp}xH100-80GB", f"tp{tp}", engine="vllm", version="0.9",
                                 max_model_len=8192) for tp in (1, 4))
    # "Model loading took 13.1665 GB" (GiB) on every rank at TP 4 (vllm-project/vllm #15676, #16378);
    # "model weights take 6.74GiB" at TP 8 (#15766)
    assert abs(four.non_kv.get("weights") / GiB - 13.1665) < 0.1
    with calibrated(SYN):
        eight = engine_plan(gemma, "8xH100-80GB", "tp8", engine="vllm", version="v0", max_model_len=8192)
    assert abs(eight.non_kv.get("weights") / GiB - 6.74) < 0.1
    # the rank holds a quarter of the split matrices and all of the rest
    stage = geometry(gemma, Layout(tensor=4)).stages[0].weight_bytes
    assert four.non_kv.get("weights") == stage + 288 * MiB - (411_279_984 - 411_279_984 // 4) * 2
    assert one.non_kv.get("weights") == geometry(gemma, Layout()).stages[0].weight_bytes + 288 * MiB
    # cpu_offload_gb moves parameters only: past the shard, the rotary tables stay
    with calibrated(SYN):
        offloaded = engine_plan(gemma, "4xH100-80GB", "tp4", engine="vllm", version="0.9", max_model_len=8192,
                                cpu_offload_gb=100)
    assert offloaded.non_kv.get("weights") == 288 * MiB


def test_vision_encoder_shapes_from_the_configs():
    # Gemma 3: one 896² image, (896 / 14)² = 4,096 SigLIP positions, pooled to mm_tokens_per_image = 256;
    # SigLIP's MLP holds fc1's output and its GELU (2 × 4,304) at its peak
    gemma = load_preset("gemma-3-27b")
    assert (gemma.vision_hidden_size, gemma.vision_mlp_width, gemma.vision_patches_per_item,
            gemma.vision_tokens_per_item, gemma.vision_pixels_per_item) == (1152, 8608, 4096, 256, 3 * 896**2)
    # Pixtral (Mistral Small 3.1): one 1540² image, 110² positions merged 2 × 2 → 55² embeddings;
    # a gated MLP holds gate_up (2 × 4,096) and the product (4,096)
    pixtral = load_preset("mistral-small-3.1-24b")
    assert (pixtral.vision_mlp_width, pixtral.vision_patches_per_item, pixtral.vision_tokens_per_item) == \
        (3 * 4096, 110**2, 55**2)
    # Llama 4: 16 tiles + the global one, each 24² positions + a class token, pixel-shuffled by
    # 0.5 → 144 embeddings a tile
    maverick = load_preset("llama-4-maverick")
    assert (maverick.vision_patches_per_item, maverick.vision_tokens_per_item,
            maverick.vision_pixels_per_item) == (17 * 577, 17 * 144, 17 * 3 * 336**2)
    # Qwen2.5-VL: the processor's max_pixels 12,845,056 = 16,384 merged 28 × 28 patches (3584²),
    # 256² = 65,536 ViT positions of 3 channels × 2 frames × 14² pixels; a gated MLP (3 × 3,420)
    qwen_vl = load_hf_config(Path(__file__).parent / "model_configs" / "Qwen__Qwen2.5-VL-7B-Instruct.json")
    assert (qwen_vl.vision_hidden_size, qwen_vl.vision_mlp_width, qwen_vl.vision_patches_per_item,
            qwen_vl.vision_tokens_per_item, qwen_vl.vision_pixels_per_item) == \
        (1280, 3 * 3420, 256**2, 128**2, 256**2 * 3 * 2 * 14**2)
    assert load_preset("llama-3.1-8b").vision_patches_per_item == 0  # text only


def test_encoder_items_as_vllm_batches_them():
    from estimator.engines.non_kv import encoder_items

    gemma = load_preset("gemma-3-27b")

    def items(version, batched, seqs=1024, limit=None, length=32768, model=gemma):
        return encoder_items(model, version, batched=batched, seqs=seqs, max_model_len=length, limit=limit)

    # V1 to 0.9: cdiv(max(max_num_batched_tokens, 256), 256), capped at max_num_seqs × limit (999 unset)
    assert items("0.9", 8192) == 32
    assert items("0.9", 2000) == 8
    assert items("0.9", 100) == 1
    assert items("0.9", 8192, seqs=4, limit=1) == 4
    # from 0.10: floor, per prompt min(limit, max_model_len // 256), at least one
    assert items("0.10", 2000) == 7
    assert items("0.17", 8192, seqs=2, length=1024) == 2 * 4
    assert items("0.33", 8192, limit=0) == 0  # text only
    # V0: one image in each of min(max_num_seqs, max_num_batched_tokens // 256) dummy sequences
    assert items("v0", 32768, seqs=256) == 128
    assert items("v0", 100, seqs=256) == 1
    # Pixtral's 3,025 embeddings: cdiv 3 before 0.10, floor 2 after
    pixtral = load_preset("mistral-small-3.1-24b")
    assert (items("0.9", 8192, model=pixtral), items("0.10", 8192, model=pixtral)) == (3, 2)
    assert items("0.10", 8192, model=load_preset("llama-3.1-8b")) == 0


def test_dummy_encoder_run_by_hand():
    from estimator.engines.non_kv import encoder_peak_bytes

    gemma = load_preset("gemma-3-27b")
    # per SigLIP position, bf16: attention 3 × 1152 + 4 × 1152 / tp; MLP 2 × 1152 + 8,608 / tp
    pixels = 3 * 896**2
    assert encoder_peak_bytes(gemma, 1, 32) == (32 * 2 * (pixels + 4096 * 10_912), 32 * 256 * 5376 * 2)
    assert encoder_peak_bytes(gemma, 8, 32)[0] == 32 * 2 * (pixels + 4096 * (3 * 1152 + 4 * 144))
    # vLLM 0.10 on one H100 with FlashInfer: 8,192 batched tokens → 32 images, 2.80 GiB, above the
    # outputs (64 MiB kept through the language model's run) plus the FlashInfer sampler's 1024 ×
    # 262,208 × 10 B beside the 8,192 tokens' hidden states (8192 × 5376 × bf16 = 84 MiB)
    peak, outputs = 32 * 2 * (pixels + 4096 * 10_912), 32 * 256 * 5376 * 2
    with calibrated(SYN):
        plan = engine_plan(gemma, "1xH100-80GB", engine="vllm", version="0.10", max_model_len=32768,
                           use_flashinfer_sampler=True)
        text = engine_plan(gemma, "1xH100-80GB", engine="vllm", version="0.10", max_model_len=32768,
                           limit_mm_per_prompt=0, use_flashinfer_sampler=True)
        sorted_ = engine_plan(gemma, "1xH100-80GB", engine="vllm", version="0.11", max_model_len=32768)
    assert plan.non_kv.get("activation") == peak
    hidden = 8192 * 5376 * 2
    assert text.non_kv.get("activation") == hidden + 1024 * 262_208 * 10
    # 0.11's sort (38 B a logit) outweighs the encoder; the cached outputs sit on top of it
    assert sorted_.non_kv.get("activation") == outputs + hidden + 1024 * 262_208 * 38
    with pytest.raises(InputError, match="limit_mm_per_prompt"):
        engine_plan(gemma, "1xH100-80GB", engine="vllm", limit_mm_per_prompt=-1)


def test_bad_pixel_shuffle_ratio_is_refused():
    from estimator.model.hf_config import spec_from_hf_config

    path = Path(__file__).parent / "model_configs" / "meta-llama__Llama-4-Maverick-17B-128E-Instruct.json"
    config = json.loads(path.read_text())
    for bad in ("half", 0, 2, True):
        config["vision_config"]["pixel_shuffle_ratio"] = bad
        with pytest.raises(InputError, match="pixel_shuffle_ratio"):
            spec_from_hf_config(config)


def test_v0_gives_each_image_its_own_dummy_sequence():
    # V0 (vllm/worker/model_runner.py profile_run), Gemma 3 27B at TP 8, 8,192 batched tokens:
    # min(256, 8192 // 256) = 32 sequences of one image each. Encoder 32 × 2 × (3 · 896² + 4096 ×
    # (3 · 1152 + 4 · 144)) = 1,211,105,280 B beats the forward pass (8192 × 2 × (3 · 5376 + 3 ·
    # 21504 / 8) = 396,361,728 B) and the sampler over those 32 rows (× 262,208 × 50 B = 419,532,800 B)
    gemma = load_preset("gemma-3-27b")
    with calibrated(SYN):
        images = engine_plan(gemma, "8xH100-80GB", "tp8", engine="vllm", version="v0", max_model_len=8192)
        text = engine_plan(gemma, "8xH100-80GB", "tp8", engine="vllm", version="v0", max_model_len=8192,
                           limit_mm_per_prompt=0)
    assert images.non_kv.get("activation") == 1_211_105_280
    # text only: 256 dummy sequences, and the sort over 256 × 262,208 logits (38 B) is the peak,
    # beside the 8,192 tokens' hidden states V0 samples next to (8192 × 5376 × bf16)
    assert text.non_kv.get("activation") == 256 * 262_208 * 38 + 8192 * 5376 * 2


def test_v0_pipeline_stages_share_the_shrunk_dummy_batch():
    # V0 shrinks max_num_seqs for the whole engine, so the last stage's sampler sees the 8 image
    # sequences of 2,048 batched tokens (2048 // 256), not 256 rows. On that stage (TP 4) the
    # forward pass, 2048 × 2 × (3 · 5376 + 3 · 21504 / 4) = 132,120,576 B, beats those 8 rows
    # (8 × 262,208 × 50 B, beside 2048 × 5376 × 2 B of hidden states); text only, 256 rows are
    # sorted: 256 × 262,208 × 38 = 2,550,759,424 B beside the same 22,020,096 B
    gemma = load_preset("gemma-3-27b")
    with calibrated(SYN):
        images, text = (engine_plan(gemma, "8xH100-80GB", "pp2xtp4", engine="vllm", version="v0",
                                    max_model_len=2048, **knobs) for knobs in ({}, {"limit_mm_per_prompt": 0}))
    last = [(a["non_kv_bytes"], b["non_kv_bytes"]) for a, b in zip(images.devices, text.devices, strict=True)
            if a["stage"] == 1]
    assert last and all(t - i == 2_550_759_424 + 22_020_096 - 132_120_576 for i, t in last)


def test_v0_profiles_qwen2_5_vl_with_an_image_and_a_video_in_one_uncut_prompt():
    from estimator.engines.non_kv import encoder_items, v0_dummy_sequences

    qwen_vl = load_hf_config(Path(__file__).parent / "model_configs" / "Qwen__Qwen2.5-VL-7B-Instruct.json")
    # vLLM V0 logs of Qwen2.5-VL (vllm-project/vllm #15802, 7B): "Computed max_num_seqs (min(64, 16384
    # // 32768)) to be less than 1" and "32768 tokens in total, out of which {'image': 16384, 'video':
    # 16384} are reserved for multi-modal embeddings"; with limit_mm_per_prompt={'image': 10}
    # (vllm-project/vllm-ascend #622, 72B, vLLM 0.8.4 V0) "min(256, 32768 // 180224)" and "{'image':
    # 163840, 'video': 16384}"
    assert v0_dummy_sequences(qwen_vl, 16384, 64, 1) == (1, 32768)
    assert v0_dummy_sequences(qwen_vl, 32768, 256, 10) == (1, 180224)
    assert encoder_items(qwen_vl, "v0", batched=16384, seqs=64, max_model_len=32768, limit=None) == 2
    # V1 profiles one modality: budget max(8192, 16384) // 16384 = 1 image
    assert encoder_items(qwen_vl, "0.10", batched=8192, seqs=256, max_model_len=32768, limit=None) == 1
    # so the language model's dummy forward covers all 32,768 embeddings, not the 8,192 batched
    # tokens: 32768 × 2 B × (3 · 3584 + 3 · 18944) beats the tower's two items (2 · 2 B · (77,070,336
    # pixel values + 65,536 positions × (2 · 1280 + 3 · 3420)) = 3,668,967,424 B)
    with calibrated(SYN):
        p = engine_plan(qwen_vl, "1xH100-80GB", engine="vllm", version="v0", max_model_len=8192)
    assert p.non_kv.get("activation") == 32768 * 2 * (3 * 3584 + 3 * 18944)


# ----------------------------------------------------------------------------- the sampler's kernel
QWEN3_8B_LOGITS = 256 * 151_936  # A100-40GB class: 256 rows (max_num_seqs) × Qwen3's vocabulary


@pytest.mark.parametrize(("version", "flashinfer", "per_logit"), [
    ("0.10", True, 10),  # FlashInfer installed (the official image): probabilities in fp32
    ("0.10", None, 2 + 4 + 4 + 8 + 8 + 12),  # pip's vLLM 0.10 has no FlashInfer: the native sort
    ("0.10", False, 2 + 4 + 4 + 8 + 8 + 12),
    ("0.11", True, 10),  # opted in (VLLM_USE_FLASHINFER_SAMPLER=1)
    ("0.17", False, 2 + 4 + 4 + 4),  # FlashInfer off from 0.17: the Triton kernel at ≥ 8 rows
    ("0.2x", False, 2 + 4 + 4 + 4),
])
def test_the_sampler_kernel_a_log_names_sets_the_activation(version, flashinfer, per_logit):
    # Qwen3-8B on an A100-40GB: the 2048-token dummy forward (< 0.2 GiB) is below every sampler peak
    plan = engine_plan("qwen3-8b", "1xA100-40GB", engine="vllm", version=version,
                       use_flashinfer_sampler=flashinfer)
    hidden = 2048 * 4096 * 2  # the dummy forward's hidden states stay alive through the sampler run
    assert plan.non_kv.get("activation") == QWEN3_8B_LOGITS * per_logit + hidden


def test_the_v0_engine_has_no_sampler_knob():
    with pytest.raises(InputError, match="use_flashinfer_sampler"):
        engine_plan("qwen3-8b", "1xA100-40GB", engine="vllm", version="v0", use_flashinfer_sampler=True)


def test_v1_before_0_9_1_counts_the_whole_device_as_non_torch():
    # 0.8.0–0.9.0: non-torch = mem_get_info total − free − torch allocated: the CUDA context (0.5 GiB
    # central) and another process's 3 GiB join the base (0.25 GiB here); no start-up refusal either
    from meshes import DeviceMesh

    busy = DeviceMesh.from_preset("1xH100-80GB", bytes_in_use=3 * GiB)
    with calibrated(SYN):
        old = engine_plan("llama-3.1-8b", busy, engine="vllm", version="0.9", max_model_len=8192)
        new = engine_plan("llama-3.1-8b", busy, engine="vllm", version="0.10", max_model_len=8192)
        pinned = engine_plan("llama-3.1-8b", busy, engine="vllm", version="0.9", max_model_len=8192,
                             context_bytes=GiB)
    assert old.non_kv.get("non_torch") == GiB // 4 + GiB // 2 + 3 * GiB and old.starts
    assert pinned.non_kv.get("non_torch") == GiB // 4 + GiB + 3 * GiB
    assert new.non_kv.get("non_torch") == GiB // 4  # a snapshot after the context sees neither


def test_fused_moe_workspaces_and_chunk_by_release():
    # Qwen3-30B-A3B (hidden K 2048, expert I 768, top-8; attention 2 × 32 × 128 + 2 × 4 × 128 = 9,216)
    from estimator.engines.non_kv import forward_bytes, forward_bytes_per_token, fused_moe_chunk_size

    model = load_preset("qwen3-30b-a3b")
    # fused_experts_impl (≤ 0.13): caches max(2I, K) + I per routed token → 8 × (2048 + 768)
    assert forward_bytes_per_token(model, 1, 4) == 2 * (3 * 2048 + 8 * (2048 + 768)) == 57_344
    # TritonExperts (from 0.14): max(I, K) + max(2I, K) → 8 × (2048 + 2048)
    modular = forward_bytes_per_token(model, 1, 4, modular_moe=True)
    assert modular == 2 * (3 * 2048 + 8 * (2048 + 2048)) == 77_824
    dense = 2 * (3 * 2048 + 9216)  # without the experts: the attention projections are the peak
    assert [fused_moe_chunk_size(r) for r in ((0, 11, 1), (0, 12, 0), (0, 17, 1), (0, 18, 0))] == \
        [32768, 16384, 16384, None]
    assert forward_bytes(model, 1, 4, 65536, moe_chunk=16384, modular_moe=True) == \
        65536 * dense + 16384 * (modular - dense)
    assert forward_bytes(model, 1, 4, 65536, moe_chunk=None, modular_moe=True) == 65536 * modular
    with calibrated(SYN):
        late = engine_plan(model, "1xH100-80GB", engine="vllm", version="0.19.1", max_model_len=32768,
                           max_num_batched_tokens=65536, max_num_seqs=16)
    assert late.non_kv.get("activation") == 65536 * modular  # no chunk, beyond the 16-row sampler


def test_v0_11_pads_each_dummy_encoder_output_to_the_encoder_budget():
    # vllm 0.11.0–0.11.1 profile_run: each of the 32 image outputs (256 × 5376) is copied into
    # new_zeros((encoder_budget, hidden)) with the budget at 8,192 tokens, and held through the
    # language model's dummy run; 0.12.0 holds them as they are. Nothing else differs between the two
    gemma = load_preset("gemma-3-27b")
    with calibrated(SYN):
        padded, plain = (engine_plan(gemma, "1xH100-80GB", engine="vllm", version=v, max_model_len=32768)
                         for v in ("0.11.1", "0.12.0"))
    assert padded.non_kv.get("activation") - plain.non_kv.get("activation") == 32 * (8192 - 256) * 5376 * 2
