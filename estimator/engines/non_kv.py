"""The analytic model of what a serving engine holds besides the KV cache, per device, with bands.

Engines measure this at start-up (vLLM: a dummy forward pass, a dummy sampler run and a dummy
CUDA-graph capture, reference/engines.md §3.1; TRT-LLM: dummy requests through the executor, §5.2)
or hide it in a fixed reserve (SGLang §4.1, tpu-inference §6.1). kvfit predicts it from the
model and the batch knobs, and says how sure it is: every term is a ``Band`` (low, central,
high) and the profiles carry the band into KV tokens.

Terms (bytes on one device):

- ``weights``: the device's weight shard (estimator.geometry), plus the rotary cos/sin cache
  vLLM and SGLang keep beside the weights (max_position × head_dim, model dtype). Exact.
- ``activation``: the profile pass's transient peak, the larger of
  * forward: ``T · a · (3·hidden + max(attention, mlp))`` for ``T`` batched tokens, activation
    width ``a`` (2 B; 4 B for fp32 models), ``attention = 2·q/tp + 2·kv/tp`` (projections and the
    attention output), ``mlp = 3·intermediate/tp`` (gate/up output and the activated product), or
    for MoE layers ``top_k · (max(2·moe_inter/tp, hidden) + moe_inter/tp)`` (the fused-MoE
    caches). Calibrated on vLLM #10517 (R1/R2: 2.07 and 2.99 GiB at 20,000 and 29,000 tokens for
    Llama-3.1-8B; the formula gives 2.06 and 2.99).
  * sampler: ``S · vocab · 10 B`` for ``S`` sampled rows: bf16 logits, their fp32 copy and fp32
    probabilities (vLLM's dummy sampler run, §3.1 item 4); public H100 logs of Llama-3.1-8B at
    max_num_seqs 1024 report 1.21–1.24 GiB, the formula 1.22. High end: 22 B (a sort-based
    top-k/top-p path adds sorted values and int64 indices).
  Band: ×0.9 … ×1.35 of the forward term (the sampler term has its own low/high bytes per logit).
- ``non_torch``: memory the process gains outside the torch allocator (cuBLAS workspaces, NCCL
  and custom all-reduce buffers); a stated constant per tensor-parallel size and GPU class.
- ``cuda_graph``: the dummy CUDA-graph capture vLLM subtracts since v0.21 (§3.1); a constant per
  GPU class.
- ``context``: the CUDA context and libraries already resident when an engine reads free memory
  (SGLang, TRT-LLM measure free memory, so this comes off their budget; vLLM's budget is a share
  of total memory and ignores it).

Each constant below names where its value comes from. They are estimates: the bands are meant to
contain the start-up logs we know of, and ``tokens_band`` on every EnginePlan shows what they do
to the KV capacity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from estimator.model_spec import ModelSpec
from meshes.catalog import GiB


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


# ----------------------------------------------------------------------------- constants
# GPU classes follow vLLM's batch defaults (engines.md §3.1 item 6): "large" ≥ 160 GiB,
# "hbm" ≥ 70 GiB and not an A100, "other" for the rest.
GPU_CLASSES = ("large", "hbm", "other")

SAMPLER_BYTES_PER_LOGIT = (6, 10, 22)  # low, central, high; see the module docstring
ACTIVATION_BAND = (0.9, 1.0, 1.35)

# non-torch memory: engines.md §3.1 (vLLM total_consumed − weights), §10.3 (llm-d planner:
# 0.15–0.6 GiB). Single GPU: public vLLM "non_torch_memory takes X GiB" lines span 0.01–0.65 GiB;
# H100 V1 logs 0.32 and 0.35, R1 (RTX 3090) 0.35 → central 0.33. Tensor-parallel groups add NCCL
# and custom all-reduce buffers: NVLink-class parts (hbm, large) 0.5–2.0 GiB (R4: SGLang TP4 on
# H100 leaves ~1.4 GiB unexplained by weights), PCIe parts 0.2–1.0 GiB.
NON_TORCH = {
    "single": Band.of(0.05 * GiB, 0.33 * GiB, 0.65 * GiB),
    "tp-hbm": Band.of(0.5 * GiB, 1.25 * GiB, 2.0 * GiB),
    "tp-other": Band.of(0.2 * GiB, 0.5 * GiB, 1.0 * GiB),
}
NON_TORCH_SOURCE = ("engines.md §3.1 (non-torch part of total_consumed), §10.3 (llm-d: 0.15–0.6 GiB); "
                    "public vLLM 'non_torch_memory takes' lines, R1 (0.35 GiB), R4")

# CUDA-graph memory vLLM subtracts (engines.md §3.1, default since v0.21.0). Public
# "Estimated CUDA graph memory: X GiB total" lines: 0.42, 0.59, 0.64, 0.94 GiB; a 27B model
# 2.83 GiB estimated (0.72 actual).
CUDA_GRAPH = {
    "large": Band.of(0.3 * GiB, 0.75 * GiB, 2.0 * GiB),
    "hbm": Band.of(0.3 * GiB, 0.75 * GiB, 2.0 * GiB),
    "other": Band.of(0.15 * GiB, 0.4 * GiB, 1.0 * GiB),
}
CUDA_GRAPH_SOURCE = "engines.md §3.1 (CUDA graphs); public 'Estimated CUDA graph memory' lines 0.42–0.94 GiB"

# CUDA context + libraries resident before an engine reads free memory. meshes/catalog.py keeps
# 500 MiB for it; TRT-LLM #1188 (R5, A4000) leaves ~0.45 GiB, TRT-LLM #2789 (H100) ~0.95 GiB.
CONTEXT = Band.of(0.3 * GiB, 0.5 * GiB, 0.95 * GiB)
CONTEXT_SOURCE = ("meshes/catalog.py _CONTEXT_RESERVE (500 MiB); TRT-LLM #1188 (R5) and #2789 start-up "
                  "logs (0.45–0.95 GiB); engines.md §4.1, §5.2 (free memory is measured)")

# TRT-LLM TRT-engine runtime (legacy C++ path): logits buffers. R5 (TRT-LLM #1188, Qwen2.5-0.5B,
# max_num_tokens 8192, max_batch_size 2048, vocab 151,936): runtime buffers 2.66 GB ≈ 2.3 B per
# (token × vocab) — fp16 context logits — and decoder 5.76 GB ≈ 20 B per (batch × beam × vocab).
TRT_RUNTIME_BYTES_PER_LOGIT = 2
TRT_DECODER_BYTES_PER_LOGIT = 20
TRT_LEGACY_SOURCE = "engines.md §9.20 and R5 (TRT-LLM #1188: runtime buffers 2.66 GB, decoder 5.76 GB)"


def gpu_class(total_bytes: int, device_kind: str = "") -> str:
    """vLLM's GPU class for batch defaults (engines.md §3.1 item 6)."""
    if total_bytes >= 160 * GiB:
        return "large"
    if total_bytes >= 70 * GiB and "a100" not in device_kind.lower():
        return "hbm"
    return "other"


