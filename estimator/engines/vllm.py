"""vLLM (GPU) — the semantics of vLLM 0.34.0 (vllm-project/vllm, vllm/v1/worker/gpu_worker.py,
vllm/v1/worker/extensible_kv_cache.py and vllm/v1/core/kv_cache_utils.py) and of the releases old
logs come from, the version being a knob:

- ``"0.34"`` (current; 0.34.x): the extensible KV cache (estimator.engines.vllm_extensible), on by
  default; the pool is sized after warmup and CUDA-graph capture from measured memory,
  ``min(ceil(total · util) − resident, free at start-up − resident − margin) − transient`` with
  utilization 1.0 by default, and committed in 2 MiB granules per layer segment; no start-up
  free-memory check; with the cache off (``enable_extensible_kv_cache=false``, or a pool pinned by
  kv_cache_memory_bytes / num_gpu_blocks_override) it sizes as 0.33 does.
- ``"0.33"`` (0.29–0.33): ``available = ceil(total · util) − non-KV − CUDA graphs``; the
  null block held back in the fit check (vllm PR #47272, 0.29.0); one "GPU KV cache size …
  Maximum concurrency" line (PR #50462, 0.28.0); the profile run is Model Runner V2's (the default
  for every model from 0.29, for dense ones from 0.25: estimator.engines.non_kv ``model_runner_v2``),
  whose sampler warms up through FlashInfer in 0.33 and holds its penalty state.
- ``"0.2x"`` (0.20–0.28): no null block in the fit check, two capacity lines, the token count
  ``int(concurrency × max_model_len)`` (0.20.1); the CUDA-graph estimate subtracted and
  utilization 0.92 by default (vllm PR #38284, 0.20.0, though the log says "default since v0.21.0").
- ``"0.17"`` (0.17–0.19), ``"0.11"`` (0.11–0.16) and ``"0.10"`` (0.9.1–0.10.x): ``non_kv =
  non_torch_increase + torch_peak_increase + weights`` (vllm/utils memory_profiling of those
  releases), no CUDA-graph term; they differ in the dummy sampler's top-k/top-p path
  (estimator.engines.non_kv ``sampler_bytes_per_logit``: FlashInfer in 0.10, the sort-based native
  path in 0.11, the Triton kernel from 0.17) and in what the snapshot sees: from 0.11 (vllm PR
  #25359) it is taken after NCCL init, so only the torch communicator the profile run creates is
  charged (estimator.engines.non_kv ``non_torch_band``).
- ``"0.9"`` (V1 0.8.0–0.9.0, vllm/v1/worker/gpu_worker.py @0012cf69 ``determine_available_memory``;
  0.9.1 moved V1 to V0's memory_profiling, vllm PR #19312):
  ``available = total · util − (torch_peak + non_torch_allocations)``, the non-torch part all the
  device holds beyond torch's allocations (the CUDA context and other processes included); no
  CUDA-graph term and no free-memory check at start-up.
- ``"v0"`` (the V0 engine from 0.6.5, vllm PR #10511 memory profiling): "# GPU blocks", its own
  error text, no CUDA-graph term, max_num_batched_tokens = max(max_model_len, 2048); the baseline
  is taken before the communicators are set up (worker.py of 0.6.5 and 0.7.3), yet V0 TP logs print
  only 0.2–0.43 GiB of non-torch memory in all, so the fitted NCCL charge of the family is small.
- ``"v0-early"`` (V0 0.2.5–0.6.4, vllm/worker/worker.py ``determine_num_available_blocks`` before
  PR #10511): the peak is free memory at worker start minus free memory after the profile run —
  every byte the process gained, NCCL included.
Utilization defaults to 1.0 with 0.34's extensible KV cache, 0.92 from 0.20 and 0.9 before. The
version knob also takes the release a
user runs ("0.11.0", "v0.10.1.1"): ``release_family`` (estimator.engines.vllm_releases) maps it.
Releases after 0.34.x are refused by name: kvfit has not read their code.

Per worker (one device of a tensor/pipeline group; each data-parallel rank is its own engine, and
``max_num_seqs`` / ``max_num_batched_tokens`` are per data-parallel rank, as vLLM means them):
non-KV = weights (+ rotary caches, − TP-split vision matrices, + LoRA slots, − ``cpu_offload_gb``) +
activation peak (dummy encoder run over the largest images of a multimodal model, dummy forward
at max_num_batched_tokens, dummy sampler over max_num_seqs × vocabulary) + non-torch memory
(custom all-reduce and NCCL buffers by TP size and interconnect; PP only its p2p communicator) +
CUDA-graph memory (≥ 0.21), see estimator.engines.non_kv. ``num_blocks = available //
bytes_per_block``, the minimum over workers. Layers are grouped as vLLM groups them (§3.4): one
group for a uniform model; full, sliding-window and recurrent layers in groups of equal layer
counts sharing one page size (the attention block size raised to cover a Mamba page). The "vLLM
core" part (groups, fit check, max-length estimate, capacity lines) is shared with the tpu profile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from estimator.core.geometry import geometry
from estimator.core.kv_spec import KVSpec, kv_specs
from estimator.engines.base import (
    EnginePlan,
    GiB,
    Knob,
    Setup,
    apply_model_knobs,
    boolean,
    cdiv,
    choice,
    default_kv_dtype,
    estimated_flags,
    fraction,
    integer,
    kv_dtype_choice,
    model_dtype_choice,
    positive_number,
    quantization_choice,
    scaled,
    with_band,
)
from estimator.engines.non_kv import (
    ACTIVATION_SOURCE,
    CONTEXT,
    CUDA_GRAPH_SOURCE,
    ENCODER_SOURCE,
    LORA_SOURCE,
    NON_TORCH_SOURCE,
    RESIDUAL_SOURCE,
    WEIGHTS_SOURCE,
    Band,
    NonKV,
    Term,
    activation_band,
    capture_graph_band,
    cudagraph_capture_sizes,
    encoder_items,
    fused_moe_chunk_size,
    interconnect,
    lora_slot_bytes,
    model_runner_v2,
    mrv2_sampler_bytes_per_logit,
    mrv2_sampler_state_bytes,
    mxfp4_padding_bytes,
    nccl_release,
    non_torch_band,
    nvls_applies,
    nvls_band,
    residual_band,
    rotary_cache_bytes,
    sampler_bytes_per_logit,
    term,
    torch_param_bytes,
    v0_dummy_sequences,
)
from estimator.engines.releases import release_number
from estimator.engines.vllm_extensible import (
    MARGIN_FLOOR,
    committable_bytes,
    extensible_terms,
    more_memory_hint,
    physical_bytes,
    rocm,
    uses_extensible_cache,
)
from estimator.engines.vllm_releases import release_family as _family_of
from estimator.model.spec import ModelSpec
from meshes.validation import InputError

NAME = "vllm"
VERSIONS = ("0.34", "0.33", "0.2x", "0.17", "0.11", "0.10", "0.9", "v0", "v0-early")
CORE = {"0.34": "0.34", "0.33": "0.33", "0.2x": "0.2x", "0.17": "0.1x", "0.11": "0.1x", "0.10": "0.1x", "0.9": "0.1x",
        "v0": "v0", "v0-early": "v0"}  # vllm_core semantics
SNAPSHOT_AFTER_INIT = ("0.34", "0.33", "0.2x", "0.17", "0.11")  # NCCL set up before the memory snapshot (PR #25359)
GRAPH_VERSIONS = ("0.34", "0.33", "0.2x")  # the CUDA-graph estimate is subtracted (default from 0.20.0, PR #38284)
# ceil(total · util) and round(GiB, 2) in the lines from 0.14.0 (vllm/v1/worker/utils.py request_memory,
# vllm/utils/mem_utils.py format_gib)
# V1 before 0.9.1 counts as non-torch everything the device holds beyond torch's allocations —
# ``mem_get_info`` total − free − torch allocated — so the CUDA context and other processes' memory too
DEVICE_WIDE_NON_TORCH = ("0.9",)
DEVICE_WIDE_SOURCE = "vllm/v1/worker/gpu_worker.py determine_available_memory of 0.8.0–0.9.0"
# no free-memory check at start-up before V1's 0.9.1 (gpu_worker.py init_device): V0 and V1 0.8–0.9.0 start
NO_STARTUP_CHECK = ("0.9", "v0", "v0-early")
UTIL_092_VERSIONS = ("0.34", "0.33", "0.2x")  # default gpu_memory_utilization 0.92 (0.9 before 0.20.0, PR #38284)
MEASURED = ("weights_bytes", "activation_bytes", "non_torch_bytes", "cuda_graph_bytes",
            "context_bytes")  # the measured values this profile charges
DEFAULT_BLOCK_SIZE = 16  # vllm/config/cache.py CacheConfig.DEFAULT_BLOCK_SIZE (§3.7)
MLA_BLOCK_SIZE = 64  # FlashMLA kernel block size, the MLA backend on Hopper (§3.7, §8)
BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)
KERNEL_ALIGNMENT = 16  # attention block size alignment when raised for a Mamba page (§3.4 item 4)
SWAP_SPACE = 4 * GiB  # V0 --swap-space default (CPU blocks in "# GPU blocks: B, # CPU blocks: C")
KV_DTYPES = {"auto": None, "bfloat16": "bfloat16", "float16": "float16", "fp8": "float8_e4m3fn",
             "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
USAGE = ("openai_api_server", "llm_class")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks


def release_family(release: str) -> str:
    """The family (one of VERSIONS) a vLLM release such as "0.11.0" is modelled with."""
    return _family_of(release, VERSIONS)


KNOBS = {
    "gpu_memory_utilization": Knob("gpu_memory_utilization", None, fraction(
        message="vLLM: gpu_memory_utilization is the fraction of total GPU memory for this instance "
                "and must be > 0 and ≤ 1"), "1.0 (0.34 extensible KV cache), 0.92 (from 0.20), 0.9 (older)"),
    "max_model_len": Knob("max_model_len", None, integer(-1, 2**40, message="-1 (auto-fit) or a "
                          "positive length"), "default: the model's max_position_embeddings"),
    "block_size": Knob("block_size", None, choice(BLOCK_SIZES, "vLLM's --block-size choices"),
                       "16 (MLA: the backend's 64)"),
    "kv_cache_dtype": Knob("kv_cache_dtype", "auto", kv_dtype_choice(KV_DTYPES)),
    "max_num_batched_tokens": Knob("max_num_batched_tokens", None, integer(1, 2**31)),
    "max_num_seqs": Knob("max_num_seqs", None, integer(1, 2**31)),
    "kv_cache_memory_bytes": Knob("kv_cache_memory_bytes", None, integer(1)),
    "num_gpu_blocks_override": Knob("num_gpu_blocks_override", None, integer(1)),
    "enforce_eager": Knob("enforce_eager", False, boolean),
    "enable_prefix_caching": Knob("enable_prefix_caching", True, boolean),
    "quantization": Knob("quantization", None, quantization_choice,
                         "weight scheme (vllm --quantization); default: the checkpoint's"),
    "dtype": Knob("dtype", "auto", model_dtype_choice, "model dtype (vllm --dtype)"),
    "enable_lora": Knob("enable_lora", False, boolean),
    "max_lora_rank": Knob("max_lora_rank", 16, choice(LORA_RANKS, "vLLM's LoRAConfig max_lora_rank "
                                                      "choices (vllm/config/lora.py MaxLoRARanks)"),
                          "vllm LoRAConfig default 16"),
    "max_loras": Knob("max_loras", 1, integer(1, 4096), "vllm LoRAConfig default 1"),
    "cpu_offload_gb": Knob("cpu_offload_gb", 0, lambda f, v: 0.0 if v == 0 else positive_number(f, v),
                           "GiB of weights per GPU kept in CPU memory"),
    "disable_custom_all_reduce": Knob("disable_custom_all_reduce", False, boolean),
    "max_cudagraph_capture_size": Knob("max_cudagraph_capture_size", None, integer(1, 2**20),
                                       "default: min(2 · max_num_seqs, 512) (vllm --max-cudagraph-capture-size)"),
    "limit_mm_per_prompt": Knob("limit_mm_per_prompt", None, integer(0, 2**20),
                                "images a prompt may carry (vllm --limit-mm-per-prompt '{\"image\": N}'; "
                                "0: text only, no encoder profiling); default 999 (V1), 1 (V0)"),
    "use_flashinfer_sampler": Knob("use_flashinfer_sampler", None, boolean,
                                   "whether FlashInfer's top-k/top-p sampler runs (V1; env "
                                   "VLLM_USE_FLASHINFER_SAMPLER with FlashInfer installed); default: as "
                                   "pip installs the release (on from 0.21; 0.8.0–0.11.0 enable it where "
                                   "installed, but their wheels do not install it)"),
    "enable_extensible_kv_cache": Knob("enable_extensible_kv_cache", None, boolean,
                                       "0.34: size the KV cache after warmup from measured memory (on by "
                                       "default; off with kv_cache_memory_bytes or num_gpu_blocks_override); "
                                       "unset before 0.34"),
    "usage_context": Knob("usage_context", "openai_api_server", choice(USAGE),
                          "openai_api_server (vllm serve) or llm_class (LLM(...)): batch defaults"),
}


# ----------------------------------------------------------------------------- vLLM core
@dataclass(frozen=True)
class KVGroup:
    """One KV-cache group: layers sharing a block table; every group has the same page size.

    ``window`` > 0: sliding-window / chunked layers; ``recurrent``: per-request state (Mamba).
    """

    layers: tuple[int, ...]
    window: int = 0
    recurrent: bool = False


@dataclass(frozen=True)
class CacheLayout:
    """vLLM's grouping of a model's layers and the block size / page bytes after unification."""

    groups: tuple[KVGroup, ...]
    block_size: int
    layer_page_bytes: int  # one block of one layer (every group's page, after unification)
    notes: tuple[str, ...] = ()

    def bytes_per_block(self, layers: Sequence[int] | range) -> int:
        """``_get_kv_cache_bytes_per_block`` on a worker holding ``layers``: the largest group."""
        held = set(layers)
        widest = max((sum(1 for i in g.layers if i in held) for g in self.groups), default=0)
        return widest * self.layer_page_bytes

    def blocks_per_request(self, length: int, batched_tokens: int, state_blocks: int) -> int:
        """Σ over groups of cdiv(max_memory_usage_bytes(group), page) for one request (§3.3)."""
        bs, total = self.block_size, 0
        for g in self.groups:
            if g.recurrent:
                total += state_blocks
            elif g.window:  # SlidingWindowSpec.max_memory_usage_bytes: window − 1 + in-flight, + 1 block
                total += cdiv(min(g.window - 1 + batched_tokens, length), bs) + 1
            else:
                total += cdiv(length, bs)
        return total


def holds_kv(kv: KVSpec) -> bool:
    """A layer with a cache of its own (tokens or per-request state)."""
    return kv.holds_tokens or kv.state_bytes > 0


def cache_layout(kvs: Sequence[KVSpec], block_size: int, token_bytes: Callable[[KVSpec], int],
                 *, mla: bool = False) -> CacheLayout:
    """Group layers the way ``get_kv_cache_groups`` does (§3.4) and unify the page size."""
    layers = [(i, kv) for i, kv in enumerate(kvs) if holds_kv(kv)]
    if not layers:
        raise InputError("model", "attention-free", "a model with at least one KV-holding layer")
    notes = []
    attention = [(i, kv) for i, kv in layers if kv.holds_tokens]
    recurrent = [(i, kv) for i, kv in layers if not kv.holds_tokens]
    per_token = {token_bytes(kv) for _, kv in attention}
    if len(per_token) > 1:
        raise InputError("layers", sorted(per_token), "one KV size per token for every attention layer")
    bs = block_size
    if attention and recurrent:  # §3.4 item 4: Platform._align_hybrid_block_size
        align = 128 if mla else KERNEL_ALIGNMENT
        state = max(kv.state_bytes for _, kv in recurrent)
        tok = next(iter(per_token))
        raised = align * cdiv(state, align * tok)
        if raised > bs:
            bs = raised
            notes.append(f"Setting attention block size to {bs} tokens to ensure that attention page "
                         "size is >= mamba page size.")
        pad = bs * tok - state
        if pad:
            notes.append(f"Padding mamba page size by {pad / state * 100:.2f}% to ensure that mamba page "
                         "size and attention page size are exactly equal.")
    page = bs * next(iter(per_token)) if attention else max(kv.state_bytes for _, kv in recurrent)
    buckets: dict[tuple, list[int]] = {}  # same spec kind and window → one group type (§3.4)
    for i, kv in layers:
        buckets.setdefault(kv.group_key, []).append(i)
    recurrent_keys = {kv.group_key for _, kv in recurrent}
    if len(buckets) == 1:
        key, idx = next(iter(buckets.items()))
        return CacheLayout((KVGroup(tuple(idx), key[1], key in recurrent_keys),), bs, page, tuple(notes))
    sizes = [len(v) for v in buckets.values()]
    group_size = max(sizes) if max(sizes) < min(sizes) * 1.5 else min(sizes)
    groups = []
    for key, idx in buckets.items():
        padding = group_size - len(idx) % group_size
        if padding != group_size:
            notes.append(f"Add {padding} padding layers, may waste at most "
                         f"{padding / len(idx) * 100:.2f}% KV cache memory")
        n = cdiv(len(idx), group_size)
        groups += [KVGroup(tuple(idx[j::n]), key[1], key in recurrent_keys) for j in range(n)]
    return CacheLayout(tuple(groups), bs, page, tuple(notes))


CONSERVING_MEMORY_DOCS = "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."


def format_gib(n: int) -> str:
    """vllm/utils/mem_utils.py :: format_gib: round(b / GiB, 2), printed as a float."""
    return str(round(n / GiB, 2))


@dataclass(frozen=True)
class CoreResult:
    num_blocks: int
    kv_tokens: int
    concurrency: float
    max_model_len: int
    max_len_fit: int
    error: str | None
    lines: tuple[str, ...]
    warnings: tuple[str, ...]


def vllm_core(*, core: str, workers: Sequence[tuple[int, int]], layout: CacheLayout, max_model_len: int,
              auto_fit: bool, batched_tokens: int, state_blocks: int, override: int | None,
              longest: int, hint: str = "", capacity: Sequence[tuple[int, int]] | None = None,
              capacity_hint: str = "") -> CoreResult:
    """Block counting, fit check, max-length estimate and capacity lines of vLLM's core.

    ``workers`` are (available KV bytes, bytes per block) per worker; ``core`` is "0.34", "0.33",
    "0.2x", "0.1x" or "v0"; ``longest`` bounds the max-length search (the model's max position);
    ``hint``: 0.34's advice in the errors (``more_memory_hint``); ``capacity``: 0.34's reserved
    capacity per worker (available bytes, bytes per block), checked first, with ``capacity_hint``
    (``get_kv_cache_configs`` before warmup; the measured size is checked after it).
    """
    bs = layout.block_size
    lines: list[str] = []
    warnings: list[str] = []
    if override is not None:
        lines.append(f"Overriding num_gpu_blocks={min(a // b for a, b in workers)} with "
                     f"num_gpu_blocks_override={override}")
        workers = [(override * b, b) for _, b in workers]
    current = core in ("0.33", "0.34")  # 0.29+: the null block held back, one capacity line
    checks = [(a - b if current else a, b) for a, b in workers]

    def needed(length: int, bpb: int) -> int:
        return bpb * layout.blocks_per_request(length, batched_tokens, state_blocks)

    def estimate(avail: int, bpb: int, upper: int) -> int:
        if needed(1, bpb) > avail:
            return 0
        lo, hi = 1, upper
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if needed(mid, bpb) <= avail else (lo, mid - 1)
        return lo

    fit = min(estimate(a, b, max(longest, max_model_len)) for a, b in checks)
    length, error = max_model_len, None
    if core == "v0":
        blocks = min(max(a // b, 0) for a, b in workers)
        cpu = SWAP_SPACE // workers[0][1]
        lines.append(f"# GPU blocks: {blocks}, # CPU blocks: {cpu}")
        concurrency = blocks * bs / length
        lines.append(f"Maximum concurrency for {length} tokens per request: {concurrency:.2f}x")
        if blocks <= 0:
            error = ("No available memory for the cache blocks. Try increasing "
                     "`gpu_memory_utilization` when initializing the engine.")
        elif length > blocks * bs:
            error = (f"The model's max seq len ({length}) is larger than the maximum number of tokens "
                     f"that can be stored in KV cache ({blocks * bs}). Try increasing "
                     "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")
        return CoreResult(blocks, blocks * bs, concurrency, length, blocks * bs, error, tuple(lines), ())
    if auto_fit:
        if fit <= 0:
            error = ("Cannot auto-fit max_model_len: not enough GPU memory available to serve even a "
                     "single token. Try increasing `gpu_memory_utilization`.")
            return CoreResult(0, 0, 0.0, 0, 0, error, tuple(lines), ())
        if fit < max_model_len:
            limiting = min(checks, key=lambda w: estimate(w[0], w[1], max_model_len))
            lines.append(f"Auto-fit max_model_len: reduced from {max_model_len} to {fit} to fit in "
                         f"available GPU memory ({format_gib(limiting[0])} GiB available for KV cache)")
            length = fit
        else:
            lines.append(f"Auto-fit max_model_len: full model context length {max_model_len} fits in "
                         "available GPU memory")
    gb = format_gib if current else (lambda n: f"{n / GiB:.2f}")

    def fit_error(pairs: Sequence[tuple[int, int]], no_memory: str, serve_advice: str) -> str | None:
        """``_check_enough_kv_cache_memory`` over (available, bytes per block) pairs, with the advice
        each release gives when nothing fits and when one max-length request does not."""
        for avail, bpb in pairs:
            if avail <= 0:
                return f"No available memory for the cache blocks. {no_memory} See {CONSERVING_MEMORY_DOCS}"
            need = needed(length, bpb)
            if need > avail:
                est = estimate(avail, bpb, length)
                estimated = (f"Based on the available memory, the estimated maximum model length is {est}. "
                             if est > 0 else "")
                return (f"To serve at least one request with the {'model' if current else 'models'}'s max seq "
                        f"len ({length}), ({gb(need)} GiB KV cache is needed, which is larger than the "
                        f"available KV cache memory ({gb(avail)} GiB). {estimated}{serve_advice} See "
                        f"{CONSERVING_MEMORY_DOCS}")
        return None

    if core == "0.34":  # the reserved capacity first (before warmup), then the size measured after it
        def shorter(advice: str) -> str:
            return f"{advice} Decreasing `max_model_len` also reduces what is needed."
        if capacity is not None:
            error = fit_error([(a - b, b) for a, b in capacity], capacity_hint, shorter(capacity_hint))
        error = error or fit_error(checks, hint, shorter(hint))
    else:
        flag = ("`gpu_memory_utilization` (which also controls CPU memory on the CPU backend)"
                if core == "0.33" else "`gpu_memory_utilization`")
        error = fit_error(checks, more_memory_hint(False, 1.0) if core == "0.33" else
                          "Try increasing `gpu_memory_utilization` when initializing the engine.",
                          f"Try increasing {flag} or decreasing `max_model_len` when initializing the engine.")
    blocks = override if override is not None else min(max(a // b, 0) for a, b in workers)
    per_request = layout.blocks_per_request(length, batched_tokens, state_blocks)
    concurrency = blocks / per_request if per_request else 0.0
    if current or core == "0.2x":  # from 0.20.1 (kv_cache_utils.py get_kv_cache_capacity)
        tokens = int(concurrency * length)
    else:  # ≤ 0.20.0: num_blocks // num_groups × min block size
        tokens = blocks // len(layout.groups) * bs
    if error is None:
        if current:
            lines.append(f"GPU KV cache size: {tokens:,} tokens, Maximum concurrency for {length:,} "
                         f"tokens per request: {concurrency:.2f}x")
        else:
            lines.append(f"GPU KV cache size: {tokens:,} tokens")
            lines.append(f"Maximum concurrency for {length:,} tokens per request: {concurrency:.2f}x")
    return CoreResult(blocks, tokens, concurrency, length, fit, error, tuple(lines), tuple(warnings))


# ----------------------------------------------------------------------------- defaults
# The release a family name stands for where a rule changed inside the family: one that has what
# most of the family's releases have (the sampler kernel, batch defaults, MoE workspaces, rounding)
FAMILY_RELEASE = {"0.34": (0, 34, 0), "0.33": (0, 33, 0), "0.2x": (0, 24, 0), "0.17": (0, 18, 0), "0.11": (0, 15, 0),
                  "0.10": (0, 10, 1), "0.9": (0, 9, 0), "v0": (0, 7, 3), "v0-early": (0, 4, 0)}


def representative_release(setup: Setup) -> tuple[int, int, int]:
    """The release the user named, else the one its family name stands for (FAMILY_RELEASE)."""
    named = release_number(setup.release) if setup.release else None
    return named or FAMILY_RELEASE[setup.version]


def batch_defaults(version: str, total_bytes: int, device_kind: str, usage: str, max_model_len: int,
                   number: tuple[int, int, int]) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) when unset (vllm/engine/arg_utils.py
    ``_set_default_args_v1`` / ``get_batch_defaults`` of each release, §3.1 item 4, item 6):
    0.8.0–0.8.3 raise the token budget on H100/H200 by name and give every GPU 1024 sequences;
    0.8.4 also gives the others 256; 0.8.5 picks by memory (≥ 70 GiB); 0.9.0 leaves A100s out of
    that class (PR #17885); 0.28.0 adds ≥ 160 GiB cards (B200/B300) at 16384 tokens for the server too;
    0.34.0 keeps a GB10 (DGX Spark) on the small tier (``number``: the release,
    ``representative_release``)."""
    if version.startswith("v0"):  # chunked prefill off; on automatically above 32K with 2048 tokens
        return (2048 if max_model_len > 32768 else max(max_model_len, 2048)), 256
    llm = usage == "llm_class"
    name = device_kind.lower()
    by_name = "h100" in name or "h200" in name
    large = (16384 if llm else 8192), 1024
    small = (8192 if llm else 2048), 256
    if number < (0, 8, 4):
        return (large[0] if by_name else small[0]), 1024
    if number < (0, 8, 5):
        return large if by_name else small
    if number >= (0, 28, 0) and total_bytes >= 160 * GiB:
        return 16384, 1024
    big = (total_bytes >= 70 * GiB and (number < (0, 9, 0) or "a100" not in name)
           and not (number >= (0, 34, 0) and "gb10" in name))
    return large if big else small


def _check_length(setup: Setup, requested: int | None) -> tuple[int, bool]:
    derived = setup.model.max_position_embeddings
    if requested is None:
        return derived, False
    if requested == -1:
        return derived, True
    if requested == 0 or requested < -1:
        raise InputError("max_model_len", requested, "-1 (auto-fit) or a positive length")
    if requested > derived:
        raise InputError("max_model_len", requested,
                         f"at most the derived max_model_len (max_position_embeddings={derived} in the "
                         "model's config.json) — vLLM: User-specified max_model_len is greater than the "
                         "derived max_model_len; set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 to override")
    return requested, False


# ----------------------------------------------------------------------------- profile
def non_kv_terms(setup: Setup, m: ModelSpec, *, stage_weights: int, stage: int, stage_layers: range,
                 kv_heads_per_shard: int, batched: int, seqs: int, graphs: bool, max_model_len: int,
                 others: int = 0, extensible: bool = False, headroom: bool = False) -> NonKV:
    """vLLM's non-KV terms on one worker of pipeline stage ``stage`` (estimator.engines.non_kv);
    ``others``: bytes other processes hold on its device.

    ``extensible`` (0.34's extensible KV cache): the KV cache gets ``min(requested − used,
    headroom − margin) − transient`` (``measure_kv_cache_bytes``), where ``used`` is what stays
    resident after warmup (weights, non-torch memory, the captured graphs, the sampler's state) and
    the transient reserve is the profiled peak plus the CUDA-graph estimate. ``headroom``: the terms
    of the second branch, subtracted from the free memory at start-up: the CUDA context, every
    non-torch byte (the communicators set up before the snapshot too) and the margin."""
    lay, k, version, measured = setup.layout, setup.knobs, setup.version, setup.measured
    params = torch_param_bytes(m, stage_weights, stage=stage, tensor=lay.tensor)  # what cpu_offload_gb moves
    weights = params + rotary_cache_bytes(m)
    source = WEIGHTS_SOURCE
    pad = mxfp4_padding_bytes(m, lay.tensor, setup.mesh.device_kinds[0], stage_layers)
    if pad:
        weights += pad
        source += " + MXFP4 kernel padding (vllm mxfp4.py Mxfp4MoEMethod.create_weights)"
    if k["enable_lora"]:
        weights += lora_slot_bytes(m, lay.tensor, max_loras=k["max_loras"], max_lora_rank=k["max_lora_rank"])
        source += " + LoRA slots (" + LORA_SOURCE + ")"
    if k["cpu_offload_gb"]:  # vllm/model_executor/models/utils.py maybe_offload_to_cpu: per-GPU budget
        weights -= min(int(k["cpu_offload_gb"] * GiB), params)
        source += " − cpu_offload_gb"
    v0 = version.startswith("v0")
    release = representative_release(setup)
    if v0 and k["use_flashinfer_sampler"] is not None:
        raise InputError("use_flashinfer_sampler", k["use_flashinfer_sampler"],
                         f"unset for the V0 engine (version {version}): the choice of top-k/top-p kernel "
                         "kvfit models is V1's")
    # FlashInfer is CUDA-only: on ROCm TopKTopPSampler takes forward_native (or AITER's forward_hip,
    # opt-in), vllm/v1/sample/ops/topk_topp_sampler.py ``TopKTopPSampler.__init__``
    flashinfer = k["use_flashinfer_sampler"]
    if rocm(setup.mesh.device_kinds[0]):
        if flashinfer:
            raise InputError("use_flashinfer_sampler", flashinfer,
                             "false or unset on AMD cards: vLLM samples natively on ROCm (FlashInfer is CUDA-only)")
        flashinfer = False
    profiled = encoder_items(m, version, batched=batched, seqs=seqs, max_model_len=max_model_len,
                             limit=k["limit_mm_per_prompt"])
    # V0 shrinks max_num_seqs to the dummy sequences that carry the images (``limit`` each), on
    # every stage, so only that many rows reach the last stage's sampler; their prompts hold every
    # embedding, however many tokens that is
    rows, tokens = min(seqs, batched), batched
    if v0 and profiled:
        rows, tokens = v0_dummy_sequences(m, batched, seqs, k["limit_mm_per_prompt"] or 1)
    # kvfit holds the vision tower on the first stage (estimator.model.weights), so its dummy run is
    # charged there; vLLM's V1 profile_run has no first-rank check, which a tower built on every
    # stage would also run: an approximation for pipeline-parallel multimodal models
    images = profiled if stage == 0 else 0
    mrv2 = not v0 and model_runner_v2(release, m)
    per_logit = (mrv2_sampler_bytes_per_logit(release, flashinfer) if mrv2 else
                 sampler_bytes_per_logit(version, rows, m.vocab_size, flashinfer, release))
    act = activation_band(m, tensor=lay.tensor, kv_heads_per_shard=kv_heads_per_shard, tokens=tokens,
                          sampler_rows=rows, last_stage=stage == lay.pipeline - 1,
                          sampler_bytes_per_logit=per_logit,
                          # DP + expert parallel (EP = DP x TP): the naive all-to-all gathers every DP
                          # rank's tokens before the experts (non_kv.forward_bytes); V1 only
                          moe_gather=lay.data if (m.is_moe and lay.data > 1 and lay.expert > 1
                                                  and lay.expert == lay.data * lay.tensor
                                                  and not v0) else 1,
                          images=images, encoder_outputs_held=not v0,
                          hidden_held=v0 or (version != "0.9" and release >= (0, 9, 2)),
                          moe_chunk=fused_moe_chunk_size(release), modular_moe=release >= (0, 14, 0),
                          # the encoder budget: max_num_batched_tokens, or one item if that is larger
                          pad_encoder_outputs_to=batched if (0, 11, 0) <= release < (0, 12, 0) else 0)
    state = (mrv2_sampler_state_bytes(seqs, m.vocab_size)  # the sampler's persistent penalty state
             if mrv2 and release >= (0, 27, 0) and stage == lay.pipeline - 1 else 0)
    kind = setup.mesh.device_kinds[0]
    link = interconnect(kind)

    def communicators(after_init: bool) -> Band:
        """Non-torch memory the profile charges, NCCL's NVLS buffers included (not in V0 from 0.6.5,
        whose TP logs show 0.2–0.43 GiB in all); ``after_init``: the snapshot follows NCCL's set-up."""
        band = non_torch_band(NAME, version, tensor=lay.tensor, pipeline=lay.pipeline, link=link,
                              custom_ar=not k["disable_custom_all_reduce"], data=1 if v0 else lay.data,
                              snapshot_after_init=after_init)
        if version == "v0":
            return band
        return band + nvls_band(lay.tensor, kind, link, snapshot_after_init=after_init, nccl=nccl_release(release))

    non_torch = communicators(version in SNAPSHOT_AFTER_INIT and not headroom)
    non_torch_source = NON_TORCH_SOURCE
    if version != "v0" and nvls_applies(lay.tensor, kind, link):
        non_torch_source += "; + NVLS multicast buffers (estimator.engines.non_kv nvls_band, NVIDIA/nccl nvls.cc)"
    if version in DEVICE_WIDE_NON_TORCH:
        context = measured.get("context_bytes")
        non_torch = non_torch + (CONTEXT if context is None else Band.exact(context)) + Band.exact(others)
        non_torch_source += "; + the CUDA context and other processes' memory (" + DEVICE_WIDE_SOURCE + ")"
    terms = [
        term("weights", Band.exact(weights), source, measured.get("weights_bytes")),
        term("activation", act, f"{ENCODER_SOURCE} + {ACTIVATION_SOURCE}" if images else ACTIVATION_SOURCE,
             measured.get("activation_bytes")),
        term("non_torch", non_torch, non_torch_source, measured.get("non_torch_bytes")),
        term("cuda_graph", graph_band(m, lay.tensor, kv_heads_per_shard, seqs, batched,
                                      k["max_cudagraph_capture_size"]) if graphs else Band.exact(0),
             CUDA_GRAPH_SOURCE, measured.get("cuda_graph_bytes")),
    ]
    if state:  # resident, beside the profile's transient peak
        terms.append(Term("sampler_state", Band.exact(state), "vllm/v1/worker/gpu/sample/penalties.py "
                          "(Model Runner V2's penalty state, charged from 0.27)"))
    if extensible:
        floor = MARGIN_FLOOR["rocm" if rocm(kind) else "cuda"]
        pre_snapshot = 0
        if headroom and measured.get("non_torch_bytes") is not None:  # the measured increase after it
            pre_snapshot = non_torch.central - communicators(after_init=True).central
        terms += extensible_terms(terms, headroom, measured.get("context_bytes"), floor, pre_snapshot)
    modelled = [t for t in terms if not t.measured and t.name not in ("weights", "sampler_state")
                and t.band.central]  # the sampler's state is exact, as the weights are
    if modelled:
        residual = residual_band(NAME, version, lay.tensor, setup.mesh.stats[0].bytes_limit)
        terms.append(Term("residual", residual, RESIDUAL_SOURCE))
    return NonKV(tuple(terms))


def graph_band(m: ModelSpec, tensor: int, kv_heads_per_shard: int, seqs: int, batched: int,
               largest: int | None) -> Band:
    """The CUDA-graph estimate of the default FULL_AND_PIECEWISE mode: PIECEWISE graphs at every
    capture size, FULL (uniform decode) graphs at the sizes up to max_num_seqs (a 0.21.0 log:
    "PIECEWISE=51 (largest=512), FULL=35 (largest=256)")."""
    sizes = cudagraph_capture_sizes(seqs, batched, largest)
    return capture_graph_band(m, tensor=tensor, kv_heads_per_shard=kv_heads_per_shard,
                              modes=(sizes, [s for s in sizes if s <= seqs]))


def compute(setup: Setup, which: str) -> EnginePlan:
    mesh, lay, k, version = setup.mesh, setup.layout, setup.knobs, setup.version
    if lay.expert not in (1, lay.data * lay.tensor):
        # --enable-expert-parallel puts the experts over every data × tensor rank
        # (vllm/model_executor/layers/fused_moe/config.py FusedMoEParallelConfig.make: ep_size =
        # dp_size · tp_size); there is no smaller expert group to ask for
        raise InputError("expert_parallel_size", lay.expert,
                         f"1 or data × tensor = {lay.data * lay.tensor} for vLLM (--enable-expert-parallel "
                         "spans every data and tensor rank)")
    m = apply_model_knobs(setup.model, k["quantization"], k["dtype"])
    kv_bytes_override = k["kv_cache_memory_bytes"]
    pinned = kv_bytes_override is not None or k["num_gpu_blocks_override"] is not None
    extensible = uses_extensible_cache(version, k["enable_extensible_kv_cache"], pinned)
    util = k["gpu_memory_utilization"] or (1.0 if extensible else 0.92 if version in UTIL_092_VERSIONS else 0.9)
    length, auto_fit = _check_length(setup, k["max_model_len"])
    if auto_fit and version.startswith("v0"):
        raise InputError("max_model_len", -1, "a positive length (auto-fit needs the V1 engine)")
    kv_dtype = KV_DTYPES[k["kv_cache_dtype"]] or default_kv_dtype(m)
    block = k["block_size"] or (MLA_BLOCK_SIZE if m.is_mla else DEFAULT_BLOCK_SIZE)
    geom = geometry(m, lay, kv_cache_dtype=kv_dtype, page_size=block)
    kvs = kv_specs(m, lay.tensor, kv_dtype)
    cache = cache_layout(kvs, block, lambda kv: kv.token_bytes, mla=m.is_mla)
    if version.startswith("v0"):  # one group of every KV-holding layer, sliding charged as full
        cache = CacheLayout((KVGroup(tuple(i for i, kv in enumerate(kvs) if holds_kv(kv))),),
                            block, block * max(kv.token_bytes for kv in kvs), ())
    first = mesh.stats[0]
    release = representative_release(setup)
    d_tokens, d_seqs = batch_defaults(version, first.bytes_limit, mesh.device_kinds[0], k["usage_context"],
                                      length, release)
    batched = k["max_num_batched_tokens"] or d_tokens
    seqs = k["max_num_seqs"] or d_seqs
    graphs = version in GRAPH_VERSIONS and not k["enforce_eager"]
    group_size = lay.tensor * lay.pipeline
    state_blocks = 2 if k["enable_prefix_caching"] else 1
    if kv_bytes_override is not None and release < (0, 10, 2) and (setup.release or version != "0.10"):
        raise InputError("kv_cache_memory_bytes", kv_bytes_override,  # vllm/config/cache.py from 0.10.2
                         f"unset before vLLM 0.10.2 (version {setup.release or version}); set "
                         "gpu_memory_utilization or num_gpu_blocks_override instead")
    ceil = release >= (0, 14, 0)

    worst, capacity = None, {}
    for replica in range(lay.data):
        workers, rows, nonkvs, startup_error = [], [], [], None
        for rank in range(group_size):
            i = replica * group_size + rank
            stats = mesh.stats[i]
            s = lay.coordinates(i)[1]
            stage = geom.stages[s]
            worker = dict(stage_weights=stage.weight_bytes, stage=s, stage_layers=stage.layers,
                          kv_heads_per_shard=geom.kv_heads_per_shard, batched=batched, seqs=seqs,
                          graphs=graphs, max_model_len=length, others=stats.bytes_in_use, extensible=extensible)
            nk = non_kv_terms(setup, m, **worker)
            requested = scaled(stats.bytes_limit, util, ceil=ceil)
            budget = requested
            avail = requested - nk.total(which)
            if extensible:  # min(requested − used, headroom − margin) − transient, at each end of the band
                graph_estimate = next(t.band.pick(which) for t in nk.terms if t.name == "cuda_graph")
                capacity[i] = avail + graph_estimate  # the reserved capacity: the profile's non-KV and estimate
                by_headroom = non_kv_terms(setup, m, **worker, headroom=True)
                if stats.free - by_headroom.total(which) < avail:
                    budget, nk, avail = stats.free, by_headroom, stats.free - by_headroom.total(which)
            context = setup.measured.get("context_bytes", CONTEXT.central)
            if stats.free - context < requested and startup_error is None and not extensible \
                    and version not in NO_STARTUP_CHECK:  # 0.34's cache only caps the budget
                startup_error = (f"Free memory on device cuda:{rank} ({stats.free / GiB:.2f}/"
                                 f"{stats.bytes_limit / GiB:.2f} GiB) on startup is less than desired GPU "
                                 f"memory utilization ({util}, {requested / GiB:.2f} GiB). Decrease GPU "
                                 "memory utilization or reduce GPU memory used by other processes.")
            if kv_bytes_override is not None:
                avail = kv_bytes_override
            bpb = cache.bytes_per_block(stage.layers)
            if extensible and bpb:  # blocks_within: each layer segment in whole granules
                avail = committable_bytes(avail, bpb // cache.layer_page_bytes)
            workers.append((avail, bpb))
            nonkvs.append((nk, budget, avail, stats, i))
            rows.append({"device": str(mesh.devices[i]), "stage": s, "total_bytes": stats.bytes_limit,
                         "budget_bytes": budget, "non_kv_bytes": nk.total(which),
                         "kv_available_bytes": avail, "bytes_per_block": bpb,
                         "blocks_fit": max(avail // bpb, 0) if bpb else 0})
        core = vllm_core(core=CORE[version], workers=[w for w in workers if w[1]], layout=cache,
                         max_model_len=length, auto_fit=auto_fit, batched_tokens=batched,
                         state_blocks=state_blocks, override=k["num_gpu_blocks_override"],
                         longest=m.max_position_embeddings, hint=more_memory_hint(extensible, util),
                         capacity=[(capacity[replica * group_size + j], w[1]) for j, w in enumerate(workers)
                                   if w[1]] if extensible else None,
                         capacity_hint=more_memory_hint(extensible, util, after_warmup=False))
        tight = min(range(len(workers)),
                    key=lambda j: (workers[j][0] // workers[j][1]) if workers[j][1] else 2**62)
        if pinned and startup_error is None:  # no profiling stands between a pinned pool and memory
            startup_error = pinned_pool_error(setup, core.num_blocks, workers, nonkvs,
                                              "kv_cache_memory_bytes" if kv_bytes_override is not None
                                              else "num_gpu_blocks_override")
        if worst is None or core.num_blocks < worst[0].num_blocks:
            worst = (core, nonkvs[tight], workers[tight], startup_error, rows)
    core, (nk, requested, avail, stats, idx), (_, bpb), startup_error, rows = worst
    weights, act = nk.get("weights"), nk.get("activation")
    lines = []
    if version.startswith("v0"):  # V0's worker.py memory summary (V1 prints neither line)
        lines.append(f"the current vLLM instance can use total_gpu_memory ({stats.bytes_limit / GiB:.2f}GiB) "
                     f"x gpu_memory_utilization ({util:.2f}) = {requested / GiB:.2f}GiB")
        lines.append(f"model weights take {weights / GiB:.2f}GiB; non_torch_memory takes "
                     f"{nk.get('non_torch') / GiB:.2f}GiB; PyTorch activation peak memory takes "
                     f"{act / GiB:.2f}GiB; the rest of the memory reserved for KV Cache is "
                     f"{avail / GiB:.2f}GiB.")
    if graphs and not (not version.startswith("v0") and model_runner_v2(release, m)):
        # gpu_model_runner.py's line (Model Runner V1); Model Runner V2's profile_cudagraph_memory logs none
        lines.append(f"Estimated CUDA graph memory: {nk.get('cuda_graph') / GiB:.2f} GiB total")
    if not version.startswith("v0") and release >= (0, 9, 1):  # gpu_worker.py from 0.9.1 (PR #19312)
        shown = format_gib(capacity.get(idx, avail)) if ceil else gib2(avail)  # 0.34: the reserved capacity
        lines.append(f"Available KV cache memory: {shown} GiB")
    lines += list(cache.notes) + list(core.lines)
    if extensible and core.error is None:  # extend_kv_cache, with each segment's granule rounding
        physical = physical_bytes(core.num_blocks, bpb // cache.layer_page_bytes, cache.layer_page_bytes)
        lines.append(f"Extended KV cache to {core.num_blocks} blocks ({physical / GiB:.2f} GiB).")
    estimated = estimated_flags(lines, ("the current vLLM instance can use", "Setting attention block size",
                                        "Padding mamba page size", "Add "),
                                bool(not pinned and any(t.name == "residual" for t in nk.terms)))
    error = startup_error or core.error
    warnings = list(core.warnings)
    if core.error is None and core.max_len_fit and core.max_len_fit < m.max_position_embeddings \
            and k["max_model_len"] is None:
        warnings.append(f"the pool holds one request of at most {core.max_len_fit:,} tokens")
    def origin(name: str) -> str:
        return "set" if k[name] else "default for this GPU class"

    warnings.append(f"max_num_batched_tokens={batched} ({origin('max_num_batched_tokens')}), "
                    f"max_num_seqs={seqs} ({origin('max_num_seqs')}; per data-parallel rank)")
    null = 0 if version.startswith("v0") else 1
    knobs = {**k, "gpu_memory_utilization": util, "block_size": cache.block_size,
             "max_num_batched_tokens": batched, "max_num_seqs": seqs, "max_model_len": core.max_model_len}
    return EnginePlan(
        engine=NAME, version=version, model=m.name, mesh=mesh.describe(), layout=lay.name, knobs=knobs,
        scope="per device", kv_cache_dtype=geom.kv_cache_dtype, block_size=cache.block_size,
        kv_bytes_per_token=bpb // cache.block_size if cache.block_size else 0, bytes_per_block=bpb,
        total_bytes=stats.bytes_limit, budget_bytes=requested, non_kv=nk, non_kv_bytes=nk.total(which),
        kv_available_bytes=avail, kv_bytes=core.num_blocks * bpb, num_blocks=core.num_blocks,
        usable_blocks=max(core.num_blocks - null, 0), pool_tokens=core.num_blocks * cache.block_size,
        kv_tokens=core.kv_tokens, max_model_len=core.max_model_len, max_concurrency=core.concurrency,
        max_model_len_fit=min(core.max_model_len, core.max_len_fit), num_replicas=lay.data,
        starts=error is None, error=error, log_lines=tuple(lines), warnings=tuple(warnings),
        devices=tuple(rows), estimated_lines=estimated)


def pinned_pool_error(setup: Setup, blocks: int, workers: list, nonkvs: list, knob: str) -> str | None:
    """CUDA out of memory where a pinned pool (no profiling) outgrows a worker's device: what is left
    after the CUDA context, the weights and the non-torch memory."""
    context = setup.measured.get("context_bytes", CONTEXT.central)
    for (_avail, bpb), (nk, _requested, _a, stats, _i) in zip(workers, nonkvs, strict=True):
        room = stats.free - context - nk.get("weights") - nk.get("non_torch")
        if blocks * bpb > room:
            return (f"CUDA out of memory: the KV cache of {blocks * bpb / GiB:.2f} GiB that {knob} asks for "
                    f"does not fit the {max(room, 0) / GiB:.2f} GiB left on the device after the weights "
                    "(torch.OutOfMemoryError when the KV cache tensors are allocated)")
    return None


def gib2(n: int) -> str:
    return f"{n / GiB:.2f}"


def plan(setup: Setup, band: bool = True) -> EnginePlan:
    return with_band(compute, setup, band)


PROFILE_DOC = __doc__
