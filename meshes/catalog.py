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


MiB = 1024**2


def _gib_2dp(gib: float) -> int:
    """Bytes for a runtime figure printed in GiB with two decimals (torch's "total capacity of
    14.58 GiB", vLLM's "total_gpu_memory (23.58GiB)"), to the nearest MiB: the printed figure is
    only good to 0.005 GiB, so finer bytes would be invented."""
    return round(gib * 1024) * MiB


# How to read the GPU entries. ``memory_bytes`` is the total nvidia-smi / rocm-smi prints (MiB on
# NVIDIA, kept exactly, so "141 GB" parts are not 141e9 bytes). ``usable_bytes`` is the total the
# CUDA runtime reports to a process (cudaMemGetInfo's total, which torch.cuda.mem_get_info() and
# vLLM's "total_gpu_memory" print and a GPU's bytes_limit derives from) where a public log prints
# it; otherwise nvidia-smi's total minus a 500 MiB context reserve (CONTEXT_RESERVE). Where both
# are known the gap is 316-729 MiB (A10 316, T4 430, H100 479, A100-40GB 621, B200 729), so the
# rule is a middle value, not a bound. The CUDA context itself (~0.3-0.5 GiB) is used memory inside
# that total: engines see it as in use at start-up, and plans charge it as the runtime reserve.
CONTEXT_RESERVE = 500 * MiB

# --- NVIDIA data centre ---------------------------------------------------------------------------
# Seven nvidia-smi totals below (T4 15360, A10 23028, L4 23034, L40S 46068, A100-40GB 40960,
# A100-80GB 81920, H100 81559 MiB) are listed together in modal-labs/modal-client PR #2797
# ("Here's the reported totals from nvidia-smi across all our GPU types").

# H100 SXM5 80GB: nvidia-smi 81559 MiB ("NVIDIA H100 80GB HBM3", NVIDIA/nccl issue #1264; also
# modal-labs/modal-client #2797), 3.35 TB/s, 989 TFLOP/s dense bf16 (NVIDIA H100 datasheet).
# Usable: 81080 MiB seen by the CUDA allocator on an H100 with jax 0.11.2
# (0.75 x 85,018,542,080 B measured in this project's GPU validation runs).
_add(DeviceSpec("H100-80GB", "gpu", 81559 * 2**20, 85_018_542_080, 3.35e12, 989e12,
                "NVIDIA H100 80GB HBM3", ("H100", "H100-SXM", "H100-SXM-80GB")))

# H100 PCIe 80GB: nvidia-smi 81559 MiB, like the SXM part. 2.0 TB/s HBM2e; BF16 1,513 TFLOP/s
# with sparsity, so 756 dense (NVIDIA H100 Tensor Core GPU datasheet, "H100 PCIe" column).
_add(DeviceSpec("H100-PCIe-80GB", "gpu", 81559 * MiB, 81559 * MiB - CONTEXT_RESERVE,
                2.0e12, 756e12, "NVIDIA H100 PCIe", ("H100-PCIe", "H100PCIe")))

# H100 NVL: 94 GB HBM3 per GPU, 3.9 TB/s, BF16 1,671 TFLOP/s with sparsity -> 835.5 dense (NVIDIA
# H100 NVL product brief PB-11773-001, linked from vllm-project/recipes issue #365). nvidia-smi
# prints 95830 MiB for "NVIDIA H100 NVL" (wilicc/gpu-burn issue #141, NVIDIA/gpu-admin-tools issue
# #4). Usable by the 500 MiB rule.
_add(DeviceSpec("H100-NVL-94GB", "gpu", 95830 * MiB, 95830 * MiB - CONTEXT_RESERVE, 3.9e12,
                835.5e12, "NVIDIA H100 NVL", ("H100-NVL", "H100NVL")))

