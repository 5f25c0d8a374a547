"""Weights of a flax NNX model per device, from nnx.eval_shape under an abstract mesh, equal geometry().

The Llama-style module below is written here (flax [in, out] kernels); its sizes are given to
ModelSpec directly, so the analytic count in estimator.model.weights/geometry is an independent check.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import pytest

flax = pytest.importorskip("flax")
from flax import nnx  # noqa: E402

from estimator import Layout, ModelSpec, geometry, load_preset  # noqa: E402
from estimator.core.flax_weights import flax_abstract_shardings, flax_weight_shards  # noqa: E402
from estimator.core.partition_rules import PartitionRules  # noqa: E402
from meshes import InputError  # noqa: E402


@dataclass(frozen=True)
class Cfg:
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    vocab: int = 250  # not a multiple of 4: TP4 pads the vocab rows
    mlp: int = 96
    tie: bool = False

    def spec(self) -> ModelSpec:
        return ModelSpec(name="tiny-flax", model_type="llama", num_layers=self.layers,
                         hidden_size=self.hidden, num_attention_heads=self.heads,
                         num_kv_heads=self.kv_heads, head_dim=self.head_dim, vocab_size=self.vocab,
                         intermediate_size=self.mlp, max_position_embeddings=256,
                         tie_word_embeddings=self.tie)


def _init(*names):
    return nnx.with_partitioning(nnx.initializers.lecun_normal(), names)


class Block(nnx.Module):
    def __init__(self, c: Cfg, rngs: nnx.Rngs):
        lin = partial(nnx.Linear, use_bias=False, param_dtype=jnp.bfloat16, rngs=rngs)
        self.input_norm = nnx.RMSNorm(c.hidden, param_dtype=jnp.bfloat16, rngs=rngs)
        self.q = lin(c.hidden, c.heads * c.head_dim, kernel_init=_init("embed", "q_heads"))
        self.k = lin(c.hidden, c.kv_heads * c.head_dim, kernel_init=_init("embed", "kv_heads"))
        self.v = lin(c.hidden, c.kv_heads * c.head_dim, kernel_init=_init("embed", "kv_heads"))
        self.o = lin(c.heads * c.head_dim, c.hidden, kernel_init=_init("q_heads", "embed"))
        self.post_norm = nnx.RMSNorm(c.hidden, param_dtype=jnp.bfloat16, rngs=rngs)
        self.gate = lin(c.hidden, c.mlp, kernel_init=_init("embed", "mlp"))
        self.up = lin(c.hidden, c.mlp, kernel_init=_init("embed", "mlp"))
        self.down = lin(c.mlp, c.hidden, kernel_init=_init("mlp", "embed"))


class Llama(nnx.Module):
    def __init__(self, c: Cfg, rngs: nnx.Rngs):
        self.embed = nnx.Embed(c.vocab, c.hidden, param_dtype=jnp.bfloat16, rngs=rngs,
                               embedding_init=nnx.with_partitioning(nnx.initializers.normal(),
                                                                    ("vocab", "embed")))
        self.layers = nnx.List([Block(c, rngs) for _ in range(c.layers)])
        self.norm = nnx.RMSNorm(c.hidden, param_dtype=jnp.bfloat16, rngs=rngs)
        if not c.tie:
            self.lm_head = nnx.Linear(c.hidden, c.vocab, use_bias=False, param_dtype=jnp.bfloat16,
                                      rngs=rngs, kernel_init=_init("embed", "vocab"))


def constructor(c: Cfg):
    return lambda: Llama(c, nnx.Rngs(0))


LOGICAL = (("embed", None), ("q_heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"),
           ("vocab", "tensor"))


def padding(c: Cfg) -> dict:
    return {"vocab": "multiple", "kv_heads": ("replicate", c.head_dim), "q_heads": ("", c.head_dim)}


def regex_rules(c: Cfg) -> PartitionRules:
    hd = {"block": c.head_dim}
    return PartitionRules.from_pairs([
        (r"^embed\.embedding$", ("tensor", None), {"pad": "multiple"}),
        (r"^lm_head\.kernel$", (None, "tensor"), {"pad": "multiple"}),
        (r"\.q\.kernel$", (None, "tensor"), hd),
        (r"\.[kv]\.kernel$", (None, "tensor"), {"pad": "replicate", **hd}),
        (r"\.o\.kernel$", ("tensor", None), hd),
        (r"\.(gate|up)\.kernel$", (None, "tensor")),
        (r"\.down\.kernel$", ("tensor", None)),
        (r"norm\.scale$", ()),
    ], unused="ignore")


def analytic(c: Cfg, layout: Layout) -> dict[int, int]:
    return {s.stage: s.weight_bytes for s in geometry(c.spec(), layout).stages}


@pytest.mark.parametrize("tp", [1, 2, 4])  # TP4 > 2 KV heads: each head stored twice; vocab padded
@pytest.mark.parametrize("mode", ["logical", "regex"])
def test_flax_bytes_per_device_equal_geometry(tp, mode):
    c = Cfg()
    mesh = {"data": 1, "tensor": tp}
    if mode == "logical":
        shards = flax_weight_shards(constructor(c), mesh, logical_rules=LOGICAL, padding=padding(c))
    else:
        shards = flax_weight_shards(constructor(c), mesh, rules=regex_rules(c))
    assert {0: shards.bytes_per_device} == analytic(c, Layout(tensor=tp))
    assert shards.total_bytes == 2 * (2 * 250 * 64 + 64 + 2 * (2 * 64 + 64 * 64 * 2 + 2 * 64 * 32
                                                                 + 3 * 64 * 96))


def test_kv_heads_replicated_and_vocab_padded_at_tp4():
    c = Cfg()
    shards = flax_weight_shards(constructor(c), {"tensor": 4}, logical_rules=LOGICAL, padding=padding(c))
    by_name = {t.name: t for t in shards.tensors}
    assert by_name["layers.0.k.kernel"].global_shape == (64, 4 * 16)  # 2 heads stored as 4
    assert by_name["layers.0.k.kernel"].shard_shape == (64, 16)  # one whole head per device
    assert by_name["embed.embedding"].shard_shape == (63, 64)  # ceil(250 / 4) rows
    assert by_name["lm_head.kernel"].spec == (None, "tensor")


def test_data_axis_replicates_and_pipeline_stages_match():
    c = Cfg(layers=3)
    shards = flax_weight_shards(constructor(c), {"data": 2, "tensor": 2}, logical_rules=LOGICAL,
                                padding=padding(c))
    assert {0: shards.bytes_per_device} == analytic(c, Layout(data=2, tensor=2))
    assert shards.stage_bytes(3, 2) == analytic(c, Layout(tensor=2, pipeline=2))


def test_tied_embeddings():
    c = Cfg(tie=True)
    shards = flax_weight_shards(constructor(c), {"tensor": 2}, logical_rules=LOGICAL, padding=padding(c))
    assert not any("lm_head" in t.name for t in shards.tensors)
    assert {0: shards.bytes_per_device} == analytic(c, Layout(tensor=2))
    assert shards.stage_bytes(2, 2, tie_word_embeddings=True) == analytic(c, Layout(tensor=2, pipeline=2))


def test_specs_agree_with_flax_eager_shardings():
    """Where nothing is padded, flax's own NamedShardings give the same specs and bytes."""
    c = Cfg()
    mesh = {"data": 2, "tensor": 2}
    ours = flax_weight_shards(constructor(c), mesh, logical_rules=LOGICAL, padding=padding(c))
    theirs = flax_abstract_shardings(constructor(c), mesh, logical_rules=LOGICAL)
    assert set(theirs) == {t.name for t in ours.tensors}
    for t in ours.tensors:
        sds = theirs[t.name]
        assert tuple(sds.sharding.spec) + (None,) * (len(t.shape) - len(sds.sharding.spec)) == t.spec
        assert tuple(sds.sharding.shard_shape(sds.shape)) == t.shard_shape
    eager = sum(jnp.dtype(s.dtype).itemsize * int(jnp.prod(jnp.array(s.sharding.shard_shape(s.shape))))
                for s in theirs.values())
    assert eager == ours.bytes_per_device


