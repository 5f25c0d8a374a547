"""What XLA says about one compiled step, per device, and the caveats that go with the numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FIELDS = {  # StepMemory field -> CompiledMemoryStats attribute
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
    "generated_code_bytes": "generated_code_size_in_bytes",
    "peak_bytes": "peak_memory_in_bytes",
}

BASE_CAVEAT = (
    "Numbers are XLA's buffer assignment for kvfit's reference decoder (estimator.xla), per device: "
    "blockwise (flash-style) attention, MoE dispatch sorted by expert in 64-row blocks (as "
    "vLLM's fused MoE), greedy sampling from fp32 logits. A serving engine with other kernels "
    "(Pallas/Triton attention, fused MoE) allocates "
    "other temporaries; weights and KV pool are exact, temp bytes are this program's scratch.")
CPU_CAVEAT = (
    "Compiled by XLA:CPU: CPU temp bytes differ from GPU/TPU (XLA:CPU upcasts bf16 dots to f32 "
    "and fuses differently, so temps usually run larger); use them to check shapes, sharding and "
    "donation, not as a GPU/TPU memory budget.")
TPU_CAVEAT = (
    "Deviceless TPU compile (libtpu, topology {topology}): per-chip numbers. XLA:TPU tiles the two "
    "minor dims of every array (8x128 / 16x128 for bf16); a KV pool whose minor dims do not fill "
    "tiles (head_dim < 128) is relaid out by the step, which shows as temp bytes up to a padded "
    "copy of the pool; TPU engines pad head_dim to 128 to avoid it.")
PROXY_CAVEAT = (
    "PROXY: the mesh is {target} but this compile ran on {backend} (allow_cpu_proxy=True). These "
    "temp bytes are NOT a {target} budget.")


@dataclass(frozen=True)
class StepMemory:
    """``compiled.memory_analysis()`` of one step on one stage, per device (None: not reported)."""

    step: str  # "prefill" or "decode"
    stage: int
    devices: int  # devices of the stage sub-mesh the step was compiled for
    tokens_per_replica: int  # prefill tokens, or decode batch
    sequences_per_replica: int  # sequences sampled
    argument_bytes: int | None
    output_bytes: int | None
    alias_bytes: int | None
    temp_bytes: int | None
    generated_code_bytes: int | None
    peak_bytes: int | None  # XLA's own peak estimate (its meaning differs by backend)
    weight_bytes: int  # the weight arguments' shards, per device
    kv_pool_bytes: int  # the KV pool argument's shard, per device (donated)
    input_bytes: int  # tokens / hidden states, positions, page tables, per device
    lower_seconds: float
    compile_seconds: float

    @property
    def total_bytes(self) -> int | None:
        """XLA's documented lower bound: code + arguments + outputs − aliased + temp."""
        parts = (self.generated_code_bytes, self.argument_bytes, self.output_bytes, self.temp_bytes)
        if any(p is None for p in parts):
            return None
        return sum(parts) - (self.alias_bytes or 0)

    @property
    def pool_donated(self) -> bool:
        return self.alias_bytes is not None and self.alias_bytes >= self.kv_pool_bytes


@dataclass(frozen=True)
class CompileReport:
    """Prefill and decode steps of a model on a mesh, compiled abstractly; bytes per device."""

    model: str
    mesh: str
    layout: str
    target_platform: str  # what the mesh is made of
    backend: str  # what compiled it
    device_kind: str
    proxy: bool  # compiled on another platform than the mesh's (allow_cpu_proxy=True)
    topology: str | None  # deviceless TPU topology, if any
    jax_version: str
    pages_per_replica: int
    page_size: int
    layer_loop: str
    steps: tuple[StepMemory, ...]
    caveat: str

    @property
    def activation_bytes(self) -> int:
        """Per-device activation memory: the largest temp of any step and stage."""
        return max((s.temp_bytes or 0) for s in self.steps)

    @property
    def compile_seconds(self) -> float:
        return sum(s.lower_seconds + s.compile_seconds for s in self.steps)

    def step(self, name: str, stage: int = 0) -> StepMemory:
        for s in self.steps:
            if s.step == name and s.stage == stage:
                return s
        raise KeyError(f"no {name} step for stage {stage}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = [dict(asdict(s), total_bytes=s.total_bytes) for s in self.steps]
        out["activation_bytes"] = self.activation_bytes
        return out

    def to_markdown(self) -> str:
        head = (f"**{self.model}** on {self.mesh}, layout {self.layout} — compiled by "
                f"{self.backend} ({self.device_kind}){' [PROXY]' if self.proxy else ''}, "
                f"jax {self.jax_version}, {self.pages_per_replica} pages × {self.page_size}\n\n")
        rows = ["| step | stage | tokens/replica | weights | KV pool | inputs | argument | output | "
                "alias | temp | code | compile s |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in self.steps:
            rows.append(f"| {s.step} | {s.stage} | {s.tokens_per_replica:,} | {_b(s.weight_bytes)} | "
                        f"{_b(s.kv_pool_bytes)} | {_b(s.input_bytes)} | {_b(s.argument_bytes)} | "
                        f"{_b(s.output_bytes)} | {_b(s.alias_bytes)} | {_b(s.temp_bytes)} | "
                        f"{_b(s.generated_code_bytes)} | {s.lower_seconds + s.compile_seconds:.2f} |")
        return head + "\n".join(rows) + f"\n\n{self.caveat}\n"


def _b(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def read_memory_analysis(compiled: Any) -> dict[str, int | None]:
    """The fields of ``compiled.memory_analysis()``, each read with getattr (None if absent)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:
        stats = None
    out: dict[str, int | None] = {}
    for field, attr in FIELDS.items():
        value = getattr(stats, attr, None) if stats is not None else None
        out[field] = None if value is None else int(value)
    return out


__all__ = ["BASE_CAVEAT", "CPU_CAVEAT", "PROXY_CAVEAT", "TPU_CAVEAT", "CompileReport", "StepMemory",
           "read_memory_analysis"]
