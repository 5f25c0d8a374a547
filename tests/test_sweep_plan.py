"""Hypothesis: every cell of a random sweep equals the scalar plan() answer for that cell, and the
aggregate sweep equals the frontier of the cells; more memory never removes a feasible cell."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sweep import MICRO, assert_cells_match_plan, assert_frontiers_equal

from estimator import ModelSpec
from estimator.model.hf_config import load_hf_config
from estimator.sweeps.grid import sweep, sweep_frontier
from meshes import CATALOG, DeviceMesh, SimulatedDevice

TINY = ModelSpec(name="tiny", model_type="llama", num_layers=4, hidden_size=64,
                 num_attention_heads=4, num_kv_heads=2, head_dim=16, vocab_size=512,
                 intermediate_size=128, max_position_embeddings=1 << 40)


def _mixed(in_use: int) -> DeviceMesh:
    """Two unlike devices, the second partly used: the tightest device depends on the layout."""
    return DeviceMesh.from_devices([SimulatedDevice(0, CATALOG["H100-80GB"]),
                                    SimulatedDevice(1, CATALOG["A100-80GB"], bytes_in_use=in_use)])


MESHES = {
    "1xH100-80GB": ("tp1",),
    "2xA100-40GB": ("tp2", "dp2", "pp2"),
    "4xL4-24GB": ("tp4", "dp2xtp2", "dp4", "pp2xtp2", "pp4"),
    "mixed": ("tp2", "dp2", "pp2"),
}
MODELS = ("llama-3.1-8b", "qwen3-8b", "llama-2-7b", "mistral-7b-v0.3", TINY, MICRO)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw):
    mesh_name = draw(st.sampled_from(sorted(MESHES)))
    mesh = _mixed(draw(st.integers(0, 60 * 2**30))) if mesh_name == "mixed" else mesh_name
    layouts = draw(st.lists(st.sampled_from(MESHES[mesh_name]), min_size=1, max_size=2,
                            unique=True))
    return dict(
        model=draw(st.sampled_from(MODELS)), mesh=mesh, layouts=layouts,
        kv_cache_dtypes=draw(st.lists(st.sampled_from([None, "fp8", "fp32"]), min_size=1,
                                      max_size=2, unique=True)),
        page_sizes=draw(st.lists(st.sampled_from([1, 16, 100, 128]), min_size=1, max_size=2,
                                 unique=True)),
        utilizations=draw(st.lists(st.sampled_from([0.3, 0.9, 1.0]), min_size=1, max_size=1)),
        batch_sizes=draw(st.lists(st.integers(1, 20_000), min_size=1, max_size=3)),
        lengths=draw(st.lists(st.integers(1, 2_000_000), min_size=1, max_size=3)),
        max_batch_input_tokens=draw(st.sampled_from([64, 8192, 2**31 - 1])),
        num_draft_tokens=draw(st.sampled_from([0, 3])),
        chunk_cells=draw(st.sampled_from([1, 7, 2**24])))


def _split(cfg):
    cfg = dict(cfg)
    return cfg.pop("model"), cfg.pop("mesh"), cfg


@SETTINGS
@given(cfg=configs())
def test_every_cell_equals_plan(cfg):
    model, mesh, kw = _split(cfg)
    mesh = DeviceMesh.from_preset(mesh) if isinstance(mesh, str) else mesh
    try:
        result = sweep(model, mesh, **kw)
    except Exception as err:  # layouts a model cannot take (e.g. tp4 over 2 KV heads) are refused
        from meshes import InputError

        assert isinstance(err, InputError)
        return
    assert_cells_match_plan(result, model, mesh, num_draft_tokens=kw["num_draft_tokens"])
    assert_frontiers_equal(sweep_frontier(model, mesh, **kw), result.frontier())


@settings(max_examples=10, deadline=None, derandomize=True)
@given(batches=st.lists(st.integers(1, 5000), min_size=1, max_size=6),
       lengths=st.lists(st.integers(1, 300_000), min_size=1, max_size=6),
       in_use=st.integers(0, 30 * 2**30), extra=st.integers(1, 20 * 2**30))
def test_more_memory_never_removes_a_feasible_cell(batches, lengths, in_use, extra):
    kw = dict(layouts=["tp2", "dp2"], batch_sizes=batches, lengths=lengths,
              kv_cache_dtypes=[None, "fp8"])
    less = sweep("llama-3.1-8b", DeviceMesh.from_preset("2xH100-80GB", bytes_in_use=in_use + extra),
                 **kw)
    more = sweep("llama-3.1-8b", DeviceMesh.from_preset("2xH100-80GB", bytes_in_use=in_use), **kw)
    assert (less.feasible <= more.feasible).all()
    assert (less.pages_available <= more.pages_available).all()
    f = more.feasible
    assert (f[..., :-1, :] >= f[..., 1:, :]).all() and (f[..., :, :-1] >= f[..., :, 1:]).all()
    assert np.array_equal(more.frontier_max_batch() > 0, f.any(axis=4))


# Real HF configs (vendored under tests/model_configs) whose layers mix KV kinds: sliding windows (Gemma 2/3,
# gpt-oss, Phi-3 with only windowed layers, Llama 4 chunked attention), recurrent state
# (Qwen3-Next), MLA (DeepSeek-V3). Mesh and layouts chosen so pages fit and stages differ.
ARCHS = {
    "openai/gpt-oss-20b": ("1xH100-80GB", ("tp1",)),
    "google/gemma-2-9b-it": ("2xL40S-48GB", ("tp2", "dp2", "pp2")),
    "google/gemma-3-27b-it": ("2xH100-80GB", ("tp2", "pp2", "dp2")),
    "microsoft/Phi-3-mini-4k-instruct": ("1xL4-24GB", ("tp1",)),
    "Qwen/Qwen3-Next-80B-A3B-Thinking": ("4xH100-80GB", ("tp4", "pp2xtp2", "pp4")),
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": ("4xH100-80GB", ("tp4", "pp4", "pp2xtp2")),
    "deepseek-ai/DeepSeek-V3": ("2x8xH200-141GB", ("pp2xtp8", "tp16")),
}


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mixed_kv_kinds_equal_plan(hf_config, data):
    hf_id = data.draw(st.sampled_from(sorted(ARCHS)))
    mesh, layouts = ARCHS[hf_id]
    model = load_hf_config(hf_config(hf_id))
    # lengths around windows, caps and max_position_embeddings; batches around page counts
    lengths = data.draw(st.lists(st.one_of(st.integers(1, 300_000), st.integers(1, 3 * 10**6),
                                           st.sampled_from([4095, 4096, 4097, 131072, 131073])),
                                 min_size=1, max_size=4))
    kw = dict(layouts=data.draw(st.lists(st.sampled_from(layouts), min_size=1, max_size=2,
                                         unique=True)),
              batch_sizes=data.draw(st.lists(st.integers(1, 50_000), min_size=1, max_size=3)),
              lengths=lengths,
              kv_cache_dtypes=data.draw(st.lists(st.sampled_from([None, "fp8"]), min_size=1,
                                                 max_size=2, unique=True)),
              page_sizes=data.draw(st.lists(st.sampled_from([16, 64, 128]), min_size=1,
                                            max_size=2, unique=True)),
              num_draft_tokens=data.draw(st.sampled_from([0, 2])))
    result = sweep(model, mesh, **kw)
    mesh = DeviceMesh.from_preset(mesh)
    assert_cells_match_plan(result, model, mesh, num_draft_tokens=kw["num_draft_tokens"])
    assert_frontiers_equal(sweep_frontier(model, mesh, **kw), result.frontier())


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_layout_constants_equal_the_scalar_set_up(cfg):
    """The array set-up (layout_constants: KV specs on arrays, one plan() per layout) against its
    scalar twin (config_constants: one plan() per configuration), column by column."""
    from estimator.core.layout import Layout
    from estimator.model.resolve import resolve_model
    from estimator.sweeps.grid import ConfigTable, config_constants, layout_constants
    from meshes import InputError

    model, mesh, kw = _split(cfg)
    model = resolve_model(model)
    mesh = DeviceMesh.from_preset(mesh) if isinstance(mesh, str) else mesh
    batches, lengths = np.unique(kw["batch_sizes"]), np.unique(kw["lengths"])
    plan_kw = dict(max_batch_input_tokens=kw["max_batch_input_tokens"], num_draft_tokens=kw["num_draft_tokens"])
    for name in kw["layouts"]:
        layout = Layout.parse(name)
        try:
            table = layout_constants(model, mesh, layout, batches, lengths, kv_cache_dtypes=kw["kv_cache_dtypes"],
                                     page_sizes=kw["page_sizes"], utilizations=kw["utilizations"], **plan_kw)
        except InputError:
            continue
        scalar = ConfigTable.of([config_constants(model, mesh, layout, batches, lengths, kv_cache_dtype=d, page_size=p,
                                                  utilization=u, **plan_kw)
                                 for d in kw["kv_cache_dtypes"] for p in kw["page_sizes"] for u in kw["utilizations"]])
        for column, expected in vars(scalar).items():
            np.testing.assert_array_equal(getattr(table, column), expected, err_msg=f"{name} {column}")
