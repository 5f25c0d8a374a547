"""HF ``config.json`` → ModelSpec, one small reader per model family.

Configs are JSON data: parsed, never executed; nothing is fetched. Each family's reader names
the config keys it relies on, so a missing key is one clear error naming it. A config is read only
as a regular file of at most ``MAX_JSON_BYTES`` bytes nested at most ``MAX_JSON_DEPTH`` levels,
every count is an integer in range before anything is built from it (``num_hidden_layers`` at most
``MAX_LAYERS``), and any other shape of config a reader cannot use is an InputError naming the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from estimator.model.spec import LAYER_TYPES, MAX_LAYERS, ModelSpec
from meshes.validation import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    InputError,
    check_int,
    check_number,
    parse_json,
    plain_text,
    read_regular_file,
)

Config = Mapping[str, Any]


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse ``path`` as a JSON object, with one clear error for each way it can be unusable.

    Only a regular file of at most MAX_JSON_BYTES bytes is read (a FIFO or /dev/zero is refused
    before it is opened), and JSON nested deeper than MAX_JSON_DEPTH levels is refused."""
    if not os.path.lexists(path):
        raise InputError("model", str(path), "an existing config.json file or a preset name "
                         "(kvfit models lists them)")
    raw = read_regular_file("model", path, MAX_JSON_BYTES, what="config.json file")
    config = parse_json("model", path, raw, max_depth=MAX_JSON_DEPTH)
    if not isinstance(config, dict):
        raise InputError("model", str(path), "a JSON object (an HF config.json)")
    return config


class _Reader:
    """Key access that names the missing key and the model type."""

    def __init__(self, config: Config, model_type: str, where: str = "config.json") -> None:
        self.config, self.model_type, self.where = config, model_type, where

    def need(self, key: str, *alternatives: str) -> Any:
        for k in (key, *alternatives):
            if self.config.get(k) is not None:
                return self.config[k]
        raise InputError(f"{self.where}[{key!r}]", None, f"present for model_type {self.model_type!r}")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.config.get(key)
        return default if value is None else value

    def flag(self, key: str, default: bool) -> bool:
        """A true/false field (a string "false" is not false)."""
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise InputError(f"{self.where}[{key!r}]", plain_text(value, 40), "true or false")
        return value

    def count(self, key: str, *alternatives: str, minimum: int = 1, maximum: int = 2**40,
              default: int | None = None) -> int:
        """An integer field in [minimum, maximum] (``default`` when absent and a default is given)."""
        if default is not None and all(self.config.get(k) is None for k in (key, *alternatives)):
            value = default
        else:
            value = self.need(key, *alternatives)
        return check_int(f"{self.where}[{key!r}]", value, minimum=minimum, maximum=maximum)

    def layers(self, key: str = "num_hidden_layers", *alternatives: str) -> int:
        """The layer count, capped at MAX_LAYERS before any per-layer tuple is built."""
        return self.count(key, *alternatives, maximum=MAX_LAYERS)


def _base(r: _Reader, name: str) -> dict[str, Any]:
    """Fields every decoder family shares."""
    c = r.config
    hidden = check_int("hidden_size", r.need("hidden_size"))
    heads = check_int("num_attention_heads", r.need("num_attention_heads"))
    max_position = check_int("max_position_embeddings", r.need("max_position_embeddings"), maximum=2**40)
    table = _rope_table(r, max_position)
    for key in ("rope_theta", "rope_local_base_freq"):
        if c.get(key) is not None:
            check_number(f"config.json[{key!r}]", c[key], maximum=2.0**60)
    scaling = _rope_parameters(r, "full_attention")
    head_dim = r.get("head_dim", hidden // heads)
    partial = scaling.get("partial_rotary_factor", r.get("partial_rotary_factor", 1.0))
    for key in ("long_factor", "short_factor"):  # one factor per rotary frequency (LongRoPE)
        if scaling.get(key) is not None and isinstance(head_dim, int) and isinstance(partial, (int, float)) \
                and len(scaling[key]) != int(head_dim * partial) // 2:
            raise InputError(f"rope_scaling.{key}", f"{len(scaling[key])} entries",
                             f"{int(head_dim * partial) // 2} (rotary dimension / 2)")
    dtype_key = "torch_dtype" if c.get("torch_dtype") is not None else "dtype"
    dtype = c.get(dtype_key)
    if dtype is not None and not (isinstance(dtype, str) and dtype.strip()):
        raise InputError(f"config.json[{dtype_key!r}]", plain_text(dtype, 40), "a dtype name such as bfloat16")
    return dict(
        name=name, model_type=r.model_type, num_layers=r.layers(),
        hidden_size=hidden, num_attention_heads=heads,
        num_kv_heads=r.get("num_key_value_heads", heads), head_dim=r.get("head_dim", hidden // heads),
        vocab_size=r.need("vocab_size"), intermediate_size=r.need("intermediate_size"),
        max_position_embeddings=max_position, rope_positions=() if table == max_position else (table,),
        weight_dtype=dtype or "bfloat16",
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_bias=r.flag("attention_bias", False),
        **_quantization(c.get("quantization_config")),
    )


ROPE_TYPES = ("default", "linear", "dynamic", "ntk", "yarn", "deepseek_yarn", "llama3", "longrope", "su",
              "mrope")  # vllm/model_executor/layers/rotary_embedding get_rope; transformers ROPE_INIT_FUNCTIONS
ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow",
                "attention_factor", "rope_theta", "partial_rotary_factor")
ROPE_SCALES = ("mscale", "mscale_all_dim")  # YaRN's attention scaling: 0 means none (vLLM's default)


def _check_rope(scaling: Mapping[str, Any], where: str) -> None:
    """One rope scaling object as the engines would build it: a known type, positive finite
    numbers, a positive original length, LongRoPE's factor lists of positive numbers."""
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind not in ROPE_TYPES:
        raise InputError(f"{where}.rope_type", plain_text(kind, 40), f"one of {', '.join(ROPE_TYPES)}")
    for key in (*ROPE_NUMBERS, *ROPE_SCALES):
        if scaling.get(key) is not None:
            check_number(f"{where}.{key}", scaling[key], zero_ok=key in ROPE_SCALES)
    kind = "longrope" if kind == "su" else kind
    needs = {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",), "deepseek_yarn": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
             "longrope": ("long_factor", "short_factor")}.get(kind, ())
    for key in needs:
        if scaling.get(key) is None:
            raise InputError(f"{where}.{key}", None, f"present for rope_type {kind!r}")
    if scaling.get("original_max_position_embeddings") is not None:
        check_int(f"{where}.original_max_position_embeddings", scaling["original_max_position_embeddings"],
                  maximum=2**40)
    for key in ("long_factor", "short_factor"):
        value = scaling.get(key)
        if value is not None and (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
                for x in value) or not 0 < len(value) <= 2**16):
            raise InputError(f"{where}.{key}", plain_text(value, 60), "a list of positive numbers, one per "
                             "rotary frequency")


