"""Engine start-up fidelity on the public corpus of real start-up logs (tests/engine_logs/).

For every log: resolve the model (vendored HF configs under tests/model_configs, kvfit presets, or
a named stand-in with the same architecture; a model kvfit cannot resolve is skipped with the
reason), the card (the printed total memory where the log gives it, else the catalog entry), the
parallel sizes and the flags; predict the KV quantity the log prints (tokens, blocks or KV GiB) with
kvfit's engine profile for that engine version; report |error| per engine and version, and whether
the logged value lies inside kvfit's (low, high) band.

The few constants the non-KV model still fits (estimator/engines/calibration.json) are fitted here:

    python benchmarks/engine_calibration.py            # leave-one-out report (Markdown)
    python benchmarks/engine_calibration.py --fit      # refit calibration.json from the corpus
    python benchmarks/engine_calibration.py --results  # also write the section of benchmarks/RESULTS.md

Fitting uses only logs with ``"in_tests": false`` (the reference cases R1–R8 that tests check are
never fitted on). Every figure reported is leave-one-out: for each log the constants are refitted
without it, and its band's residual quantiles come from the other logs' leave-one-out residuals.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimator.engines import engine_plan, sglang, vllm  # noqa: E402
from estimator.engines.non_kv import (  # noqa: E402
    CALIBRATION_PATH,
    NCCL_TERM_OF,
    calibrated,
    custom_all_reduce_bytes,
    fitted,
    interconnect,
)
from estimator.engines.vllm import SNAPSHOT_AFTER_INIT  # noqa: E402
from estimator.model.hf_config import load_hf_config  # noqa: E402
from estimator.model.resolve import load_preset  # noqa: E402
from estimator.model.spec import ModelSpec  # noqa: E402
from meshes import DeviceMesh, SimulatedDevice  # noqa: E402
from meshes.catalog import CATALOG, CONTEXT_RESERVE, DeviceSpec, GiB, MiB  # noqa: E402
from meshes.validation import InputError  # noqa: E402

CORPUS = ROOT / "tests" / "engine_logs"
CONFIG_DIRS = (ROOT / "tests" / "model_configs", ROOT / "shared" / "model_configs")
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- engine-calibration:start -->", "<!-- engine-calibration:end -->"

# Stand-ins for models a log names by class or by a fine-tune: the architecture they share.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.x-70b-class": ("llama-3.1-70b", {}),
    # SmoothQuant int8 W8A8: one byte per linear weight plus per-channel scales (fp8 prices it so)
    "7b mha model": ("llama-2-7b", {"weight_quant": "fp8"}),
    "llama-3-8b-class": ("meta-llama/Meta-Llama-3-8B", {}),
    "deepseek-ai/deepseek-r1-distill-qwen-14b": ("Qwen/Qwen2.5-14B", {}),  # Qwen2.5-14B architecture
    # Qwen2.5-Coder-14B and the AWQ build of Qwen2.5-14B-Instruct: Qwen2.5-14B's shapes (48 L, 5120,
    # 8 KV heads, 13,824, vocabulary 152,064; their model cards), the AWQ one with 4-bit weights
    "qwen/qwen2.5-coder-14b-instruct": ("Qwen/Qwen2.5-14B", {}),
    "qwen/qwen2.5-14b-instruct-awq": ("Qwen/Qwen2.5-14B", {"weight_quant": "awq"}),
    "nvidia/llama-3.1-8b-instruct-fp8": ("meta-llama/Llama-3.1-8B", {"weight_quant": "fp8"}),
    # int8 W8A8 weights: one byte per parameter plus per-channel scales, as fp8 prices them
    "neuralmagic/meta-llama-3.1-70b-instruct-quantized.w8a8": ("meta-llama/Llama-3.1-70B",
                                                                {"weight_quant": "fp8"}),
    "meta-llama/llama-2-7b": ("meta-llama/Llama-2-7b-hf", {}),
    # the -2507 releases keep the architecture and raise the context to 262,144 (their model cards);
    # the -FP8 checkpoints are 128x128 block-scaled fp8 like Qwen3-235B-A22B-FP8's vendored config
    "qwen/qwen3-30b-a3b-instruct-2507-fp8": ("Qwen/Qwen3-30B-A3B", {
        "weight_quant": "fp8_block", "max_position_embeddings": 262144}),
    "qwen/qwen3-235b-a22b-instruct-2507-fp8": ("Qwen/Qwen3-235B-A22B-FP8", {"max_position_embeddings": 262144}),
    "qwen/qwen3-30b-a3b-instruct": ("Qwen/Qwen3-30B-A3B", {}),  # -2507: same architecture
    "deepseek-ai/deepseek-v3.2-exp": ("deepseek-ai/DeepSeek-V3.2", {}),  # V3.2 is the Exp architecture
    "cognitivecomputations/deepseek-v3-0324-awq": ("deepseek-ai/DeepSeek-V3", {"weight_quant": "awq"}),
    "qwen/qwen3-coder-30b-a3b-instruct-fp8": ("Qwen/Qwen3-30B-A3B", {
        "weight_quant": "fp8_block", "max_position_embeddings": 262144}),
    # the -FP8 checkpoint is the BF16 architecture with 128x128 block-scaled fp8 weights; the vendored
    # config (tests/model_configs/SOURCES.md) is the BF16 one
    "qwen/qwen3-coder-480b-a35b-instruct-fp8": ("Qwen/Qwen3-Coder-480B-A35B-Instruct",
                                                {"weight_quant": "fp8_block"}),
    # the vendored GLM-4.7-FP8 config is a trimmed copy without its quantization_config
    "zai-org/glm-4.7-fp8": ("zai-org/GLM-4.7-FP8", {"weight_quant": "fp8"}),
    # QwQ-32B is a Qwen2.5-32B fine-tune with its architecture (Qwen's model card); the SGLang log
    # prints the 131072-token context the Qwen2.5-32B-Instruct file holds
    "qwen/qwq-32b": ("Qwen/Qwen2.5-32B-Instruct", {}),
    # DeepSeek-R1-Distill-Qwen-32B is distilled into Qwen2.5-32B (DeepSeek-R1's model card, "Distilled
    # Model | Base Model"), its shapes; neuralmagic's -FP8 checkpoint holds FP8 weights (compressed-tensors)
    "neuralmagic/deepseek-r1-distill-qwen-32b-fp8": ("Qwen/Qwen2.5-32B-Instruct", {"weight_quant": "fp8"}),
    # Qwen2.5-Coder-32B keeps Qwen2.5-32B's shapes (64 layers, 5120 hidden, 8 KV heads, 27,648 MLP,
    # 152,064 vocabulary: its model card and config); the -AWQ checkpoint holds 4-bit AWQ weights
    "qwen/qwen2.5-coder-32b-instruct-awq": ("Qwen/Qwen2.5-32B-Instruct", {"weight_quant": "awq"}),
    # Qwen2-7B has Qwen2.5-7B's shapes: the dennislee logs' KV lines give 57,344 B a token
    # (28 layers × 2 × 4 KV heads × 128 × 2 B) and their weights line the 7.6 B parameters; only the
    # rotary cache's length differs (≤ 24 MiB)
    "qwen2-7b-instruct": ("Qwen/Qwen2.5-7B", {}),
}
# Qwen/Qwen1.5-7B config.json facts (MHA, qkv bias), for the Qwen1.5-7B fine-tune of TRT-LLM #2268
QWEN15_7B = dict(name="Qwen1.5-7B", model_type="qwen2", num_layers=32, hidden_size=4096,
                 num_attention_heads=32, num_kv_heads=32, head_dim=128, vocab_size=151936,
                 intermediate_size=11008, max_position_embeddings=32768, attention_bias=True)

# vLLM version buckets → profile versions
VERSION_RE = re.compile(r"\b0\.(\d+)")
# Cards the corpus entry names wrongly, with the evidence (the corpus files are data kept by others)
CARD_OVERRIDES: dict[str, tuple[str, float | None]] = {
    # vllm-project/recipes PR #12: the two runs differ only in gpu_memory_utilization (0.90 vs 0.95) and
    # their available KV memory by 55.65 - 48.66 = 6.99 GiB, so the card has 6.99 / 0.05 = 139.8 GiB:
    # the 141 GB H20 variant the recipe names ("8xH200 (or H20) GPUs (141GB x 8)"), not a 96 GB H20.
    # Priced as the H200-141GB entry (same 141 GB HBM3e).
    **{f"vllm-recipes-pr12-qwen3-coder-480b-fp8-8xh20-dp8-{u}": ("NVIDIA H200 (141 GB H20 variant)", None)
       for u in ("util09", "util095")},
}
# Logs from a build with a capacity bug kvfit does not reproduce (it follows the fixed engine)
KNOWN_BUGS = {
    "sglang-pr18263-qwen3-30b-a3b-amd-288gb": "SGLang main on ROCm allocated the AITER attention workspace "
    "(51.75 GB) before sizing the pool, outside mem_fraction_static (the over-allocation the PR fixes)",
    "sglang-pr11309-deepseek-v32-exp-8xb200-dp8-main": "SGLang main before PR #11309 left the DSA indexer "
    "cache out of the per-token cost (kvfit counts it, as the fixed engine does)",
    "tpu-inference-kerasio-gemma3-1b-v5e-1-tp1": "KerasHub's model wrapper (KerasHubForCausalLM) sizes all "
    "26 Gemma 3 layers at full length, not as vLLM's sliding-window groups (its 26,624 B a token say so)",
}


@dataclass
class Case:
    """One start-up log as kvfit sees it."""

    id: str
    path: Path
    engine: str
    version: str = ""
    in_tests: bool = False
    model: ModelSpec | None = None
    mesh: DeviceMesh | None = None
    layout: str = ""
    knobs: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    logged: float = 0.0
    sub: dict[str, float] = field(default_factory=dict)  # logged non-KV figures, GiB per device
    tensor: int = 1
    pipeline: int = 1
    link: str = "nvlink"
    skip: str = ""


# ----------------------------------------------------------------------------- parsing
def number(value: Any) -> float | None:
    """A number a log field states: 0.9, "0.9 (default)", "131072 (model default)"; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    m = re.match(r"\s*(-?[0-9][0-9,]*\.?[0-9]*)", str(value))
    return float(m.group(1).replace(",", "")) if m else None