# H200 SXM: NVIDIA markets "141 GB HBM3e", but nvidia-smi shows 143771 MiB (140.4 GiB,
# 150.75e9 B) in widely published output, and the H100 entry uses nvidia-smi too; 141e9 B would
# undercount by 6.5%. Usable: torch.cuda.get_device_properties reports total_memory=143156MB
# (public logs), i.e. what the CUDA allocator sees, as for H100 (615 MiB below nvidia-smi).
# 4.8 TB/s; BF16 1,979 TFLOP/s with sparsity -> 989 dense (NVIDIA H200 Tensor Core GPU datasheet).
_add(DeviceSpec("H200-141GB", "gpu", 143771 * MiB, 143156 * MiB, 4.8e12, 989e12,
                "NVIDIA H200", ("H200", "H200-SXM")))

# H20 (China SKU, no public NVIDIA datasheet: sunkx109/GPUs-Specs issue #2): 96 GB HBM3, 4.0 TB/s,
# BF16 148 TFLOP/s dense as vendors list it (a measured 142.25 TFLOP/s bf16 GEMM in
# zzc0721/torch-performance-test-data issue #77 is consistent). nvidia-smi prints 97871 MiB for
# "NVIDIA H20" in public output (a DeepGEMM question found by code search). Usable by the rule.
# The 141 GB H20 variant is not this entry.
_add(DeviceSpec("H20-96GB", "gpu", 97871 * MiB, 97871 * MiB - CONTEXT_RESERVE, 4.0e12, 148e12,
                "NVIDIA H20", ("H20",)))

# B200 (HGX/DGX B200): NVIDIA states two figures: 192 GB at launch (8 HBM3e stacks x 24 GB,
# raw) and 180 GB per GPU in the DGX B200 / HGX B200 datasheets (1,440 GB per 8 GPUs). We use
# the 180 GB one, because that is what software sees: nvidia-smi 183359 MiB ("NVIDIA B200",
# NVIDIA/TensorRT-LLM issue #10278). The name keeps "192GB" as requested. Usable: a CUDA device
# query prints "Total Global Memory: 178.35 GB" (GiB: 178.35 x 1024 = 182630 MiB, 729 MiB below
# nvidia-smi) in pytorch/ao PR #4002. 8 TB/s per GPU (DGX B200: 64 TB/s for 8; the same PR measures
# 7.67 TB/s from the 7680-bit bus the driver now reports); FP16/BF16 4.5 PFLOP/s sparse -> 2.25
# dense per GPU (HGX B200 datasheet, 1000 W).
_add(DeviceSpec("B200-192GB", "gpu", 183359 * MiB, _gib_2dp(178.35), 8.0e12,
                2250e12, "NVIDIA B200", ("B200",)))

# B300 (HGX B300, Blackwell Ultra): 288 GB HBM3e per GPU, 8 TB/s (NVIDIA HGX B300 datasheet).
# nvidia-smi prints 275040 MiB for "NVIDIA B300 SXM6 AC" in public nvidia-smi output (found by
# code search in several independent run logs; no issue thread to link), i.e. 268.6 GiB, not 288.
# BF16 dense taken as B200's 2.25 PFLOP/s: Blackwell Ultra raises FP4, not BF16 (least certain
# figure of this entry). Usable by the rule.
_add(DeviceSpec("B300-288GB", "gpu", 275040 * MiB, 275040 * MiB - CONTEXT_RESERVE, 8.0e12,
                2250e12, "NVIDIA B300 SXM6 AC", ("B300", "B300-SXM6")))

# GB200 (one Blackwell GPU of a GB200 NVL72 / NVL4): NVIDIA GB200 NVL72 datasheet: 13.4 TB HBM3e
# for 72 GPUs (186 GB each), 576 TB/s (8 TB/s each), FP16/BF16 360 PFLOP/s with sparsity for 72
# (2.5 PFLOP/s dense each). nvidia-smi prints 189471 MiB for "NVIDIA GB200" in public output (code
# search, several run logs; no issue thread to link). Usable by the rule. The Grace CPU's LPDDR is
# not counted: engines size the KV cache from the GPU's HBM.
_add(DeviceSpec("GB200-186GB", "gpu", 189471 * MiB, 189471 * MiB - CONTEXT_RESERVE, 8.0e12,
                2500e12, "NVIDIA GB200", ("GB200",)))

