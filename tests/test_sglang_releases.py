"""SGLang releases 0.4.3–0.5.23 under the one "0.5.23" profile: the default mem_fraction_static and
the pools of each release, written out from its python/sglang/srt/server_args.py (and, from 0.5.3,
arg_groups/memory_hook.py) by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from estimator.engines import engine_plan
from meshes import CATALOG, InputError

MiB = 2**20


def nvidia_smi_mib(card: str) -> float:
    return CATALOG[card].memory_bytes / MiB  # what get_device_memory_capacity reads


def fraction(release: str, mesh: str, layout: str = "tp1") -> float:
    return engine_plan("llama-3.1-8b", mesh, layout, engine="sglang", version=release).knobs["mem_fraction_static"]


def test_by_tensor_parallel_size_before_0_4_6():
    assert fraction("0.4.3.post4", "1xH100-80GB") == 0.88
    assert fraction("0.4.5", "8xH200-141GB", "tp8") == 0.81


def test_large_cards_from_0_4_6():
    h200 = nvidia_smi_mib("H200-141GB")  # above 96 GiB: min(f + 48 GiB · (1 − f) / mem, (mem − 18 GiB) / mem)
    assert fraction("0.4.6.post5", "8xH200-141GB", "tp8") == pytest.approx(
        min(0.88 + 48 * 1024 * 0.12 / h200, (h200 - 18 * 1024) / h200))
    assert fraction("0.4.7", "1xB200-192GB") == 0.79  # above 180,000 MiB


def test_reserve_per_card_class_from_0_4_8():
    h100, b200 = nvidia_smi_mib("H100-80GB"), nvidia_smi_mib("B200-192GB")
    assert fraction("0.5.2", "1xH100-80GB") == round((h100 - (9.5 + 1 / 2) * 1024) / h100, 3)
    assert fraction("0.4.8", "1xB200-192GB") == round((b200 - 32 * 1024) / b200, 3)


def test_small_cards_and_prefill_graphs_from_0_5_3():
    # 24 GB cards 0.5.5–0.5.19: 2048-token chunks and 24 graphs at TP 1 → 512 + 1.5 · 2048 + 128 + 48 MiB
    rtx = nvidia_smi_mib("RTX4090-24GB")
    p = engine_plan("llama-3.1-8b", "1xRTX4090-24GB", engine="sglang", version="0.5.9")
    assert (p.knobs["chunked_prefill_size"], p.knobs["cuda_graph_max_bs"]) == (2048, 24)
    assert p.knobs["mem_fraction_static"] == round((rtx - (512 + 3072 + 128 + 48)) / rtx, 3)
    # an H100 before and after the prefill graph reserve (58 sizes × 8 MiB, 0.5.10 on)
    h100 = nvidia_smi_mib("H100-80GB")
    assert fraction("0.5.9", "1xH100-80GB") == round((h100 - 13440) / h100, 3)
    assert fraction("0.5.10", "1xH100-80GB") == round((h100 - 13440 - 58 * 8) / h100, 3)


def test_the_hybrid_sliding_window_pool_by_release(sliding_model):
    gemma = sliding_model  # 2 full + 10 sliding layers of 4 KV heads × 128
    pinned = dict(mem_fraction_static=0.9, context_bytes=0, weights_bytes=2**30, non_torch_bytes=0)
    rest = CATALOG["H100-80GB"].usable_bytes - 2**30 - CATALOG["H100-80GB"].usable_bytes // 10
    layer = 4 * 128 * 2 * 2
    split = int(rest // (2 * layer + 0.8 * 10 * layer))
    whole = rest // (12 * layer)
    tokens = {v: engine_plan(gemma, "1xH100-80GB", engine="sglang", version=v, **pinned).kv_tokens
              for v in ("0.4.9", "0.4.10", "0.5.1")}
    assert tokens == {"0.4.9": whole, "0.4.10": split, "0.5.1": whole}  # 0.5.1: Gemma opts out
    gpt = engine_plan(replace(gemma, model_type="gpt_oss"), "1xH100-80GB", engine="sglang", version="0.5.1",
                      **pinned)
    assert gpt.kv_tokens == split


@pytest.mark.parametrize("release", ["0.4.2", "0.6.0", "0.5.24", "latest"])
def test_releases_outside_0_4_3_to_0_5_23_are_refused(release):
    with pytest.raises(InputError, match="an SGLang release 0.4.3–0.5.23"):
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang", version=release)


def test_decode_graph_reserve_without_graphs_until_0_5_15():
    # --disable-cuda-graph: 0.5.14 still reserves 2 MiB × 256 graph sizes, 0.5.15 does not
    h100 = nvidia_smi_mib("H100-80GB")
    off = {v: engine_plan("llama-3.1-8b", "1xH100-80GB", engine="sglang", version=v,
                          disable_cuda_graph=True).knobs["mem_fraction_static"] for v in ("0.5.14", "0.5.15")}
    # the 10 GiB floor of > 60 GiB cards: 512 + 1.5 · 8192 + 128 (+ 512) MiB is above it either way
    assert off == {"0.5.14": round((h100 - 13440) / h100, 3), "0.5.15": round((h100 - 12928) / h100, 3)}


def test_multimodal_models_cut_the_fraction(hf_config):
    from estimator.model.hf_config import load_hf_config

    vl = load_hf_config(hf_config("Qwen/Qwen2.5-VL-7B-Instruct"))  # ViT hidden 1280; no num_hidden_layers
    b200 = nvidia_smi_mib("B200-192GB")
    # 0.5.3 on, unset: 16,384-token chunks, 512 graphs → 512 + 24,576 + 128 + 1024 MiB, then × 0.95 ×
    # (1 − 0.1 · (24 · 1280² / (24 · 1024²) − 1)) with SGLang's default of 24 ViT layers
    base = round((b200 - 26240) / b200, 3)
    plan = engine_plan(vl, "1xB200-192GB", engine="sglang", version="0.5.6")
    assert plan.knobs["mem_fraction_static"] == pytest.approx(base * 0.95 * (1 - 0.1 * (1280**2 / 1024**2 - 1)))
    # a fraction the user set is kept from 0.4.9; 0.4.7 still multiplied it by 0.95
    for release, expected in (("0.5.6", 0.8), ("0.4.7", 0.8 * 0.95)):
        p = engine_plan(vl, "1xB200-192GB", engine="sglang", version=release, mem_fraction_static=0.8)
        assert p.knobs["mem_fraction_static"] == pytest.approx(expected)