def logged_values(logged: dict[str, Any], key: str) -> list[float]:
    entry = logged.get(key)
    items = entry if isinstance(entry, list) else [entry] if entry is not None else []
    out = []
    for item in items:
        v = number(item.get("value") if isinstance(item, dict) else item)
        if v is not None:
            out.append(v)
    return out


def first_word(value: Any) -> str:
    return re.split(r"[\s(,;]", str(value).strip(), maxsplit=1)[0].lower() if value else ""


def boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    word = first_word(value)
    return {"true": True, "false": False, "yes": True, "no": False}.get(word)


def resolve_model(name: str) -> tuple[ModelSpec | None, str]:
    name = name.split(" (")[0].strip()  # "meta-llama/Llama-3.1-70B-Instruct (local /models/...)"
    key = name.strip().lower()
    overrides: dict[str, Any] = {}
    for alias, (target, extra) in ALIASES.items():
        if key.startswith(alias):
            name, overrides = target, extra
            break
    if key.startswith(("qwen1.5-7b", "qwen/qwen1.5-7b")):
        return ModelSpec(**QWEN15_7B), ""
    spec = None
    candidates = [name, re.sub(r"-(instruct|chat|it)(-hf)?$", "", name, flags=re.I),
                  re.sub(r"-instruct", "", name, flags=re.I)]
    if "/" not in name and name.lower().startswith("llama-3"):
        candidates += [f"meta-llama/{c}" for c in (name, f"{name}-Instruct")]
    candidates += [c.split("/")[-1].lower() for c in candidates if "/" in c]  # a preset: "google/gemma-3-4b-it"
    for cand in candidates:
        for folder in CONFIG_DIRS:
            path = folder / (cand.replace("/", "__") + ".json")
            if path.exists():
                spec = load_hf_config(path)
                break
        if spec is None:
            try:
                spec = load_preset(cand)
            except InputError:
                spec = None
        if spec is not None:
            break
    if spec is None:
        return None, f"model {name!r}: no vendored config or preset"
    return (replace(spec, **overrides) if overrides else spec), ""


