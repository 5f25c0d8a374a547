"""Every KV kind and weight format, with numbers worked out by hand from the architectures.

Fixtures below are the project's own, written from the published architecture facts; tests that
take ``hf_config`` also read the real HF configs vendored in tests/model_configs.
"""

from __future__ import annotations

import pytest

from estimator import Layout, ModelSpec, geometry, parameter_count, plan
from estimator.core.kv_spec import kv_specs
from estimator.core.sharding import StageMesh, weight_layout
from estimator.model.hf_config import SUPPORTED_MODEL_TYPES, load_hf_config, spec_from_hf_config
from estimator.model.weights import weight_tensors
from meshes import InputError

# deepseek-ai/DeepSeek-V3 config.json, architecture keys
DEEPSEEK_V3 = dict(
    model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, kv_lora_rank=512,
    max_position_embeddings=163840, moe_intermediate_size=2048, moe_layer_freq=1, n_routed_experts=256,
    n_shared_experts=1, num_attention_heads=128, num_experts_per_tok=8, num_hidden_layers=61,
    num_key_value_heads=128, num_nextn_predict_layers=1, q_lora_rank=1536, qk_nope_head_dim=128,
    qk_rope_head_dim=64, v_head_dim=128, first_k_dense_replace=3, topk_method="noaux_tc",
    vocab_size=129280, torch_dtype="bfloat16", tie_word_embeddings=False,
    quantization_config={"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]})
# google/gemma-2-9b-it: 42 layers alternating sliding (even) / global, window 4096
GEMMA2_9B = dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, head_dim=256,
                 num_attention_heads=16, num_key_value_heads=8, num_hidden_layers=42, vocab_size=256000,
                 max_position_embeddings=8192, sliding_window=4096, torch_dtype="bfloat16")
# mistralai/Mistral-7B-v0.1: every layer a 4096-token window
MISTRAL_V01 = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                   num_key_value_heads=8, num_hidden_layers=32, vocab_size=32000,
                   max_position_embeddings=32768, sliding_window=4096, torch_dtype="bfloat16")
# state-spaces/mamba2-2.7b style: 64 Mamba2 layers, d_model 2560, expand 2, d_state 128, head 64
MAMBA2 = dict(model_type="mamba2", hidden_size=2560, num_hidden_layers=64, expand=2, state_size=128,
              conv_kernel=4, n_groups=1, num_heads=80, head_dim=64, vocab_size=50288, torch_dtype="bfloat16")
# ai21labs/Jamba-v0.1: 32 layers, attention every 8th from layer 4, Mamba d_state 16, d_conv 4
JAMBA = dict(model_type="jamba", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
             num_key_value_heads=8, num_hidden_layers=32, attn_layer_period=8, attn_layer_offset=4,
             expert_layer_period=2, expert_layer_offset=1, num_experts=16, num_experts_per_tok=2,
             mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, vocab_size=65536, torch_dtype="bfloat16",
             max_position_embeddings=262144, tie_word_embeddings=False)


def spec(config: dict, name: str = "fixture") -> ModelSpec:
    return spec_from_hf_config(config, name)


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_deepseek_mla_70272_bytes_per_token_per_device_at_any_tp(tp):
    g = geometry(spec(DEEPSEEK_V3), Layout(tensor=tp))
    assert g.stages[0].kv_bytes_per_token == (512 + 64) * 61 * 2 == 70_272
    assert g.stages[0].page_bytes == 70_272 * 128 == 8_994_816
    assert g.bytes_per_block == 8_994_816 * tp  # MAX M10: replicated, so summed over the group


def test_deepseek_v32_indexer_keys_add_fp8_values_and_a_scale():
    v32 = spec({**DEEPSEEK_V3, "model_type": "deepseek_v32", "index_head_dim": 128, "index_n_heads": 64})
    per_layer = (512 + 64) * 2 + 128 * 1 + 4  # latent bf16 + indexer key fp8 + fp32 scale
    assert geometry(v32, Layout(tensor=8)).stages[0].kv_bytes_per_token == 61 * per_layer


def test_deepseek_v3_parameters_and_mtp():
    m = spec(DEEPSEEK_V3)
    assert abs(parameter_count(m) - 671e9) / 671e9 < 0.005
    assert abs(parameter_count(m, include_mtp=True) - 685e9) / 685e9 < 0.005  # the HF checkpoint


