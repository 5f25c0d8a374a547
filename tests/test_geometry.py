"""Per-device geometry by hand: page bytes, KV-head replication, pipeline splits, weight shards."""

from __future__ import annotations

import pytest

from estimator import Layout, geometry, load_preset, plan
from estimator.core.layout import stage_layers
from meshes import InputError

MiB = 2**20


def test_llama_8b_page_is_16_mib_and_8_mib_per_device_at_tp2():
    m = load_preset("llama-3.1-8b")
    # 2 (K, V) · 32 layers · 128 tokens · 8 heads · 128 dim · 2 B
    assert geometry(m, Layout()).stages[0].page_bytes == 2 * 32 * 128 * 8 * 128 * 2 == 16 * MiB
    g2 = geometry(m, Layout(tensor=2))
    assert g2.stages[0].page_bytes == 8 * MiB
    assert g2.bytes_per_block == 16 * MiB  # MAX's bytes_per_block sums the TP group


def test_llama_70b_tp8_page_per_device():
    g = geometry(load_preset("llama-3.1-70b"), Layout(tensor=8))
    assert g.stages[0].page_bytes == 2 * 80 * 128 * 1 * 128 * 2 == 5_242_880


def test_tp16_on_8_kv_heads_replicates_twice_with_same_bytes_per_device():
    m = load_preset("llama-3.1-70b")
    g = geometry(m, Layout(tensor=16))
    assert g.kv_heads_per_shard == 1 and g.replication == 2
    assert g.stages[0].page_bytes == 5_242_880
    p = plan(m, "2x8xH100-80GB", "tp16", activation_bytes=0)
    waste = p.devices[0].kv_pool_bytes // 2
    assert p.waste_bytes == waste and f"{waste:,} B" in p.warnings[0]


def test_kv_heads_neither_dividing_nor_replicable_are_refused():
    # Qwen2.5-7B: 28 query heads (TP7 divides them), 4 KV heads: TP7 neither splits nor replicates
    with pytest.raises(InputError, match="num_kv_heads=4") as e:
        geometry(load_preset("qwen2.5-7b"), Layout(tensor=7))
    assert e.value.field == "tensor_parallel_size"


def test_fp8_kv_halves_the_page():
    m = load_preset("llama-3.1-8b")
    assert geometry(m, Layout(), kv_cache_dtype="fp8").stages[0].page_bytes == 8 * MiB


@pytest.mark.parametrize(("layers", "stages", "sizes"), [
    (32, 4, [8, 8, 8, 8]), (10, 4, [2, 3, 3, 2]), (80, 3, [27, 27, 26]), (5, 5, [1] * 5)])
def test_stage_layers_uneven_splits_spare_the_last_stage(layers, stages, sizes):
    ranges = stage_layers(layers, stages)
    assert [len(r) for r in ranges] == sizes
    assert ranges[0].start == 0 and ranges[-1].stop == layers


def test_more_stages_than_layers_refused():
    with pytest.raises(InputError, match="pipeline_parallel_size"):
        stage_layers(4, 5)


def test_weight_shards_by_hand_llama_8b_tp2_pp2():
    m = load_preset("llama-3.1-8b")
    h, v, inter, kv = 4096, 128256, 14336, 1024
    layer = h * h // 2 + 2 * (h * kv // 2) + h * h // 2 + 3 * h * inter // 2 + 2 * h
    g = geometry(m, Layout(tensor=2, pipeline=2))
    first, last = g.stages
    assert first.weight_bytes == 2 * (v // 2 * h + 16 * layer)  # embedding on stage 0
    assert last.weight_bytes == 2 * (16 * layer + h + v // 2 * h)  # final norm + LM head last
    assert first.page_bytes == last.page_bytes == 2 * 16 * 128 * 4 * 128 * 2


def test_vocab_parallel_pads_rows_up():
    # 32001 rows over TP8 → ceil = 4001 rows per device, one more than 32000 rows give,
    # for both the embedding and the LM head: 2 · 1 · 4096 · 2 B
    m = load_preset("llama-3.1-8b")
    def per_device(vocab):
        spec = m.__class__(**{**m.to_dict(), "vocab_size": vocab})
        return geometry(spec, Layout(tensor=8)).stages[0].weight_bytes
    assert per_device(32001) - per_device(32000) == 2 * 4096 * 2


def test_experts_over_the_expert_axis():
    m = load_preset("mixtral-8x7b")
    expert = 3 * 4096 * 14336 * 2  # one expert of one layer, bf16
    tp8 = geometry(m, Layout(tensor=8)).stages[0].weight_bytes
    tp8_ep8 = geometry(m, Layout(tensor=8, expert=8)).stages[0].weight_bytes
    assert tp8 == tp8_ep8  # 8 experts split 8 ways either way
    dp2_tp4 = geometry(m, Layout(data=2, tensor=4)).stages[0].weight_bytes
    dp2_tp4_ep8 = geometry(m, Layout(data=2, tensor=4, expert=8)).stages[0].weight_bytes
    # experts over all 8 devices instead of the 4 of a replica: half the expert bytes
    assert dp2_tp4 - dp2_tp4_ep8 == 32 * 8 * expert // 4 - 32 * 8 * expert // 8


def test_expert_degree_must_divide_experts():
    with pytest.raises(InputError, match="num_experts=8"):
        geometry(load_preset("mixtral-8x7b"), Layout(data=3, tensor=4, expert=3))


def test_layout_parse_and_check():
    assert Layout.parse("dp2xtp4") == Layout(data=2, tensor=4)
    assert Layout.parse("pp2-tp4").name == "tp4xpp2"
    for bad in ("tp", "tp8xtp2", "zz4", ""):
        with pytest.raises(InputError, match="layout"):
            Layout.parse(bad)
    with pytest.raises(InputError, match="8 devices"):
        plan("llama-3.1-8b", "8xH100-80GB", "tp4")