def resolve_card(gpu: str, total_gib: float | None) -> tuple[DeviceSpec | None, str]:
    """The catalog card a log's GPU text names; the printed total (GiB, 2 decimals) as its limit."""
    text = gpu.lower()
    # "40" right after the name or a plain "40 GB" (not a ">40 GB" remark beside an 80 GB class card)
    a100_40 = "a100" in text and not re.search(r"(?<![>\d])80\s?gb", text) and (
        "40" in text.split("a100", 1)[1][:20] or bool(re.search(r"(?<![>\d])40\s?gb", text)))
    # "": a card the catalog lacks whose name holds a catalogued one's (Grace Hopper, 96 or 144 GB
    # with a runtime total that varies, is not an H200)
    table = [("gh200", ""), ("h100 nvl", "H100-NVL-94GB"),
             ("h100", "H100-PCIe-80GB" if "pcie" in text else "H100-80GB"),
             ("h200", "H200-141GB"), ("h20", "H20-96GB"), ("gb200", "GB200-186GB"), ("b200", "B200-192GB"),
             ("a100", "A100-40GB" if a100_40 else "A100-80GB"),
             ("l40s", "L40S-48GB"), ("l20", "L40S-48GB"),  # L20: the L40S's 48 GB GDDR6 board memory
             ("a10g", "A10G-24GB"), ("a10 ", "A10-24GB"), ("a10(", "A10-24GB"),
             ("l4", "L4-24GB"), ("t4", "T4-16GB"), ("4090", "RTX4090-24GB"), ("3090", "RTX3090-24GB"),
             ("5090", "RTX5090-32GB"), ("a4000", "RTXA4000-16GB"), ("a5000", "RTXA5000-24GB"),
             ("a6000", "RTXA6000-48GB"), ("rtx pro 6000", "RTXPRO6000-96GB"),
             ("mi355", "MI355X-288GB"), ("mi325", "MI325X-256GB"), ("mi300", "MI300X-192GB"),
             ("v6e", "TPU-v6e"), ("v5e", "TPU-v5e"), ("v5p", "TPU-v5p")]
    name = None
    for word, catalog in table:
        if word in text + " ":
            name = catalog
            break
    if name is None and total_gib and "80 gb" in text:
        name = "H100-80GB"  # an 80 GB-class card: only the printed total matters for the budget
    if name is None and total_gib and "40 gb" in text:
        name = "A100-40GB"
    if name is None and total_gib and "24 gb" in text and "consumer" in text:
        name = "RTX3090-24GB"  # a 24 GB consumer card: the printed total is all the budget uses
    if not name:
        return None, f"card {gpu!r} not in the catalog"
    spec = CATALOG[name]
    if total_gib:  # what the runtime printed wins over the catalog's usable figure
        limit = round(total_gib * GiB)
        spec = replace(spec, usable_bytes=limit, memory_bytes=max(spec.memory_bytes, limit))
    return spec, ""


RELEASE_IN_TEXT = re.compile(r"\b0\.\d+\.\d+(?:\.\d+)?(?:\.?(?:rc|post|dev)\d*)*")  # 0.10.1.1, 0.8.5.dev


def vllm_version(case_doc: dict[str, Any]) -> str:
    """The vLLM family a corpus entry's free-text version names ("0.11.x (V1)", "0.6.4.post1 (V0)",
    "0.2x (2026-06, V1)"): its first full release number through vllm.release_family, with the
    engine the log names (V0 logs of 0.8–0.10, V1 dev builds of 0.7) and the era words kept."""
    bucket = str(case_doc.get("version_bucket", ""))
    text = str(case_doc.get("engine_version", ""))
    release = RELEASE_IN_TEXT.search(text)
    minor = VERSION_RE.search(text)
    if "V0" in bucket or "(V0" in text:  # the V0 engine, whichever release: before or after 0.6.5
        m = re.search(r"\b0\.(\d+)\.(\d+|x)", text)  # "0.6.4.x", "0.4.x"; "0.6.x" goes with the later rule
        early = m and (int(m.group(1)) < 6 or (m.group(1) == "6" and m.group(2) != "x" and int(m.group(2)) < 5))
        return "v0-early" if early else "v0"
    if release:
        family = vllm.release_family(release.group())
        return "0.9" if family.startswith("v0") else family  # a V1 dev build before 0.8 (VLLM_USE_V1=1)
    if "<=0.9" in bucket:
        return "0.9"
    if "0.2x" in text or (minor is None and "0.10-0.19" not in bucket):
        return "0.2x"
    if minor is None:
        return "0.11"
    return vllm.release_family(f"0.{minor.group(1)}.0")  # "0.11.x": the family of the minor release