def _rope_table(r: _Reader, max_position: int) -> int:
    """Positions of the RoPE cos/sin table the engines precompute for this config (vLLM
    vllm/model_executor/layers/rotary_embedding ``get_rope``; SGLang's copy): linear and dynamic-NTK
    scaling extend it to max_position × factor (``LinearScalingRotaryEmbedding``,
    ``DynamicNTKScalingRotaryEmbedding``), YaRN builds original_max_position × factor, LongRoPE a
    short table of original_max_position beside the long one (``su``, its old name); other kinds
    max_position. transformers v5 keeps one entry per layer kind: the full-attention one counts."""
    scaling = _rope_parameters(r, "full_attention")
    if not scaling:
        return max_position
    kind = str(scaling.get("rope_type") or scaling.get("type") or "default")
    kind = "longrope" if kind == "su" else kind
    if kind not in ("linear", "dynamic", "yarn", "deepseek_yarn", "longrope"):
        return max_position
    factor = scaling.get("factor", 1.0)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 2**20:
        raise InputError("rope_scaling.factor", plain_text(factor, 40), "a number > 0 and ≤ 2^20")
    original = scaling.get("original_max_position_embeddings", r.get("original_max_position_embeddings"))
    if kind in ("linear", "dynamic"):
        return check_int("rope_scaling.factor × max_position_embeddings", math.ceil(max_position * factor),
                         maximum=2**40)
    if original is None:
        return max_position
    original = check_int("rope_scaling.original_max_position_embeddings", original, maximum=2**40)
    if kind == "longrope":
        return original + max_position
    return check_int("rope_scaling.factor × original_max_position_embeddings", math.ceil(original * factor),
                     maximum=2**40)


def _rope_parameters(r: _Reader, layer_kind: str) -> Mapping[str, Any]:
    """The rope scaling/parameters object of ``layer_kind``'s layers ({} if none): ``rope_scaling``
    or ``rope_parameters``, the latter possibly keyed by layer kind (transformers v5)."""
    key = "rope_scaling" if r.get("rope_scaling") else "rope_parameters"
    scaling = r.get(key) or {}
    if not isinstance(scaling, Mapping):
        raise InputError(key, plain_text(scaling, 80), "a JSON object (rope_type, factor, ...)")
    kinds = [k for k in scaling if k in LAYER_TYPES]
    for kind in kinds:  # transformers v5: one object per layer kind
        if not isinstance(scaling[kind], Mapping):
            raise InputError(f"{key}.{kind}", plain_text(scaling[kind], 60), "a JSON object (rope_type, "
                             "rope_theta, ...)")
        _check_rope(scaling[kind], f"{key}.{kind}")
    if not kinds:
        _check_rope(scaling, key)
    if isinstance(scaling.get(layer_kind), Mapping):
        return scaling[layer_kind]
    return scaling


