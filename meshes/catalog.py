"""Accelerators as facts: capacity, what the runtime lets you use, bandwidth, peak bf16 FLOP/s.

Each entry cites where its numbers come from. ``usable_bytes`` is what a process can actually
allocate where the runtime keeps some for itself (CUDA context, TPU runtime); it is the budget a
simulated device reports as ``bytes_limit``.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshes.validation import InputError, check_choice

GiB = 1024**3
GB = 1000**3


@dataclass(frozen=True)
class DeviceSpec:
    """One kind of accelerator."""

    name: str
    platform: str  # "gpu" | "tpu" | "cpu"
    memory_bytes: int  # physical memory capacity
    usable_bytes: int  # what one process can allocate (<= memory_bytes)
    hbm_bandwidth: float  # bytes per second
    peak_bf16_flops: float  # dense, no sparsity
    device_kind: str = ""  # what jax.Device.device_kind reports, for matching live devices
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.usable_bytes <= self.memory_bytes:
            raise InputError(f"{self.name}.usable_bytes", self.usable_bytes,
                             f"in (0, memory_bytes={self.memory_bytes}]")


CATALOG: dict[str, DeviceSpec] = {}


def _add(spec: DeviceSpec) -> None:
    CATALOG[spec.name] = spec


# --- NVIDIA -----------------------------------------------------------------------------------
# H100 SXM5 80GB: 80 GiB HBM3 (nvidia-smi 81559 MiB), 3.35 TB/s, 989 TFLOP/s dense bf16
# (NVIDIA H100 datasheet). Usable: 81080 MiB seen by the CUDA allocator on an H100 with jax 0.11.2
# (reference/jax-notes.md §3: 0.75 x 85,018,542,080 B).
_add(DeviceSpec("H100-80GB", "gpu", 81559 * 2**20, 85_018_542_080, 3.35e12, 989e12,
                "NVIDIA H100 80GB HBM3", ("H100", "H100-SXM", "H100-SXM-80GB")))

# Rule for GPUs below, unless an entry says otherwise: ``usable_bytes`` = nvidia-smi /
# rocm-smi total minus a 500 MiB CUDA/HIP context reserve. The H100 entry above fits it: the
# CUDA allocator saw 81080 MiB of nvidia-smi's 81559 MiB (479 MiB held back). nvidia-smi totals
# are in MiB; memory_bytes keeps them exactly, so "141 GB" parts are not 141e9 bytes.
MiB = 1024**2
_CONTEXT_RESERVE = 500 * MiB

# H100 PCIe 80GB: nvidia-smi 81559 MiB, like the SXM part. 2.0 TB/s HBM2e; BF16 1,513 TFLOP/s
# with sparsity, so 756 dense (NVIDIA H100 Tensor Core GPU datasheet, "H100 PCIe" column).
_add(DeviceSpec("H100-PCIe-80GB", "gpu", 81559 * MiB, 81559 * MiB - _CONTEXT_RESERVE,
                2.0e12, 756e12, "NVIDIA H100 PCIe", ("H100-PCIe", "H100PCIe")))

# H200 SXM: NVIDIA markets "141 GB HBM3e", but nvidia-smi shows 143771 MiB (140.4 GiB,
# 150.75e9 B) in widely published output, and the H100 entry uses nvidia-smi too; 141e9 B would
# undercount by 6.5%. Usable: torch.cuda.get_device_properties reports total_memory=143156MB
# (public logs), i.e. what the CUDA allocator sees, as for H100 (615 MiB below nvidia-smi).
# 4.8 TB/s; BF16 1,979 TFLOP/s with sparsity -> 989 dense (NVIDIA H200 Tensor Core GPU datasheet).
_add(DeviceSpec("H200-141GB", "gpu", 143771 * MiB, 143156 * MiB, 4.8e12, 989e12,
                "NVIDIA H200", ("H200", "H200-SXM")))

# B200 (HGX/DGX B200): NVIDIA states two figures: 192 GB at launch (8 HBM3e stacks x 24 GB,
# raw) and 180 GB per GPU in the DGX B200 / HGX B200 datasheets (1,440 GB per 8 GPUs). We use
# the 180 GB one, because that is what software sees: nvidia-smi 183359 MiB (179.1 GiB, same
# GiB-ish "GB" as H200's 141). The name keeps "192GB" as requested. 8 TB/s per GPU (DGX B200:
# 64 TB/s for 8); FP16/BF16 4.5 PFLOP/s sparse -> 2.25 dense per GPU (HGX B200 datasheet, 1000 W).
_add(DeviceSpec("B200-192GB", "gpu", 183359 * MiB, 183359 * MiB - _CONTEXT_RESERVE, 8.0e12,
                2250e12, "NVIDIA B200", ("B200",)))

# A100 SXM4 40GB: 40 GiB HBM2; nvidia-smi 40960 MiB on current drivers (older ones print 40536).
# 1,555 GB/s; BF16 312 TFLOP/s dense, 624 sparse (NVIDIA A100 Tensor Core GPU datasheet).
_add(DeviceSpec("A100-40GB", "gpu", 40960 * MiB, 40960 * MiB - _CONTEXT_RESERVE, 1.555e12,
                312e12, "NVIDIA A100-SXM4-40GB", ("A100-SXM4-40GB", "A100-40G")))

# A100 SXM4 80GB: 80 GiB HBM2e, nvidia-smi 81920 MiB. 2,039 GB/s; BF16 312 TFLOP/s dense
# (NVIDIA A100 Tensor Core GPU datasheet, "A100 80GB SXM" column).
_add(DeviceSpec("A100-80GB", "gpu", 81920 * MiB, 81920 * MiB - _CONTEXT_RESERVE, 2.039e12,
                312e12, "NVIDIA A100-SXM4-80GB", ("A100", "A100-SXM4-80GB", "A100-80G")))

# L4: 24 GB GDDR6, nvidia-smi 23034 MiB (ECC on). 300 GB/s; BF16 242 TFLOP/s with sparsity ->
# 121 dense (NVIDIA L4 Tensor Core GPU datasheet).
_add(DeviceSpec("L4-24GB", "gpu", 23034 * MiB, 23034 * MiB - _CONTEXT_RESERVE, 300e9, 121e12,
                "NVIDIA L4", ("L4",)))

# L40S: 48 GB GDDR6 with ECC, nvidia-smi 46068 MiB. 864 GB/s; BF16 733 TFLOP/s with sparsity ->
# 362.05 dense (NVIDIA L40S datasheet).
_add(DeviceSpec("L40S-48GB", "gpu", 46068 * MiB, 46068 * MiB - _CONTEXT_RESERVE, 864e9,
                362.05e12, "NVIDIA L40S", ("L40S",)))

# A10G (AWS G5 only, no NVIDIA datasheet): 24 GB GDDR6, nvidia-smi 23028 MiB; 600 GB/s like the
# A10. BF16 tensor 70 TFLOP/s dense from the spec table in Baseten's "NVIDIA A10 vs A10G for ML
# model inference" (the A10 datasheet's 125 does not apply). Least certain figure in this file.
_add(DeviceSpec("A10G-24GB", "gpu", 23028 * MiB, 23028 * MiB - _CONTEXT_RESERVE, 600e9, 70e12,
                "NVIDIA A10G", ("A10G",)))

# GeForce RTX 4090: 24 GB GDDR6X, nvidia-smi 24564 MiB (a display attached takes more).
# 1,008 GB/s; BF16 tensor with FP32 accumulate 165.2 TFLOP/s dense, 330.4 sparse (NVIDIA Ada
# Lovelace GPU Architecture whitepaper, Appendix A, RTX 4090 table).
_add(DeviceSpec("RTX4090-24GB", "gpu", 24564 * MiB, 24564 * MiB - _CONTEXT_RESERVE, 1008e9,
                165.2e12, "NVIDIA GeForce RTX 4090", ("4090", "RTX-4090", "RTX4090")))

# GeForce RTX 3090: 24 GB GDDR6X, nvidia-smi 24576 MiB; 936 GB/s; BF16 tensor with FP32 accumulate
# 71 TFLOP/s dense, 142 sparse (NVIDIA Ampere GA102 GPU Architecture whitepaper, RTX 3090 table).
# Usable: 24146 MiB = the total_gpu_memory=23.58GiB vLLM logged on an RTX 3090 (vllm-project/vllm
# #10517, reference/engines.md R1) instead of the 500 MiB rule, because a log gives it.
_add(DeviceSpec("RTX3090-24GB", "gpu", 24576 * MiB, 24146 * MiB, 936e9, 71e12,
                "NVIDIA GeForce RTX 3090", ("3090", "RTX-3090", "RTX3090")))

# RTX A4000: 16 GB GDDR6 (ECC off), nvidia-smi 16376 MiB; 448 GB/s; tensor 153.4 TFLOP/s with
# sparsity → 76.7 dense (NVIDIA RTX A4000 datasheet). Usable by the 500 MiB rule above
# (TensorRT-LLM #1188, reference/engines.md R5, runs on this card).
_add(DeviceSpec("RTXA4000-16GB", "gpu", 16376 * MiB, 16376 * MiB - _CONTEXT_RESERVE, 448e9, 76.7e12,
                "NVIDIA RTX A4000", ("A4000", "RTX-A4000", "RTXA4000")))

# --- AMD ----------------------------------------------------------------------------------------
# MI300X: 192 GB HBM3 = 8 stacks x 24 GiB; rocm-smi "VRAM Total Memory (B): 206158430208"
# (= 192 GiB; some hosts print 206141652992). 5.3 TB/s; BF16 1,307.4 TFLOP/s dense, 2,614.9
# sparse (AMD Instinct MI300X data sheet). JAX device_kind on ROCm not confirmed, left "".
_add(DeviceSpec("MI300X-192GB", "gpu", 192 * GiB, 192 * GiB - _CONTEXT_RESERVE, 5.3e12,
                1307.4e12, "", ("MI300X",)))

# MI325X: 256 GB HBM3E = 8 stacks x 32 GiB (no public rocm-smi total found; taken as 256 GiB).
# 6 TB/s; BF16 1,307.4 TFLOP/s dense (AMD Instinct MI325X data sheet: same CDNA 3 compute).
_add(DeviceSpec("MI325X-256GB", "gpu", 256 * GiB, 256 * GiB - _CONTEXT_RESERVE, 6.0e12,
                1307.4e12, "", ("MI325X",)))

# --- Google TPU (one chip; device_kind strings as mapped in jax/_src/pallas/mosaic/tpu_info.py) --
# TPU v4: 32 GiB HBM2, 275 TFLOP/s bf16 (Cloud TPU "TPU v4" page: "32 GiB, 1200 GBps"; JAX
# tpu_info.py uses 1.23e12 B/s, the unrounded 1228 GB/s). Usable: the limit recent libtpu
# reports in memory_stats()["bytes_limit"], 33,014,398,976 B (30.75 GiB; public TPU v4 run
# logs). Older runtimes reported 34,088,157,184 (torch_xla xm.get_memory_info docstring; Google
# tpu-info test fixtures); the lower one is kept so plans never count on the extra GiB.
_add(DeviceSpec("TPU-v4", "tpu", 32 * GiB, 33_014_398_976, 1228e9, 275e12, "TPU v4",
                ("v4", "tpuv4")))

# TPU v5e: 16 GiB HBM2, 819 GB/s, 197 TFLOP/s bf16 (Cloud TPU "TPU v5e" page). Usable:
# bytes_limit 16,909,332,480 B (15.75 GiB) from memory_stats() with jax 0.11.0 / libtpu
# 0.0.44.1 on a public Kaggle v5e-8 notebook (tpu-info fixtures show a 17,044,078,592 total).
_add(DeviceSpec("TPU-v5e", "tpu", 16 * GiB, 16_909_332_480, 819e9, 197e12, "TPU v5 lite",
                ("v5e", "v5litepod", "v5-lite")))

# TPU v5p: 95 GiB HBM2e, 2,765 GB/s, 459 TFLOP/s bf16 (Cloud TPU "TPU v5p" page). No public
# bytes_limit found; usable = 95 GiB minus a 256 MiB runtime reserve (v5e holds back 258 MiB).
# Conservative: Google's tpu-info fixtures show a 102,803,439,616 B (95.74 GiB) HBM total.
_add(DeviceSpec("TPU-v5p", "tpu", 95 * GiB, 95 * GiB - 256 * MiB, 2765e9, 459e12, "TPU v5",
                ("v5p",)))

# TPU v6e (Trillium): 32 GiB HBM, 1,640 GB/s (JAX tpu_info.py 1.64e12; the Cloud page now says
# 1638 GBps), 918 TFLOP/s bf16 (Cloud TPU "TPU v6e" page). Usable: 33,550,237,696 B (31.25 GiB)
# per-device memory reported on a v6e in vllm-project/vllm PR #16211 (TPU usage stats).
_add(DeviceSpec("TPU-v6e", "tpu", 32 * GiB, 33_550_237_696, 1640e9, 918e12, "TPU v6 lite",
                ("v6e", "trillium")))

# --- Host CPU (tests) ---------------------------------------------------------------------------
# Nominal, not a measurement: 64 GiB all usable, 100 GB/s and 1 TFLOP/s as round placeholders.
# device_kind is what jax reports for CPU devices.
_add(DeviceSpec("CPU-host", "cpu", 64 * GiB, 64 * GiB, 100e9, 1e12, "cpu", ("cpu", "host")))


def _lookup_keys() -> dict[str, DeviceSpec]:
    """Every name and alias, lower-cased, to its spec; a clash between two entries is an error."""
    keys: dict[str, DeviceSpec] = {}
    for spec in CATALOG.values():
        for key in {k.lower() for k in (spec.name, *spec.aliases)}:
            if key in keys and keys[key] is not spec:
                raise ValueError(f"{key!r} names both {keys[key].name} and {spec.name}")
            keys[key] = spec
    return keys


_lookup_keys()  # fail at import if two entries share a name or alias


def device_spec(name: str) -> DeviceSpec:
    """Look a device up by name or alias, case-insensitively; unknown names list the close ones."""
    spec = _lookup_keys().get(str(name).strip().lower())
    if spec is not None:
        return spec
    choices = [k for s in CATALOG.values() for k in (s.name, *s.aliases)]
    check_choice("device", name, choices)  # raises InputError naming the close matches
    raise InputError("device", name, f"one of {', '.join(sorted(choices))}")  # not reached