def load_case(path: Path) -> Case:
    doc = json.loads(path.read_text(encoding="utf-8"))
    engine = {"tpu-inference": "tpu"}.get(doc.get("engine", ""), doc.get("engine", ""))
    case = Case(doc.get("id", path.stem), path, engine, in_tests=bool(doc.get("in_tests")))
    if case.id in KNOWN_BUGS:
        case.skip = KNOWN_BUGS[case.id]
    par = doc.get("parallel") or {}
    tp, pp, dp = (int(number(par.get(k)) or 1) for k in ("tp", "pp", "dp"))
    flags = doc.get("flags") or {}
    logged = doc.get("logged") or {}
    if number(flags.get("data_parallel_size")):
        dp = int(number(flags["data_parallel_size"]))
    case.tensor, case.pipeline = tp, pp
    for key, name in (("weights_gib", "weights"), ("non_torch_gib", "non_torch"),
                      ("activation_peak_gib", "activation"), ("cuda_graph_gib", "cuda_graph"),
                      ("cuda_graph_estimated_gib", "cuda_graph")):
        values = logged_values(logged, key)
        if values:  # what the log itself says a term is (usable even when the log is skipped)
            case.sub[name] = max(values)
    case.link = interconnect(str(doc.get("gpu", "")))
    if engine not in ("vllm", "sglang", "trtllm", "tpu"):
        case.skip = f"engine {engine!r} has no kvfit profile"
    if case.skip:
        return case
    if engine == "vllm":
        case.version = vllm_version(doc)
        m = re.search(r"\b0\.(\d+)\.(\d+)", str(doc.get("engine_version", "")))
        if m and (int(m.group(1)), int(m.group(2))) < (2, 5):
            case.skip = ("vLLM before 0.2.5 charged no non-torch memory at all (the bug vllm PR #2031 "
                         "fixed); kvfit's v0 profile follows the fixed behaviour")
            return case
    elif engine == "trtllm":
        case.version = "pytorch" if "pytorch" in str(doc.get("engine_version", "")).lower() else "trt-engine"
    elif engine == "tpu":
        case.version = "legacy" if "legacy" in str(doc.get("engine_version", "")).lower() else "0.32.0"
    else:
        case.version = "0.5.23"
    model, why = resolve_model(str(doc.get("model", "")))
    if model is None:
        case.skip = why
        return case
    quant = str(doc.get("quantization") or "").lower()
    if not model.weight_quant and quant and "checkpoint" not in quant:
        # the log's own quantisation of a checkpoint whose vendored config is the unquantised one
        scheme = next((q for words, q in ((("awq",), "awq"), (("gptq",), "gptq"), (("fp8",), "fp8"),
                                          (("int8", "w8a8", "smoothquant"), "fp8"))
                       if any(w in quant for w in words)), None)
        if scheme is None and any(w in quant for w in ("int4", "4-bit", "nvfp4", "bitsandbytes")):
            case.skip = f"quantisation {quant!r} not modelled"
            return case
        if scheme:
            model = replace(model, weight_quant=scheme)
    totals = logged_values(logged, "total_gpu_memory_gib") or logged_values(logged, "trt_total_memory_gib")
    total = number(doc.get("gpu_total_memory_gib")) or (totals[0] if totals else None)
    smi = number(doc.get("nvidia_smi_total_mib"))
    if total is None and smi:  # a card outside the catalog: its runtime total by the catalog's rule
        total = (smi * MiB - CONTEXT_RESERVE) / GiB
    if "+" in re.sub(r"\([^)]*\)", "", str(doc.get("gpu", ""))):
        case.skip = "mixed cards in one pipeline (not modelled)"
        return case
    if case.id in CARD_OVERRIDES:
        gpu_text, total = CARD_OVERRIDES[case.id]
        card, why = resolve_card(gpu_text, total)
    else:
        card, why = resolve_card(str(doc.get("gpu", "")), total)
    if card is not None and re.search(r"no (gpu )?p2p|spans \d+ nodes", json.dumps(flags).lower()):
        # ranks that cannot reach each other peer-to-peer (the engine printed so) or that sit on
        # different nodes share no NVLink: priced as the PCIe variant of the card (NCCL over PCIe,
        # host memory or the network; no custom all-reduce)
        pcie = {"A100-80GB": "A100-PCIe-80GB", "A100-40GB": "A100-PCIe-40GB", "H100-80GB": "H100-PCIe-80GB"}
        if card.name in pcie:
            card = replace(CATALOG[pcie[card.name]], usable_bytes=card.usable_bytes,
                           memory_bytes=card.memory_bytes)
    if card is None:
        case.skip = why
        return case
    case.link = interconnect(card.device_kind or card.name) if case.link == "nvlink" else case.link
    devices = [SimulatedDevice(i, card) for i in range(tp * pp * dp)]
    case.mesh = DeviceMesh.from_devices(devices)
    # expert parallelism (vLLM --enable-expert-parallel: EP = DP x TP, experts split over all ranks;
    # vllm/distributed/parallel_state.py and FusedMoEParallelConfig.make in
    # vllm/model_executor/layers/fused_moe/config.py, vllm-project/vllm v0.10.1)
    ep = int(number(par.get("ep")) or 1)
    if ep > 1 and model.num_experts and ep in (tp, tp * dp):
        pass
    else:
        ep = 1
    case.layout = "x".join(f"{a}{n}" for a, n in (("dp", dp), ("pp", pp), ("tp", tp), ("ep", ep))
                           if n > 1) or "tp1"
    if "VLLM_PP_LAYER_PARTITION" in flags:
        case.skip = "custom pipeline layer partition (VLLM_PP_LAYER_PARTITION) not modelled"
        return case
    limits = str(flags.get("build_limits", ""))
    if engine == "trtllm" and case.version == "trt-engine" and re.search(r"\bnot\b", limits):
        case.skip = "prebuilt engine whose build limits the log does not state (its runtime buffers depend on them)"
        return case
    case.model = model
    try:
        case.knobs = knobs_for(engine, case.version, doc, flags, model)
        release = RELEASE_IN_TEXT.search(str(doc.get("engine_version", "")))
        if engine == "vllm":  # the release itself where the log prints one of the family's
            if release and vllm.release_family(release.group()) == case.version:
                case.knobs["version"] = release.group()
        elif engine == "sglang" and release:  # a release SGLang's profile covers
            try:
                sglang.release_family(release.group())
                case.knobs["version"] = release.group()
            except InputError:
                pass
    except ValueError as err:
        case.skip = str(err)
        return case
    case.target, case.logged = pick_target(engine, logged, case.knobs)
    # skipped with the model and knobs kept: a term the log prints (e.g. its CUDA-graph estimate)
    # still counts in the fit
    if flags.get("speculative_config") or flags.get("vision") or flags.get("limit_mm_per_prompt"):
        case.skip = "speculative decoding / multimodal encoder profiling not modelled"
    elif flags.get("kv_transfer_config") or flags.get("kv_connector"):
        case.skip = "KV connector (LMCache / NIXL) buffers not modelled"
    elif not case.target:
        case.skip = "no KV figure in the log"
    elif case.logged <= 0:
        case.skip = f"logged {case.target} = {case.logged} (a start-up failure, not a capacity)"
    return case


def sampler_in_log(lines: Iterable[str]) -> bool | None:
    """Whether a V1 log says FlashInfer's top-k/top-p sampler runs (vllm/v1/sample/ops/
    topk_topp_sampler.py prints one of these at start-up), None when it says neither."""
    text = "\n".join(map(str, lines))
    if "Using FlashInfer for top-p & top-k sampling" in text:
        return True
    if "Falling back to the PyTorch-native implementation of top-p & top-k sampling" in text:
        return False
    return None