def test_nothing_is_allocated():
    before = len(jax.live_arrays())
    flax_weight_shards(constructor(Cfg()), {"tensor": 2}, logical_rules=LOGICAL, padding=padding(Cfg()))
    assert len(jax.live_arrays()) == before


def test_llama_3_1_70b_widths_on_tp16_abstractly():
    """Llama-3.1-70B's widths (8 KV heads, vocab 128256) built abstractly: TP16 replicates KV heads.

    Four of its 80 layers: flax 0.12.8 builds abstract models in time quadratic in the number of
    rng draws (each Rngs count update reads ``.sharding`` of a tracer, whose error message walks
    the whole trace), so the full 80 layers take ~15 s — too slow for a unit test.
    """
    m = load_preset("llama-3.1-70b")
    c = Cfg(layers=4, hidden=m.hidden_size, heads=m.num_attention_heads, kv_heads=m.num_kv_heads,
            head_dim=m.head_dim, vocab=m.vocab_size, mlp=m.intermediate_size)
    shards = flax_weight_shards(constructor(c), {"tensor": 16}, logical_rules=LOGICAL, padding=padding(c))
    assert {0: shards.bytes_per_device} == analytic(c, Layout(tensor=16))
    k = next(t for t in shards.tensors if t.name == "layers.0.k.kernel")
    assert k.shard_shape == (8192, 128) and k.padding_bytes == 8192 * 1024 * 2  # 8 heads stored twice


