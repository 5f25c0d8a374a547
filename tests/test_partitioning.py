"""The sharded-array table agrees with geometry() byte for byte, on every stage."""

from __future__ import annotations

import pytest

from estimator import Layout, geometry, load_preset
from estimator.core.partitioning import bytes_per_device, kv_pool_arrays, weight_arrays
from estimator.core.sharding import StageMesh
from meshes import InputError


@pytest.mark.parametrize(("preset", "layout"), [
    ("llama-3.1-8b", Layout()), ("llama-3.1-8b", Layout(tensor=2, pipeline=2)),
    ("llama-3.1-70b", Layout(tensor=16)), ("qwen2.5-7b", Layout(tensor=2, pipeline=3)),
    ("mixtral-8x7b", Layout(data=2, tensor=4, expert=8)), ("qwen3-30b-a3b", Layout(tensor=4, expert=4)),
    ("qwen3-30b-a3b", Layout(tensor=4)), ("qwen3-30b-a3b", Layout(tensor=8, expert=2)),
    ("qwen3-30b-a3b", Layout(data=4, tensor=2, expert=4)), ("mixtral-8x7b", Layout(data=2, tensor=4, expert=2)),
])
def test_weight_shards_equal_geometry(preset, layout):
    g = geometry(load_preset(preset), layout)
    per_stage = bytes_per_device(weight_arrays(g), g)
    assert per_stage == {s.stage: s.weight_bytes for s in g.stages}


def test_kv_pool_shard_equals_pages_times_page_bytes():
    g = geometry(load_preset("llama-3.1-70b"), Layout(data=2, tensor=16 // 2))
    pool = bytes_per_device(kv_pool_arrays(g, 1000), g)
    assert pool == {0: 1000 * 5_242_880}


def test_expert_degree_that_is_no_set_of_mesh_axes_is_refused():
    """ep must divide tp (experts inside a tensor group) or be k · tp with k dividing dp."""
    with pytest.raises(InputError, match="a divisor or a multiple of tensor_parallel_size=4"):
        StageMesh(dp=3, tp=4, ep=6)
    with pytest.raises(InputError, match="a divisor of data × tensor = 12"):
        geometry(load_preset("qwen3-30b-a3b"), Layout(data=3, tensor=4, expert=8))


def test_expert_inside_tensor_group_shards_by_hand():
    """Qwen3-30B-A3B on tp8 × ep2: the stage mesh is data 1 × expert 2 × tensor 4; each device holds
    64 of the 128 experts with a quarter of their width (768 / 4 = 192), and attention over all 8."""
    g = geometry(load_preset("qwen3-30b-a3b"), Layout(tensor=8, expert=2))
    arrays = {a.name: a for a in weight_arrays(g)}
    sizes = {"data": 1, "expert": 2, "tensor": 4}
    gate_up = arrays["layers.0.mlp.experts.gate_up_proj"]
    assert gate_up.shape == (128, 2 * 768, 2048) and gate_up.spec == ("expert", "tensor", None)
    assert gate_up.shard_shape(sizes) == (64, 2 * 192, 2048)
    q = arrays["layers.0.self_attn.q_proj"]
    assert q.spec == (("expert", "tensor"), None) and q.shard_shape(sizes) == (32 * 128 // 8, 2048)


@pytest.mark.parametrize(("preset", "layout"), [
    ("llama-3.1-70b", Layout(tensor=16)), ("llama-3.1-70b", Layout(data=2, tensor=4, pipeline=2)),
    ("qwen3-30b-a3b", Layout(tensor=8, expert=2)), ("qwen3-30b-a3b", Layout(data=4, tensor=2, expert=4)),
    ("mixtral-8x7b", Layout(data=2, tensor=4, expert=8)), ("deepseek-v3", Layout(tensor=8, expert=8)),
])
def test_table_shard_shapes_are_jax_named_sharding_shard_shapes(preset, layout):
    """Every array's per-device shape is what JAX itself gives for its spec on an AbstractMesh of
    the stage's named axes (no devices needed)."""
    pytest.importorskip("jax")
    from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

    from estimator.core.sharding import AXES, layout_stage_mesh

    g = geometry(load_preset(preset), layout, page_size=64)
    sizes = layout_stage_mesh(layout).sizes
    mesh = AbstractMesh(tuple(sizes[a] for a in AXES), AXES)
    for a in (*weight_arrays(g), *kv_pool_arrays(g, 10)):
        assert NamedSharding(mesh, PartitionSpec(*a.spec)).shard_shape(a.shape) == a.shard_shape(sizes), a.name