def knobs_for(engine: str, version: str, doc: dict[str, Any], flags: dict[str, Any],
              model: ModelSpec) -> dict[str, Any]:
    """The profile knobs a log's flags state (a "default" flag is left to the profile's default).

    A numeric flag the log names without a number or a default ("high", "not stated") raises
    ValueError: kvfit cannot run the log as it ran.
    """
    for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization",
                 "mem_fraction_static", "max_batch_size", "max_num_tokens", "max_input_len"):
        text = flags.get(name)
        if text is not None and number(text) is None and not re.search(r"default|\(\d|max\(", str(text)):
            raise ValueError(f"flag {name} = {text!r} (no value in the log)")
    knobs: dict[str, Any] = {"version": version}
    kv = first_word(flags.get("kv_cache_dtype") or doc.get("kv_cache_dtype"))
    if engine == "vllm":
        util = number(flags.get("gpu_memory_utilization"))
        if util:
            knobs["gpu_memory_utilization"] = util
        for name in ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "block_size"):
            v = number(flags.get(name))
            if v:
                knobs[name] = int(v)
        for name in ("enforce_eager", "enable_prefix_caching", "enable_lora", "disable_custom_all_reduce",
                     "use_flashinfer_sampler"):
            v = boolean(flags.get(name))
            if v is not None:
                knobs[name] = v
        sampler = sampler_in_log(doc.get("raw_lines") or [])
        if sampler is not None and not version.startswith("v0"):
            knobs.setdefault("use_flashinfer_sampler", sampler)
        if kv in ("fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"):
            knobs["kv_cache_dtype"] = kv
        dt = first_word(flags.get("dtype") or doc.get("dtype"))
        if dt in ("float16", "half", "bfloat16", "float32"):
            knobs["dtype"] = dt
        if knobs.get("block_size") not in (None, 1, 8, 16, 32, 64, 128, 256):
            knobs.pop("block_size")
    elif engine == "sglang":
        frac = number(flags.get("mem_fraction_static"))
        if frac:
            knobs["mem_fraction_static"] = frac
        for src, name in (("cuda_graph_bs_max", "cuda_graph_max_bs"), ("cuda_graph_max_bs", "cuda_graph_max_bs"),
                          ("chunked_prefill_size", "chunked_prefill_size"), ("page_size", "page_size"),
                          ("context_length", "context_length")):
            v = number(flags.get(src))
            if v:
                knobs[name] = int(v)
        if kv in ("fp8_e4m3", "fp8_e5m2", "bf16", "bfloat16"):
            knobs["kv_cache_dtype"] = kv
    elif engine == "trtllm":
        frac = number(flags.get("free_gpu_memory_fraction") or flags.get("kv_cache_free_gpu_mem_fraction"))
        if frac and frac < 1:
            knobs["free_gpu_memory_fraction"] = frac
        # the limits a build command line states (trtllm-build --max_batch_size 2048 ...) count as
        # flags of their own where the log gives no separate value
        built = dict(re.findall(r"--(\w+)[ =](\d+)\b", str(flags.get("build", ""))))
        for src, name in (("tokens_per_block", "tokens_per_block"), ("max_batch_size", "max_batch_size"),
                          ("max_num_requests", "max_batch_size"), ("max_num_tokens", "max_num_tokens"),
                          ("max_input_len", "max_input_len"), ("max_beam_width", "max_beam_width"),
                          ("max_seq_len", "max_seq_len"), ("max_tokens", "max_tokens")):
            v = number(flags.get(src)) or number(built.get(src))
            if v:
                knobs[name] = int(v)
        for name in ("max_input_len", "max_batch_size"):  # "default of build.py 0.5.0 (2048)"
            m = re.search(r"\((\d+)\)", str(flags.get(name, "")))
            if name not in knobs and m:
                knobs[name] = int(m.group(1))
        m = VERSION_RE.search(str(doc.get("engine_version", "")))
        if version == "trt-engine" and "max_num_tokens" not in knobs and m and int(m.group(1)) < 11:
            # before 0.11 a build without --max_num_tokens sized the engine for max_batch_size ×
            # max_input_len packed tokens (tensorrt_llm/commands/build.py of those releases)
            knobs["max_num_tokens"] = knobs.get("max_batch_size", 256) * knobs.get("max_input_len", 1024)
        if "max_seq_len" not in knobs:
            out_len = number(flags.get("max_output_len")) or number(built.get("max_output_len"))
            in_len = knobs.get("max_input_len")
            if out_len and in_len:
                knobs["max_seq_len"] = int(out_len + in_len)
        if kv in ("fp8", "float16", "bfloat16", "int8"):
            knobs["dtype"] = kv
    else:  # tpu
        util = number(flags.get("gpu_memory_utilization"))
        if util is None:
            m = re.search(r"([0-9]\.[0-9]+)", str(flags.get("gpu_memory_utilization", "")))
            util = float(m.group(1)) if m else None
        if util:
            knobs["gpu_memory_utilization"] = util
        for name in ("max_model_len", "block_size", "max_num_seqs"):
            v = number(flags.get(name))
            if v:
                knobs[name] = int(v)
    length_knob = {"vllm": "max_model_len", "tpu": "max_model_len", "sglang": "context_length",
                   "trtllm": "max_seq_len"}[engine]
    if knobs.get(length_knob, 0) > model.max_position_embeddings:
        knobs[length_knob] = model.max_position_embeddings
    return knobs


# target name → (logged keys in priority order)
TARGETS = {
    "vllm": ("kv_cache_tokens", "num_gpu_blocks", "max_seq_len_kv_capacity_tokens", "kv_cache_gib"),
    "sglang": ("kv_cache_tokens", "max_total_num_tokens"),
    "trtllm": ("kv_cache_max_tokens", "blocks_primary_pool", "kv_cache_bytes", "kv_cache_gib"),
    "tpu": ("kv_cache_tokens", "kv_num_blocks"),
}


def pick_target(engine: str, logged: dict[str, Any], knobs: dict[str, Any]) -> tuple[str, float]:
    for key in TARGETS[engine]:
        values = logged_values(logged, key)
        if values:
            return key, min(values)  # the engine takes the minimum over ranks
    return "", 0.0


# ----------------------------------------------------------------------------- predicting
@dataclass(frozen=True)
class Prediction:
    value: float
    low: float
    high: float
    bytes_per_unit: float  # KV bytes per device one unit of the target stands for
    nonkv_central: dict[str, int]
    granularity: float  # the log's own resolution: one block of tokens, one block, 0.005 GiB


def predict(case: Case, band: bool = True) -> Prediction:
    p = engine_plan(case.model, case.mesh, case.layout, engine=case.engine, band=band, **case.knobs)
    t = case.target
    if t in ("kv_cache_gib",):
        value = (p.kv_available_bytes if case.engine == "vllm" else p.kv_bytes) / GiB
        unit = GiB
    elif t == "kv_cache_bytes":
        value, unit = float(p.kv_bytes), 1.0
    elif t in ("num_gpu_blocks", "blocks_primary_pool", "kv_num_blocks"):
        value, unit = float(p.num_blocks), float(p.bytes_per_block)
    elif t in ("max_seq_len_kv_capacity_tokens", "kv_cache_max_tokens"):
        value = float(p.num_blocks * p.block_size if t.startswith("max_seq") else p.pool_tokens)
        unit = float(p.kv_bytes_per_token)
    else:  # kv_cache_tokens
        value = float(p.kv_tokens)
        unit = p.kv_bytes / max(p.kv_tokens, 1)
    if value > 0 and p.kv_tokens > 0:
        low, high = value * p.tokens_band.low / p.kv_tokens, value * p.tokens_band.high / p.kv_tokens
    else:
        low = high = value
    if t == "kv_cache_gib":  # bytes band straight from the non-KV band
        spread_hi = (p.non_kv.total("high") - p.non_kv.total("central")) / GiB
        spread_lo = (p.non_kv.total("central") - p.non_kv.total("low")) / GiB
        low, high = value - spread_hi, value + spread_lo
    grain = {"kv_cache_gib": 0.005, "kv_cache_bytes": float(p.bytes_per_block)}.get(
        t, 1.0 if "blocks" in t or t == "num_gpu_blocks" else float(p.block_size))
    return Prediction(value, low, high, unit, {t_.name: t_.band.central for t_ in p.non_kv.terms}, grain)