def _quantization(q: Any) -> dict[str, Any]:
    if not q:
        return {}
    if not isinstance(q, Mapping):
        raise InputError("quantization_config", q, "a JSON object with quant_method (fp8, awq, gptq, mxfp4)")
    method = str(q.get("quant_method", "")).lower()
    modules = q.get("modules_to_not_convert") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise InputError("quantization_config.modules_to_not_convert", modules, "a list of module names")
    exclude = tuple(modules)
    if method == "fp8":
        block = q.get("weight_block_size")
        if block is not None and (not isinstance(block, list) or len(block) != 2 or block[0] != block[1]):
            raise InputError("quantization_config.weight_block_size", block, "a square [b, b] block")
        edge = check_int("quantization_config.weight_block_size", block[0], maximum=2**20) if block else 128
        return dict(weight_quant="fp8_block" if block else "fp8", quant_block=edge, quant_exclude=exclude)
    if method in ("awq", "gptq"):
        bits = q.get("bits", q.get("w_bit", 4))
        if bits != 4 or isinstance(bits, bool):
            raise InputError("quantization_config.bits", bits, f"4 for {method}")
        group = q.get("group_size", q.get("q_group_size", 128))
        return dict(weight_quant=method, quant_block=check_int("quantization_config.group_size", group,
                                                               maximum=2**20),
                    quant_exclude=exclude)
    if method == "mxfp4":
        return dict(weight_quant="mxfp4", quant_block=32, quant_exclude=exclude)
    raise InputError("quantization_config.quant_method", method, "fp8, awq, gptq or mxfp4")


def _sliding_all(r: _Reader, spec: dict[str, Any]) -> None:
    """Mistral v0.1 / Phi-3 style: every layer sees a window when the config sets one."""
    window = r.get("sliding_window")
    if window and r.get("use_sliding_window", True) is not False:
        if r.model_type.startswith("qwen"):
            first_full = r.count("max_window_layers", minimum=0, default=spec["num_layers"])
            spec["layer_types"] = tuple("sliding_attention" if i >= first_full else "full_attention"
                                        for i in range(spec["num_layers"]))
        else:
            spec["layer_types"] = ("sliding_attention",) * spec["num_layers"]
        spec["sliding_window"] = window
        if spec["layer_types"] and "sliding_attention" not in spec["layer_types"]:
            spec["layer_types"], spec["sliding_window"] = (), 0


def _explicit_layer_types(r: _Reader, spec: dict[str, Any]) -> bool:
    types = r.get("layer_types")
    if not types:
        return False
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InputError("config.json['layer_types']", types, "a list of layer kinds")
    if len(types) > MAX_LAYERS:
        raise InputError("config.json['layer_types']", f"{len(types)} entries", f"at most {MAX_LAYERS:,} layers")
    aliases = {"attention": "full_attention", "linear_attention": "linear_attention"}
    spec["layer_types"] = tuple(aliases.get(t, t) for t in types)
    spec["sliding_window"] = r.get("sliding_window", 0)
    if set(spec["layer_types"]) == {"full_attention"}:  # spelt out but uniform: a plain model
        spec["layer_types"], spec["sliding_window"] = (), 0
    return True


QWEN2_FAMILY = ("qwen2", "qwen2_moe", "qwen2_5_vl", "qwen2_5_vl_text")  # q, k, v projections with biases


def _dense(r: _Reader, name: str) -> dict[str, Any]:
    spec = _base(r, name)
    if r.model_type in QWEN2_FAMILY:
        spec["attention_bias"] = True
    spec["qk_norm"] = r.model_type in ("qwen3", "qwen3_moe")
    if not _explicit_layer_types(r, spec):
        _sliding_all(r, spec)
    return spec


def _mixtral(r: _Reader, name: str) -> dict[str, Any]:
    spec = _dense(r, name)
    spec.update(num_experts=r.count("num_local_experts"), num_experts_per_token=r.count("num_experts_per_tok"),
                moe_intermediate_size=r.need("intermediate_size"))
    return spec


def _qwen_moe(r: _Reader, name: str) -> dict[str, Any]:
    spec = _dense(r, name)
    if r.get("decoder_sparse_step", 1) != 1 or r.get("mlp_only_layers"):
        raise InputError("decoder_sparse_step/mlp_only_layers",
                         (r.get("decoder_sparse_step"), r.get("mlp_only_layers")),
                         "1 and [] (every layer an MoE layer)")
    shared = r.get("shared_expert_intermediate_size", 0)
    spec.update(num_experts=r.count("num_experts"), num_experts_per_token=r.count("num_experts_per_tok"),
                moe_intermediate_size=r.count("moe_intermediate_size"), num_shared_experts=int(bool(shared)),
                shared_expert_intermediate_size=shared, shared_expert_gate=bool(shared))
    return spec


def _qwen3_next(r: _Reader, name: str) -> dict[str, Any]:
    spec = _qwen_moe(r, name)
    interval = check_int("full_attention_interval", r.need("full_attention_interval"))
    if not _explicit_layer_types(r, spec):
        spec["layer_types"] = tuple("full_attention" if (i + 1) % interval == 0 else "linear_attention"
                                    for i in range(spec["num_layers"]))
    spec.update(qk_norm=True, gated_attention=True, linear_key_heads=r.count("linear_num_key_heads"),
                linear_key_dim=r.count("linear_key_head_dim"),
                linear_value_heads=r.count("linear_num_value_heads"),
                linear_value_dim=r.count("linear_value_head_dim"),
                ssm_conv_kernel=r.count("linear_conv_kernel_dim"))
    return spec


