"""Model and device presets: every preset loads offline and plans, counts match published totals,
the stored configs are faithful to the real files, and every card's bytes are its cited figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from estimator import load_preset, parameter_count, plan
from estimator.model.hf_config import load_hf_config
from estimator.model.preset_configs import HF_PRESETS
from estimator.model.presets import PRESET_SOURCES, PRESETS
from meshes import CATALOG, DeviceMesh, device_spec

MiB, GiB = 2**20, 2**30

# A mesh (and layout) each preset fits on with room for KV: chosen by hand from the weights
# (bf16 = 2 B/param, fp8 ~1 B, MXFP4 ~0.5 B on the experts) and the usable memory of the card.
MESH_OF = {
    "llama-3.1-8b": ("1xL4-24GB", None), "llama-3.1-70b": ("4xH100-80GB", "tp4"),
    "llama-3.1-405b": ("8xB200-192GB", "tp8"), "llama-2-7b": ("1xA10-24GB", None),
    "mistral-7b-v0.3": ("1xRTX4090-24GB", None), "qwen2.5-7b": ("1xRTX3090-24GB", None),
    "qwen2.5-72b": ("2xH200-141GB", "tp2"), "qwen3-8b": ("1xRTX5090-32GB", None),
    "qwen3-14b": ("1xA100-40GB", None), "qwen3-32b": ("1xH100-80GB", None),
    "phi-3-mini-4k": ("1xT4-16GB", None), "mixtral-8x7b": ("2xA100-80GB", "tp2"),
    "qwen3-30b-a3b": ("1xRTXPRO6000-96GB", None), "minimax-m2.5": ("4xH200-141GB", "tp4"),
    "minimax-m2": ("4xH200-141GB", "tp4"),
    "deepseek-v3": ("8xH200-141GB", "tp8"), "deepseek-r1": ("8xH200-141GB", "tp8"),
    "deepseek-v3.2": ("8xB200-192GB", "tp8"), "kimi-k2": ("8xB300-288GB", "tp8"),
    "qwen3-235b-a22b": ("8xH200-141GB", "tp8"), "qwen3-235b-a22b-fp8": ("4xH200-141GB", "tp4"),
    "qwen3-coder-480b-a35b": ("8xB200-192GB", "tp8"), "qwen3-next-80b-a3b-thinking": ("4xH100-80GB", "tp4"),
    "gpt-oss-20b": ("1xL4-24GB", None), "gpt-oss-120b": ("1xH100-80GB", None),
    "llama-4-scout": ("4xH100-80GB", "tp4"), "llama-4-maverick": ("8xH200-141GB", "tp8"),
    "llama-3.3-70b": ("2xMI300X-192GB", "tp2"),
    "gemma-3-27b": ("1xH100-80GB", None), "glm-4.5": ("8xH200-141GB", "tp8"), "phi-4": ("1xL40S-48GB", None),
    "gemma-3-1b": ("1xT4-16GB", None), "gemma-3-4b": ("v5e-1", None), "gemma-3-12b": ("v7x-1", None),
    "mistral-small-3.1-24b": ("1xH100-80GB", None), "glm-4.6": ("8xH200-141GB", "tp8"),
    "mistral-large-2": ("4xH100-80GB", "tp4"),
}


def test_every_preset_has_a_mesh_and_a_source():
    assert set(MESH_OF) == set(PRESETS), "give each new preset a mesh here"
    assert set(PRESET_SOURCES) == set(PRESETS)
    for name, source in PRESET_SOURCES.items():
        assert name == name.lower() and "/" in source.split()[0], (name, source)


@pytest.mark.parametrize("name", sorted(MESH_OF))
def test_every_preset_loads_offline_and_plans(name):
    spec = load_preset(name.upper())  # case-insensitive, no file, no network
    assert spec.name == name
    mesh, layout = MESH_OF[name]
    length = min(8192, spec.max_position_embeddings)
    p = plan(name, mesh, layout, max_length=length)
    assert p.fits and p.pages_per_replica * p.page_size >= length, (name, mesh, p.suggestions)
    for row in p.devices:  # every device holds its weights and a KV pool inside its budget
        assert 0 < row.weights_bytes < row.budget_bytes and 0 < row.kv_pool_bytes <= row.kv_budget_bytes


# Published totals, each from its model's own card or report. Counts exclude MTP layers (DeepSeek
# states 671 B main model + 14 B MTP = 685 B on HF; GLM-4.5's 355 B includes its one MTP layer,
# hence 1 %). Gemma 3: Table 1 of the Gemma 3 Technical Report (arXiv:2503.19786), vision encoder
# + embedding + non-embedding: 1B 0+302+698 M, 4B 417+675+3,209 M, 12B 417+1,012+10,759 M,
# 27B 417+1,416+25,600 M. Kimi K2: "1.04 trillion total parameters" (Kimi K2 technical report,
# arXiv:2507.20534). gpt-oss: 116.83 B / 20.91 B (OpenAI gpt-oss model card). Llama-3.3-70B 70.6 B
# (HF model page). Qwen3: 235 B, Qwen3-Coder 480 B, Qwen3-Next 80 B total (Qwen model cards).
# MiniMax-M2: 230 B total (transformers docs, model_doc/minimax_m2.md). Phi-4: 14.7 B (HF page).
# Llama-4-Scout: 109 B total (Meta's card); the stored config has no vision tower (aiconfigurator
# trimmed it), so ~1.1 % short.
PUBLISHED = {
    "deepseek-v3": (671e9, 0.005), "deepseek-r1": (671e9, 0.005), "kimi-k2": (1.04e12, 0.02),
    "gpt-oss-120b": (116.83e9, 0.005), "gpt-oss-20b": (20.91e9, 0.005), "llama-3.3-70b": (70.6e9, 0.005),
    "qwen3-235b-a22b": (235e9, 0.005), "qwen3-235b-a22b-fp8": (235e9, 0.005),
    "qwen3-coder-480b-a35b": (480e9, 0.005), "qwen3-next-80b-a3b-thinking": (80e9, 0.01),
    "gemma-3-1b": (1000e6, 0.005), "gemma-3-4b": (4301e6, 0.005), "gemma-3-12b": (12188e6, 0.005),
    "gemma-3-27b": (27433e6, 0.005), "glm-4.5": (355e9, 0.01), "minimax-m2.5": (230e9, 0.01),
    "minimax-m2": (230e9, 0.01),
    "phi-4": (14.7e9, 0.005), "llama-4-scout": (109e9, 0.015),
    "mistral-small-3.1-24b": (24e9, 0.005),  # "24B" (Mistral's model card)
    "llama-4-maverick": (400e9, 0.005),  # "400B total parameters" (HF model card), vision tower included
    "glm-4.6": (355e9, 0.01),  # "355B total parameters" (zai-org/GLM-4.6 model card), MTP layer included
    "mistral-large-2": (123e9, 0.005),  # "123B parameters" (Mistral's Large 2 announcement and model card)
}


@pytest.mark.parametrize(("name", "published"), PUBLISHED.items())
def test_parameter_counts_match_published_totals(name, published):
    total, tolerance = published
    assert abs(parameter_count(load_preset(name)) - total) / total < tolerance


def test_kimi_k2_count_by_hand():
    # 61 layers (1 dense, 60 MoE), hidden 7168, 64 MLA heads (q_lora 1536, kv_lora 512, nope 128,
    # rope 64, v 128), 384 routed experts + 1 shared of width 2048, dense MLP 18432, vocab 163840.
    h, heads = 7168, 64
    attn = (1536 * h + 1536 + heads * 192 * 1536 + (512 + 64) * h + 512 + heads * 256 * 512
            + h * heads * 128)
    experts = 384 * 3 * h * 2048 + 384 * h + 384 + 3 * h * 2048  # routed, router + bias, shared
    dense = 3 * h * 18432
    total = 61 * (attn + 2 * h) + dense + 60 * experts + h + 2 * 163840 * h
    assert parameter_count(load_preset("kimi-k2")) == total


def test_mistral_small_count_by_hand():
    # text: 40 layers of q 5120·4096, k and v 5120·1024 each, o 4096·5120, gated MLP 3·5120·32768 and
    # two RMSNorms; untied embedding and head 2·131072·5120; final norm 5120.
    text = 40 * (2 * 5120 * 4096 + 2 * 5120 * 1024 + 3 * 5120 * 32768 + 2 * 5120) + 2 * 131072 * 5120 + 5120
    # Pixtral: 24 layers of 4·1024² attention (no biases), gated MLP 3·1024·4096, two RMSNorms; a
    # 14×14×3 patch convolution and a pre-norm; projector: RMSNorm 1024, patch merger 4·1024 → 1024,
    # linear 1024 → 5120 and 5120 → 5120 (multimodal_projector_bias false).
    vision = 24 * (4 * 1024**2 + 3 * 1024 * 4096 + 2 * 1024) + 3 * 14 * 14 * 1024 + 1024
    projector = 1024 + 4 * 1024 * 1024 + 1024 * 5120 + 5120 * 5120
    assert parameter_count(load_preset("mistral-small-3.1-24b")) == text + vision + projector


def test_mistral_large_2_count_by_hand():
    # 88 layers of q and o 12288·12288 (96 heads × 128), k and v 12288·1024 (8 × 128), gated MLP
    # 3·12288·28672 and two RMSNorms; untied embedding and head 2·32768·12288; final norm 12288.
    layer = 2 * 12288 * 12288 + 2 * 12288 * 1024 + 3 * 12288 * 28672 + 2 * 12288
    assert parameter_count(load_preset("mistral-large-2")) == 88 * layer + 2 * 32768 * 12288 + 12288


def test_mistral_large_2_second_copy_agrees(hf_config):
    """The GPTQ export of Large-Instruct-2407 holds every stored value; only its quantization differs."""
    export = json.loads(hf_config("ModelCloud/Mistral-Large-Instruct-2407-gptq-4bit").read_text())
    _is_subset(HF_PRESETS["mistral-large-2"].config, export)
    assert export["quantization_config"]["quant_method"] == "gptq"


def test_glm_4_6_is_glm_4_5_with_glm_4_7s_window(hf_config):
    """No GLM-4.6 config.json was found: its preset must equal GLM-4.5's config but for the 202752
    positions, and GLM-4.7's config (the next release, same architecture) must hold every value of it."""
    glm45 = json.loads(hf_config("zai-org/GLM-4.5").read_text())
    glm47 = json.loads(hf_config("zai-org/GLM-4.7-FP8").read_text())
    glm46 = HF_PRESETS["glm-4.6"].config
    differ = {k for k in glm45.keys() & glm47.keys() if glm45[k] != glm47[k]}
    assert differ == {"max_position_embeddings"}, differ
    assert all(glm46[k] == glm47[k] for k in glm46.keys() & glm47.keys())
    assert len(glm46.keys() & glm47.keys()) >= 15
    _is_subset({k: v for k, v in glm46.items() if k != "max_position_embeddings"}, glm45)
    assert glm46["max_position_embeddings"] == glm47["max_position_embeddings"] == 202752
    as_45 = load_preset("glm-4.6").to_dict() | {"name": "glm-4.5", "max_position_embeddings": 131072}
    assert as_45 == load_preset("glm-4.5").to_dict()