# ----------------------------------------------------------------------------- fitting
# The hand-set values before any fit (the previous estimator/engines/non_kv.py constants): the
# prior each fit shrinks towards. Fixed here, so refitting never feeds on its own output.
PRIORS: dict[str, Any] = {
    "about": ("Fitted constants of kvfit's engine non-KV model. Written by `python "
              "benchmarks/engine_calibration.py --fit` from the start-up logs under tests/engine_logs/ "
              "(fitted_on lists the logs that moved a constant); every other non-KV term is derived from "
              "the engines' code (estimator/engines/non_kv.py). Each constant is a median of what the "
              "logs imply, with the prior counted as three observations. No test checks these numbers "
              "against the logs they were fitted on; benchmarks/RESULTS.md reports their leave-one-out "
              "error."),
    "fitted_on": [],
    "constants": {
        # vLLM "non_torch_memory" lines at TP=1 span 0.01–0.65 GiB (H100 V1 0.32/0.35, R1 0.35)
        # NCCL at TP ≥ 2: ~1.5 GiB per GPU on NVLink parts where it lands in the profiled window
        # (vllm PR #10511's TP=2 H100 comment: non_torch 3.58 vs 1.79 GiB at TP=1); V0 0.6.5–0.8 TP
        # logs print 0.2–0.43 GiB in all
        "vllm": {"non_torch_base_gib": {"default": 0.33},
                 "nccl_tp_gib": {"default": {"nvlink": 1.5, "pcie": 0.5}, "v0": {"nvlink": 0.1, "pcie": 0.1},
                                 "v0-early": {"nvlink": 1.5, "pcie": 0.5}},
                 "nccl_pp_gib": 0.2,
                 # per extra captured graph (vLLM's floor is 1 MiB): public "Estimated CUDA graph
                 # memory" lines of 0.42–0.94 GiB at the default 51 PIECEWISE + 35 FULL sizes
                 "cuda_graph_per_graph_mib": 4.0},
        # SGLang's NCCL term is vLLM's (non_kv.NCCL_TERM_OF)
        "sglang": {"non_torch_base_gib": {"default": 0.1}, "nccl_pp_gib": 0.2},
        "trtllm": {"non_torch_base_gib": {"default": 0.33},
                   "nccl_tp_gib": {"default": {"nvlink": 1.25, "pcie": 0.5}},
                   "nccl_pp_gib": 0.2,
                   "cuda_graph_gib": {"default": {"large": 0.75, "hbm": 0.75, "other": 0.4}}},
    },
    "residual_gib": {"vllm": {"default": [-0.35, 0.6]}, "sglang": {"default": [-0.5, 0.8]},
                     "trtllm": {"default": [-0.8, 1.2]}},
}


PRIOR_WEIGHT = 3  # the prior counts as this many observations: one or two odd logs cannot move a constant


def shrunk_median(values: list[float], prior: float) -> float:
    """The median of the data with the prior (the previous hand-set constant) as pseudo-points."""
    return statistics.median([*values, *([prior] * PRIOR_WEIGHT)])


FAMILIES = {"vllm": {"v0": ("v0",), "v0-early": ("v0-early",),
                     "default": ("0.9", "0.10", "0.11", "0.17", "0.2x", "0.33", "0.34")},
            "sglang": {"default": ("0.5.23",)}, "trtllm": {"default": ("pytorch",)}}


def miss_gib(c: Case) -> float | None:
    """GiB per device of non-KV memory the model misses on this log (> 0: under-counted), from the
    logged KV figure; None where the figure does not depend on the non-KV model (a token cap)."""
    if c.engine == "trtllm" and "max_tokens" in c.knobs:
        return None
    try:
        pred = predict(c, band=False)
    except (InputError, ValueError, ZeroDivisionError):
        return None
    return (pred.value - c.logged) * pred.bytes_per_unit / GiB


def graph_parts(c: Case, cal: dict[str, Any]) -> tuple[float, float]:
    """(bytes of the largest capture, number of further graphs) of a log's CUDA-graph estimate: the
    profile's graph term at 0 and at 1 MiB per graph."""
    terms = []
    for mib in (0.0, 1.0):
        trial = json.loads(json.dumps(cal))
        trial["constants"]["vllm"]["cuda_graph_per_graph_mib"] = mib
        with calibrated(trial):
            try:
                terms.append(predict(c, band=False).nonkv_central.get("cuda_graph", 0))
            except (InputError, ValueError):
                return 0.0, 0.0
    return terms[0], (terms[1] - terms[0]) / 2**20


def sub_term_cases(cases: Iterable[Case]) -> list[Case]:
    return [c for c in cases if not c.in_tests and c.sub and c.version]