def non_torch_band(tensor: int, cls: str) -> Band:
    if tensor <= 1:
        return NON_TORCH["single"]
    return NON_TORCH["tp-hbm" if cls in ("hbm", "large") else "tp-other"]


def activation_width(model: ModelSpec) -> int:
    """Bytes of one activation element: the model dtype, at least 2 (fp8 models run in bf16)."""
    return 4 if model.weight_bytes_per_param == 4 else 2


def forward_bytes_per_token(model: ModelSpec, tensor: int, kv_heads_per_shard: int) -> int:
    """Peak live bytes per batched token of one decoder layer on one tensor shard."""
    a = activation_width(model)
    h, tp = model.hidden_size, tensor
    q = model.num_attention_heads * (model.qk_nope_head_dim + model.qk_rope_head_dim
                                     if model.is_mla else model.head_dim)
    attention = 2 * -(-q // tp) + 2 * kv_heads_per_shard * model.head_dim
    mlp = 3 * -(-model.intermediate_size // tp)
    if model.is_moe:
        mi = -(-model.moe_intermediate_size // tp)
        moe = model.num_experts_per_token * (max(2 * mi, h) + mi)
        mlp = max(mlp if model.first_dense_layers else 0, moe)
    return a * (3 * h + max(attention, mlp))


def rotary_cache_bytes(model: ModelSpec) -> int:
    """vLLM/SGLang rotary cos/sin cache: [max_position, rotary dim] in the model dtype (R1: the
    32 MiB between Llama-3.1-8B's 14.96 GiB of parameters and vLLM's 'weights take 14.99GiB')."""
    dim = model.qk_rope_head_dim if model.is_mla else model.head_dim
    return model.max_position_embeddings * dim * activation_width(model)


def activation_band(model: ModelSpec, *, tensor: int, kv_heads_per_shard: int, tokens: int,
                    sampler_rows: int, last_stage: bool = True) -> Band:
    """Transient activation peak of a profile pass: max(forward, sampler), with its band."""
    forward = tokens * forward_bytes_per_token(model, tensor, kv_heads_per_shard)
    rows = sampler_rows if last_stage else 0
    lo, mid, hi = (rows * model.vocab_size * b for b in SAMPLER_BYTES_PER_LOGIT)
    f_lo, f_mid, f_hi = (forward * f for f in ACTIVATION_BAND)
    return Band.of(max(f_lo, lo), max(f_mid, mid), max(f_hi, hi))


ACTIVATION_SOURCE = ("estimator/engines/non_kv.py forward + sampler model (engines.md §3.1 item 4); "
                     "calibrated on R1/R2 (vLLM #10517) and public H100 vLLM logs")


def term(name: str, band: Band, source: str, measured: int | None = None) -> Term:
    """A term, or the caller's measured value in its place (exact, marked as measured)."""
    if measured is not None:
        return Term(name, Band.exact(measured), "measured (given by the caller)", True)
    return Term(name, band, source)


__all__ = ["ACTIVATION_SOURCE", "CONTEXT", "CONTEXT_SOURCE", "CUDA_GRAPH", "CUDA_GRAPH_SOURCE",
           "GPU_CLASSES", "NON_TORCH", "NON_TORCH_SOURCE", "Band", "NonKV", "Term", "activation_band",
           "activation_width", "forward_bytes_per_token", "gpu_class", "non_torch_band",
           "rotary_cache_bytes", "term"]
