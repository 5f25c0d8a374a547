"""Partition rules (regex → PartitionSpec) give per-device weight bytes equal to geometry().

The tensor lists are written here from the HF naming scheme (``model.layers.{i}.self_attn.q_proj.weight``,
Mixtral's ``block_sparse_moe.experts.{j}.w1.weight``, Qwen-MoE's ``mlp.experts.{j}.gate_proj.weight``)
and the ModelSpec sizes, independently of estimator.model.weights; no files are needed.
"""

from __future__ import annotations

import math
import warnings

import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator import DeviceMesh, Layout, ModelSpec, geometry, load_preset
from estimator.core.partition_rules import (
    FALLBACK,
    REPLICATED,
    PartitionRule,
    PartitionRules,
    Tensor,
    default_rules,
    dtype_bits,
    layout_mesh,
    rules_for,
    shard_weights,
    stack_experts,
    weight_bytes_per_stage,
)
from meshes import InputError


def hf_tensors(m: ModelSpec, dtype: str = "BF16") -> list[Tensor]:
    """The tensors an HF checkpoint of ``m`` holds, by name and [out, in] shape."""
    h, hd = m.hidden_size, m.head_dim
    q, kv = m.num_attention_heads * hd, m.num_kv_heads * hd
    out = [Tensor("model.embed_tokens.weight", (m.vocab_size, h), dtype),
           Tensor("model.norm.weight", (h,), dtype)]
    if not m.tie_word_embeddings:
        out.append(Tensor("lm_head.weight", (m.vocab_size, h), dtype))
    for i in range(m.num_layers):
        p = f"model.layers.{i}."
        out += [Tensor(p + "input_layernorm.weight", (h,), dtype),
                Tensor(p + "post_attention_layernorm.weight", (h,), dtype),
                Tensor(p + "self_attn.q_proj.weight", (q, h), dtype),
                Tensor(p + "self_attn.k_proj.weight", (kv, h), dtype),
                Tensor(p + "self_attn.v_proj.weight", (kv, h), dtype),
                Tensor(p + "self_attn.o_proj.weight", (h, q), dtype)]
        if m.attention_bias:
            out += [Tensor(p + f"self_attn.{n}_proj.bias", (s,), dtype) for n, s in (("q", q), ("k", kv), ("v", kv))]
        if m.qk_norm:
            out += [Tensor(p + f"self_attn.{n}_norm.weight", (hd,), dtype) for n in "qk"]
        if m.is_moe_layer(i):
            mixtral = m.model_type == "mixtral"
            block, names = ("block_sparse_moe", ("w1", "w3", "w2")) if mixtral else \
                ("mlp", ("gate_proj", "up_proj", "down_proj"))
            e, mi = m.num_experts, m.moe_intermediate_size
            out.append(Tensor(p + f"{block}.gate.weight", (e, h), dtype))
            for j in range(e):
                out += [Tensor(p + f"{block}.experts.{j}.{n}.weight", s, dtype)
                        for n, s in zip(names, ((mi, h), (mi, h), (h, mi)), strict=True)]
        else:
            f = m.intermediate_size
            out += [Tensor(p + "mlp.gate_proj.weight", (f, h), dtype),
                    Tensor(p + "mlp.up_proj.weight", (f, h), dtype),
                    Tensor(p + "mlp.down_proj.weight", (h, f), dtype)]
    return out


def analytic(m: ModelSpec, layout: Layout) -> dict[int, int]:
    return {s.stage: s.weight_bytes for s in geometry(m, layout).stages}


@pytest.mark.parametrize(("preset", "layout"), [
    ("llama-3.1-8b", Layout()), ("llama-3.1-8b", Layout(tensor=2, pipeline=2)),
    ("llama-3.1-70b", Layout(tensor=8)), ("llama-3.1-70b", Layout(tensor=16)),  # 8 KV heads over 16
    ("llama-3.1-70b", Layout(data=2, tensor=4, pipeline=2)),
    ("qwen2.5-7b", Layout(tensor=2, pipeline=3)), ("qwen2.5-7b", Layout(tensor=4)),  # q/k/v biases
    ("qwen3-8b", Layout(tensor=4)),  # q/k norms
    ("mistral-7b-v0.3", Layout(tensor=8)),
    ("mixtral-8x7b", Layout(tensor=8)), ("mixtral-8x7b", Layout(tensor=8, expert=8)),
    ("mixtral-8x7b", Layout(data=2, tensor=4, expert=8)),
    ("qwen3-30b-a3b", Layout(tensor=4)), ("qwen3-30b-a3b", Layout(tensor=4, expert=4)),
    ("mixtral-8x7b", Layout(tensor=8, expert=2)), ("qwen3-30b-a3b", Layout(tensor=8, expert=4)),  # ep < tp
    ("qwen3-30b-a3b", Layout(data=4, tensor=2, expert=4)),  # tp < ep < dp · tp
])
def test_default_rules_equal_geometry(preset, layout):
    m = load_preset(preset)
    assert weight_bytes_per_stage(hf_tensors(m), m, layout) == analytic(m, layout)


