"""The analytic model of what a serving engine holds besides the KV cache, per device, with bands.

Engines measure this at start-up (vLLM: a dummy forward pass, a dummy sampler run and a dummy
CUDA-graph capture; TRT-LLM: dummy requests through the executor) or hide it in a fixed reserve
(SGLang, tpu-inference). kvfit predicts it from the model, the parallel sizes and the batch knobs,
term by term, each term derived from the engine's code where the code fixes it, and says how sure
it is: every term is a ``Band`` (low, central, high) and the profiles carry the band into KV tokens.

Terms (bytes on one device):

- ``weights``: the device's weight shard (estimator.core.geometry) less the vision-tower matrices
  vLLM and SGLang split over the tensor group (``vision_split_bytes``), plus the rotary cos/sin
  caches they keep beside the weights (one ``[positions, rotary_dim]`` table in the model dtype
  per distinct rotary embedding, positions as its scaling builds them: ``rotary_cache_bytes``,
  vllm/model_executor/layers/rotary_embedding ``get_rope``), plus LoRA's stacked adapter slots
  when LoRA is enabled (``lora_slot_bytes``), plus the padding vLLM's MXFP4 MoE kernels add to
  expert weights (``mxfp4_padding_bytes``). Exact.
- ``activation``: the profile pass's transient torch peak. For a multimodal model vLLM first runs
  the vision encoder over a dummy batch of its largest images (``encoder_items``: as many as the
  encoder budget of max_num_batched_tokens embeddings holds) and keeps their embeddings cached
  through the rest (V1); the encoder's own peak is its pixel tensors plus one ViT layer's live
  tensors per position (``encoder_peak_bytes``). Then the larger of
  * forward (``forward_bytes_per_token`` × batched tokens): the live tensors of one decoder layer
    — 3 hidden-wide buffers (residual, normed input, layer output), the attention projections
    (q/k/v and the attention output) or the MLP (gate/up output and the activated product); for
    MoE layers the fused-MoE workspaces ``workspace13 = (M, top_k, max(2N, K))`` and
    ``workspace2 = (M, top_k, N)`` with ``M = min(tokens, VLLM_FUSED_MOE_CHUNK_SIZE)``
    (vllm/model_executor/layers/fused_moe/fused_moe.py ``TritonExperts.workspace_shapes``,
    vllm/envs.py ``VLLM_FUSED_MOE_CHUNK_SIZE`` = 32768);
  * sampler: the dummy sampler run over ``min(max_num_seqs, max_num_batched_tokens)`` rows × the
    vocabulary (vllm/v1/worker/gpu_model_runner.py ``GPUModelRunner._dummy_sampler_run``: logits
    in the model dtype, cast to fp32 by ``Sampler``; the dummy metadata sets ``top_p=0.9,
    top_k=vocab−1`` and asks no logprobs). Bytes per logit (``sampler_bytes_per_logit``) by the
    top-k/top-p path. Both native paths — V0's (vllm/model_executor/layers/sampler.py
    ``_apply_top_k_top_p``) and V1's (vllm/v1/sample/ops/topk_topp_sampler.py
    ``apply_top_k_top_p``) — sort the fp32 logits, and the sort is their peak
    (``torch_sort_sampler_bytes``): bf16 logits 2 + fp32 logits 4 + the sorted values 4 and int64
    indices 8 + what PyTorch's stable sort allocates meanwhile (aten/src/ATen/native/cuda/
    SortStable.cu): with ≥ 128 rows ``segmented_sort_pairs``, an int64 index row 8 + cub's alternate
    key and value buffers 4 + 8 = 38 B (vllm PR #33538 measures PyTorch's path at 5.00 GB for
    1024 × 131,072 fp32 logits, 37 B a logit where 36 B are modelled beside the bf16 copy); with 2–127 rows
    ``segmented_sort_pairs_by_full_sort``, two int2 arrays 16 + a key buffer 4 + cub's 4 + 8 = 50 B.
    After the sort V1 keeps every intermediate until its final ``scatter``, 28 B, below the sort.
    The FlashInfer kernel (``VLLM_USE_FLASHINFER_SAMPLER``) keeps the bf16 logits, the fp32 copy
    and fp32 probabilities, 10 B (public H100 V1 logs of Llama-3.1-8B at max_num_seqs 1024 print
    1.21–1.24 GiB of activation peak: 1024 × 128,256 × 10 B = 1.22 GiB); vLLM's Triton kernel
    (PR #33538; vllm/v1/sample/ops/topk_topp_triton.py ``apply_top_k_top_p_triton``) masks the fp32
    logits in place, so its peak is ``random_sample`` after it: bf16 logits 2 + fp32 logits 4 + fp32
    probabilities 4 + the fp32 exponential noise 4 = 14 B (``TRITON_SAMPLER_BYTES``), beside a
    cached ``[min(SMs, rows), vocab]`` fp32 buffer (≤ 4 B a logit, left to the band).
    Which path a release takes by default is ``sampler_bytes_per_logit``.
- ``non_torch``: memory the process gains outside the torch allocator:
  * a base (cuBLAS/cuDNN workspaces, CUDA module loading), calibration.json ``non_torch_base_gib``;
  * with tensor parallelism, the custom all-reduce buffers — ``meta_size() + max_size``
    (uncached) + ``max_size`` (IPC buffer) + 8 MiB ``rank_data``, ``max_size`` = 8 MiB
    (vllm/distributed/device_communicators/custom_all_reduce.py ``CustomAllreduce.__init__``;
    only for world sizes 2, 4, 6, 8, and beyond 2 only on fully connected NVLink) — and the NCCL
    communicators' channel buffers (NCCL sizes them from its topology search, not from anything
    vLLM passes, so this one is fitted per version family and interconnect: calibration.json
    ``nccl_tp_gib``). How much of it a version charges depends on where its baseline snapshot
    sits: current V1 snapshots right after ``init_worker_distributed_environment``
    (vllm/v1/worker/gpu_worker.py ``Worker.init_device``), so only what NCCL sets up lazily at the
    first collectives of the profile run counts; V0 before PR #10511 charged free-memory
    differences, NCCL included (PR #2031); the public V0 0.6.5–0.8 TP logs print 0.2–0.43 GiB;
  * with pipeline parallelism only the point-to-point communicator of the PP group
    (``nccl_pp_gib``) — a PP run holds no tensor-parallel buffers.
- ``cuda_graph``: the dummy CUDA-graph capture vLLM subtracts from 0.20.0 (PR #38284; its log says v0.21)
  (vllm/v1/worker/gpu_model_runner.py ``profile_cudagraph_memory``, PR #30515; on by default
  through ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS``) as a function of the capture sizes
  (``capture_graph_band``): the largest capture's activations plus a fitted per-graph cost for
  every further size of the PIECEWISE and FULL modes; TRT-LLM a constant per GPU class.
- ``context``: the CUDA context and libraries already resident when an engine reads free memory
  (SGLang, TRT-LLM measure free memory, so this comes off their budget; vLLM's budget is a share
  of total memory and ignores it).
- ``residual``: what the terms above do not explain, as a band only (central 0): the
  leave-one-out error quantiles of the calibration corpus (benchmarks/engine_calibration.py), so
  the token band holds on logs the constants were not fitted on.

Fitted numbers live in one file, estimator/engines/calibration.json, written by
``python benchmarks/engine_calibration.py --fit`` from the start-up logs under tests/engine_logs/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from estimator.model.spec import RECURRENT_TYPES, ModelSpec
from meshes.catalog import GiB, MiB

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")


@dataclass(frozen=True)
class Band:
    """A quantity with its uncertainty: low ≤ central ≤ high (bytes or tokens)."""

    low: int
    central: int
    high: int

    @classmethod
    def exact(cls, value: int) -> Band:
        return cls(value, value, value)

    @classmethod
    def of(cls, low: float, central: float, high: float) -> Band:
        return cls(int(low), int(central), int(high))

    def scaled(self, factor: float) -> Band:
        return Band(int(self.low * factor), int(self.central * factor), int(self.high * factor))

    def __add__(self, other: Band) -> Band:
        return Band(self.low + other.low, self.central + other.central, self.high + other.high)

    def pick(self, which: str) -> int:
        return getattr(self, which)

    def to_dict(self) -> dict[str, int]:
        return {"low": self.low, "central": self.central, "high": self.high}


@dataclass(frozen=True)
class Term:
    """One non-KV term on one device, with where its number comes from."""

    name: str
    band: Band
    source: str
    measured: bool = False  # pinned by the caller (a logged value), not modelled


@dataclass(frozen=True)
class NonKV:
    """The non-KV terms an engine subtracts on one device."""

    terms: tuple[Term, ...]

    def total(self, which: str = "central", names: Iterable[str] | None = None) -> int:
        wanted = set(names) if names is not None else None
        return sum(t.band.pick(which) for t in self.terms if wanted is None or t.name in wanted)

    def band(self) -> Band:
        return Band(self.total("low"), self.total("central"), self.total("high"))

    def get(self, name: str) -> int:
        return next((t.band.central for t in self.terms if t.name == name), 0)

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {t.name: {**t.band.to_dict(), "source": t.source, "measured": t.measured}
                for t in self.terms}


# ----------------------------------------------------------------------------- calibration
@cache
def _load_calibration() -> Mapping[str, Any]:
    with CALIBRATION_PATH.open(encoding="utf-8") as f:
        return json.load(f)


_ACTIVE: list[Mapping[str, Any]] = []


def calibration() -> Mapping[str, Any]:
    """The fitted constants in force: estimator/engines/calibration.json (read once), or the set a
    ``calibrated(...)`` block installs (leave-one-out refits in benchmarks/engine_calibration.py)."""
    return _ACTIVE[-1] if _ACTIVE else _load_calibration()


@contextmanager
def calibrated(data: Mapping[str, Any]) -> Iterator[None]:
    """Use ``data`` (calibration.json's shape) instead of the file inside the block."""
    _ACTIVE.append(data)
    try:
        yield
    finally:
        _ACTIVE.pop()


def fitted(engine: str, key: str, *path: str) -> Any:
    """One fitted constant: ``calibration()["constants"][engine][key][path...]`` (a level without
    the key falls back to its "default" entry; a plain number answers every path)."""
    value = calibration()["constants"][engine][key]
    for p in path:
        if not isinstance(value, Mapping):
            break
        value = value[p] if p in value else value["default"]
    return value


CALIBRATION_SOURCE = "fitted: estimator/engines/calibration.json (benchmarks/engine_calibration.py --fit)"

# ----------------------------------------------------------------------------- hardware classes
# GPU classes follow vLLM's batch defaults (vllm/engine/arg_utils.py ``EngineArgs._set_default_args``:
# default max_num_batched_tokens / max_num_seqs by device memory): "large" ≥ 160 GiB, "hbm" ≥ 70 GiB
# and not an A100, "other" for the rest.
GPU_CLASSES = ("large", "hbm", "other")
# PCIe cards (an H100 NVL pair-bridge is not a fully connected NVLink group either)
_PCIE = re.compile(r"pcie|rtx|geforce|quadro|consumer|\bnvl\b|\b(?:t4|l4|l40s?|l20|a10g?|a40|a30|a16|a2|a4000|a6000)\b")


def gpu_class(total_bytes: int, device_kind: str = "") -> str:
    """vLLM's GPU class for batch defaults."""
    if total_bytes >= 160 * GiB:
        return "large"
    if total_bytes >= 70 * GiB and "a100" not in device_kind.lower():
        return "hbm"
    return "other"


def interconnect(device_kind: str) -> str:
    """"nvlink" for SXM/OAM parts (NVLink/NVSwitch, Infinity Fabric), "pcie" for PCIe cards."""
    return "pcie" if _PCIE.search(device_kind.lower()) else "nvlink"


# ----------------------------------------------------------------------------- activation
# vllm/envs.py VLLM_FUSED_MOE_CHUNK_SIZE default: 32768 up to 0.11.x, 16384 from 0.12.0; from 0.18.0 the
# variable is gone and the experts run over every token at once (``fused_moe_chunk_size``)
FUSED_MOE_CHUNK_SIZE = 32768


def fused_moe_chunk_size(release: tuple[int, int, int]) -> int | None:
    """vLLM's fused-MoE chunk of a release (tokens; None: not chunked)."""
    if release >= (0, 18, 0):
        return None
    return 16384 if release >= (0, 12, 0) else FUSED_MOE_CHUNK_SIZE
# (low, central, high) bytes per logit of the dummy sampler run (module docstring); the native
# paths' central is the sort's peak, torch_sort_sampler_bytes; low: FlashInfer's 8–10 B or the
# Triton kernel's 14 B where a build takes them (0.8.x Docker images ship FlashInfer < 0.2.3)
NATIVE_SAMPLER_BAND = (8, 2)  # (low, high − central)
FULL_SORT_ROWS = 128  # fewer rows: PyTorch sorts them as one array (SortStable.cu)
LARGE_SEGMENT = 1_000_000  # a vocabulary this long is sorted row by row


def torch_sort_sampler_bytes(rows: int, vocab: int) -> int:
    """Peak bytes per logit of the native top-k/top-p sampler: during ``logits.sort`` (module
    docstring; PyTorch aten/src/ATen/native/cuda/SortStable.cu ``do_launch_stable_sort_kernel``
    picks the algorithm by row count and row length)."""
    held = 2 + 4 + 4 + 8  # bf16 logits, fp32 logits, sorted values, int64 indices
    if rows <= 1:  # segmented_sort_large_segments: an int64 index row, cub's key and value buffers
        return held + 8 + 12
    if vocab >= LARGE_SEGMENT:  # sorted row by row: one row's buffers; V1 holds 28 B at its scatter
        return 28
    if rows < FULL_SORT_ROWS:  # two int2 index/segment arrays, a key buffer, cub's key + int2 buffers
        return held + 16 + 4 + 12
    return held + 8 + 12  # int64 reverse indices, cub's alternate key and value buffers


# FlashInfer kernel (low, central, high); high: the native sort (≥ 128 rows) a build without
# FlashInfer falls back to. SGLang, TRT-LLM and tpu-inference take this tuple as it is
FLASHINFER_SAMPLER_BYTES = (8, 10, torch_sort_sampler_bytes(FULL_SORT_ROWS, 0) + NATIVE_SAMPLER_BAND[1])


# vLLM's Triton top-k/top-p masking (module docstring): bf16 + fp32 logits, probabilities, noise;
# the band's top adds its [min(SMs, rows), vocab] fp32 buffer at its largest, 4 B a logit
TRITON_SAMPLER_BYTES = 2 + 4 + 4 + 4
TRITON_BUFFER_BYTES = 4
# apply_top_k_top_p sends a batch to the Triton kernel from this many rows and sorts smaller ones
# (vllm PR #54651 describes and removes this ``batch >= 8`` gate, 2026-09)
TRITON_MIN_ROWS = 8


# The default top-k/top-p path of each V1 release (vllm-project/vllm
# vllm/v1/sample/ops/topk_topp_sampler.py ``TopKTopPSampler.__init__`` and ``apply_top_k_top_p``, as
# the release wheels ship them). FlashInfer's kernel runs where FlashInfer is installed and the
# release enables it; the official image ships FlashInfer (0.8.x: 0.2.1.post2, which 0.8.x uses by
# default), the wheel depends on it only from 0.11.1 (a plain pip install logs "FlashInfer is not
# available. Falling back to the PyTorch-native implementation"). Where it is off, the native
# path sorts until 0.16 and runs PR #33538's Triton kernel at ≥ 8 rows from 0.17.0 (vllm main at
# 0.16.0rc2.dev377, issue #35390, fails inside it during ``_dummy_sampler_run``; topk_topp_triton.py
# is in neither 0.15.1 nor 0.16.0). By release:
# - 0.8.0–0.9.0 ("0.9"): FlashInfer where installed (FlashInfer < 0.2.3 in 0.8.x; PR #14815 only
#   switched off ≥ 0.2.3, and PR #15777 adapted 0.9.0 to it);
# - 0.9.1–0.10.x ("0.10") and 0.11.0: FlashInfer where installed;
# - 0.11.1–0.16 ("0.11"): native — PR #26859 ("Disable FlashInfer sampler by default") made it opt-in;
# - 0.17–0.20 ("0.17", "0.2x" up to 0.20.x): the Triton kernel;
# - 0.21 on ("0.2x", "0.33"): FlashInfer by default again (PR #40376).
# The central value is the release's default as ``pip install vllm`` (the install vLLM's docs lead
# with) runs it: the wheels list flashinfer-python only as the "flashinfer" extra up to 0.11.0 and as a
# dependency from 0.11.1 (the wheels' METADATA), so 0.8.0–0.11.0 sort natively there, and the official
# image's FlashInfer is the band's low end. Logs say which ran (``use_flashinfer_sampler``); in the
# corpus, 11 of the 18 0.8.0–0.11.0 V1 logs that say which ran warn that FlashInfer is absent (9 of the 11
# sources; one shows both).
TRITON_KERNEL_V1 = ("0.17", "0.2x", "0.33")  # where FlashInfer is off, the native path runs the kernel


def flashinfer_by_default(version: str, release: tuple[int, int, int] | None = None) -> bool:
    """Whether a V1 release runs FlashInfer's top-k/top-p kernel as ``pip install vllm`` sets it up:
    the release enables it where installed (the table above) and its wheel installs FlashInfer (from
    0.11.1). ``release`` refines a family that changed inside it."""
    if version == "0.33":
        return True
    if version == "0.2x":
        return release is None or release >= (0, 21, 0)
    return False


def sampler_bytes_per_logit(version: str, rows: int, vocab: int, flashinfer: bool | None = None,
                            release: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """(low, central, high) peak bytes per logit of the dummy sampler run of a vLLM version over
    ``rows`` × ``vocab`` logits. ``flashinfer``: whether FlashInfer's top-k/top-p kernel runs (the
    start-up log prints "Using FlashInfer for top-p & top-k sampling" or "Falling back to the
    PyTorch-native implementation"); None: the release's default, the other path in the band."""
    native = torch_sort_sampler_bytes(rows, vocab)
    if version.startswith("v0"):  # V0's sampler sorts (FlashInfer only by VLLM_USE_FLASHINFER_SAMPLER)
        return NATIVE_SAMPLER_BAND[0], native, native + NATIVE_SAMPLER_BAND[1]
    kernel = (FLASHINFER_SAMPLER_BYTES[0], FLASHINFER_SAMPLER_BYTES[1], FLASHINFER_SAMPLER_BYTES[1])
    if version in TRITON_KERNEL_V1 and rows >= TRITON_MIN_ROWS:
        fallback = (TRITON_SAMPLER_BYTES, TRITON_SAMPLER_BYTES, TRITON_SAMPLER_BYTES + TRITON_BUFFER_BYTES)
    else:
        fallback = (native, native, native + NATIVE_SAMPLER_BAND[1])
    if flashinfer is not None:
        return kernel if flashinfer else fallback
    if flashinfer_by_default(version, release):
        return kernel[0], kernel[1], fallback[2]
    return kernel[0], fallback[1], fallback[2]


def model_runner_v2(release: tuple[int, int, int], model: ModelSpec) -> bool:
    """Whether a V1 release profiles with Model Runner V2 (vllm/v1/worker/gpu/model_runner.py) by
    default (vllm/config/vllm.py ``use_v2_model_runner``): from 0.29.0 for every model, in
    0.25–0.28 for dense decoders (not MoE, not Mamba-hybrid); before 0.25 only a few named
    architectures (left out here)."""
    if release >= (0, 29, 0):
        return True
    hybrid = any(kind in RECURRENT_TYPES for kind in model.layer_types)
    return release >= (0, 25, 0) and not model.is_moe and not hybrid


def mrv2_sampler_bytes_per_logit(release: tuple[int, int, int],
                                 flashinfer: bool | None) -> tuple[int, int, int]:
    """(low, central, high) bytes per logit of Model Runner V2's dummy sampler run: from 0.33.0 a
    second pass with ``SamplingParams.for_sampler_warmup()`` runs FlashInfer's top-k/top-p (on by
    default: bf16 logits 2 + fp32 copy 4 + FlashInfer's masked copy 4 + its probabilities 4 = 14 B)
    or, without FlashInfer, the in-place Triton mask (2 + 4 = 6 B); 0.26–0.32 run the greedy pass
    alone over the bf16 logits (2 B); 0.25 copies them to fp32 first (6 B)."""
    if release >= (0, 33, 0):
        if flashinfer is None:
            return 6, 14, 14
        return (14, 14, 14) if flashinfer else (6, 6, 6)
    per = 2 if release >= (0, 26, 0) else 6
    return per, per, per


def mrv2_sampler_state_bytes(seqs: int, vocab: int) -> int:
    """Penalty state Model Runner V2's sampler allocates at construction (vllm/v1/worker/gpu/sample/
    penalties.py: ``output_bin_counts`` [max_num_reqs, vocab] int32 and ``prompt_bin_mask``
    [max_num_reqs, ⌈vocab / 32⌉] int32): after the weights are measured, persistent, so charged as
    non-KV from 0.27 (``total_consumed``)."""
    return seqs * (4 * vocab + 4 * -(-vocab // 32))


ACTIVATION_BAND = (0.9, 1.0, 1.35)


def activation_width(model: ModelSpec) -> int:
    """Bytes of one activation element: the model dtype, at least 2 (fp8 models run in bf16)."""
    return 4 if model.weight_bytes_per_param == 4 else 2


def forward_bytes_per_token(model: ModelSpec, tensor: int, kv_heads_per_shard: int, *,
                            moe: bool = True, modular_moe: bool = False) -> int:
    """Peak live bytes per batched token of one decoder layer on one tensor shard (``moe=False``:
    without the fused-MoE workspaces). ``modular_moe``: vLLM's bf16 MoE through the modular
    ``TritonExperts`` (from 0.14.0), whose workspaces are ``(M, top_k, max(I, K))`` and
    ``(M, top_k, max(2I, K))`` instead of ``fused_experts_impl``'s ``max(2I, K)`` and ``I``."""
    a = activation_width(model)
    h, tp = model.hidden_size, tensor
    q = model.num_attention_heads * (model.qk_nope_head_dim + model.qk_rope_head_dim
                                     if model.is_mla else model.head_dim)
    attention = 2 * -(-q // tp) + 2 * kv_heads_per_shard * model.head_dim
    mlp = 3 * -(-model.intermediate_size // tp) if model.has_dense_layers or not model.is_moe else 0
    if model.is_moe and moe:
        mi = -(-model.moe_intermediate_size // tp)
        second = max(mi, h) if modular_moe else mi  # workspace1 / intermediate cache 2
        moe = model.num_experts_per_token * (max(2 * mi, h) + second)
        mlp = max(mlp, moe)
    return a * (3 * h + max(attention, mlp))


def forward_bytes(model: ModelSpec, tensor: int, kv_heads_per_shard: int, tokens: int,
                  moe_gather: int = 1, *, moe_chunk: int | None = FUSED_MOE_CHUNK_SIZE,
                  modular_moe: bool = False) -> int:
    """Forward-pass peak of ``tokens`` batched tokens; the fused-MoE part is capped at one chunk
    (``moe_chunk``: VLLM_FUSED_MOE_CHUNK_SIZE, None where the release no longer chunks).

    ``moe_gather`` > 1: expert parallelism across that many data-parallel ranks with vLLM's default
    ("naive") all-to-all. Its dispatch gathers every DP rank's hidden states into one buffer
    (``NaiveAll2AllManager.naive_multicast``, vllm/distributed/device_communicators/all2all.py) and
    the fused experts then run over all gathered tokens (``FusedMoE.forward_impl``,
    vllm/model_executor/layers/fused_moe/layer.py; vllm-project/vllm v0.10.1). In the profile run
    every DP rank runs the same dummy batch, so the MoE sees ``tokens × moe_gather`` tokens, chunked
    at VLLM_FUSED_MOE_CHUNK_SIZE; the gathered hidden states and their combined output stay live.
    """
    per = forward_bytes_per_token(model, tensor, kv_heads_per_shard, modular_moe=modular_moe)
    moe_tokens = tokens * max(moe_gather, 1)
    chunk = moe_tokens if moe_chunk is None else moe_chunk
    if not model.is_moe or (moe_tokens <= chunk and moe_gather <= 1):
        return tokens * per
    dense = forward_bytes_per_token(model, tensor, kv_heads_per_shard, moe=False)
    gathered = 2 * (moe_tokens - tokens) * model.hidden_size * activation_width(model)
    return tokens * dense + min(moe_tokens, chunk) * max(per - dense, 0) + gathered


def rotary_cache_bytes(model: ModelSpec) -> int:
    """vLLM/SGLang rotary cos/sin caches: one [positions, rotary dim] table in the model dtype per
    distinct rotary embedding (``get_rope`` shares equal ones), positions as the scaling builds them
    (ModelSpec.rope_positions). R1: the 32 MiB between Llama-3.1-8B's 14.96 GiB of parameters and
    vLLM's 'weights take 14.99GiB'; Gemma 3 4B–27B hold 8 × 131,072 (linear scaling) + 131,072
    (local layers) positions."""
    dim = model.qk_rope_head_dim if model.is_mla else model.head_dim
    positions = sum(model.rope_positions) or model.max_position_embeddings
    return positions * dim * activation_width(model)


def vision_split_bytes(model: ModelSpec, tensor: int) -> int:
    """Bytes one tensor rank does not hold of the vision tower because vLLM and SGLang split its
    attention and MLP matrices over the tensor group (ModelSpec.vision_sharded_params) where kvfit's
    own layout replicates the tower."""
    split = model.vision_sharded_params
    return (split - split // tensor) * model.weight_bytes_per_param


def torch_param_bytes(model: ModelSpec, stage_weights: int, *, stage: int, tensor: int) -> int:
    """Parameters a PyTorch engine's rank of pipeline stage ``stage`` loads: kvfit's weight shard
    less the vision matrices it splits (the tower sits on the first stage). The rotary caches
    (``rotary_cache_bytes``) are buffers beside them."""
    return stage_weights - (vision_split_bytes(model, tensor) if stage == 0 else 0)


WEIGHTS_SOURCE = "estimator.core.geometry weight shard + rotary caches − TP-split vision matrices"


def encoder_items(model: ModelSpec, version: str, *, batched: int, seqs: int, max_model_len: int,
                  limit: int | None) -> int:
    """Images in vLLM ``version``'s dummy encoder run (0: nothing to profile), the largest each.

    The encoder budget is ``max(max_num_batched_tokens, tokens per image)`` embeddings
    (vllm/v1/core/encoder_cache_manager.py ``compute_encoder_budget``) and the per-prompt limit
    999 when ``--limit-mm-per-prompt`` leaves the image out (vllm/config ``MultiModalConfig
    .get_limit_per_prompt``: ``999 if envs.VLLM_USE_V1 else 1``); 0 leaves the modality, and the
    encoder run, out.
    - V1 to 0.9 (vllm/v1/worker/gpu_model_runner.py ``profile_run``): ``cdiv(budget, tokens per
      image)`` capped at ``max_num_seqs × limit``;
    - V1 from 0.10 (``MultiModalBudget.get_max_items``, vllm/v1/worker/utils.py, later
      vllm/multimodal/encoder_budget.py): ``budget // tokens per image`` capped at ``max_num_seqs ×
      max(1, min(limit, max_model_len // tokens per image))``, at least one;
    - V0 (vllm/worker/model_runner.py ``profile_run``): ``limit`` images (1 unset) and, for a model
      that takes videos, one largest video (V0's limit for it, sized like an image: ``vision_video``)
      in each of ``v0_dummy_sequences`` dummy sequences."""
    per = model.vision_tokens_per_item
    v0 = version.startswith("v0")
    limit = (1 if v0 else 999) if limit is None else limit
    if not (per and model.vision_patches_per_item and limit):
        return 0
    if v0:
        return v0_dummy_sequences(model, batched, seqs, limit)[0] * (limit + model.vision_video)
    budget = max(batched, per)
    if version == "0.9":
        return min(-(-budget // per), seqs * limit)
    return max(1, min(budget // per, seqs * max(1, min(limit, max_model_len // per))))


def v0_dummy_sequences(model: ModelSpec, batched: int, seqs: int, limit: int) -> tuple[int, int]:
    """(dummy sequences, tokens of the forward) of vLLM V0's multimodal profile run: each sequence
    carries ``limit`` largest images (and a largest video where the model takes videos), so their
    count is ``min(max_num_seqs, max_num_batched_tokens // those embeddings)``, at least one
    (vllm/worker/model_runner.py ``profile_run``: "Computed max_num_seqs ... to be less than 1");
    a prompt whose embeddings outgrow its share of max_num_batched_tokens is not cut (V0 only warns
    that "the sequence length used for profiling ... is too short to hold the multi-modal
    embeddings", vllm/multimodal/profiling.py), so the forward covers them all."""
    embeddings = (limit + model.vision_video) * model.vision_tokens_per_item
    sequences = max(1, min(seqs, batched // embeddings))
    return sequences, max(batched, sequences * embeddings)


def encoder_peak_bytes(model: ModelSpec, tensor: int, items: int, pad_to: int = 0) -> tuple[int, int]:
    """(peak, outputs) of the dummy encoder run over ``items`` images on one tensor rank: the pixel
    tensors in the model dtype plus, per encoder position, the larger of one ViT layer's attention
    (residual, normed input and the output projection's result, hidden-wide; q, k, v and the
    attention output split over the tensor group: vLLM builds them from QKV/Row-parallel layers,
    vllm/model_executor/models/siglip.py ``SiglipAttention``, pixtral.py, mllama4.py) and its MLP
    (residual and normed input beside the split MLP intermediates: ``vision_mlp_width``); the
    outputs are the embeddings V1 caches for the language model's dummy run
    (``encoder_cache["tmp"]``); ``pad_to``: each item's embeddings widened to that many rows
    (vLLM 0.11.0–0.11.1 ``profile_run`` scatters each output into ``new_zeros((encoder_budget,
    hidden))`` when it is shorter than the encoder budget)."""
    if not items:
        return 0, 0
    a, h, tp = activation_width(model), model.vision_hidden_size, tensor
    per_position = max(3 * h + 4 * -(-h // tp), 2 * h + -(-model.vision_mlp_width // tp))
    peak = items * a * (model.vision_pixels_per_item + model.vision_patches_per_item * per_position)
    return peak, items * max(model.vision_tokens_per_item, pad_to) * model.hidden_size * a


def activation_band(model: ModelSpec, *, tensor: int, kv_heads_per_shard: int, tokens: int,
                    sampler_rows: int, last_stage: bool = True,
                    sampler_bytes_per_logit: tuple[int, int, int] = FLASHINFER_SAMPLER_BYTES,
                    moe_gather: int = 1, images: int = 0, encoder_outputs_held: bool = True,
                    hidden_held: bool = False, moe_chunk: int | None = FUSED_MOE_CHUNK_SIZE,
                    modular_moe: bool = False, pad_encoder_outputs_to: int = 0) -> Band:
    """Transient activation peak of a profile pass, with its band: max(forward, sampler), and with
    a dummy encoder run of ``images`` (``encoder_items``; on the stage holding the tower) the larger of its own
    peak and, where its outputs stay cached through the language model's run (V1), the outputs
    plus max(forward, sampler). ``hidden_held``: the dummy forward's hidden states of every token
    stay alive through the sampler run (V1 from 0.9.2: ``hidden_states, last_hidden_states =
    self._dummy_run(...)`` deleted after ``_dummy_sampler_run``; V0's ``execute_model`` samples
    beside them)."""
    forward = forward_bytes(model, tensor, kv_heads_per_shard, tokens, moe_gather, moe_chunk=moe_chunk,
                            modular_moe=modular_moe)
    rows = sampler_rows if last_stage else 0
    logits = rows * model.vocab_size
    beside = tokens * model.hidden_size * activation_width(model) if hidden_held and rows else 0
    encoder, outputs = encoder_peak_bytes(model, tensor, images, pad_encoder_outputs_to)
    held = outputs if encoder_outputs_held else 0
    return Band.of(*(max(encoder * f, held + max(forward * f, beside + logits * b))
                     for f, b in zip(ACTIVATION_BAND, sampler_bytes_per_logit, strict=True)))


ACTIVATION_SOURCE = ("dummy forward (fused-MoE workspaces: vllm fused_moe.py TritonExperts.workspace_shapes) "
                     "+ dummy sampler (vllm/v1/worker/gpu_model_runner.py _dummy_sampler_run; V0 "
                     "vllm/model_executor/layers/sampler.py Sampler.forward)")
ENCODER_SOURCE = ("dummy encoder run over the largest images (vllm/v1/worker/gpu_model_runner.py profile_run; "
                  "V0 vllm/worker/model_runner.py profile_run)")


# ----------------------------------------------------------------------------- MXFP4 padding
def mxfp4_padding_bytes(model: ModelSpec, tensor: int, device_kind: str,
                        layers: Iterable[int] | None = None) -> int:
    """Bytes vLLM adds to MXFP4 expert weights on one tensor shard by padding them for its kernels.

    vllm/model_executor/layers/quantization/mxfp4.py ``Mxfp4MoEMethod.create_weights``: w13
    ``(E, 2·I_pad, H_pad/2)`` and w2 ``(E, H_pad, I_pad/2)`` uint8 plus one e8m0 scale per 32
    values, with ``I_pad = round_up(I/tp, 128)`` and ``H_pad = round_up(H, 256)`` on the Marlin path
    (GPUs before Blackwell), both rounded to 256 on Blackwell's FlashInfer path. gpt-oss-120b
    (2880 × 2880, 128 experts, 36 layers) gains 5.13 GiB this way: vLLM logs 65.97 GiB of weights
    on an H100 (vllm-project/vllm #23278). ``layers``: the pipeline stage's layers (default all).
    """
    if model.weight_quant != "mxfp4" or not model.is_moe:
        return 0
    blackwell = any(k in device_kind.upper() for k in ("B200", "B300", "GB200", "B100"))
    inter = -(-model.moe_intermediate_size // tensor)
    h = model.hidden_size
    ip = -(-inter // (256 if blackwell else 128)) * (256 if blackwell else 128)
    hp = -(-h // 256) * 256
    extra_values = 3 * (ip * hp - inter * h)  # w13 (two I rows) + w2
    per_layer = model.num_experts * (extra_values // 2 + extra_values // 32)
    held = range(model.num_layers) if layers is None else layers
    return per_layer * sum(1 for i in held if model.is_moe_layer(i))


# ----------------------------------------------------------------------------- LoRA
def lora_slot_bytes(model: ModelSpec, tensor: int, *, max_loras: int, max_lora_rank: int) -> int:
    """LoRA's stacked adapter slots on one tensor shard, allocated when the model is wrapped.

    vllm/lora/layers/*.py ``create_lora_weights``: every linear of every decoder layer gets
    ``lora_a_stacked`` ``(max_loras, 1, rank, in)`` and ``lora_b_stacked`` ``(max_loras, 1, out, rank)``
    per packed slice, in the model dtype; column-parallel layers shard ``out`` (``lora_b``) and
    replicate ``lora_a``; row-parallel layers shard ``in`` (``lora_a``) and replicate ``lora_b``.
    The dummy adapters of the profile run (``LoRAModelRunnerMixin.maybe_dummy_loras``) are loaded
    into these same slots. MoE expert weights are not LoRA targets here (dense projections only).
    """
    if max_loras <= 0:
        return 0
    tp, r, h = tensor, max_lora_rank, model.hidden_size
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    inter = model.intermediate_size if model.has_dense_layers else 0
    col = 3 * r * h + r * (-(-(q + 2 * kv) // tp))  # qkv_proj: 3 slices
    row = r * (-(-q // tp)) + r * h  # o_proj
    if inter:
        col += 2 * r * h + 2 * r * (-(-inter // tp))  # gate_up_proj: 2 slices
        row += r * (-(-inter // tp)) + r * h  # down_proj
    return max_loras * (col + row) * model.num_layers * activation_width(model)


LORA_SOURCE = "vllm/lora/layers create_lora_weights: lora_a/lora_b stacked slots for max_loras adapters"


# ----------------------------------------------------------------------------- non-torch
CUSTOM_AR_MAX_SIZE = 8192 * 1024  # CustomAllreduce(max_size=8192 * 1024)
CUSTOM_AR_RANK_DATA = 8 * 1024 * 1024  # self.rank_data = torch.empty(8 * 1024 * 1024, uint8)
CUSTOM_AR_META = 4096  # ops.meta_size(): the signal struct, well under a page; rounded up
CUSTOM_AR_WORLD_SIZES = (2, 4, 6, 8)  # CustomAllreduce._SUPPORTED_WORLD_SIZES


def custom_all_reduce_bytes(tensor: int, link: str) -> int:
    """Buffers vLLM's custom all-reduce allocates per rank (custom_all_reduce.py ``__init__``):
    ``meta_size() + max_size`` + ``max_size`` + ``rank_data``; disabled outside 2/4/6/8 ranks and
    on more than two PCIe-only GPUs."""
    if tensor not in CUSTOM_AR_WORLD_SIZES or (tensor > 2 and link != "nvlink"):
        return 0
    return CUSTOM_AR_META + 2 * CUSTOM_AR_MAX_SIZE + CUSTOM_AR_RANK_DATA


# NVLink SHARP (NVLS): on Hopper and Blackwell NVSwitch systems NCCL binds multicast buffers to every
# communicator of more than two GPUs, nvlsTotalSize = nHeads × nvlsPerRankSize with one head per GPU of the
# node (NVIDIA/nccl src/transport/nvls.cc). A head's share follows the NCCL release that the vLLM release's
# torch pin bundles (vLLM wheels' METADATA: torch 2.4 to 0.6.3, 2.5.1 from 0.6.4, 2.6.0 from 0.8.0, 2.7 from
# 0.9.0, 2.8 from 0.10.2; torch's wheels: nvidia-nccl-cu12 2.20.5, 2.21.5, 2.21.5, 2.26.2, 2.27.3):
#  - NCCL ≤ 2.20, set up with the communicator: nChannels × 2 × (buffSize 4 MiB + memSize 2 MiB). vllm
#    #9699 prints it on 8 H200s ("nHeads 8 buffSize 4194304 memSize 2097152 nvlsPerRankSize 301989888
#    nvlsTotalSize 2415919104"): 24 channels;
#  - NCCL 2.21 (v2.21.5-1 ncclNvlsSetup): buffSize = NVLS_CHUNKSIZE 128 KiB × NCCL_STEPS 8 = 1 MiB, so
#    nChannels × 2 × (1 + 2) MiB;
#  - NCCL ≥ 2.26 (v2.26.2-1 ncclNvlsBufferSetup): set up lazily, at the first collective NVLS runs,
#    nvlsChannels × 2 × 1 MiB, with NVLS_NCHANNELS_SM90 = 16 on Hopper; on Blackwell 32
#    (NVLS_NCHANNELS_SM100), from 2.27 24 within one node (NVLS_NCHANNELS_SM100_NVL).
NVLS_CHANNELS = 24  # comm->nChannels on an 8-GPU NVSwitch node (the #9699 line), NCCL ≤ 2.21
NVLS_MEM_SIZE = 2 * MiB  # NVLS_MEM_ALIGN_SIZE, NCCL ≤ 2.21
NVLS_SIMPLE_BUFF_SIZE = 4 * MiB  # comm->buffSizes[NCCL_PROTO_SIMPLE] (NCCL_BUFFSIZE's default), NCCL ≤ 2.20
NVLS_CHUNK_BUFF_SIZE = 128 * 1024 * 8  # NVLS_CHUNKSIZE × NCCL_STEPS, NCCL ≥ 2.21
NVLS_LAZY_CHANNELS = {"hopper": 16, "blackwell": 32, "blackwell-node": 24}  # NVLS_NCHANNELS_SM90/_SM100/_SM100_NVL
NVLS_MAX_HEADS = 8  # GPUs per NVSwitch node (HGX H100/H200/B200)
_NVLS_CARD = re.compile(r"\b(?:h100|h200|h20|h800|b200|b300|gb200|gb300)\b")
_BLACKWELL = re.compile(r"\b(?:b200|b300|gb200|gb300)\b")


def nccl_release(vllm_release: tuple[int, ...]) -> tuple[int, int]:
    """The NCCL release (major, minor) bundled with the torch a vLLM release pins (see above)."""
    if vllm_release < (0, 6, 4):
        return (2, 20)
    if vllm_release < (0, 9, 0):
        return (2, 21)
    return (2, 26) if vllm_release < (0, 10, 2) else (2, 27)


def nvls_applies(tensor: int, device_kind: str, link: str) -> bool:
    """Whether NCCL builds NVLS buffers: more than two GPUs over NVLink on a Hopper or Blackwell card
    (none for PCIe, pre-Hopper or AMD cards)."""
    return tensor > 2 and link == "nvlink" and bool(_NVLS_CARD.search(device_kind.lower().replace("-", " ")))


def nvls_bytes(tensor: int, nccl: tuple[int, int], device_kind: str) -> int:
    """NVLS buffers of one communicator on one rank (NCCL's ``nvlsTotalSize``)."""
    heads = min(tensor, NVLS_MAX_HEADS)
    if nccl <= (2, 20):
        return heads * NVLS_CHANNELS * 2 * (NVLS_SIMPLE_BUFF_SIZE + NVLS_MEM_SIZE)
    if nccl < (2, 26):
        return heads * NVLS_CHANNELS * 2 * (NVLS_CHUNK_BUFF_SIZE + NVLS_MEM_SIZE)
    kind = "hopper"
    if _BLACKWELL.search(device_kind.lower().replace("-", " ")):
        kind = "blackwell" if nccl < (2, 27) or tensor > NVLS_MAX_HEADS else "blackwell-node"
    return heads * NVLS_LAZY_CHANNELS[kind] * 2 * NVLS_CHUNK_BUFF_SIZE


def nvls_band(tensor: int, device_kind: str, link: str, *, snapshot_after_init: bool,
              nccl: tuple[int, int]) -> Band:
    """NVLS memory a vLLM rank's profile charges (0 where NCCL builds none: two GPUs or fewer, PCIe,
    pre-Hopper and AMD cards). A full 8-GPU group is an NVSwitch board (central: both communicators,
    PyNccl's and torch's; with NCCL ≤ 2.21 one where the snapshot follows NCCL's set-up, as
    ``non_torch_band`` halves its NCCL term; from 2.26 the buffers come with the profile run's first NVLS
    collective, so both, the band from none: NCCL may pick another algorithm); a group of 3–7 may or
    may not sit on one (4-GPU HGX boards have no NVSwitch), so only the band's top holds it."""
    if not nvls_applies(tensor, device_kind, link):
        return Band.exact(0)
    one = nvls_bytes(tensor, nccl, device_kind)
    if tensor < NVLS_MAX_HEADS:
        return Band.of(0, 0, 2 * one)
    if nccl >= (2, 26):  # set up lazily, by the profile run's first NVLS collective
        return Band.of(0, 2 * one, 2 * one)
    return Band.of(0, one, 2 * one) if snapshot_after_init else Band.of(one, 2 * one, 2 * one)


# SGLang's communicators are vLLM's: python/sglang/srt/distributed/parallel_state.py and
# device_communicators/pynccl.py say "Adapted from https://github.com/vllm-project/vllm/blob/v0.6.4.post1/..."
# (the 0.4.3-0.5.23 wheels), so a TP group holds the same PyNccl and torch communicators over the same
# NCCL, and SGLang's NCCL term is vLLM V1's fitted one (far more tensor-parallel logs than SGLang's own).
NCCL_TERM_OF = {"sglang": ("vllm", "nccl_tp_gib", "default")}


def non_torch_band(engine: str, version: str, *, tensor: int, pipeline: int, link: str,
                   custom_ar: bool = True, data: int = 1, snapshot_after_init: bool = False) -> Band:
    """Non-torch memory of one rank: base + (TP) custom all-reduce + NCCL + (PP) NCCL p2p
    (+ ``data`` > 1: the data-parallel group's NCCL communicator).

    ``data``: size of a device-side data-parallel group (vLLM V1 ``--data-parallel-size``). vLLM
    builds the DP group with a device communicator like the TP group's: ``CudaCommunicator``
    creates a ``PyNcclCommunicator`` for every group but the EP one and custom all-reduce only for
    TP (vllm/distributed/device_communicators/cuda_communicator.py ``CudaCommunicator.__init__``,
    vllm-project/vllm v0.10.x: ``use_pynccl = "ep" not in unique_name``, "only tp uses custom
    allreduce"), so a DP group is charged one NCCL communicator (the same fitted per-link term) and
    no custom all-reduce buffers.

    ``snapshot_after_init`` (vLLM ≥ 0.11, vllm PR #25359): the worker takes its memory snapshot
    after ``init_worker_distributed_environment``, so the PyNccl communicator and the custom
    all-reduce buffers are outside what profiling measures. Still inside: the group's torch NCCL
    communicator, which ``torch.distributed`` creates lazily at the profile run's first
    collective on the device group (the logits all-gather: vllm/distributed/device_communicators/
    base_device_communicator.py ``all_gather`` → ``all_gather_into_tensor(group=device_group)``).
    The fitted per-link term covers both communicators, so half of it is charged for the TP group,
    with the band from none of it to all of it (the ≤ 0.10 charge). A DP group's collectives in the
    profile run go through PyNccl (``all_gatherv``) or the CPU group, so it is charged only in the
    band's high end. Derived, not fitted: no 0.11+ log at TP ≥ 2 in the corpus can be run."""
    base = fitted(engine, "non_torch_base_gib", version) * GiB
    nccl = (fitted(*NCCL_TERM_OF[engine], link) if engine in NCCL_TERM_OF
            else fitted(engine, "nccl_tp_gib", version, link)) * GiB
    groups = (tensor > 1) + (data > 1)  # device groups with an NCCL communicator
    ar = custom_all_reduce_bytes(tensor, link) if tensor > 1 and custom_ar else 0
    pp = fitted(engine, "nccl_pp_gib") * GiB if pipeline > 1 else 0
    full = base + groups * nccl + ar + pp
    if not snapshot_after_init:
        return Band.of(full, full, full)
    return Band.of(base + pp, base + (tensor > 1) * nccl / 2 + pp, full)


NON_TORCH_SOURCE = ("base + NCCL " + CALIBRATION_SOURCE + "; custom all-reduce buffers from "
                    "vllm/distributed/device_communicators/custom_all_reduce.py CustomAllreduce.__init__")


def cuda_graph_band(engine: str, version: str, cls: str) -> Band:
    """A per-GPU-class constant (TRT-LLM's captured graphs; calibration.json ``cuda_graph_gib``)."""
    gib = fitted(engine, "cuda_graph_gib", version, cls)
    return Band.of(gib * GiB, gib * GiB, gib * GiB)


def cudagraph_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int,
                            largest: int | None = None) -> tuple[int, ...]:
    """vLLM's default CUDA-graph capture sizes (vllm/config/vllm.py ``_set_cudagraph_sizes``, v0.11+):
    up to ``max_cudagraph_capture_size`` = min(2 · max_num_seqs, 512) (and never past
    max_num_batched_tokens): 1, 2, 4, then multiples of 8 below 256, then multiples of 16. A
    0.21.0 log prints "PIECEWISE=51 (largest=512), FULL=35 (largest=256)" at max_num_seqs 256."""
    top = min(largest or min(2 * max_num_seqs, 512), max_num_batched_tokens)
    return (*(s for s in (1, 2, 4) if s <= top), *range(8, min(top + 1, 256), 8), *range(256, top + 1, 16))


MIN_GRAPH_BYTES = MiB  # vLLM's floor per extra graph ("at least 1 MiB per graph for driver overhead")


def capture_graph_band(model: ModelSpec, *, tensor: int, kv_heads_per_shard: int,
                       modes: Iterable[Iterable[int]]) -> Band:
    """Graph-pool memory of capturing each mode's sizes, as vLLM's ``profile_cudagraph_memory``
    estimates it (vllm/v1/worker/gpu_model_runner.py, PR #30515; on by default from 0.20.0): per mode
    the first (largest) capture's memory plus ``(n − 1) ×`` the second's, the modes sharing one pool
    (the largest first capture counts once). The first capture holds the step's activations at its
    size (``forward_bytes``); the per-graph bytes are fitted (calibration.json
    ``cuda_graph_per_graph_mib``), with vLLM's 1 MiB floor as the band's low end and twice the fit
    as its high end."""
    modes = [tuple(m) for m in modes if m]
    if not modes:
        return Band.exact(0)
    per_graph_bytes = int(fitted("vllm", "cuda_graph_per_graph_mib") * MiB)
    first = max(forward_bytes(model, tensor, kv_heads_per_shard, max(m)) for m in modes)
    extra = sum(len(m) - 1 for m in modes)
    return Band.of(first + extra * MIN_GRAPH_BYTES, first + extra * per_graph_bytes,
                   first + extra * 2 * per_graph_bytes)


CUDA_GRAPH_SOURCE = ("vllm/v1/worker/gpu_model_runner.py profile_cudagraph_memory (PR #30515, applied by "
                     "on by default from 0.20.0); " + CALIBRATION_SOURCE)


# The residual band reaches at least this far either side of 0: a share of the device's memory
# (bigger cards serve bigger models and batches, whose unexplained GiB are bigger) and a floor for
# the GiB the logs and the constants are rounded to.
RESIDUAL_FLOOR_FRACTION = 0.015
RESIDUAL_FLOOR_BYTES = GiB // 4


def residual_band(engine: str, version: str, tensor: int, total_bytes: int = 0) -> Band:
    """What the modelled terms leave unexplained (central 0): the corpus's leave-one-out
    non-KV error quantiles for this engine/version and TP class, in GiB, widened to at least
    ±max(RESIDUAL_FLOOR_BYTES, RESIDUAL_FLOOR_FRACTION × the device's memory)."""
    table = calibration()["residual_gib"].get(engine, {})
    cls = "tp" if tensor > 1 else "single"
    lo, hi = (table.get(f"{version}/{cls}") or table.get(version) or table.get(f"default/{cls}")
              or table.get("default") or (0.0, 0.0))
    floor = max(RESIDUAL_FLOOR_BYTES, int(total_bytes * RESIDUAL_FLOOR_FRACTION))
    return Band.of(min(lo * GiB, -floor), 0, max(hi * GiB, floor))


RESIDUAL_SOURCE = ("leave-one-out error quantiles of the start-up-log corpus (tests/engine_logs), "
                   "estimator/engines/calibration.json")

# CUDA context + libraries resident before an engine reads free memory. meshes/catalog.py keeps
# 500 MiB for it; TRT-LLM #1188 (R5, A4000) leaves ~0.45 GiB, TRT-LLM #2789 (H100) ~0.95 GiB.
CONTEXT = Band.of(0.3 * GiB, 0.5 * GiB, 0.95 * GiB)
CONTEXT_SOURCE = ("meshes/catalog.py CONTEXT_RESERVE (500 MiB); TRT-LLM #1188 (R5) and #2789 start-up "
                  "logs (0.45–0.95 GiB); free memory is what SGLang and TRT-LLM measure")

# TRT-LLM TRT-engine runtime (C++ path), per build limits (cpp/tensorrt_llm/runtime/runtimeBuffers.cpp,
# gptDecoderBatched.cpp): with context logits not gathered, the runtime holds fp32 logits of the
# last token of each of max_batch_size × max_beam_width slots and the decoder's copy of them
# (8 B per slot × vocabulary), the engine's activation slab sized for the packed tokens of one step
# (max_num_tokens, at most max_batch_size × max_input_len), and the decoder's vocabulary-wide
# per-slot buffers. R5 (TRT-LLM #1188, Qwen2.5-0.5B, max_batch_size 2048, vocab 151,936): runtime
# buffers 2.66 GB = 2048 × 151,936 × 8.5 B; decoder 5.76 GB ≈ 20 B per (batch × beam × vocab).
TRT_RUNTIME_BYTES_PER_LOGIT = 8
TRT_DECODER_BYTES_PER_LOGIT = 20
TRT_LEGACY_SOURCE = ("TRT-LLM C++ runtime buffers / decoder per build limits (runtimeBuffers.cpp, "
                     "gptDecoderBatched.cpp); scale from R5 (TRT-LLM #1188: 2.66 GB, 5.76 GB)")
# Older default build limits (trtllm-build, tensorrt_llm/commands/build.py before 0.11):
# max_batch_size 256 (2048 from 0.11), max_input_len 1024, max_num_tokens 8192, max_beam_width 1.


def term(name: str, band: Band, source: str, measured: int | None = None) -> Term:
    """A term, or the caller's measured value in its place (exact, marked as measured)."""
    if measured is not None:
        return Term(name, Band.exact(measured), "measured (given by the caller)", True)
    return Term(name, band, source)


__all__ = ["ACTIVATION_SOURCE", "CALIBRATION_PATH", "CALIBRATION_SOURCE", "CONTEXT", "CONTEXT_SOURCE",
           "CUDA_GRAPH_SOURCE", "ENCODER_SOURCE", "GPU_CLASSES", "LORA_SOURCE", "NCCL_TERM_OF",
           "NON_TORCH_SOURCE", "RESIDUAL_SOURCE", "WEIGHTS_SOURCE", "Band", "NonKV", "Term",
           "activation_band", "activation_width", "calibrated", "calibration", "capture_graph_band",
           "cuda_graph_band", "cudagraph_capture_sizes", "custom_all_reduce_bytes", "encoder_items",
           "encoder_peak_bytes", "fitted", "forward_bytes", "forward_bytes_per_token", "fused_moe_chunk_size",
           "gpu_class", "interconnect", "lora_slot_bytes", "model_runner_v2", "mrv2_sampler_bytes_per_logit",
           "mrv2_sampler_state_bytes", "mxfp4_padding_bytes", "nccl_release", "non_torch_band", "nvls_applies",
           "nvls_band", "nvls_bytes", "residual_band", "rotary_cache_bytes", "sampler_bytes_per_logit", "term",
           "torch_param_bytes", "torch_sort_sampler_bytes", "v0_dummy_sequences", "vision_split_bytes"]