def test_pixtral_patch_merger_reads_the_wrappers_spatial_merge_size():
    from estimator.model.hf_config import spec_from_hf_config
    from meshes.validation import InputError

    config = json.loads(json.dumps(HF_PRESETS["mistral-small-3.1-24b"].config))
    merged_2x2 = spec_from_hf_config(config).vision_params
    config["spatial_merge_size"] = 1  # the patch merger maps 1·1024 → 1024: 3·1024² fewer weights
    assert spec_from_hf_config(config).vision_params == merged_2x2 - 3 * 1024 * 1024
    config["spatial_merge_size"] = 0
    with pytest.raises(InputError, match="spatial_merge_size"):
        spec_from_hf_config(config)


# Which vendored config (tests/model_configs, byte copies of the HF files listed in SOURCES.md)
# each HF preset was trimmed from. Qwen3-235B-A22B (bf16) and Qwen3-Coder-480B are copied from
# ai-dynamo/aiconfigurator and not vendored; Gemma 3 1B/4B/12B come from google/gemma_pytorch.
VENDORED = {
    "deepseek-v3": "deepseek-ai/DeepSeek-V3", "deepseek-r1": "deepseek-ai/DeepSeek-R1",
    "deepseek-v3.2": "deepseek-ai/DeepSeek-V3.2", "kimi-k2": "moonshotai/Kimi-K2-Instruct",
    "qwen3-235b-a22b-fp8": "Qwen/Qwen3-235B-A22B-FP8",
    "qwen3-next-80b-a3b-thinking": "Qwen/Qwen3-Next-80B-A3B-Thinking",
    "gpt-oss-20b": "openai/gpt-oss-20b", "gpt-oss-120b": "openai/gpt-oss-120b",
    "llama-4-scout": "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    "llama-4-maverick": "meta-llama/Llama-4-Maverick-17B-128E-Instruct",
    "llama-3.3-70b": "meta-llama/Llama-3.3-70B-Instruct", "gemma-3-27b": "google/gemma-3-27b-it",
    "glm-4.5": "zai-org/GLM-4.5", "phi-4": "microsoft/phi-4",
    "mistral-small-3.1-24b": "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
    "mistral-large-2": "mistralai/Mistral-Large-Instruct-2411",
}