# A100 SXM4 40GB: 40 GiB HBM2; nvidia-smi 40960 MiB on current drivers (older ones print 40536;
# modal-labs/modal-client #2797 lists 40960). Usable: CUDA deviceQuery on an "NVIDIA
# A100-SXM4-40GB" prints "Total amount of global memory: 40339 MBytes (42298834944 bytes)"
# (bottlerocket-os/bottlerocket PR #3873). 1,555 GB/s; BF16 312 TFLOP/s dense, 624 sparse
# (NVIDIA A100 Tensor Core GPU datasheet).
_add(DeviceSpec("A100-40GB", "gpu", 40960 * MiB, 42_298_834_944, 1.555e12,
                312e12, "NVIDIA A100-SXM4-40GB", ("A100-SXM4-40GB", "A100-40G")))

# A100 PCIe 40GB: the same 40 GB HBM2 and 1,555 GB/s, 312 TFLOP/s dense (A100 datasheet, "A100
# 40GB PCIe" column); nvidia-smi total taken as the SXM part's 40960 MiB (same memory; no PCIe
# print found). Usable by the rule.
_add(DeviceSpec("A100-PCIe-40GB", "gpu", 40960 * MiB, 40960 * MiB - CONTEXT_RESERVE, 1.555e12,
                312e12, "NVIDIA A100-PCIE-40GB", ("A100-PCIE-40G", "A100-PCIe-40G")))

# A100 SXM4 80GB: 80 GiB HBM2e, nvidia-smi 81920 MiB (modal-labs/modal-client #2797). 2,039 GB/s;
# BF16 312 TFLOP/s dense (NVIDIA A100 Tensor Core GPU datasheet, "A100 80GB SXM" column).
_add(DeviceSpec("A100-80GB", "gpu", 81920 * MiB, 81920 * MiB - CONTEXT_RESERVE, 2.039e12,
                312e12, "NVIDIA A100-SXM4-80GB", ("A100", "A100-SXM4-80GB", "A100-80G")))

# A100 PCIe 80GB: nvidia-smi 81920 MiB ("NVIDIA A100 80GB PCIe", vllm-project/vllm issue #7992).
# 1,935 GB/s; BF16 312 TFLOP/s dense (A100 datasheet, "A100 80GB PCIe" column). Usable by the rule.
_add(DeviceSpec("A100-PCIe-80GB", "gpu", 81920 * MiB, 81920 * MiB - CONTEXT_RESERVE, 1.935e12,
                312e12, "NVIDIA A100 80GB PCIe", ("A100-PCIe", "A100-80GB-PCIe", "A100-PCIe-80G")))

# L4: 24 GB GDDR6, nvidia-smi 23034 MiB with ECC on (modal-labs/modal-client #2797). Usable: "GPU 0 has
# a total capacity of 22.05 GiB" (torch OOM on the L4s of vLLM's CI, vllm-project/vllm issue #20214).
# 300 GB/s; BF16 242 TFLOP/s with sparsity -> 121 dense (NVIDIA L4 Tensor Core GPU datasheet).
_add(DeviceSpec("L4-24GB", "gpu", 23034 * MiB, _gib_2dp(22.05), 300e9, 121e12, "NVIDIA L4", ("L4",)))

# L40S: 48 GB GDDR6 with ECC, nvidia-smi 46068 MiB (modal-labs/modal-client #2797). 864 GB/s;
# BF16 733 TFLOP/s with sparsity -> 362.05 dense (NVIDIA L40S datasheet).
_add(DeviceSpec("L40S-48GB", "gpu", 46068 * MiB, 46068 * MiB - CONTEXT_RESERVE, 864e9,
                362.05e12, "NVIDIA L40S", ("L40S",)))

