"""The sharded-array table agrees with geometry() byte for byte, on every stage."""

from __future__ import annotations

import pytest

from estimator import Layout, geometry, load_preset
from estimator.core.partitioning import bytes_per_device, kv_pool_arrays, weight_arrays
from meshes import InputError


@pytest.mark.parametrize(("preset", "layout"), [
    ("llama-3.1-8b", Layout()), ("llama-3.1-8b", Layout(tensor=2, pipeline=2)),
    ("llama-3.1-70b", Layout(tensor=16)), ("qwen2.5-7b", Layout(tensor=2, pipeline=3)),
    ("mixtral-8x7b", Layout(data=2, tensor=4, expert=8)), ("qwen3-30b-a3b", Layout(tensor=4, expert=4)),
    ("qwen3-30b-a3b", Layout(tensor=4)),
])
def test_weight_shards_equal_geometry(preset, layout):
    g = geometry(load_preset(preset), layout)
    per_stage = bytes_per_device(weight_arrays(g), g)
    assert per_stage == {s.stage: s.weight_bytes for s in g.stages}


def test_kv_pool_shard_equals_pages_times_page_bytes():
    g = geometry(load_preset("llama-3.1-70b"), Layout(data=2, tensor=16 // 2))
    pool = bytes_per_device(kv_pool_arrays(g, 1000), g)
    assert pool == {0: 1000 * 5_242_880}


def test_expert_axis_that_is_not_a_mesh_axis_is_refused():
    g = geometry(load_preset("qwen3-30b-a3b"), Layout(tensor=8, expert=2))
    with pytest.raises(InputError, match="expert_parallel_size"):
        weight_arrays(g)