def _deepseek(r: _Reader, name: str) -> dict[str, Any]:
    spec = _base(r, name)
    spec.update(
        num_kv_heads=r.get("num_key_value_heads", spec["num_attention_heads"]),
        head_dim=r.need("qk_nope_head_dim") + r.need("qk_rope_head_dim"),
        kv_lora_rank=r.count("kv_lora_rank"), q_lora_rank=r.get("q_lora_rank", 0),
        qk_nope_head_dim=r.need("qk_nope_head_dim"), qk_rope_head_dim=r.need("qk_rope_head_dim"),
        v_head_dim=r.need("v_head_dim"),
        num_experts=r.count("n_routed_experts"), num_experts_per_token=r.count("num_experts_per_tok"),
        moe_intermediate_size=r.count("moe_intermediate_size"),
        num_shared_experts=r.get("n_shared_experts", 0),
        first_dense_layers=r.get("first_k_dense_replace", 0),
        router_bias=r.get("topk_method") == "noaux_tc",
        mtp_layers=r.get("num_nextn_predict_layers", 0),
        index_n_heads=r.get("index_n_heads", 0), index_head_dim=r.get("index_head_dim", 0),
    )
    if r.get("moe_layer_freq", 1) != 1:
        raise InputError("config.json['moe_layer_freq']", r.get("moe_layer_freq"), "1")
    return spec


def _glm4_moe(r: _Reader, name: str) -> dict[str, Any]:
    spec = _base(r, name)
    spec.update(qk_norm=r.flag("use_qk_norm", False), num_experts=r.count("n_routed_experts"),
                num_experts_per_token=r.count("num_experts_per_tok"),
                moe_intermediate_size=r.count("moe_intermediate_size"),
                num_shared_experts=r.get("n_shared_experts", 0),
                first_dense_layers=r.get("first_k_dense_replace", 0), router_bias=True,
                mtp_layers=r.get("num_nextn_predict_layers", 0))
    return spec


def _gemma(r: _Reader, name: str) -> dict[str, Any]:
    spec = _base(r, name)
    spec.update(norms_per_layer=4, tie_word_embeddings=r.flag("tie_word_embeddings", True),
                qk_norm=r.model_type.startswith("gemma3"))
    if r.model_type.startswith("gemma3"):  # sliding layers: rope_local_base_freq, no scaling (a 2nd table)
        local = _rope_parameters(r, "sliding_attention").get("rope_theta", r.get("rope_local_base_freq", 10_000.0))
        base = _rope_parameters(r, "full_attention").get("rope_theta", r.get("rope_theta", 1_000_000.0))
        if spec["rope_positions"] or local != base:
            spec["rope_positions"] = (*(spec["rope_positions"] or (spec["max_position_embeddings"],)),
                                      spec["max_position_embeddings"])
    if not _explicit_layer_types(r, spec):
        n, window = spec["num_layers"], r.need("sliding_window")
        if r.model_type == "gemma2":  # even layers slide (Gemma2DecoderLayer.is_sliding)
            kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        else:
            period = r.count("sliding_window_pattern", "_sliding_window_pattern", default=6)
            kinds = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n)]
        spec.update(layer_types=tuple(kinds), sliding_window=window)
    return spec


def _gpt_oss(r: _Reader, name: str) -> dict[str, Any]:
    spec = _base(r, name)
    _explicit_layer_types(r, spec)
    spec.update(weight_dtype="bfloat16", attention_out_bias=spec["attention_bias"], attention_sinks=True,
                num_experts=r.count("num_local_experts"),
                num_experts_per_token=r.count("num_experts_per_tok", "experts_per_token"),
                moe_intermediate_size=r.need("intermediate_size"), router_bias=True, expert_bias=True)
    return spec


def _llama4(r: _Reader, name: str) -> dict[str, Any]:
    spec = _base(r, name)
    n = spec["num_layers"]
    step = r.count("interleave_moe_layer_step", default=1, maximum=n)
    chunk = r.count("attention_chunk_size", minimum=0, default=0)
    nope = r.get("no_rope_layers") or [int((i + 1) % 4 != 0) for i in range(n)]
    if not isinstance(nope, list) or len(nope) < n:
        raise InputError("config.json['no_rope_layers']", nope, f"a list of {n} flags (one per layer)")
    spec.update(num_experts=r.count("num_local_experts"), num_experts_per_token=r.count("num_experts_per_tok"),
                moe_intermediate_size=r.need("intermediate_size"), num_shared_experts=1, moe_layer_step=step)
    if step > 1:  # Maverick: the layers between MoE layers have a dense MLP of intermediate_size_mlp
        spec["intermediate_size"] = r.need("intermediate_size_mlp")
    if chunk:  # rope layers attend within chunks; the no-rope layers (every 4th) are global
        spec.update(layer_types=tuple("chunked_attention" if nope[i] else "full_attention" for i in range(n)),
                    sliding_window=chunk)
    return spec


def _phi(r: _Reader, name: str) -> dict[str, Any]:
    spec = _base(r, name)
    spec.update(attention_bias=True, attention_out_bias=True, gated_mlp=False, mlp_bias=True,
                norms_per_layer=1, layernorm_bias=True, lm_head_bias=True)
    return spec