# A40: 48 GB GDDR6 with ECC on by default, nvidia-smi 46068 MiB ("NVIDIA A40", the captured
# nvidia-smi output in thamada/nvidia-smi nvsim/A40x10_smi.py). 696 GB/s; BF16 149.7 TFLOP/s
# dense, 299.4 sparse (NVIDIA A40 datasheet). Usable by the rule.
_add(DeviceSpec("A40-48GB", "gpu", 46068 * MiB, 46068 * MiB - CONTEXT_RESERVE, 696e9, 149.7e12,
                "NVIDIA A40", ("A40",)))

# A10: 24 GB GDDR6, nvidia-smi 23028 MiB ("NVIDIA A10", vllm-project/vllm issue #10034; older
# drivers print 22731, OpenBMB/MiniCPM-V #369). Usable: torch's OOM message "GPU 0 has a total
# capacity of 22.18 GiB" on an A10 (OpenBMB/MiniCPM-V issue #640). 600 GB/s; BF16 125 TFLOP/s
# dense, 250 sparse (NVIDIA A10 datasheet).
_add(DeviceSpec("A10-24GB", "gpu", 23028 * MiB, _gib_2dp(22.18), 600e9, 125e12,
                "NVIDIA A10", ("A10",)))

# A10G (AWS G5 only, no NVIDIA datasheet): 24 GB GDDR6, nvidia-smi 23028 MiB ("NVIDIA A10G",
# NVIDIA/TensorRT-LLM issue #7818); 600 GB/s like the A10. BF16 tensor 70 TFLOP/s dense from the
# spec table in Baseten's "NVIDIA A10 vs A10G for ML model inference" (the A10 datasheet's 125 does
# not apply). Least certain figure in this file.
_add(DeviceSpec("A10G-24GB", "gpu", 23028 * MiB, 23028 * MiB - CONTEXT_RESERVE, 600e9, 70e12,
                "NVIDIA A10G", ("A10G",)))

# T4: 16 GB GDDR6, nvidia-smi 15360 MiB (modal-labs/modal-client #2797; deepseek-ai/DeepSeek-R1
# issue #546; drivers with ECC reporting print 15109). Usable: "GPU 0 has a total capacity of
# 14.58 GiB" (torch OOM on a T4, datawhalechina/self-llm issue #162). 320 GB/s. Turing has no bf16:
# the peak is FP16 tensor, 65 TFLOP/s (NVIDIA T4 datasheet); engines serve it in float16.
_add(DeviceSpec("T4-16GB", "gpu", 15360 * MiB, _gib_2dp(14.58), 320e9, 65e12, "Tesla T4",
                ("T4", "Tesla-T4")))

# --- NVIDIA workstation / consumer ----------------------------------------------------------------
# GeForce RTX 4090: 24 GB GDDR6X, nvidia-smi 24564 MiB (vllm-project/vllm issue #7553; a display
# attached takes more). 1,008 GB/s; BF16 tensor with FP32 accumulate 165.2 TFLOP/s dense, 330.4
# sparse (NVIDIA Ada Lovelace GPU Architecture whitepaper, Appendix A, RTX 4090 table).
_add(DeviceSpec("RTX4090-24GB", "gpu", 24564 * MiB, 24564 * MiB - CONTEXT_RESERVE, 1008e9,
                165.2e12, "NVIDIA GeForce RTX 4090", ("4090", "RTX-4090", "RTX4090")))

# GeForce RTX 3090: 24 GB GDDR6X, nvidia-smi 24576 MiB (noonghunna/club-3090 issue #1128); 936 GB/s;
# BF16 tensor with FP32 accumulate 71 TFLOP/s dense, 142 sparse (NVIDIA Ampere GA102 GPU
# Architecture whitepaper, RTX 3090 table). Usable: 24146 MiB = the total_gpu_memory=23.58GiB vLLM
# logged on an RTX 3090 (vllm-project/vllm #10517 and PR #14447) instead of the 500 MiB rule.
_add(DeviceSpec("RTX3090-24GB", "gpu", 24576 * MiB, 24146 * MiB, 936e9, 71e12,
                "NVIDIA GeForce RTX 3090", ("3090", "RTX-3090", "RTX3090")))