def test_fp8_block_weights_by_hand():
    m = spec(DEEPSEEK_V3)
    q_b = next(t for t in weight_tensors(m) if t.name == "self_attn.q_b_proj")
    assert q_b.shape == (128 * 192, 1536)
    # e4m3 values + one fp32 scale per 128×128 block
    assert weight_layout(q_b, m, StageMesh(1, 1)).bytes_per_device == \
        24576 * 1536 + (24576 // 128) * (1536 // 128) * 4
    tp8 = weight_layout(q_b, m, StageMesh(1, 8))
    assert tp8.bytes_per_device == 3072 * 1536 + 24 * 12 * 4
    assert [(a.suffix, a.shape, a.spec) for a in tp8.arrays] == [("", (24576, 1536), ("tensor", None)),
                                                                ((".scale"), (192, 12), ("tensor", None))]
    router = next(t for t in weight_tensors(m) if t.name == "mlp.router")
    assert weight_layout(router, m, StageMesh(1, 8)).bytes_per_device == 256 * 7168 * 2  # bf16, replicated


def test_gemma2_window_caps_pages_at_window_over_page_plus_one():
    m = spec(GEMMA2_9B)
    kinds = kv_specs(m, 1)
    assert [k.window for k in kinds[:4]] == [4096, 0, 4096, 0]
    assert kinds[0].pages_for(4 * 4096, 128) == 4096 // 128 + 1
    assert kinds[1].pages_for(4 * 4096, 128) == 4 * 4096 // 128
    # worst-case bytes of one request: 33 pages of one layer's K and V (8 heads × 256, bf16)
    assert kinds[0].request_bytes(4 * 4096, 128) == 33 * 128 * 2 * 8 * 256 * 2
    g = geometry(m, Layout())
    # 21 sliding + 21 global layers → one group of each, a page is 21 layers' slice
    assert g.stages[0].page_bytes == 21 * 2 * 8 * 256 * 2 * 128
    assert g.stages[0].pool.pages(4 * 4096) == 128 + 33


def test_gemma3_five_to_one(hf_config):
    m = load_hf_config(hf_config("google/gemma-3-27b-it"))
    g = geometry(m, Layout(tensor=2))
    # 10 global + 52 sliding layers (window 1024): gcd 2 → 5 global and 26 sliding groups
    assert sorted((spec.window, n) for spec, n in g.stages[0].pool.groups) == [(0, 5), (1024, 26)]
    assert g.stages[0].pool.pages(4096) == 5 * 32 + 26 * (1024 // 128 + 1)
    assert g.stages[0].page_bytes == 2 * 2 * 8 * 128 * 2 * 128  # 2 layers, 8 of 16 KV heads per shard
    assert abs(parameter_count(m) - 27.4e9) / 27.4e9 < 0.005  # text + SigLIP tower + projector


def test_mistral_v01_all_layers_slide():
    m = spec(MISTRAL_V01)
    p = plan(m, "1xH100-80GB", activation_bytes=0)
    # a request never holds more than 4096/128 + 1 = 33 pages, so no length limit from the KV cache
    assert p.max_supported_sequence_length == m.max_position_embeddings
    assert p.max_batch_size == (p.pages_per_replica - 1) // 33


def test_mamba2_state_per_request_by_hand():
    m = spec(MAMBA2)
    inner = 2 * 2560
    conv = (inner + 2 * 1 * 128) * (4 - 1) * 2  # x, B, C channels × (kernel − 1), bf16
    ssm = 80 * 64 * 128 * 2  # heads × head_dim × d_state, bf16
    g = geometry(m, Layout())
    assert g.stages[0].state_bytes == 64 * (conv + ssm)
    assert g.stages[0].page_bytes == 64 * (conv + ssm)  # a page is one request's state
    assert g.stages[0].pool.pages(10**6) == 1  # length does not matter
    g2 = geometry(m, Layout(tensor=2))
    assert g2.stages[0].state_bytes == 64 * (conv + ssm) // 2


def test_jamba_hybrid_state_and_attention_pages_by_hand():
    m = spec(JAMBA)
    assert m.layer_types.count("full_attention") == 4
    state = 28 * (8192 * 3 * 2 + 8192 * 16 * 2)  # 28 Mamba layers: conv (inner, 3) + SSM (inner, 16)
    g = geometry(m, Layout())
    page = 4 * 2 * 8 * 128 * 2 * 128  # 4 attention layers, 8 KV heads × 128, bf16, 128 tokens
    assert g.stages[0].state_bytes == state and g.stages[0].page_bytes == page
    assert g.stages[0].pool.pages(1000) == 8 + -(-state // page)


def test_qwen3_next_gated_delta_state(hf_config):
    m = load_hf_config(hf_config("Qwen/Qwen3-Next-80B-A3B-Thinking"))
    per_layer = (2 * 16 * 128 + 32 * 128) * 3 * 2 + 32 * 128 * 128 * 2
    g = geometry(m, Layout())
    assert g.stages[0].state_bytes == 36 * per_layer
    assert g.stages[0].page_bytes == 12 * 2 * 2 * 256 * 2 * 128  # 12 full layers, 2 KV heads × 256


def test_fp8_cache_with_per_block_scales():
    m = spec({**MISTRAL_V01, "sliding_window": None})
    g = geometry(m, Layout(), kv_cache_dtype="fp8", kv_scale_block=128)
    assert g.stages[0].kv_bytes_per_token == 32 * 2 * 8 * (128 + 4)
    with pytest.raises(InputError, match="kv_scale_block"):
        geometry(m, Layout(), kv_scale_block=128)  # bf16 caches carry no scales


def test_cross_layer_kv_sharing_holds_no_cache():
    base = spec({**MISTRAL_V01, "sliding_window": None})
    shared = ModelSpec.from_dict({**base.to_dict(), "kv_shared_layers": 8})
    assert geometry(shared, Layout()).stages[0].kv_bytes_per_token == 24 * 2 * 8 * 128 * 2


@pytest.mark.parametrize(("hf_id", "published"), [
    ("Qwen/Qwen3-30B-A3B", 30.5e9), ("Qwen/Qwen3-235B-A22B-FP8", 235e9), ("openai/gpt-oss-120b", 117e9),
    ("mistralai/Mixtral-8x7B-v0.1", 46.7e9), ("deepseek-ai/DeepSeek-V3", 671e9),
    ("google/gemma-2-9b-it", 9.24e9), ("microsoft/phi-2", 2.78e9)])
def test_published_parameter_counts(hf_config, hf_id, published):
    m = load_hf_config(hf_config(hf_id))
    assert abs(parameter_count(m) - published) / published < 0.005


def test_gpt_oss_mxfp4_experts(hf_config):
    m = load_hf_config(hf_config("openai/gpt-oss-120b"))
    experts = next(t for t in weight_tensors(m) if t.name == "mlp.experts.gate_up_proj")
    assert experts.shape == (128, 2 * 2880, 2880)
    # 4-bit values (half a byte) and one e8m0 scale byte per 32 values
    assert weight_layout(experts, m, StageMesh(1, 1)).bytes_per_device == 128 * 5760 * (2880 // 2 + 2880 // 32)
    q = next(t for t in weight_tensors(m) if t.name == "self_attn.q_proj")
    assert weight_layout(q, m, StageMesh(1, 1)).bytes_per_device == 64 * 64 * 2880 * 2  # attention is not converted


def test_awq_and_gptq_groups_by_hand():
    base = {**MISTRAL_V01, "sliding_window": None}
    awq = spec({**base, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}})
    gptq = spec({**base, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}})
    down = next(t for t in weight_tensors(awq) if t.name == "mlp.down_proj")  # [4096, 14336]
    values, groups = 4096 * 14336 // 2, 14336 // 128
    awq_bytes = values + groups * 4096 * 2 + groups * 4096 // 2  # values, fp16 scales, 4-bit zeros
    assert weight_layout(down, awq, StageMesh(1, 1)).bytes_per_device == awq_bytes
    assert weight_layout(down, gptq, StageMesh(1, 1)).bytes_per_device == awq_bytes + 14336 * 4  # + g_idx


def test_speculative_slack_and_null_page_shorten_the_longest_request():
    base = plan("llama-3.1-8b", "1xH100-80GB", activation_bytes=0)
    spec_ = plan("llama-3.1-8b", "1xH100-80GB", activation_bytes=0, num_draft_tokens=3)
    assert spec_.max_supported_sequence_length == base.max_supported_sequence_length - (3 * 3 + 1)
    bare = plan("llama-3.1-8b", "1xH100-80GB", activation_bytes=0, reserve_null_page=False)
    assert bare.max_supported_sequence_length == base.max_supported_sequence_length + 128


def test_every_shared_config_loads_and_plans(hf_config):
    import glob

    folder = hf_config("meta-llama/Llama-3.1-8B").parent
    for path in sorted(glob.glob(str(folder / "*.json"))):
        m = load_hf_config(path)
        tp = next(t for t in (8, 4, 2, 1) if m.num_attention_heads % t == 0 and
                  (m.num_kv_heads % t == 0 or t % m.num_kv_heads == 0))
        p = plan(m, "8xH200-141GB", Layout(data=8 // tp, tensor=tp))
        assert p.pages_per_replica >= 0 and p.devices[0].weights_bytes > 0, path


def test_hybrid_pattern_must_match_the_layer_count():
    with pytest.raises(InputError, match="one entry per layer"):
        ModelSpec.from_dict({**spec(GEMMA2_9B).to_dict(), "layer_types": ("full_attention",) * 3})
    with pytest.raises(InputError, match="one letter per layer"):
        spec({"model_type": "nemotron_h", "hybrid_override_pattern": "M*M", "num_hidden_layers": 4,
              "hidden_size": 64, "vocab_size": 10, "intermediate_size": 64, "ssm_state_size": 16,
              "conv_kernel": 4})


def test_unknown_model_type_lists_the_supported_ones():
    with pytest.raises(InputError) as e:
        spec({"model_type": "bert"})
    assert all(t in str(e.value) for t in ("deepseek_v3", "gemma3", "jamba", "mamba2"))
    assert len(SUPPORTED_MODEL_TYPES) >= 20


def test_unsupported_quantization_is_named():
    with pytest.raises(InputError, match="quant_method"):
        spec({**MISTRAL_V01, "quantization_config": {"quant_method": "bitsandbytes"}})


def test_llama4_maverick_interleaves_dense_and_moe_layers(hf_config):
    """interleave_moe_layer_step = 2: layers 1, 3, …, 47 are MoE (HF ``moe_layers``), the others a
    dense MLP of intermediate_size_mlp; 128 experts of 8192 plus one shared expert of 8192."""
    from estimator.model.hf_config import load_hf_config

    m = load_hf_config(hf_config("meta-llama/Llama-4-Maverick-17B-128E-Instruct"))
    assert [i for i in range(m.num_layers) if m.is_moe_layer(i)] == list(range(1, 48, 2))
    assert (m.intermediate_size, m.moe_intermediate_size, m.num_experts) == (16384, 8192, 128)
    h = 5120
    attention = h * (40 * 128) * 2 + h * (8 * 128) * 2  # q, o; k, v
    dense = 3 * h * 16384
    moe = 128 * 3 * h * 8192 + 3 * h * 8192 + 128 * h  # experts, shared expert, router
    norms = 2 * h
    text = 24 * (attention + dense + norms) + 24 * (attention + moe + norms) + 2 * 202048 * h + h
    assert parameter_count(m) == text + m.vision_params


def test_qwen2_5_vl_reads_as_qwen2_with_its_vision_tower(hf_config):
    import json

    path = hf_config("Qwen/Qwen2.5-VL-7B-Instruct")
    m = load_hf_config(path)
    # text (Qwen2.5-7B's shape): 28 layers of q 3584², k and v 3584·512 with biases, o 3584², gated
    # MLP 3·3584·18944, two RMSNorms; untied embedding and head 2·152064·3584; the final norm.
    # 7,615,616,512 is Qwen2.5-7B's published count.
    h, kv = 3584, 512
    text = 28 * (2 * h * h + 2 * h * kv + h + 2 * kv + 3 * h * 18944 + 2 * h) + 2 * 152064 * h + h
    assert text == 7_615_616_512
    # vision: a bias-free Conv3d 3·2·14²·1280; 32 blocks of two RMSNorms, qkv 1280 → 3·1280 and
    # proj 1280 → 1280 with biases, gate and up 1280 → 3420 and down 3420 → 1280 with biases; the
    # merger: an RMSNorm and 4·1280 → 5120 → 3584 with biases. A public parameter breakdown of the
    # checkpoint prints "Vision Encoder 676.55M".
    v, i = 1280, 3420
    block = 2 * v + 3 * v * v + 3 * v + v * v + v + 2 * (v * i + i) + i * v + v
    vision = 3 * 2 * 14 * 14 * v + 32 * block + v + 5120 * 5120 + 5120 + 5120 * 3584 + 3584
    assert round(vision / 1e4) == 67655
    assert parameter_count(m) == text + vision
    # TP engines split qkv, the MLP and the merger's linears (matrices and column-parallel biases)
    assert m.vision_sharded_params == 32 * (4 * v * v + 3 * v + 3 * v * i + 2 * i) + 5120 * 5120 + 5120 + 5120 * 3584
    # the root's bfloat16 wins over the float32 transformers 4.53 wrote into text_config (vLLM reads the root)
    assert m.attention_bias and m.weight_dtype == "bfloat16"
    assert geometry(m, Layout()).stages[0].kv_bytes_per_token == 28 * 2 * 4 * 128 * 2
    # the hub's original flat form (no text_config, rope_scaling type "mrope") reads the same
    flat = json.loads(path.read_text())
    del flat["text_config"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": [16, 24, 24]}
    assert spec_from_hf_config(flat, m.name).to_dict() == {**m.to_dict(), "model_type": "qwen2_5_vl"}