# ------------------------------------------------------------------------------------ bad input
def test_uneven_split_names_the_variable_dim_and_axes():
    c = Cfg(heads=6)  # 6 query heads over TP4
    with pytest.raises(InputError, match=r"layers\.0\.o\.kernel\[96, 64\] dim 0='6 blocks of 16'.*"
                                         r"4 shards over mesh axes tensor = 4"):
        flax_weight_shards(constructor(c), {"tensor": 4}, logical_rules=LOGICAL, padding=padding(c))
    with pytest.raises(InputError, match=r"layers\.0\.k\.kernel.*divisor or a multiple of the 3 shards"):
        flax_weight_shards(constructor(Cfg()), {"tensor": 3}, logical_rules=LOGICAL, padding=padding(Cfg()))


def test_kv_split_that_cuts_heads_without_padding_rule_is_refused():
    c = Cfg()
    with pytest.raises(InputError, match=r"layers\.0\.k\.kernel"):
        flax_weight_shards(constructor(c), {"tensor": 4}, logical_rules=LOGICAL,
                           padding={"vocab": "multiple", "kv_heads": ("", c.head_dim)})


def test_unknown_logical_axis_names_the_variable():
    with pytest.raises(InputError, match=r"embed\.embedding logical axis.*'vocab'"):
        flax_weight_shards(constructor(Cfg()), {"tensor": 2}, logical_rules=(("embed", None),))


def test_regex_rules_that_leave_a_parameter_unmatched():
    rules = PartitionRules.from_pairs([(r"kernel$", ())])
    with pytest.raises(InputError, match=r"embed\.embedding"):
        flax_weight_shards(constructor(Cfg()), {"tensor": 2}, rules=rules)


def test_flax_is_imported_only_by_this_path():
    import subprocess

    code = ("import sys, estimator, estimator.model.checkpoint, estimator.core.partition_rules, "
            "estimator.core.flax_weights; "
            "print(sorted(m for m in ('flax', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_padding_values():
    for bad, match in ((3, "padding\\['vocab'\\]=3"), ("pad", "padding\\['vocab'\\]='pad'"),
                       (("replicate", 0), "block")):
        with pytest.raises(InputError, match=match):
            flax_weight_shards(constructor(Cfg()), {"tensor": 2}, logical_rules=LOGICAL, padding={"vocab": bad})
    with pytest.raises(InputError, match="not both"):
        flax_weight_shards(constructor(Cfg()), {"tensor": 2}, rules=regex_rules(Cfg()), padding={"vocab": "multiple"})