def test_llama_70b_tp16_replicates_kv_heads_exactly():
    m = load_preset("llama-3.1-70b")
    shards = shard_weights(hf_tensors(m), default_rules(m.head_dim), {"tensor": 16})
    k = next(t for t in shards.tensors if t.name == "model.layers.0.self_attn.k_proj.weight")
    assert k.shape == (1024, 8192) and k.global_shape == (2048, 8192)  # 8 heads stored as 16
    assert k.shard_shape == (128, 8192) and k.bytes_per_device == 128 * 8192 * 2  # one whole head
    assert k.padding_bytes == 1024 * 8192 * 2
    embed = next(t for t in shards.tensors if t.name == "model.embed_tokens.weight")
    assert embed.shard_shape == (128256 // 16, 8192)
    assert shards.bytes_per_device == geometry(m, Layout(tensor=16)).stages[0].weight_bytes
    assert shards.total_bytes == 70_553_706_496 * 2  # published 70.6 B parameters in bf16


def test_vocab_rows_padded_to_a_multiple_of_tp():
    shards = shard_weights([Tensor("lm_head.weight", (250, 64), "F16")], default_rules(16), {"tensor": 4})
    (t,) = shards.tensors
    assert t.global_shape == (252, 64) and t.shard_shape == (63, 64) and t.bytes_per_device == 63 * 64 * 2


@settings(max_examples=60, deadline=None)
@given(kv=st.sampled_from([1, 2, 4, 8]), group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([8, 64]),
       vocab=st.integers(16, 3000), mlp_units=st.integers(1, 40), layers=st.integers(1, 5),
       tp_index=st.integers(0, 7), tie=st.booleans(), bias=st.booleans(), qk_norm=st.booleans())
def test_default_rules_equal_geometry_on_random_dense_models(kv, group, head_dim, vocab, mlp_units, layers,
                                                              tp_index, tie, bias, qk_norm):
    heads = kv * group
    tps = sorted({t for t in (1, 2, 4, 8, 16, 32) if heads % t == 0 and (kv % t == 0 or t % kv == 0)})
    tp = tps[tp_index % len(tps)]
    m = ModelSpec(name="random", model_type="llama", num_layers=layers, hidden_size=32,
                  num_attention_heads=heads, num_kv_heads=kv, head_dim=head_dim, vocab_size=vocab,
                  intermediate_size=8 * mlp_units * tp, max_position_embeddings=128,
                  tie_word_embeddings=tie, attention_bias=bias, qk_norm=qk_norm)
    for pp in {1, min(2, layers)}:
        layout = Layout(tensor=tp, pipeline=pp)
        assert weight_bytes_per_stage(hf_tensors(m), m, layout) == analytic(m, layout)


def test_meshes_from_jax_and_device_mesh_and_partition_spec_objects():
    m = load_preset("llama-3.1-8b")
    want = geometry(m, Layout(data=2, tensor=4)).stages[0].weight_bytes
    spec_rules = PartitionRules.from_pairs([(r.pattern, jax.sharding.PartitionSpec(*r.spec) if r.spec is not None
                                             else None, {"pad": r.pad, "block": r.block})
                                            for r in default_rules(m.head_dim).rules], unused="ignore")
    for mesh in (jax.sharding.AbstractMesh((2, 4), ("data", "tensor")),
                 DeviceMesh.from_preset("8xH100-80GB", axes={"data": 2, "tensor": 4})):
        assert shard_weights(hf_tensors(m), spec_rules, mesh).bytes_per_device == want


def test_rule_labels_fallback_and_skipped_buffers():
    tensors = [Tensor("model.layers.0.self_attn.rotary_emb.inv_freq", (64,), "F32"),
               Tensor("model.norm.weight", (64,), "BF16"), Tensor("extra.scale", (4, 4), "F32")]
    rules = PartitionRules(default_rules(16).rules, fallback=REPLICATED, unused="ignore")
    shards = shard_weights(tensors, rules, {"tensor": 2})
    assert shards.skipped == ("model.layers.0.self_attn.rotary_emb.inv_freq",)
    assert {t.name: t.rule for t in shards.tensors}["extra.scale"] == FALLBACK
    assert shards.bytes_per_device == 64 * 2 + 16 * 4
    assert shards.by_rule()[FALLBACK] == 64


def test_sub_byte_dtypes_count_packed_bytes():
    assert dtype_bits("F4") == 4 and dtype_bits("F6_E2M3") == 6 and dtype_bits("bfloat16") == 16
    shards = shard_weights([Tensor("w", (8, 6), "F4")], [(r"^w$", ("tensor", None))], {"tensor": 2})
    assert shards.tensors[0].shard_shape == (4, 6) and shards.bytes_per_device == 12


def test_first_rule_wins():
    rules = [(r"proj", ("tensor",)), (r"q_proj", REPLICATED)]
    with pytest.raises(InputError, match=r"partition rule='q_proj'.*matches at least one"):
        shard_weights([Tensor("q_proj", (8, 8), "F32")], rules, {"tensor": 2})
    rules = PartitionRules.from_pairs(rules, unused="ignore")
    assert shard_weights([Tensor("q_proj", (8, 8), "F32")], rules, {"tensor": 2}).bytes_per_device == 128


def test_stack_experts_groups_whole_experts():
    tensors = [Tensor(f"layers.0.mlp.experts.{j}.w1.weight", (6, 4), "BF16") for j in range(8)]
    (stacked,) = stack_experts(tensors)
    assert stacked == Tensor("layers.0.mlp.experts.w1.weight", (8, 6, 4), "BF16")
    shards = shard_weights(tensors, PartitionRules.from_pairs([(r"experts\.w1", (("data", "tensor"),))],
                                                              stack_experts=True), {"data": 2, "tensor": 4})
    assert shards.tensors[0].shard_shape == (1, 6, 4)


def test_rules_for_layouts():
    """Expert specs on the stage mesh ('data', 'expert', 'tensor'): tp8·ep8 → expert 8 × tensor 1;
    dp2·tp4·ep8 → data 1 × expert 2 × tensor 4 (experts over expert × tensor); tp8·ep2 → expert 2 ×
    tensor 4 (whole experts over 'expert', each expert's width over 'tensor')."""
    m = load_preset("mixtral-8x7b")

    def expert_specs(layout):
        return [r.spec for r in rules_for(m, layout).rules if "experts" in r.pattern]

    assert not rules_for(m, Layout(tensor=8)).stack_experts
    assert rules_for(m, Layout(tensor=8, expert=8)).stack_experts
    assert expert_specs(Layout(tensor=8, expert=8)) == [("expert", None), ("expert", None, None)]
    both = ("expert", "tensor")
    assert expert_specs(Layout(data=2, tensor=4, expert=8)) == [(both, None), (both, None, None)]
    assert expert_specs(Layout(tensor=8, expert=2)) == [("expert", "tensor"), ("expert", None, "tensor")]
    assert layout_mesh(Layout(data=2, tensor=4, expert=8)) == {"data": 1, "expert": 2, "tensor": 4}
    with pytest.raises(InputError, match="expert_parallel_size"):
        rules_for(m, Layout(tensor=8, expert=3))


# ------------------------------------------------------------------------------------ bad input
def test_unmatched_tensor_is_named():
    with pytest.raises(InputError, match=r"tensor 'model.layers.0.mlp.fc1.weight' and 1 more"):
        shard_weights([Tensor("model.layers.0.mlp.fc1.weight", (8, 4), "BF16"),
                       Tensor("model.layers.0.mlp.fc2.weight", (4, 8), "BF16"),
                       Tensor("model.norm.weight", (4,), "BF16")], default_rules(4), {"tensor": 2})


def test_rules_that_match_nothing_error_or_warn():
    tensors = [Tensor("a.weight", (4, 4), "F32")]
    pairs = [(r"^a\.weight$", ("tensor",)), (r"typo_proj", ("tensor",))]
    with pytest.raises(InputError, match=r"partition rule='typo_proj'.*none of 1 names, e.g. 'a.weight'"):
        shard_weights(tensors, pairs, {"tensor": 2})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shards = shard_weights(tensors, PartitionRules.from_pairs(pairs, unused="warn"), {"tensor": 2})
    assert shards.unused_rules == ("typo_proj",) and "typo_proj" in str(caught[0].message)


def test_uneven_split_names_tensor_dim_and_axes():
    with pytest.raises(InputError, match=r"partition of w\[10, 4\] dim 0='10' .* multiple of the 4 shards "
                                         r"over mesh axes data×tensor = 4"):
        shard_weights([Tensor("w", (10, 4), "F32")], [("w", (("data", "tensor"),))], {"data": 2, "tensor": 2})
    m = load_preset("llama-3.1-70b")  # 64 query heads over TP12, 8 KV heads over TP12
    layer0 = {t.name.split(".")[-2]: t for t in hf_tensors(m)[:12]}
    with pytest.raises(InputError, match=r"k_proj.weight\[1024, 8192\] dim 0='8 blocks of 128'.*divisor or "
                                         r"a multiple of the 12 shards"):
        shard_weights([layer0["k_proj"]], default_rules(128), {"tensor": 12})
    with pytest.raises(InputError, match=r"q_proj.weight\[8192, 8192\] dim 0='64 blocks of 128'"):
        shard_weights([layer0["q_proj"]], default_rules(128), {"tensor": 12})


def test_block_must_divide_the_dimension():
    with pytest.raises(InputError, match=r"whole number of blocks of 16"):
        shard_weights([Tensor("k_proj.weight", (40, 8), "F32")],
                      [PartitionRule("k_proj", ("tensor",), "replicate", 16)], {"tensor": 2})


@pytest.mark.parametrize(("rule", "match"), [
    (("(unclosed", ("tensor",)), "valid regular expression"),
    (("w", "tensor"), "one entry per dimension"),
    (("w", ("tensor", "tensor")), "each mesh axis on at most one dimension"),
    (("w", ("tensor",), {"pad": "even"}), "pad='even'"),
    (("w", ("tensor",), {"block": 0}), "block=0"),
    (("w", (3,)), "entries that are a mesh axis name"),
])
def test_bad_rules(rule, match):
    with pytest.raises(InputError, match=match):
        PartitionRules.from_pairs([rule])


def test_bad_spec_against_tensor_or_mesh():
    with pytest.raises(InputError, match=r"'model' is not allowed: a mesh axis: one of data, tensor"):
        shard_weights([Tensor("w", (8,), "F32")], [("w", ("model",))], {"data": 1, "tensor": 2})
    with pytest.raises(InputError, match=r"partition of w\[8\].*at most 1 entries"):
        shard_weights([Tensor("w", (8,), "F32")], [("w", ("tensor", None))], {"tensor": 2})
    with pytest.raises(InputError, match="mesh"):
        shard_weights([Tensor("w", (8,), "F32")], [("w", ())], {})
    with pytest.raises(InputError, match="dtype='F12'"):
        shard_weights([Tensor("w", (8,), "F12")], [("w", ())], {"tensor": 2})


def test_experts_that_cannot_stack():
    gap = [Tensor(f"l.experts.{j}.w1.weight", (4, 4), "BF16") for j in (0, 1, 3)]
    with pytest.raises(InputError, match=r"experts of l.experts.w1.weight.*missing \[2\]"):
        stack_experts(gap)
    odd = [Tensor("l.experts.0.w1.weight", (4, 4), "BF16"), Tensor("l.experts.1.w1.weight", (4, 8), "BF16")]
    with pytest.raises(InputError, match=r"tensor 'l.experts.1.w1.weight'"):
        stack_experts(odd)


def test_stage_of_a_layer_beyond_the_model_is_refused():
    shards = shard_weights([Tensor("model.layers.7.input_layernorm.weight", (4,), "F32")],
                           default_rules(4), {"tensor": 1})
    with pytest.raises(InputError, match=r"model.layers.7.input_layernorm.weight' layer=7"):
        shards.stage_bytes(num_layers=4, pipeline=2)
    assert math.prod(shards.tensors[0].shard_shape) == 4


def test_vision_tower_layers_stay_on_the_first_stage():
    tensors = [Tensor("model.vision_tower.encoder.layers.3.mlp.fc1.weight", (8, 4), "BF16"),
               Tensor("model.layers.3.input_layernorm.weight", (4,), "BF16"),
               Tensor("model.embed_tokens.weight", (10, 4), "BF16"), Tensor("model.norm.weight", (4,), "BF16")]
    shards = shard_weights(tensors, PartitionRules((), fallback=REPLICATED), {"tensor": 2})
    assert shards.stage_bytes(4, 2) == {0: 64 + 80, 1: 8 + 8}
    assert shards.stage_bytes(4, 2, tie_word_embeddings=True) == {0: 64 + 80, 1: 8 + 8 + 80}