def _mamba_like(r: _Reader, name: str, kinds: tuple[str, ...]) -> dict[str, Any]:
    """Fields of a (hybrid) Mamba model; attention-free models get a nominal head layout."""
    c = r.config
    hidden = check_int("hidden_size", r.need("hidden_size", "d_model"))
    heads = r.count("num_attention_heads", default=1)
    expand = r.get("expand", r.get("mamba_expand", 2))
    return dict(
        name=name, model_type=r.model_type, num_layers=len(kinds), hidden_size=hidden,
        num_attention_heads=heads, num_kv_heads=r.get("num_key_value_heads", heads),
        head_dim=r.get("head_dim", hidden // heads), vocab_size=r.need("vocab_size"),
        intermediate_size=r.get("intermediate_size", 0) or 4 * hidden,
        max_position_embeddings=r.get("max_position_embeddings", 1 << 20),
        weight_dtype=c.get("torch_dtype") or c.get("dtype") or "bfloat16",
        tie_word_embeddings=r.flag("tie_word_embeddings", True),
        layer_types=kinds, ssm_inner_size=r.get("intermediate_size_ssm", expand * hidden),
        ssm_state_size=r.need("state_size", "d_state", "mamba_d_state", "ssm_state_size"),
        ssm_conv_kernel=r.need("conv_kernel", "d_conv", "mamba_d_conv"),
        ssm_n_groups=r.get("n_groups", r.get("mamba_n_groups", 0)),
        ssm_n_heads=r.get("num_heads", r.get("mamba_n_heads", 0)),
        ssm_head_dim=r.get("head_dim" if r.model_type == "mamba2" else "mamba_d_head",
                           r.get("mamba_head_dim", 0)),
    )


def _mamba(r: _Reader, name: str) -> dict[str, Any]:
    kinds = ("mamba" if r.model_type == "mamba" else "mamba2",) * r.layers("num_hidden_layers", "n_layer")
    spec = _mamba_like(r, name, kinds)
    spec.update(intermediate_size=spec["ssm_inner_size"], gated_mlp=False, norms_per_layer=1)
    if r.model_type == "mamba2":
        spec.update(head_dim=spec["ssm_head_dim"] or 64)
    return spec


def _jamba(r: _Reader, name: str) -> dict[str, Any]:
    n = r.layers()
    period = r.count("attn_layer_period")
    offset = r.count("attn_layer_offset", minimum=0, maximum=period - 1)
    kinds = tuple("full_attention" if i % period == offset else "mamba" for i in range(n))
    spec = _mamba_like(r, name, kinds)
    e_period, e_offset = r.get("expert_layer_period", 1), r.get("expert_layer_offset", 0)
    if r.get("num_experts", 1) > 1 and not (e_period == 2 and e_offset == 1):
        raise InputError("expert_layer_period/offset", (e_period, e_offset), "2 and 1 (Jamba's layout)")
    spec.update(intermediate_size=r.need("intermediate_size"), max_position_embeddings=r.get(
        "max_position_embeddings", 262144))
    if r.get("num_experts", 1) > 1:
        spec.update(num_experts=r.count("num_experts"), num_experts_per_token=r.count("num_experts_per_tok"),
                    moe_intermediate_size=r.need("intermediate_size"), first_dense_layers=0)
    return spec


def _granite_hybrid(r: _Reader, name: str) -> dict[str, Any]:
    types = r.need("layer_types")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types) or len(types) > MAX_LAYERS:
        raise InputError("config.json['layer_types']", plain_text(types, 80),
                         f"a list of at most {MAX_LAYERS:,} layer kinds")
    kinds = tuple("mamba2" if t == "mamba" else "full_attention" for t in types)
    spec = _mamba_like(r, name, kinds)
    spec.update(intermediate_size=r.get("shared_intermediate_size", r.get("intermediate_size", 0)),
                max_position_embeddings=r.get("max_position_embeddings", 131072))
    if r.get("num_local_experts", 0):
        spec.update(num_experts=r.count("num_local_experts"), num_experts_per_token=r.count("num_experts_per_tok"),
                    moe_intermediate_size=r.need("intermediate_size"), num_shared_experts=1,
                    shared_expert_intermediate_size=r.need("shared_intermediate_size"))
    return spec


def _nemotron_h(r: _Reader, name: str) -> dict[str, Any]:
    pattern = r.need("hybrid_override_pattern")
    if not isinstance(pattern, str) or len(pattern) > MAX_LAYERS:
        raise InputError("hybrid_override_pattern", plain_text(pattern, 80),
                         f"a string of at most {MAX_LAYERS:,} letters M, * and -")
    codes = {"M": "mamba2", "*": "full_attention", "-": "mlp_only"}
    unknown = sorted(set(pattern) - set(codes))
    if unknown:
        raise InputError("hybrid_override_pattern", pattern, "letters M (Mamba2), * (attention), - (MLP)")
    if len(pattern) != r.layers():
        raise InputError("hybrid_override_pattern", f"{len(pattern)} layers",
                         f"one letter per layer (num_hidden_layers={r.config['num_hidden_layers']})")
    spec = _mamba_like(r, name, tuple(codes[ch] for ch in pattern))
    spec.update(intermediate_size=r.need("intermediate_size"), gated_mlp=False, norms_per_layer=1)
    return spec


