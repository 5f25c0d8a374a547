"""Allocation on 8 simulated CPU devices: the same code paths the GPU validation runs, with small shapes.

One subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=8; CPU has no memory_stats, so the
mesh gets capacity_bytes) plans, allocates weights and the KV pool for several layouts, and reports
every array's sharding and every shard's shape, device and ``addressable_shards[i].data.nbytes``.
The tests check them against the partitioning table and the plan's per-device rows.

Run by hand: ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/test_serving_cpu.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CAPACITY = 16 * 2**20  # bytes per simulated device: pools of a few MiB
PAGE = 16
DENSE = dict(name="tiny-dense", model_type="qwen2", num_layers=4, hidden_size=256, num_attention_heads=8,
             num_kv_heads=4, head_dim=32, vocab_size=1003, intermediate_size=512,
             max_position_embeddings=4096, attention_bias=True)  # vocab padded over tp, heads replicated at tp8
MOE = dict(name="tiny-moe", model_type="qwen3_moe", num_layers=2, hidden_size=128, num_attention_heads=8,
           num_kv_heads=2, head_dim=16, vocab_size=512, intermediate_size=256, max_position_embeddings=2048,
           qk_norm=True, num_experts=8, num_experts_per_token=2, moe_intermediate_size=64)
# (case name, model, layout, mesh axes, KV dtype of the plan, KV dtype to allocate)
CASES = [
    ("tp8", DENSE, "tp8", None, None, None),
    ("dp2xtp4", DENSE, "dp2xtp4", {"data": 2, "tensor": 4}, None, None),
    ("pp2xtp4", DENSE, "pp2xtp4", None, None, None),
    ("dp2xpp2xtp2", DENSE, "dp2xpp2xtp2", None, None, None),
    ("dp8", DENSE, "dp8", None, None, None),
    ("moe-dp2xtp4xep8", MOE, "dp2xtp4xep8", None, None, None),
    ("moe-dp2xtp4xep4", MOE, "dp2xtp4xep4", None, None, None),
    ("moe-tp8xep2", MOE, "tp8xep2", None, None, None),  # expert groups inside the tensor group
    ("moe-dp4xtp2xep4", MOE, "dp4xtp2xep4", None, None, None),  # an expert group spans 2 replicas
    ("fp8-kv", DENSE, "dp2xtp4", None, "fp8", "float8_e5m2"),
]


# ------------------------------------------------------------------------- the subprocess
def _describe(kind, alloc, mesh, layout):
    from estimator.core.sharding import layout_stage_mesh

    index = {d: i for i, d in enumerate(mesh.devices)}
    out = []
    for t, a in zip(alloc.tensors, alloc.arrays, strict=True):
        sizes = layout_stage_mesh(layout).sizes
        out.append({
            "kind": kind, "name": t.name, "stage": t.stage, "dtype": str(a.dtype), "table_dtype": t.dtype,
            "shape": list(a.shape), "table_shape": list(t.shape),
            "spec": [list(s) if isinstance(s, tuple) else s for s in a.sharding.spec],
            "table_spec": [list(s) if isinstance(s, tuple) else s for s in t.spec],
            "mesh_axes": list(a.sharding.mesh.axis_names),
            "expected_shard": list(t.shard_shape(sizes)),
            "shards": [[index[s.device], list(s.data.shape), s.data.nbytes] for s in a.addressable_shards],
        })
    return out


def _worker() -> dict:
    import jax

    from estimator import Layout, ModelSpec, plan
    from estimator.planning.serving import (
        allocate_kv_pool,
        allocate_weights_like,
        check_allocation,
        check_plan_still_fits,
        clear_caches,
        device_bytes,
        grown_pages,
    )
    from meshes import DeviceMesh, InputError

    assert len(jax.devices()) == 8, jax.devices()
    results: dict = {"cases": {}}
    for name, model_dict, layout_name, axes, plan_dtype, alloc_dtype in CASES:
        model = ModelSpec(**model_dict)
        mesh = DeviceMesh.from_jax(axes=axes, capacity_bytes=CAPACITY)
        layout = Layout.parse(layout_name)
        p = plan(model, mesh, layout, page_size=PAGE, activation_bytes=0, kv_cache_dtype=plan_dtype)
        weights = allocate_weights_like(p, mesh, model=model)
        pool = allocate_kv_pool(p, mesh, model=model, dtype=alloc_dtype)
        case = {
            "pages": p.pages_per_replica, "replicas": p.num_replicas, "kv_dtype": p.kv_cache_dtype,
            "rows": [{"stage": r.stage, "replica": r.replica, "weights": r.weights_bytes,
                      "pool": r.kv_pool_bytes, "page": r.page_bytes} for r in p.devices],
            "coords": [list(layout.coordinates(i)) for i in range(mesh.size)],
            "arrays": _describe("weights", weights, mesh, layout) + _describe("kv", pool, mesh, layout),
            "weights_per_device": device_bytes(mesh, [weights]),
            "pool_per_device": device_bytes(mesh, [pool]),
            "problems": check_allocation(p, mesh, weights, pool),
            "fit": check_plan_still_fits(p, mesh, allocated=[weights, pool]).summary,
            "pool_dtype": pool.kv_cache_dtype,
        }
        pool.delete()
        assert all(a.is_deleted() for a in pool.arrays)
        if name == "dp2xtp4":  # 2 % more pages than planned: shapes follow (CPU has no cap to hit)
            more = grown_pages(p.pages_per_replica)
            grown = allocate_kv_pool(p, mesh, model=model, pages_per_replica=more, check_fit=False)
            case["grown"] = {"pages": more, "shape": list(grown.arrays[0].shape),
                             "per_device": device_bytes(mesh, [grown])}
            grown.delete()
            four = DeviceMesh.from_jax(jax.devices()[:4], axes=axes and {"data": 1, "tensor": 4},
                                       capacity_bytes=CAPACITY)
            try:
                allocate_kv_pool(p, four, model=model)
                case["other_mesh"] = "allocated"
            except InputError as err:
                case["other_mesh"] = str(err)
        weights.delete()
        results["cases"][name] = case
    clear_caches()
    return results


if __name__ == "__main__":
    print("RESULT " + json.dumps(_worker()))
    sys.exit(0)


# ------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def cpu8():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    for var in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        env.pop(var, None)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(Path(__file__).resolve())], capture_output=True, text=True,
                         timeout=120, env=env, cwd=root)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert out.returncode == 0 and line, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(line.removeprefix("RESULT "))["cases"]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_every_shard_has_the_table_shape_dtype_and_spec(cpu8, case):
    c = cpu8[case]
    assert c["pages"] > 0
    for a in c["arrays"]:
        assert a["shape"] == a["table_shape"], a["name"]
        assert a["spec"] == a["table_spec"] and a["mesh_axes"] == ["data", "expert", "tensor"], a["name"]
        assert a["dtype"] == (c["pool_dtype"] if a["kind"] == "kv" else a["table_dtype"]), a["name"]
        for _, shape, _ in a["shards"]:
            assert shape == a["expected_shard"], (a["name"], shape)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_arrays_live_only_on_their_stage(cpu8, case):
    c = cpu8[case]
    for a in c["arrays"]:
        on = sorted({dev for dev, _, _ in a["shards"]})
        assert on == [i for i, xyz in enumerate(c["coords"]) if xyz[1] == a["stage"]], a["name"]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_per_device_bytes_equal_the_plan_rows(cpu8, case):
    c = cpu8[case]
    assert c["weights_per_device"] == [r["weights"] for r in c["rows"]]
    assert c["pool_per_device"] == [r["pool"] for r in c["rows"]]
    assert c["pool_per_device"] == [c["pages"] * r["page"] for r in c["rows"]]
    assert c["problems"] == []
    totals = [0] * len(c["rows"])
    for a in c["arrays"]:
        for dev, _, nbytes in a["shards"]:
            totals[dev] += nbytes
    assert totals == [r["weights"] + r["pool"] for r in c["rows"]]
    assert c["fit"].startswith("memory unchanged") and "still fits" in c["fit"]


def test_kv_pool_layout_pages_over_data_heads_over_tensor(cpu8):
    c = cpu8["dp2xtp4"]
    (pool,) = [a for a in c["arrays"] if a["kind"] == "kv"]
    assert pool["table_shape"] == [2, 4, c["pages"] * 2, PAGE, 4, 32]  # 4 KV heads over tp4: one each
    assert pool["expected_shard"] == [2, 4, c["pages"], PAGE, 1, 32]
    tp8 = next(a for a in cpu8["tp8"]["arrays"] if a["kind"] == "kv")
    assert tp8["table_shape"][4] == 8 and tp8["expected_shard"][4] == 1  # 4 heads stored twice at tp8
    embed = next(a for a in c["arrays"] if a["name"] == "embed_tokens")
    assert embed["table_shape"] == [1004, 256] and embed["expected_shard"] == [251, 256]  # vocab padded


def test_experts_split_over_the_expert_axis_and_their_width_over_tensor(cpu8):
    """tp8 · ep2 of the tiny MoE (8 experts of width 64, hidden 128): stage mesh data 1 × expert 2 ×
    tensor 4, so a device holds 4 whole experts, each a quarter of its width (16); dp4 · tp2 · ep4:
    data 2 × expert 2 × tensor 2, a device holds 2 whole experts, and pages split over 4 replicas."""
    inside = {a["name"]: a for a in cpu8["moe-tp8xep2"]["arrays"]}
    gate_up = inside["layers.0.mlp.experts.gate_up_proj"]
    assert gate_up["table_shape"] == [8, 128, 128] and gate_up["table_spec"] == ["expert", "tensor", None]
    assert {tuple(shape) for _, shape, _ in gate_up["shards"]} == {(4, 32, 128)}
    spans = {a["name"]: a for a in cpu8["moe-dp4xtp2xep4"]["arrays"]}
    down = spans["layers.0.mlp.experts.down_proj"]
    assert down["table_spec"] == [["expert", "tensor"], None, None]
    assert {tuple(shape) for _, shape, _ in down["shards"]} == {(2, 128, 64)}
    pages = cpu8["moe-dp4xtp2xep4"]["pages"]
    (pool,) = [a for a in spans.values() if a["kind"] == "kv"]
    assert pool["table_spec"][2] == ["data", "expert"] and pool["expected_shard"][2] == pages


def test_pipeline_stages_have_their_own_pool(cpu8):
    c = cpu8["dp2xpp2xtp2"]
    pools = [a for a in c["arrays"] if a["kind"] == "kv"]
    assert [p["stage"] for p in pools] == [0, 1] and all(p["table_shape"][1] == 2 for p in pools)


def test_fp8_kv_allocated_in_a_same_width_dtype(cpu8):
    c = cpu8["fp8-kv"]
    assert c["kv_dtype"] == "float8_e4m3fn" and c["pool_dtype"] == "float8_e5m2"
    assert c["pool_per_device"] == [r["pool"] for r in c["rows"]]


def test_two_percent_more_pages_change_only_the_page_axis(cpu8):
    c = cpu8["dp2xtp4"]
    g = c["grown"]
    assert g["pages"] == c["pages"] + -(-c["pages"] * 2 // 100)
    assert g["shape"] == [2, 4, g["pages"] * 2, PAGE, 4, 32]
    assert g["per_device"] == [g["pages"] * r["page"] for r in c["rows"]]


def test_live_mesh_other_than_the_plans_is_refused(cpu8):
    text = cpu8["dp2xtp4"]["other_mesh"]
    assert "device count: plan 8, mesh 4" in text and "axes: plan (data=2 x tensor=4)" in text