def _is_subset(trimmed, full, where=""):
    for key, value in trimmed.items():
        assert key in full, f"{where}{key} is not in the real config"
        if isinstance(value, dict):
            _is_subset(value, full[key], f"{where}{key}.")
        else:
            assert value == full[key], f"{where}{key}: {value!r} != {full[key]!r}"


@pytest.mark.parametrize(("name", "hf_id"), VENDORED.items())
def test_stored_configs_are_the_real_ones_trimmed(hf_config, name, hf_id):
    """Every stored key has the real file's value, and dropping the rest changes nothing parsed."""
    assert HF_PRESETS[name].hf_id == hf_id
    real = json.loads(hf_config(hf_id).read_text())
    _is_subset(HF_PRESETS[name].config, real)
    parsed_real = load_hf_config(hf_config(hf_id)).to_dict()
    parsed_preset = load_preset(name).to_dict()
    parsed_real.pop("name"), parsed_preset.pop("name")
    assert parsed_preset == parsed_real


def test_architectures_come_through():
    """Facts read off the configs and cards: MLA, sliding patterns, linear attention, chunking."""
    v3 = load_preset("deepseek-v3")
    assert v3.is_mla and (v3.kv_lora_rank, v3.qk_rope_head_dim) == (512, 64)
    assert v3.weight_quant == "fp8_block" and v3.quant_block == 128 and v3.first_dense_layers == 3
    v32 = load_preset("deepseek-v3.2")
    assert (v32.index_n_heads, v32.index_head_dim) == (64, 128)  # lightning indexer
    for size in ("1b", "4b", "12b", "27b"):  # Gemma 3: five local layers, then one global
        g = load_preset(f"gemma-3-{size}")
        assert g.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)
        assert g.layer_types.count("full_attention") == g.num_layers // 6
    assert load_preset("gemma-3-1b").sliding_window == 512 and load_preset("gemma-3-27b").sliding_window == 1024
    nxt = load_preset("qwen3-next-80b-a3b-thinking")  # gated delta net, one full layer in four
    assert nxt.layer_types.count("linear_attention") == 36 and nxt.layer_types.count("full_attention") == 12
    oss = load_preset("gpt-oss-120b")
    assert oss.weight_quant == "mxfp4" and oss.sliding_window == 128 and oss.attention_sinks
    assert oss.layer_types.count("sliding_attention") == 18
    scout = load_preset("llama-4-scout")  # chunked local attention, every fourth layer global
    assert scout.sliding_window == 8192 and scout.layer_types.count("full_attention") == 12
    assert load_preset("qwen3-235b-a22b-fp8").weight_quant == "fp8_block"
    assert load_preset("qwen3-235b-a22b").weight_quant == ""
    mm = load_preset("minimax-m2.5")
    assert (mm.num_experts, mm.num_experts_per_token, mm.moe_intermediate_size) == (256, 8, 1536)