def fit(cases: Iterable[Case]) -> dict[str, Any]:
    """Fit the constants calibration.json holds from ``cases`` (only those with in_tests False).

    Each constant is the median of what the logs imply for it, with the previous hand-set value
    counted as PRIOR_WEIGHT pseudo-observations: the non-torch base per version family from the
    single-GPU logs, then the NCCL term per interconnect from the tensor-parallel logs, then the PP
    point-to-point term from the pipeline logs — each from the KV figure the log prints (what the
    model misses, charged to that term), or from the log's own "non_torch_memory" line.
    """
    cal = json.loads(json.dumps(PRIORS))
    cases = list(cases)
    logged_terms = sub_term_cases(cases)  # a log's own "non_torch_memory" line counts even if skipped
    cases = [c for c in cases if not c.skip and not c.in_tests]
    used: set[str] = set()
    for engine, families in FAMILIES.items():
        own = [c for c in cases if c.engine == engine]
        own += [c for c in logged_terms if c.engine == engine and c.skip
                and ("non_torch" in c.sub or "cuda_graph" in c.sub)]
        const = cal["constants"][engine]
        prior_base = PRIORS["constants"][engine]["non_torch_base_gib"]["default"]
        for versions in families.values():
            implied = []
            with calibrated(cal):
                for c in own:
                    # single-GPU runs only: a data-parallel (+EP) run also holds the DP / EP
                    # groups' NCCL communicators, which the single-GPU base must not absorb
                    if c.version not in versions or c.tensor > 1 or c.pipeline > 1 or "dp" in c.layout:
                        continue
                    if "non_torch" in c.sub:
                        implied.append(c.sub["non_torch"])
                        used.add(str(c.path.relative_to(ROOT)))
                        continue
                    if c.skip:
                        continue
                    miss = miss_gib(c)
                    if miss is not None:
                        implied.append(fitted(engine, "non_torch_base_gib", c.version) + miss)
                        used.add(str(c.path.relative_to(ROOT)))
            if implied:
                value = round(max(shrunk_median(implied, prior_base), 0.0), 3)
                const["non_torch_base_gib"].update({v: value for v in versions})
        for family, versions in families.items():
            for link in ("nvlink", "pcie") if engine not in NCCL_TERM_OF else ():
                implied = []
                with calibrated(cal):
                    for c in own:
                        if c.version not in versions or c.tensor < 2 or c.pipeline > 1 or c.link != link:
                            continue
                        if engine == "vllm" and c.version in SNAPSHOT_AFTER_INIT:
                            continue  # charged half the term and no custom all-reduce (non_torch_band)
                        base = fitted(engine, "non_torch_base_gib", c.version)
                        ar = custom_all_reduce_bytes(c.tensor, link) / GiB if engine == "vllm" else 0.0
                        if "non_torch" in c.sub:
                            implied.append(c.sub["non_torch"] - base - ar)
                            used.add(str(c.path.relative_to(ROOT)))
                            continue
                        if c.skip:
                            continue
                        miss = miss_gib(c)
                        if miss is not None:
                            implied.append(fitted(engine, "nccl_tp_gib", c.version, link) + miss)
                            used.add(str(c.path.relative_to(ROOT)))
                if implied:
                    table = PRIORS["constants"][engine]["nccl_tp_gib"]
                    prior = (table.get(family) or table["default"])[link]
                    const["nccl_tp_gib"].setdefault(family, dict(table.get(family) or table["default"]))
                    const["nccl_tp_gib"][family][link] = round(max(shrunk_median(implied, prior), 0.0), 3)
        implied = []
        with calibrated(cal):
            for c in own:
                if c.pipeline > 1 and c.tensor == 1 and not c.skip:
                    miss = miss_gib(c)
                    if miss is not None:
                        implied.append(fitted(engine, "nccl_pp_gib") + miss)
                        used.add(str(c.path.relative_to(ROOT)))
        if implied:
            const["nccl_pp_gib"] = round(max(shrunk_median(implied, PRIORS["constants"][engine]["nccl_pp_gib"]),
                                             0.0), 3)
        if engine == "vllm":
            # the graph memory ≥ 0.21 subtracts ("Estimated CUDA graph memory"): the per-graph cost
            # each such log implies once the largest capture's activations are taken off
            implied = []
            for c in own:
                if "cuda_graph" not in c.sub or c.version not in ("0.2x", "0.33", "0.34") or not c.mesh:
                    continue
                first, extra = graph_parts(c, cal)
                if extra:
                    implied.append((c.sub["cuda_graph"] * GiB - first) / extra / 2**20)
                    used.add(str(c.path.relative_to(ROOT)))
            if implied:
                const["cuda_graph_per_graph_mib"] = round(max(shrunk_median(
                    implied, PRIORS["constants"][engine]["cuda_graph_per_graph_mib"]), 1.0), 2)
    cal["fitted_on"] = sorted(used)
    return cal


BAND_QUANTILES = (0.025, 0.975)  # from 20 residuals on; below that, a prediction interval (quantiles)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default rule)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    i = math.floor(pos)
    return v[i] if i + 1 >= len(v) else v[i] + (v[i + 1] - v[i]) * (pos - i)


# Student's t, 97.5th percentile, by degrees of freedom 1-18 (any statistics table)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101)


def quantiles(values: list[float]) -> tuple[float, float]:
    """The (low, high) residual band in GiB, containing 0; non_kv.residual_band widens it to its floor.

    From 20 residuals on: their 2.5th and 97.5th percentiles. Under 20 the extremes alone are too
    narrow (the next value falls outside the range of n others with probability 2 / (n + 1): 40 % at
    n = 4), so the band is the textbook 95 % prediction interval for one more value, mean ± t(n − 1) ·
    s · √(1 + 1/n), and at least the extremes."""
    if not values:
        return 0.0, 0.0
    if len(values) >= 20:
        lo, hi = (quantile(values, q) for q in BAND_QUANTILES)
    elif len(values) == 1:
        lo = hi = values[0]
    else:
        n, mean = len(values), statistics.fmean(values)
        half = T_975[n - 2] * statistics.stdev(values) * math.sqrt(1 + 1 / n)
        lo, hi = min(min(values), mean - half), max(max(values), mean + half)
    return min(lo, 0.0), max(hi, 0.0)


FAMILY_MIN_RESIDUALS = 4  # a version family gets its own band from this many residuals on


def with_residuals(cal: dict[str, Any], residuals: dict[str, list[tuple[str, float]]]) -> dict[str, Any]:
    """``cal`` with residual bands: per engine (pooled), and per version family where the family has
    FAMILY_MIN_RESIDUALS residuals of its own. ``residuals``: engine → [(version, GiB)]."""
    out = json.loads(json.dumps(cal))
    for engine, pairs in residuals.items():
        lo, hi = quantiles([r for _, r in pairs])
        table = {"default": [round(lo, 3), round(hi, 3)]}
        for versions in FAMILIES.get(engine, {}).values():
            own = [r for v, r in pairs if v in versions]
            if len(own) >= FAMILY_MIN_RESIDUALS:
                lo, hi = quantiles(own)
                table.update({v: [round(lo, 3), round(hi, 3)] for v in versions})
        out["residual_gib"][engine] = table
    return out


