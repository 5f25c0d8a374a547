"""ModelSpec from HF configs and presets: parameter counts against published figures, bad input."""

from __future__ import annotations

import json

import pytest

from estimator import ModelSpec, load_preset, parameter_count, resolve_model
from estimator.model.hf_config import load_hf_config
from estimator.model.presets import PRESETS
from meshes import InputError

# Published totals (model cards): Llama-3.1 8.03 B / 70.6 B / 405.9 B (Meta's Llama 3.1 card),
# Mixtral-8x7B 46.7 B (Mistral's announcement), Qwen3-30B-A3B 30.5 B (Qwen3 card),
# Qwen3-8B 8.2 B, Qwen3-32B 32.8 B, Qwen2.5-7B 7.61 B, Phi-3-mini 3.8 B (model cards).
PUBLISHED = {
    "meta-llama/Llama-3.1-8B": 8.03e9,
    "meta-llama/Llama-3.1-70B": 70.6e9,
    "meta-llama/Llama-3.1-405B": 405.9e9,
    "mistralai/Mixtral-8x7B-v0.1": 46.7e9,
    "Qwen/Qwen3-30B-A3B": 30.5e9,
    "Qwen/Qwen3-8B": 8.2e9,
    "Qwen/Qwen3-32B": 32.8e9,
    "Qwen/Qwen2.5-7B": 7.61e9,
    "microsoft/Phi-3-mini-4k-instruct": 3.82e9,
}
PRESET_OF = {
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b", "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.1-405B": "llama-3.1-405b", "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b",
    "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b", "Qwen/Qwen3-8B": "qwen3-8b", "Qwen/Qwen3-32B": "qwen3-32b",
    "Qwen/Qwen2.5-7B": "qwen2.5-7b", "microsoft/Phi-3-mini-4k-instruct": "phi-3-mini-4k",
    "Qwen/Qwen3-14B": "qwen3-14b", "Qwen/Qwen2.5-72B": "qwen2.5-72b",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
}


@pytest.mark.parametrize(("hf_id", "published"), PUBLISHED.items())
def test_parameter_counts_within_half_a_percent(hf_config, hf_id, published):
    spec = load_hf_config(hf_config(hf_id))
    assert abs(parameter_count(spec) - published) / published < 0.005


@pytest.mark.parametrize(("hf_id", "published"), PUBLISHED.items())
def test_presets_match_published_counts_without_files(hf_id, published):
    assert abs(parameter_count(load_preset(PRESET_OF[hf_id])) - published) / published < 0.005


def test_llama_8b_count_by_hand():
    # embed + lm_head: 2·128256·4096; per layer q,o 4096² each, k,v 4096·1024 each,
    # MLP 3·4096·14336, two norms 4096; final norm 4096
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert parameter_count(load_preset("llama-3.1-8b")) == 2 * 128256 * 4096 + 32 * layer + 4096


@pytest.mark.parametrize("hf_id", sorted(PRESET_OF))
def test_presets_agree_with_the_real_configs(hf_config, hf_id):
    real = load_hf_config(hf_config(hf_id)).to_dict()
    preset = load_preset(PRESET_OF[hf_id]).to_dict()
    real.pop("name"), preset.pop("name")
    if hf_id == "meta-llama/Llama-2-7b-hf":
        assert real["weight_dtype"] == preset["weight_dtype"] == "float16"
    assert preset == real


def test_at_least_eight_presets_and_weight_bytes_by_dtype():
    assert len(PRESETS) >= 8
    spec = load_preset("llama-3.1-8b")
    assert spec.weight_bytes_per_param == 2
    assert spec.with_weight_dtype("fp8").weight_bytes_per_param == 1
    assert spec.with_weight_dtype("float32").weight_bytes_per_param == 4


def test_tied_embeddings_counted_once(hf_config):
    spec = load_hf_config(hf_config("Qwen/Qwen2.5-3B"))
    assert spec.tie_word_embeddings
    untied = ModelSpec.from_dict({**spec.to_dict(), "tie_word_embeddings": False})
    assert parameter_count(untied) - parameter_count(spec) == spec.vocab_size * spec.hidden_size


def _write(tmp_path, text):
    p = tmp_path / "config.json"
    p.write_text(text)
    return p


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="existing config.json") as e:
        resolve_model(tmp_path / "nope.json")
    assert e.value.field == "model"


def test_not_json(tmp_path):
    with pytest.raises(InputError, match="valid JSON"):
        load_hf_config(_write(tmp_path, "{not json"))


def test_not_an_object(tmp_path):
    with pytest.raises(InputError, match="JSON object"):
        load_hf_config(_write(tmp_path, "[1, 2]"))


def test_unreadable_bytes(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="readable UTF-8"):
        load_hf_config(p)


def test_missing_required_key(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
           "vocab_size": 32000, "intermediate_size": 11008, "max_position_embeddings": 4096}
    with pytest.raises(InputError, match="num_hidden_layers"):
        load_hf_config(_write(tmp_path, json.dumps(cfg)))


def test_unsupported_model_type_lists_supported(tmp_path):
    with pytest.raises(InputError, match="llama") as e:
        load_hf_config(_write(tmp_path, json.dumps({"model_type": "bert"})))
    assert e.value.field == "model_type" and e.value.value == "bert"


def test_unknown_preset_lists_close_names():
    with pytest.raises(InputError, match="did you mean llama-3.1-8b"):
        resolve_model("llama-3.1-8")


@pytest.mark.parametrize(("field", "value"), [("num_layers", 0), ("hidden_size", -1),
                                              ("num_kv_heads", 5), ("vocab_size", 2**64)])
def test_bad_architecture_values(field, value):
    with pytest.raises(InputError) as e:
        ModelSpec.from_dict({**load_preset("llama-3.1-8b").to_dict(), field: value})
    assert field in e.value.field


def test_a_config_file_names_its_model(tmp_path):
    from estimator.model.hf_config import config_name

    assert config_name({}, tmp_path / "deepseek-ai__DeepSeek-V3.json") == "deepseek-ai__DeepSeek-V3"
    assert config_name({"_name_or_path": "meta-llama/Llama-3.1-8B"}, tmp_path / "config.json") == \
        "meta-llama/Llama-3.1-8B"
    folder = tmp_path / "Qwen3-14B"
    folder.mkdir()
    assert config_name({"_name_or_path": "/home/me/ckpt"}, folder / "config.json") == "Qwen3-14B"