def test_presets_import_without_jax():
    code = ("import sys, estimator.model.presets as p, estimator.model.preset_configs; "
            "assert len(p.PRESETS) >= 32; "
            "assert not {'jax', 'flax', 'typer', 'rich', 'matplotlib'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- devices -----------------------------------------------------------------------------------

# (nvidia-smi / rocm-smi total, runtime total) as the cited logs print them. None: no runtime figure
# was found and the catalog's rule (nvidia-smi total - 500 MiB) applies. A float is a figure printed
# in GiB with two decimals, good to 0.005 GiB.
CITED = {
    "T4-16GB": (15360 * MiB, 14.58),  # modal-labs/modal-client #2797; datawhalechina/self-llm #162
    "A10-24GB": (23028 * MiB, 22.18),  # vllm-project/vllm #10034; OpenBMB/MiniCPM-V #640
    "A10G-24GB": (23028 * MiB, None),  # NVIDIA/TensorRT-LLM #7818
    "L4-24GB": (23034 * MiB, 22.05),  # modal-labs/modal-client #2797; vllm-project/vllm #20214
    "L40S-48GB": (46068 * MiB, None),  # modal-labs/modal-client #2797
    "A40-48GB": (46068 * MiB, None),  # thamada/nvidia-smi nvsim/A40x10_smi.py
    "A100-40GB": (40960 * MiB, 42_298_834_944),  # modal #2797; bottlerocket-os/bottlerocket #3873
    "A100-80GB": (81920 * MiB, None),  # modal-labs/modal-client #2797
    "A100-PCIe-80GB": (81920 * MiB, None),  # vllm-project/vllm #7992
    "H100-80GB": (81559 * MiB, 81080 * MiB),  # NVIDIA/nccl #1264; this project's H100 runs
    "H100-NVL-94GB": (95830 * MiB, None),  # wilicc/gpu-burn #141; NVIDIA/gpu-admin-tools #4
    "H200-141GB": (143771 * MiB, 143156 * MiB),
    "H20-96GB": (97871 * MiB, None),
    "B200-192GB": (183359 * MiB, 178.35),  # NVIDIA/TensorRT-LLM #10278; pytorch/ao #4002
    "B300-288GB": (275040 * MiB, None),
    "GB200-186GB": (189471 * MiB, None),
    "RTX3090-24GB": (24576 * MiB, 23.58),  # noonghunna/club-3090 #1128; vllm-project/vllm #10517
    "RTX4090-24GB": (24564 * MiB, None),  # vllm-project/vllm #7553
    "RTX5090-32GB": (32607 * MiB, None),  # noonghunna/club-3090 #617
    "RTXA6000-48GB": (48 * GiB, 47.53),  # datasheet 48 GB GDDR6; allenai/open-instruct #163
    "RTX6000Ada-48GB": (48 * GiB, None),
    "RTXPRO6000-96GB": (97887 * MiB, None),  # vllm-project/vllm #27542, #43412
    "MI250X-64GB": (68_702_699_520, None),  # rocm-smi per GCD
    "MI300X-192GB": (206_158_430_208, None),
    "MI355X-288GB": (288 * GiB, None),
    "TPU-v7": (192 * GiB // 2, None),  # Cloud TPU7x page: 192 GiB per chip, two devices per chip
}


@pytest.mark.parametrize(("name", "cited"), CITED.items())
def test_every_card_has_its_cited_bytes(name, cited):
    total, runtime = cited
    spec = CATALOG[name]
    assert spec.memory_bytes == total
    if runtime is None:
        reserve = 256 * MiB if spec.platform == "tpu" else 500 * MiB
        assert spec.memory_bytes - spec.usable_bytes == reserve
    elif isinstance(runtime, float):
        assert abs(spec.usable_bytes - runtime * GiB) <= 0.005 * GiB
    else:
        assert spec.usable_bytes == runtime


def test_every_requested_card_is_in_the_catalog():
    for name in ("T4", "L4", "L40S", "A10", "A10G", "A40", "A100-40GB", "A100-80GB", "A100-PCIe-40GB",
                 "A100-PCIe-80GB", "H100-PCIe", "H100-SXM", "H100-NVL", "H200", "H20", "B200", "B300",
                 "GB200", "RTX3090", "RTX4090", "RTX5090", "RTX-A6000", "RTX-6000-Ada", "RTX-PRO-6000",
                 "MI250X", "MI300X", "MI325X", "MI355X", "v4", "v5e", "v5p", "v6e", "v7"):
        spec = device_spec(name)
        assert 0 < spec.usable_bytes <= spec.memory_bytes and spec.hbm_bandwidth > 0, name


def test_existing_names_and_mesh_presets_still_resolve():
    for old in ("H100-80GB", "H200-141GB", "A100-80GB", "A100-40GB", "B200-192GB", "RTX3090-24GB",
                "L4-24GB", "MI300X-192GB", "TPU-v5e", "CPU-host"):
        assert device_spec(old) is CATALOG[old]
    assert DeviceMesh.from_preset("v5e-8").size == 8
    assert DeviceMesh.from_preset("8xH100-80GB").size == 8
    assert DeviceMesh.from_preset("2x8xH200-141GB").size == 16
    v7 = DeviceMesh.from_preset("v7x-8")  # 8 TensorCore devices on 4 chips
    assert v7.size == 8 and v7.device_kinds == ("TPU7x",)