# GeForce RTX 5090: 32 GB GDDR7, nvidia-smi 32607 MiB (noonghunna/club-3090 issue #617); 1,792
# GB/s; FP16/BF16 tensor with FP32 accumulate 209.5 TFLOP/s dense, 419 sparse (NVIDIA RTX Blackwell
# GPU Architecture whitepaper, RTX 5090 table). Usable by the rule.
_add(DeviceSpec("RTX5090-32GB", "gpu", 32607 * MiB, 32607 * MiB - CONTEXT_RESERVE, 1792e9,
                209.5e12, "NVIDIA GeForce RTX 5090", ("5090", "RTX-5090", "RTX5090")))

# RTX A4000: 16 GB GDDR6 (ECC off), nvidia-smi 16376 MiB; 448 GB/s; tensor 153.4 TFLOP/s with
# sparsity -> 76.7 dense (NVIDIA RTX A4000 datasheet). Usable by the 500 MiB rule
# (TensorRT-LLM #1188 runs on this card).
_add(DeviceSpec("RTXA4000-16GB", "gpu", 16376 * MiB, 16376 * MiB - CONTEXT_RESERVE, 448e9, 76.7e12,
                "NVIDIA RTX A4000", ("A4000", "RTX-A4000", "RTXA4000")))

# RTX A5000: 24 GB GDDR6, nvidia-smi 24564 MiB ("NVIDIA RTX A5000, 24564 MiB",
# akash-network/provider-configs PR #83); 768 GB/s; tensor 222.2 TFLOP/s with sparsity -> 111.1
# dense (NVIDIA RTX A5000 datasheet). Usable by the 500 MiB rule.
_add(DeviceSpec("RTXA5000-24GB", "gpu", 24564 * MiB, 24564 * MiB - CONTEXT_RESERVE, 768e9, 111.1e12,
                "NVIDIA RTX A5000", ("A5000", "RTX-A5000", "RTXA5000")))

# RTX A6000: 48 GB GDDR6 = 48 GiB of chips (NVIDIA RTX A6000 datasheet); no nvidia-smi print found,
# so memory_bytes is the raw 48 GiB. Usable: torch's "47.53 GiB total capacity" on an A6000
# (allenai/open-instruct issue #163, ECC off). Turning ECC on takes 1/16 (nvidia-smi then prints
# 46068 MiB, as in thamada/gls RTX_A6000_x9_smi.py): pass a capacity for such a card. 768 GB/s;
# tensor 309.7 TFLOP/s with sparsity -> 154.85 dense (datasheet).
_add(DeviceSpec("RTXA6000-48GB", "gpu", 48 * GiB, _gib_2dp(47.53), 768e9, 154.85e12,
                "NVIDIA RTX A6000", ("A6000", "RTX-A6000", "RTXA6000")))

# RTX 6000 Ada Generation: 48 GB GDDR6 = 48 GiB of chips, 960 GB/s; FP16/BF16 tensor with FP32
# accumulate 364.2 TFLOP/s dense, 728.5 sparse (NVIDIA Ada Lovelace whitepaper / RTX 6000 Ada
# datasheet). No runtime total found: usable = 48 GiB minus the 500 MiB reserve (ECC off).
_add(DeviceSpec("RTX6000Ada-48GB", "gpu", 48 * GiB, 48 * GiB - CONTEXT_RESERVE, 960e9, 364.2e12,
                "NVIDIA RTX 6000 Ada Generation", ("RTX-6000-Ada", "RTX6000Ada", "6000Ada")))

# RTX PRO 6000 Blackwell (Server, Workstation and Max-Q editions): 96 GB GDDR7, nvidia-smi 97887 MiB
# (vllm-project/vllm issues #27542 and #43412; the Max-Q edition: "97,887 MiB" in #15081). 1,792
# GB/s; FP16/BF16 tensor ~500 TFLOP/s dense: the datasheet's 4,000 AI TOPS are FP4 with sparsity,
# halved for dense, and halved twice more for FP8 then FP16 (the Max-Q and Server editions clock
# lower). device_kind is the Server Edition's name (vllm #32109); the Workstation editions report
# their own names. Usable by the rule.
_add(DeviceSpec("RTXPRO6000-96GB", "gpu", 97887 * MiB, 97887 * MiB - CONTEXT_RESERVE, 1792e9,
                500e12, "NVIDIA RTX PRO 6000 Blackwell Server Edition",
                ("RTX-PRO-6000", "RTXPRO6000", "PRO6000", "RTX-PRO-6000-Blackwell")))