READERS: dict[str, Callable[[_Reader, str], dict[str, Any]]] = {
    "llama": _dense, "mistral": _dense, "qwen2": _dense, "qwen3": _dense, "phi3": _dense,
    "qwen2_5_vl": _dense, "qwen2_5_vl_text": _dense,
    "phi": _phi, "mixtral": _mixtral, "qwen2_moe": _qwen_moe, "qwen3_moe": _qwen_moe,
    "qwen3_next": _qwen3_next, "deepseek_v2": _deepseek, "deepseek_v3": _deepseek,
    "deepseek_v32": _deepseek, "kimi_k2": _deepseek, "glm4_moe": _glm4_moe, "gemma2": _gemma,
    "gemma3": _gemma, "gemma3_text": _gemma, "gpt_oss": _gpt_oss, "llama4": _llama4,
    "llama4_text": _llama4, "mamba": _mamba, "mamba2": _mamba, "jamba": _jamba,
    "granitemoehybrid": _granite_hybrid, "nemotron_h": _nemotron_h,
}
SUPPORTED_MODEL_TYPES = tuple(READERS)


def load_hf_config(path: str | Path) -> ModelSpec:
    """ModelSpec from an HF ``config.json`` on disk, read as bounded JSON data (never executed)."""
    path = Path(path)
    config = read_config_json(path)
    return spec_from_hf_config(config, config_name(config, path))


def config_name(config: dict, path: Path) -> str:
    """A model's name from its config: ``_name_or_path`` when the config records it, else the file's
    stem (``deepseek-ai__DeepSeek-V3.json``), else the folder of a plain ``config.json``."""
    recorded = config.get("_name_or_path")
    if isinstance(recorded, str) and plain_text(recorded).strip() and not recorded.startswith(("/", ".")):
        return plain_text(recorded).strip()
    if path.stem != "config":
        return path.stem
    return path.resolve().parent.name or path.stem


def spec_from_hf_config(config: Config, name: str | None = None) -> ModelSpec:
    """ModelSpec for any supported family; multimodal configs plan their text model and count
    the vision tower's parameters into the weights.

    A config whose values a reader cannot use (a string where a number belongs, a list too short)
    is an InputError naming the model, never a traceback: configs are user data."""
    if not isinstance(config, Mapping):
        raise InputError("model", plain_text(config, 80), "a JSON object (an HF config.json)")
    name = name or str(config.get("_name_or_path") or "model")
    try:
        return _spec_from_hf_config(config, name)
    except InputError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
            OverflowError, RecursionError, MemoryError) as err:
        raise InputError("model", plain_text(name, 80), "a config.json whose fields have the types and "
                         f"ranges of an HF {plain_text(config.get('model_type'), 40)!s} config "
                         f"({type(err).__name__}: {plain_text(err, 120)})") from None