# ----------------------------------------------------------------------------- leave-one-out
@dataclass
class Outcome:
    case: Case
    value: float = 0.0
    error: float = 0.0  # (predicted − logged) / logged
    residual_gib: float = 0.0  # non-KV kvfit misses, GiB per device (> 0: under-counted)
    low: float = 0.0
    high: float = 0.0
    inside: bool = False
    failed: str = ""


def leave_one_out(cases: list[Case]) -> list[Outcome]:
    usable = [c for c in cases if not c.skip]
    outcomes: dict[str, Outcome] = {}
    refits: dict[str, dict] = {}
    for c in usable:  # pass 1: constants refitted without the case; central values only
        refits[c.id] = fit(o for o in cases if o is not c)
        o = Outcome(c)
        try:
            with calibrated(refits[c.id]):
                pred = predict(c, band=False)
            o.value = pred.value
            o.error = (pred.value - c.logged) / c.logged
            o.residual_gib = (pred.value - c.logged) * pred.bytes_per_unit / GiB
        except (InputError, ValueError, ZeroDivisionError) as err:
            o.failed = f"{type(err).__name__}: {err}"
        outcomes[c.id] = o
    for c in usable:  # pass 2: the band's residual quantiles from the other cases' residuals
        o = outcomes[c.id]
        if o.failed:
            continue
        others: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for other in outcomes.values():
            if other.case is not c and not other.failed:
                others[other.case.engine].append((other.case.version, other.residual_gib))
        cal = with_residuals(refits[c.id], others)
        try:
            with calibrated(cal):
                pred = predict(c)
        except (InputError, ValueError, ZeroDivisionError) as err:
            o.failed = f"{type(err).__name__}: {err}"
            continue
        o.low, o.high = pred.low, pred.high
        # inside, up to the log's own resolution (a printed GiB rounds to 0.005, counts to a block)
        o.inside = pred.low - pred.granularity <= c.logged <= pred.high + pred.granularity
    return [outcomes[c.id] for c in usable]


# ----------------------------------------------------------------------------- report
def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def p90(values: list[float]) -> float:
    v = sorted(values)
    return v[min(math.ceil(0.9 * len(v)) - 1, len(v) - 1)] if v else 0.0


def report(cases: list[Case], outcomes: list[Outcome]) -> str:
    lines = [START, "## Engine start-up fidelity on the public log corpus (leave-one-out)", "",
             f"`python benchmarks/engine_calibration.py` over {len(cases)} start-up logs under "
             "tests/engine_logs/ (each with its source issue/PR). For every log the fitted constants "
             "of estimator/engines/calibration.json are refitted without it (only logs with "
             "`in_tests: false` are ever fitted on), and its band's residual quantiles come from the "
             "other logs' leave-one-out residuals. Error = predicted − logged KV figure (tokens, blocks "
             "or GiB, as the log prints it), relative to the logged one.", "",
             "| engine | version | logs | median \\|error\\| | p90 \\|error\\| | max \\|error\\| | inside band |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if not o.failed:
            groups[(o.case.engine, o.case.version)].append(o)
            groups[(o.case.engine, "all")].append(o)
    for (engine, version), group in sorted(groups.items()):
        errs = [abs(o.error) for o in group]
        inside = sum(o.inside for o in group)
        lines.append(f"| {engine} | {version} | {len(group)} | {pct(statistics.median(errs))} | "
                     f"{pct(p90(errs))} | {pct(max(errs))} | {inside}/{len(group)} |")
    total = [o for o in outcomes if not o.failed]
    if total:
        errs = [abs(o.error) for o in total]
        lines += ["", f"All engines: {len(total)} logs, median |error| "
                  f"{pct(statistics.median(errs))}, p90 {pct(p90(errs))}, "
                  f"inside the band {sum(o.inside for o in total)}/{len(total)} "
                  f"({pct(sum(o.inside for o in total) / len(total))})."]
    cal = json.loads(CALIBRATION_PATH.read_text(encoding="utf-8"))
    v = cal["constants"]["vllm"]
    lines += ["", "Fitted constants in force (estimator/engines/calibration.json, fitted on "
              f"{len(cal['fitted_on'])} logs): vLLM non-torch base {v['non_torch_base_gib']} GiB, NCCL at "
              f"TP ≥ 2 {v['nccl_tp_gib']} GiB per GPU, PP p2p {v['nccl_pp_gib']} GiB; residual bands "
              f"{cal['residual_gib']} GiB (widened to ±max(0.25 GiB, 1.5 % of the card)). Everything "
              "else is derived from the engines' code (estimator/engines/non_kv.py)."]
    lines += ["", "<details><summary>Per log</summary>", "",
              "| log | engine/version | target | logged | predicted | error | band | residual GiB |",
              "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        c = o.case
        if o.failed:
            lines.append(f"| {c.id} | {c.engine} {c.version} | {c.target} | {c.logged:g} | – | {o.failed} | | |")
            continue
        lines.append(f"| {c.id} | {c.engine} {c.version} | {c.target} | {c.logged:g} | {o.value:.6g} | "
                     f"{100 * o.error:+.1f} % | {o.low:.6g}–{o.high:.6g} {'✓' if o.inside else '✗'} | "
                     f"{o.residual_gib:+.2f} |")
    skipped = [c for c in cases if c.skip]
    if skipped:
        lines += ["", "Skipped (kvfit cannot run them as logged):", ""]
        lines += [f"- {c.id}: {c.skip}" for c in skipped]
    lines += ["", "</details>", END]
    return "\n".join(lines)


def write_results(section: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def load_corpus() -> list[Case]:
    """Every log under tests/engine_logs/<engine>/; one kvfit cannot read is skipped with the reason."""
    cases = []
    for path in sorted(CORPUS.glob("*/*.json")):
        try:
            cases.append(load_case(path))
        except (KeyError, TypeError, ValueError, AttributeError, InputError) as err:
            cases.append(Case(path.stem, path, path.parent.name, skip=f"unreadable: {type(err).__name__}: {err}"))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="refit estimator/engines/calibration.json")
    parser.add_argument("--results", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    cases = load_corpus()
    outcomes = leave_one_out(cases)
    if args.fit:
        residuals: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for o in outcomes:
            if not o.failed and not o.case.in_tests:
                residuals[o.case.engine].append((o.case.version, o.residual_gib))
        cal = with_residuals(fit(cases), residuals)
        CALIBRATION_PATH.write_text(json.dumps(cal, indent=2) + "\n", encoding="utf-8")
    section = report(cases, outcomes)
    print(section)
    if args.results:
        write_results(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