# --- AMD ----------------------------------------------------------------------------------------
# MI300X: 192 GB HBM3 = 8 stacks x 24 GiB; rocm-smi "VRAM Total Memory (B): 206158430208"
# (= 192 GiB; some hosts print 206141652992, ROCm/legacy-rocm-build issue #4750). 5.3 TB/s; BF16
# 1,307.4 TFLOP/s dense, 2,614.9 sparse (AMD Instinct MI300X data sheet). JAX device_kind on ROCm
# not confirmed, left "".
_add(DeviceSpec("MI300X-192GB", "gpu", 192 * GiB, 192 * GiB - CONTEXT_RESERVE, 5.3e12,
                1307.4e12, "", ("MI300X",)))

# MI325X: 256 GB HBM3E = 8 stacks x 32 GiB (no public rocm-smi total found; taken as 256 GiB).
# 6 TB/s; BF16 1,307.4 TFLOP/s dense (AMD Instinct MI325X data sheet: same CDNA 3 compute).
_add(DeviceSpec("MI325X-256GB", "gpu", 256 * GiB, 256 * GiB - CONTEXT_RESERVE, 6.0e12,
                1307.4e12, "", ("MI325X",)))

# MI355X: 288 GB HBM3E = 8 stacks x 36 GiB (no public rocm-smi total found; taken as 288 GiB, as
# for MI325X). 8 TB/s; FP16/BF16 2.5 PFLOP/s dense (AMD Instinct MI355X data sheet).
_add(DeviceSpec("MI355X-288GB", "gpu", 288 * GiB, 288 * GiB - CONTEXT_RESERVE, 8.0e12,
                2500e12, "", ("MI355X",)))

# MI250X: two GCDs per OAM module, each its own device to ROCm, torch and JAX, so one entry is one
# GCD: rocm-smi prints "VRAM Total Memory (B): 68702699520" per GCD in public logs (HPE Cray "AMD
# INSTINCT MI200 (MCM) OAM" nodes; code search): 65520 MiB, 16 MiB short of the 64 GiB of HBM2e.
# Half the module's 3.2768 TB/s and 383 TFLOP/s bf16 (AMD Instinct MI250X data sheet).
_add(DeviceSpec("MI250X-64GB", "gpu", 68_702_699_520, 68_702_699_520 - CONTEXT_RESERVE, 1.6384e12,
                191.5e12, "", ("MI250X",)))

# --- Google TPU (one JAX device; device_kind strings as mapped in jax/_src/pallas/mosaic/tpu_info.py)
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

# TPU7x (Ironwood): the Cloud TPU "TPU7x (Ironwood)" page lists 192 GiB HBM and 2,307 TFLOP/s bf16
# per chip, but each chip has two TensorCores without Megacore, and JAX exposes each TensorCore as
# its own device (jax/_src/pallas/mosaic/tpu_info.py: TPU_7X is a dual-core chip that "must have
# num_tensor_cores_per_logical_device=1"; per-core figures = chip figures // 2, HBM bandwidth
# 7.40e12 B/s per chip). So one entry here is half a chip: 96 GiB, 3.7 TB/s, 1,153.5 TFLOP/s, and a
# "v7x-8" mesh is 8 devices on 4 chips. No public bytes_limit found: usable = 96 GiB minus 256 MiB,
# as for v5p.
_add(DeviceSpec("TPU-v7", "tpu", 96 * GiB, 96 * GiB - 256 * MiB, 3.7e12, 1153.5e12, "TPU7x",
                ("v7", "v7x", "TPU-v7x", "tpu7x", "ironwood")))

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