def _spec_from_hf_config(config: Config, name: str) -> ModelSpec:
    model_type = config.get("model_type")
    text = config.get("text_config")
    vision = config.get("vision_config")
    wrapper = _Reader(config, plain_text(model_type, 40))  # multimodal keys beside text_config
    if isinstance(text, Mapping):  # multimodal wrapper: plan the text model
        merged = {**text, "model_type": text.get("model_type", model_type)}
        for key in ("tie_word_embeddings", "quantization_config"):
            if key in config and key not in text:
                merged[key] = config[key]
        # the root's dtype wins over the text model's: vLLM's _get_and_verify_dtype reads the root
        # config's torch_dtype and falls back to get_text_config() only where the root has none
        # (transformers 4.53 re-saves Qwen2.5-VL with a float32 text_config beside a bfloat16 root)
        for key in ("torch_dtype", "dtype"):
            if config.get(key) is not None:
                merged[key] = config[key]
        config, model_type = merged, merged["model_type"]
    elif text is not None:
        raise InputError("config.json['text_config']", plain_text(text, 60), "a JSON object (the language "
                         "model's config)")
    if not isinstance(model_type, str) or model_type not in READERS:
        raise InputError("model_type", plain_text(model_type, 80), f"one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    spec = READERS[model_type](_Reader(config, model_type), name)
    if isinstance(vision, Mapping):
        merge = _Reader(vision, "vision", "vision_config").count(
            "spatial_merge_size", default=wrapper.count("spatial_merge_size", default=2, maximum=64), maximum=64)
        spec["vision_params"], spec["vision_sharded_params"] = vision_tower_params(
            vision, spec["hidden_size"], merge)
        spec.update(vision_encoder_shape(vision, wrapper, merge))
        spec["vision_config_layers"] = _Reader(vision, "vision", "vision_config").count(
            "num_hidden_layers", default=0, minimum=0, maximum=2**12)
    elif vision is not None:
        raise InputError("vision_config", plain_text(vision, 80), "a JSON object")
    try:
        return ModelSpec(**spec)
    except InputError as err:  # say it in the config's own keys
        field = err.field.rpartition(".")[2]
        key = CONFIG_KEYS.get(field, field)
        raise InputError(f"config.json[{key!r}]", err.value, err.allowed) from None


# ModelSpec fields under the config.json keys the readers take them from
CONFIG_KEYS = {"num_layers": "num_hidden_layers", "num_kv_heads": "num_key_value_heads",
               "num_experts": "n_routed_experts / num_local_experts / num_experts",
               "num_experts_per_token": "num_experts_per_tok", "first_dense_layers": "first_k_dense_replace",
               "mtp_layers": "num_nextn_predict_layers", "ssm_conv_kernel": "linear_conv_kernel_dim / d_conv",
               "linear_key_heads": "linear_num_key_heads", "linear_key_dim": "linear_key_head_dim",
               "linear_value_heads": "linear_num_value_heads", "linear_value_dim": "linear_value_head_dim",
               "weight_dtype": "torch_dtype", "num_shared_experts": "n_shared_experts"}


def vision_encoder_shape(vision: Config, wrapper: _Reader, spatial_merge: int = 2) -> dict[str, int]:
    """The largest image as vLLM's processors feed the encoder (ModelSpec.vision_* fields):
    - SigLIP (Gemma 3): one ``image_size``² image, (image_size / patch)² positions, ``mm_tokens_per_image``
      embeddings after the projector's pooling (vllm/model_executor/models/gemma3_mm.py; 256 when the
      config leaves it out, transformers Gemma3Config's default); another ViT tower hands on every
      position unless the config says ``mm_tokens_per_image``;
    - Pixtral (Mistral 3): one ``image_size``² image, (image_size / patch)² positions, merged
      ``spatial_merge``² to one embedding (vllm mistral3.py);
    - Llama 4: ``max_patches`` = 16 tiles of ``image_size``² plus the global tile, each (image_size /
      patch)² positions and a class token, pixel-shuffled to (image_size / patch)² · ratio²
      embeddings a tile (vllm/model_executor/models/mllama4.py ``get_patch_per_chunk``,
      ``get_max_num_tiles``; transformers Llama4ImageProcessor ``max_patches`` = 16)."""
    r = _Reader(vision, plain_text(vision.get("model_type", "vision"), 40), "vision_config")
    h, inter = r.count("hidden_size", maximum=2**24), r.count("intermediate_size", maximum=2**26)
    if vision.get("model_type") == "qwen2_5_vl":
        return _qwen2_5_vl_encoder_shape(r, h, inter, spatial_merge)
    patch, image = r.count("patch_size", maximum=2**16), r.count("image_size", maximum=2**20)
    channels = r.count("num_channels", default=3, maximum=2**16)
    if patch > image:
        raise InputError("vision_config.patch_size", patch, f"at most image_size={image}")
    side = image // patch
    kind = vision.get("model_type")
    if kind == "pixtral":
        return dict(vision_hidden_size=h, vision_mlp_width=3 * inter, vision_patches_per_item=side * side,
                    vision_tokens_per_item=(side // spatial_merge) ** 2,
                    vision_pixels_per_item=channels * image * image)
    if kind == "llama4_vision_model":
        ratio = check_number("vision_config.pixel_shuffle_ratio", vision.get("pixel_shuffle_ratio", 0.5), maximum=1)
        if round(1 / ratio**2) > side * side:
            raise InputError("vision_config.pixel_shuffle_ratio", ratio,
                             f"at least 1 / (image_size / patch_size) = {1 / side:.4g} (one embedding a tile)")
        tiles = LLAMA4_MAX_TILES + 1
        return dict(vision_hidden_size=h, vision_mlp_width=2 * inter,
                    vision_patches_per_item=tiles * (side * side + 1),
                    vision_tokens_per_item=tiles * (side * side // round(1 / ratio**2)),
                    vision_pixels_per_item=tiles * channels * image * image)
    # Gemma 3 pools its SigLIP positions to mm_tokens_per_image; a tower that does not pool hands
    # every position on
    pooled = GEMMA3_IMAGE_TOKENS if wrapper.model_type == "gemma3" else side * side
    tokens = wrapper.count("mm_tokens_per_image", default=min(pooled, side * side), maximum=side * side)
    return dict(vision_hidden_size=h, vision_mlp_width=2 * inter, vision_patches_per_item=side * side,
                vision_tokens_per_item=tokens, vision_pixels_per_item=channels * image * image)


def _qwen2_5_vl_encoder_shape(r: _Reader, h: int, inter: int, merge: int) -> dict[str, int]:
    """Qwen2.5-VL's largest image: the square of ``QWEN2_VL_MAX_PIXELS`` in whole merged patches
    (vllm/model_executor/models/qwen2_vl.py ``get_image_size_with_most_features``: max_pixels //
    (patch · merge)² embeddings), each patch a ``temporal_patch_size``-frame cube of pixels (a still
    image is repeated in time), ``spatial_merge_size``² patches to one embedding. It takes videos too:
    the largest is two such frames, as many embeddings (``get_num_video_tokens``)."""
    patch, frames, channels = _qwen2_5_vl_patch(r)
    tokens = QWEN2_VL_MAX_PIXELS // (patch * merge) ** 2
    if not tokens:
        raise InputError("vision_config.patch_size", patch, f"a merged patch of at most {QWEN2_VL_MAX_PIXELS:,} "
                         "pixels (the processor's max_pixels)")
    patches = tokens * merge * merge
    return dict(vision_hidden_size=h, vision_mlp_width=3 * inter, vision_patches_per_item=patches,
                vision_tokens_per_item=tokens, vision_pixels_per_item=patches * channels * frames * patch * patch,
                vision_video=True)


def _qwen2_5_vl_patch(r: _Reader) -> tuple[int, int, int]:
    """(patch edge, frames, channels) of one Qwen2.5-VL patch: the Conv3d kernel's shape."""
    return (r.count("patch_size", maximum=2**16), r.count("temporal_patch_size", default=2, maximum=64),
            r.count("in_channels", "in_chans", default=3, maximum=2**16))


# The image processor's max_pixels that Qwen2.5-VL checkpoints ship (preprocessor_config.json of
# Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct: 12845056 = 16384 × 28²); vLLM sizes its dummy image
# from it. config.json does not carry it.
QWEN2_VL_MAX_PIXELS = 12845056
LLAMA4_MAX_TILES = 16  # transformers Llama4ImageProcessor max_patches
GEMMA3_IMAGE_TOKENS = 256  # transformers Gemma3Config mm_tokens_per_image


def vision_tower_params(vision: Config, text_hidden: int, spatial_merge: int = 2) -> tuple[int, int]:
    """Parameters of a ViT encoder and its projector to the text width: (all, those a tensor-parallel
    engine splits). vLLM builds the towers' attention and MLP from QKV/Column/RowParallelLinear
    (vllm/model_executor/models/siglip.py, pixtral.py ``PixtralHFTransformer``; Mistral 3's projector
    linears too, mistral3.py), so their matrices and column-parallel biases are split; norms,
    embeddings, row-parallel biases and Gemma 3's projection parameter are replicated.

    SigLIP / Llama-4 style: per layer q, k, v, o with biases, fc1/fc2 with biases, two LayerNorms;
    patch embedding, learned positions and a post LayerNorm; a linear projector. Pixtral (Mistral 3,
    transformers models/pixtral and models/mistral3): no biases, a gated MLP (3 matrices), two
    RMSNorms a layer, RoPE instead of learned positions, a pre-norm; the projector is an RMSNorm,
    a patch merger (``spatial_merge``² vision tokens → one) and two linears to the text width.
    """
    r = _Reader(vision, plain_text(vision.get("model_type", "vision"), 40), "vision_config")
    h, inter = r.count("hidden_size", maximum=2**24), r.count("intermediate_size", maximum=2**26)
    for key in ("num_attention_heads", "head_dim"):  # not in the counts, but a tower needs them positive
        if vision.get(key) is not None:
            r.count(key, maximum=2**16)
    if vision.get("model_type") == "qwen2_5_vl":
        return _qwen2_5_vl_tower_params(r, h, inter, text_hidden, spatial_merge)
    layers = r.layers()
    patch, image = r.count("patch_size", maximum=2**16), r.count("image_size", maximum=2**20)
    channels = r.count("num_channels", default=3, maximum=2**16)
    if vision.get("model_type") == "pixtral":
        per_layer = 4 * h * h + 3 * h * inter + 2 * h
        linears = h * text_hidden + text_hidden * text_hidden
        projector = h + spatial_merge**2 * h * h + linears
        total = layers * per_layer + channels * patch * patch * h + h + projector
        return total, layers * (4 * h * h + 3 * h * inter) + linears
    per_layer = 4 * (h * h + h) + 2 * h * inter + inter + h + 4 * h
    positions = (image // patch) ** 2
    embed = channels * patch * patch * h + h + positions * h
    total = layers * per_layer + embed + 2 * h + h * text_hidden + h
    return total, layers * (4 * h * h + 3 * h + 2 * h * inter + inter)


def _qwen2_5_vl_tower_params(r: _Reader, h: int, inter: int, text_hidden: int, merge: int) -> tuple[int, int]:
    """Qwen2.5-VL's vision transformer (transformers models/qwen2_5_vl ``Qwen2_5_VisionTransformer
    PretrainedModel``; vllm/model_executor/models/qwen2_5_vl.py): a bias-free Conv3d patch embedding
    (channels × temporal_patch_size × patch² → hidden); ``depth`` blocks of two RMSNorms, a fused qkv
    and an output projection with biases and a gated MLP (gate, up, down) with biases; a merger of an
    RMSNorm and two biased linears (merge² · hidden → merge² · hidden → out_hidden_size). vLLM splits
    qkv, the MLP and the merger's linears over TP (QKV/MergedColumn/Column/RowParallelLinear): their
    matrices and column-parallel biases; norms, the patch embedding and row-parallel biases stay whole."""
    layers = r.layers("depth")
    r.count("num_heads", maximum=2**16)
    patch, frames, channels = _qwen2_5_vl_patch(r)
    out = r.count("out_hidden_size", default=text_hidden, maximum=2**24)
    merged = merge * merge * h
    per_layer = 4 * h * h + 3 * h * inter + 2 * inter + 7 * h
    merger = h + merged * merged + merged + merged * out + out
    total = channels * frames * patch * patch * h + layers * per_layer + merger
    split = layers * (4 * h * h + 3 * h + 3 * h * inter + 2 * inter) + merged * merged + merged + merged * out
    return total, split
