"""sweep(): hand-computed cells, reason codes, grid edges, monotonicity, chunking, exports, and exact
answers at 2^31 / 2^32 / 2^53 / 2^63 budgets (each cell checked against plan())."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from estimator import Layout, ModelSpec, geometry, plan, resolve_model
from estimator.sweeps import grid as sweep_module
from estimator.sweeps.frontier import (
    BATCH_TOKENS,
    FITS,
    KV_PAGES,
    LENGTH_CAP,
    REASONS,
    STATIC_MEMORY,
)
from estimator.sweeps.grid import sweep, sweep_frontier
from meshes import CATALOG, DeviceMesh, InputError, SimulatedDevice

MiB = 2**20
H100_LIMIT = 85_018_542_080  # the simulated H100's bytes_limit (catalog usable bytes)
LLAMA_8B_WEIGHTS = 8_030_261_248 * 2  # parameters × bf16

# A model whose page is 2 bytes (1 layer, 1 KV head of dim 1, fp8, page 1): a 2^32-byte budget
# already holds ~2^31 pages, so page counts cross int32 at small budgets.
MICRO = ModelSpec(name="micro", model_type="llama", num_layers=1, hidden_size=8,
                  num_attention_heads=1, num_kv_heads=1, head_dim=1, vocab_size=8,
                  intermediate_size=8, max_position_embeddings=1 << 40)


def one_device(capacity: int, kind: str = "H100-80GB") -> DeviceMesh:
    return DeviceMesh.from_devices([SimulatedDevice(0, CATALOG[kind], bytes_limit=capacity)])


def expected_cell(model, mesh, layout, b: int, length: int, *, kv=None, page=128, util=0.9,
                  tokens=8192, **kw) -> tuple[int, int, int, int]:
    """(reason, pages needed, pages available, headroom) from plan() for exactly this cell."""
    p = plan(model, mesh, layout, kv_cache_dtype=kv, page_size=page, device_memory_utilization=util,
             max_length=length, max_batch_size=b, max_batch_input_tokens=tokens, **kw)
    slack = p.speculative_slack_tokens
    geom = geometry(resolve_model(model), Layout.parse(layout), kv_cache_dtype=kv, page_size=page)
    # pool pages of one request: ceil((L + slack) / page) for full attention; the most any stage
    # needs when layers mix kinds (sliding windows cap, recurrent state is fixed)
    per_request = max((s.pool.pages(length + slack) for s in geom.stages if s.page_bytes),
                      default=0)
    needed = -(-b // p.num_replicas) * per_request if per_request else 2**63 - 1
    tight = next(r for r in p.devices if r.device == p.tightest_device)
    headroom = max(tight.kv_budget_bytes - (p.reserved_pages + needed) * tight.page_bytes, -(2**63))
    if p.usable_pages_per_replica == 0:
        reason = STATIC_MEMORY
    elif length > p.max_supported_sequence_length:
        reason = LENGTH_CAP
    elif b > tokens:
        reason = BATCH_TOKENS
    elif not p.fits:
        reason = KV_PAGES
    else:
        reason = FITS
    if b <= tokens:
        assert p.fits == (reason == FITS)
    return reason, needed, p.usable_pages_per_replica, headroom


def assert_cells_match_plan(result, model, mesh, **kw) -> None:
    """Every cell of ``result`` equals plan()'s answer for that cell."""
    for li, layout in enumerate(result.layouts):
        for di, kv in enumerate(result.kv_dtypes):
            for pi, page in enumerate(result.page_sizes):
                for ui, util in enumerate(result.utilizations):
                    for bi, b in enumerate(result.batches.tolist()):
                        for ji, length in enumerate(result.lengths.tolist()):
                            at = (li, di, pi, ui, bi, ji)
                            got = (int(result.reason[at]), int(result.pages_needed[at]),
                                   int(result.pages_available[at]), int(result.headroom_bytes[at]))
                            want = expected_cell(model, mesh, layout, b, length, kv=kv, page=page,
                                                 util=util, tokens=result.max_batch_input_tokens,
                                                 **kw)
                            assert got == want, (at, layout, kv, page, util, b, length)
                            assert bool(result.feasible[at]) == (want[0] == FITS)


# --------------------------------------------------------------------------- by hand
def test_llama_8b_one_h100_cells_by_hand():
    # page: K,V · 32 layers · 128 tokens · 8 KV heads · 128 dim · 2 B = 16 MiB
    page_bytes = 2 * 32 * 128 * 8 * 128 * 2
    assert page_bytes == 16 * MiB
    budget = H100_LIMIT * 9 // 10
    # analytic activations at 8192 prefill tokens: one layer's live set, or the fp32 logits of
    # min(b, 8192) sampler rows over the 128,256-token vocabulary, whichever is larger
    layer_peak = 8192 * 2 * (2 * 4096 + max(2 * 4096 + 2 * 1024, 3 * 14336))
    logits_row = 128_256 * 4

    def usable(b: int) -> int:
        act = max(layer_peak, min(b, 8192) * logits_row)
        return (budget - LLAMA_8B_WEIGHTS - act) // page_bytes - 1  # one null page

    assert usable(1) == 3552 and usable(3480) == 3496 and usable(4000) == 3480
    batches, lengths = [1, 3, 4, 3480, 4000, 9000], [128, 131072, 3552 * 128, 3552 * 128 + 1]
    r = sweep("llama-3.1-8b", "1xH100-80GB", layouts="tp1", batch_sizes=batches, lengths=lengths)
    assert r.shape == (1, 1, 1, 1, 6, 4)
    reason = r.reason[0, 0, 0, 0]
    assert reason.tolist() == [
        [FITS, FITS, FITS, LENGTH_CAP],  # b=1: 3552 pages hold 454,656 tokens, not one more
        [FITS, FITS, KV_PAGES, LENGTH_CAP],  # b=3 at 131072: 3 · 1024 = 3072 ≤ 3552
        [FITS, KV_PAGES, KV_PAGES, LENGTH_CAP],  # b=4 at 131072: 4096 > 3552
        [FITS, KV_PAGES, LENGTH_CAP, LENGTH_CAP],  # b=3480: 3496 pages left by activations
        [KV_PAGES, KV_PAGES, LENGTH_CAP, LENGTH_CAP],  # b=4000 > 3480 pages of one token page
        [BATCH_TOKENS, BATCH_TOKENS, LENGTH_CAP, LENGTH_CAP],  # 9000 > 8192 batch tokens
    ]
    assert r.pages_available[0, 0, 0, 0, :, 0].tolist() == [usable(b) for b in batches]
    assert r.pages_needed[0, 0, 0, 0, 1, 1] == 3 * 1024
    kv_budget = budget - LLAMA_8B_WEIGHTS - layer_peak
    assert r.headroom_bytes[0, 0, 0, 0, 1, 1] == kv_budget - (1 + 3072) * page_bytes == 8_060_919_808
    assert r.frontier_max_batch()[0, 0, 0, 0].tolist() == [3480, 3, 1, 0]
    assert r.frontier_max_length()[0, 0, 0, 0].tolist() == [454_656, 131072, 128, 128, 0, 0]


def test_static_memory_marks_every_cell():
    # 405B parameters in bf16 (~812 GB) cannot sit on one 80 GB card
    r = sweep("llama-3.1-405b", "1xH100-80GB", layouts="tp1", batch_sizes=[1, 64],
              lengths=[1, 4096])
    assert (r.reason == STATIC_MEMORY).all() and not r.feasible.any()
    assert (r.pages_available == 0).all() and (r.headroom_bytes < 0).all()


def test_batch_above_the_page_count_and_lengths_off_the_page_grid():
    mesh = one_device(2**24)
    r = sweep(MICRO, mesh, layouts="tp1", batch_sizes=[1, 2, 10**6], lengths=[1, 129, 257],
              kv_cache_dtypes=["fp8"], page_sizes=[128], max_batch_input_tokens=2**20,
              activation_bytes=0)
    avail = int(r.pages_available[0, 0, 0, 0, 0, 0])
    page = 2 * 128  # K,V · 1 layer · 128 tokens · 1 head · dim 1 · fp8
    weights = plan(MICRO, mesh, "tp1", activation_bytes=0).devices[0].weights_bytes
    assert avail == (2**24 * 9 // 10 - weights) // page - 1
    cells = r.pages_needed[0, 0, 0, 0]
    assert cells[:, 1].tolist() == [2, 4, 2 * 10**6]  # 129 tokens take two pages of 128
    assert cells[:, 2].tolist() == [3, 6, 3 * 10**6]
    assert avail < 10**6 and (r.reason[0, 0, 0, 0, 2] == KV_PAGES).all()
    assert r.feasible[0, 0, 0, 0, :2].all()


def test_reason_precedence_static_over_length_over_tokens_over_pages():
    r = sweep(MICRO, one_device(2**20), layouts="tp1", batch_sizes=[1, 5, 9],
              lengths=[1, 10**6], kv_cache_dtypes=["fp8"], page_sizes=[1],
              max_batch_input_tokens=8, activation_bytes=0)
    # 9 > 8 batch tokens, but a 10^6-token request is over the length cap first
    assert r.reason[0, 0, 0, 0, 2].tolist() == [BATCH_TOKENS, LENGTH_CAP]
    assert r.reason[0, 0, 0, 0, 0].tolist() == [FITS, LENGTH_CAP]
    tiny_budget = sweep(MICRO, one_device(2**20), layouts="tp1", batch_sizes=[9], lengths=[10**6],
                        activation_bytes=2**20)
    assert tiny_budget.reason.ravel().tolist() == [STATIC_MEMORY]


# --------------------------------------------------------------------------- 32/64-bit edges
@pytest.mark.parametrize("capacity", [2**31, 2**32, 2**53, 2**63 - 1])
def test_exact_at_large_budgets(capacity):
    mesh = one_device(capacity)
    batches = [1, 2, 3, 7, 1000, 2**20, 2**31 - 1]
    lengths = [1, 2, 127, 2**20 + 1, 2**30, 2**31 - 1]
    r = sweep(MICRO, mesh, layouts="tp1", batch_sizes=batches, lengths=lengths,
              kv_cache_dtypes=["fp8"], page_sizes=[1, 64], utilizations=[0.9, 1.0],
              max_batch_input_tokens=2**31 - 1)
    assert_cells_match_plan(r, MICRO, mesh)
    if capacity >= 2**53:  # page counts beyond int32: the aggregate runs in int64
        assert r.pages_available.max() > 2**31
    f = sweep_frontier(MICRO, mesh, layouts="tp1", batch_sizes=batches, lengths=lengths,
                       kv_cache_dtypes=["fp8"], page_sizes=[1, 64], utilizations=[0.9, 1.0],
                       max_batch_input_tokens=2**31 - 1)
    assert_frontiers_equal(f, r.frontier())


def test_int32_border_pages(monkeypatch):
    # usable pages straddle 2^31 − 1: the aggregate kernel runs int32 below, int64 above
    paths = []
    fits = sweep_module._fits_int32
    monkeypatch.setattr(sweep_module, "_fits_int32", lambda *a: paths.append(fits(*a)) or paths[-1])
    for capacity in (2**32 - 2**12, 2**32 + 2**12):
        mesh = one_device(capacity)
        kw = dict(layouts="tp1", batch_sizes=[1, 2, 3], lengths=[1, 2**30, 2**31 - 2**12, 2**31 - 1],
                  kv_cache_dtypes=["fp8"], page_sizes=[1], utilizations=[1.0], activation_bytes=0)
        r = sweep(MICRO, mesh, **kw)
        assert_cells_match_plan(r, MICRO, mesh, activation_bytes=0)
        assert_frontiers_equal(sweep_frontier(MICRO, mesh, **kw), r.frontier())
    assert paths == [True, False]


def test_headroom_near_two_to_the_63():
    # llama-3.1-8b on a device of 2^63 − 1 bytes: the KV budget is just under 2^63 and a 16 MiB
    # page times ~2^40 pages reaches −2^63; beyond that headroom saturates at −2^63
    mesh = one_device(2**63 - 1)
    kw = dict(activation_bytes=0)
    p = plan("llama-3.1-8b", mesh, "tp1", device_memory_utilization=1.0, **kw)
    kvb, pb = p.devices[0].kv_budget_bytes, p.devices[0].page_bytes
    assert pb == 2**24 and kvb > 2**63 - 2**35
    q = 2**20  # pages of one request of 2^27 tokens
    b = ((kvb + 2**63) // pb - 1) // q  # the largest batch whose deficit stays ≥ −2^63
    want = kvb - (1 + b * q) * pb
    assert -(2**63) <= want < -(2**63) + q * pb
    r = sweep("llama-3.1-8b", mesh, layouts="tp1", batch_sizes=[1, b, b + 1, 2**31 - 1],
              lengths=[1, 2**27, 2**31 - 1], utilizations=[1.0], max_batch_input_tokens=2**31 - 1,
              **kw)
    head = r.headroom_bytes[0, 0, 0, 0]
    assert head[1, 1] == want
    assert head[2, 1] == head[3, 2] == -(2**63)  # true values below −2^63: saturated
    assert head[0, 0] == kvb - 2 * pb and r.pages_available.max() > 2**38
    assert_cells_match_plan(r, "llama-3.1-8b", mesh, **kw)


# --------------------------------------------------------------------------- monotonicity
def test_feasible_region_is_monotone_and_grows_with_memory():
    r = sweep("llama-3.1-8b", "4xL4", layouts=["tp4", "dp2xtp2", "dp4"],
              batch_sizes=[1, 3, 16, 100, 511, 2000, 5000], lengths=[1, 100, 4096, 20000, 131072],
              kv_cache_dtypes=[None, "fp8"], page_sizes=[16, 128],
              utilizations=[0.5, 0.8, 0.95])
    f = r.feasible
    assert f.any() and not f.all()
    assert (f[..., :-1, :] >= f[..., 1:, :]).all()  # smaller batch stays feasible
    assert (f[..., :, :-1] >= f[..., :, 1:]).all()  # shorter length stays feasible
    assert (f[:, :, :, :-1] <= f[:, :, :, 1:]).all()  # more utilization never removes a cell
    busy = sweep("llama-3.1-8b", DeviceMesh.from_preset("4xL4", bytes_in_use=2 * 2**30),
                 layouts=["tp4", "dp2xtp2", "dp4"], batch_sizes=r.batches, lengths=r.lengths,
                 kv_cache_dtypes=[None, "fp8"], page_sizes=[16, 128],
                 utilizations=[0.5, 0.8, 0.95])
    assert (busy.feasible <= f).all() and busy.feasible.sum() < f.sum()


# --------------------------------------------------------------------------- chunking
def assert_frontiers_equal(a, b) -> None:
    np.testing.assert_array_equal(a.max_batch, b.max_batch)
    np.testing.assert_array_equal(a.max_length, b.max_length)
    np.testing.assert_array_equal(a.reason_counts, b.reason_counts)


@pytest.mark.parametrize("chunk_cells", [1, 5, 64, 2**24])
def test_chunked_equals_one_chunk(chunk_cells):
    kw = dict(layouts=["tp2", "dp2"], batch_sizes=range(1, 40, 3), lengths=[1, 77, 1000, 9000, 70000],
              kv_cache_dtypes=[None, "fp8"], utilizations=[0.3, 0.9])
    whole = sweep("qwen3-8b", "2xA100-40GB", **kw)
    chunked = sweep("qwen3-8b", "2xA100-40GB", chunk_cells=chunk_cells, **kw)
    for k in ("reason", "pages_needed", "pages_available", "headroom_bytes"):
        np.testing.assert_array_equal(getattr(whole, k), getattr(chunked, k))
    frontier = sweep_frontier("qwen3-8b", "2xA100-40GB", chunk_cells=chunk_cells, **kw)
    assert_frontiers_equal(frontier, whole.frontier())
    assert frontier.reason_counts.sum() == whole.cells == 2 * 2 * 2 * 13 * 5


def test_aggregate_int64_path_equals_int32_path(monkeypatch):
    kw = dict(layouts=["tp1"], batch_sizes=[1, 2, 50, 600], lengths=[1, 500, 8000, 200000])
    narrow = sweep_frontier("llama-3.1-8b", "1xH100-80GB", **kw)
    monkeypatch.setattr(sweep_module, "_fits_int32", lambda *a: False)
    assert_frontiers_equal(sweep_frontier("llama-3.1-8b", "1xH100-80GB", **kw), narrow)


def test_progress_reports_every_cell():
    calls = []
    sweep_frontier("llama-3.1-8b", "1xH100-80GB", batch_sizes=range(1, 33), lengths=range(1, 65),
                   chunk_cells=256, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (32 * 64, 32 * 64) and len(calls) > 4
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --------------------------------------------------------------------------- grid edges / input
def test_one_cell_grid():
    r = sweep("llama-3.1-8b", "1xH100-80GB", layouts="tp1", batch_sizes=[7], lengths=[1000])
    assert r.shape == (1,) * 6
    assert_cells_match_plan(r, "llama-3.1-8b", "1xH100-80GB")


@pytest.mark.parametrize("field", ["batch_sizes", "lengths", "layouts", "kv_cache_dtypes",
                                   "page_sizes", "utilizations"])
def test_empty_axis_is_a_clear_error(field):
    kw = dict(layouts=["tp1"], batch_sizes=[1], lengths=[1])
    kw[field] = []
    with pytest.raises(InputError) as e:
        sweep("llama-3.1-8b", "1xH100-80GB", **kw)
    assert e.value.field == field and "at least one value" in str(e.value)


@pytest.mark.parametrize(("kw", "field"), [
    ({"batch_sizes": [0, 1]}, "batch_sizes"),
    ({"lengths": [2**31]}, "lengths"),
    ({"lengths": [1.5]}, "lengths"),
    ({"batch_sizes": ["8"]}, "batch_sizes"),
    ({"batch_sizes": [[1, 2]]}, "batch_sizes"),
    ({"page_sizes": [0]}, "page_sizes"),
    ({"utilizations": [1.5]}, "utilizations"),
    ({"utilizations": [0.9, 0.9]}, "utilizations"),
    ({"kv_cache_dtypes": ["bf16", "bfloat16"]}, "kv_cache_dtypes"),
    ({"layouts": ["tp1", "tp1"]}, "layouts"),
    ({"layouts": ["tp3"]}, "layout"),
    ({"max_length": 4096}, "max_length"),
    ({"chunk_cells": 0}, "chunk_cells"),
])
def test_bad_input_names_the_field(kw, field):
    args = dict(layouts=["tp1"], batch_sizes=[1], lengths=[1])
    args.update(kw)
    with pytest.raises(InputError) as e:
        sweep("llama-3.1-8b", "1xH100-80GB", **args)
    assert e.value.field == field


def test_axes_are_sorted_and_deduplicated():
    r = sweep("llama-3.1-8b", "1xH100-80GB", batch_sizes=[4, 1, 4, 2.0], lengths=np.array([9, 3]))
    assert r.batches.tolist() == [1, 2, 4] and r.lengths.tolist() == [3, 9]


# --------------------------------------------------------------------------- frontiers, exports
@pytest.fixture(scope="module")
def two_layouts():
    return sweep("llama-3.1-8b", "2xH100-80GB", layouts=["tp2", "dp2"],
                 batch_sizes=[1, 8, 64, 512, 4096], lengths=[128, 8192, 131072, 600000])


def test_best_layout_by_headroom_and_by_devices(two_layouts):
    r = two_layouts
    best = r.best_layout("headroom")
    assert best.shape == (1, 1, 1, 5, 4)
    for bi in range(5):
        for ji in range(4):
            ok = r.feasible[:, 0, 0, 0, bi, ji]
            if not ok.any():
                assert best[0, 0, 0, bi, ji] == ""
                continue
            heads = np.where(ok, r.headroom_bytes[:, 0, 0, 0, bi, ji], -(2**63))
            assert best[0, 0, 0, bi, ji] == r.layouts[int(np.argmax(heads))]
    fewest = r.best_layout("fewest_devices")
    # dp2 has one device per replica: wherever it fits it wins
    assert ((fewest == "dp2") == r.feasible[1, 0, 0, 0][None, None, None]).all()
    with pytest.raises(InputError):
        r.best_layout("cheapest")


def test_to_pandas_long_format(two_layouts):
    df = two_layouts.to_pandas()
    assert len(df) == two_layouts.cells == 2 * 5 * 4
    assert list(df.columns[:6]) == ["layout", "kv_dtype", "page_size", "utilization", "batch",
                                    "length"]
    row = df[(df.layout == "dp2") & (df.batch == 8) & (df.length == 8192)].iloc[0]
    at = (1, 0, 0, 0, 1, 1)
    assert row.feasible == two_layouts.feasible[at]
    assert row.headroom_bytes == two_layouts.headroom_bytes[at]
    assert row.reason_name == REASONS[two_layouts.reason[at]]
    fr = two_layouts.frontier().to_pandas()
    assert len(fr) == 2 * 4 and fr.max_batch.tolist() == two_layouts.frontier_max_batch().ravel().tolist()


def test_to_csv_round_trips(two_layouts, tmp_path):
    path = two_layouts.to_csv(tmp_path / "cells.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == two_layouts.cells
    flat = two_layouts.headroom_bytes.ravel().tolist()
    assert [int(r["headroom_bytes"]) for r in rows] == flat
    assert rows[0]["layout"] == "tp2" and rows[0]["batch"] == "1" and rows[0]["length"] == "128"


def test_to_dict_is_json_and_exact(two_layouts):
    d = json.loads(json.dumps(two_layouts.to_dict()))
    assert d["dims"] == ["layout", "kv_dtype", "page_size", "utilization", "batch", "length"]
    assert d["coords"]["layout"] == ["tp2", "dp2"]
    assert d["headroom_bytes"] == two_layouts.headroom_bytes.tolist()
    f = json.loads(json.dumps(two_layouts.frontier().to_dict()))
    assert f["frontiers"][1]["layout"] == "dp2" and f["cells"] == 40


def test_to_xarray_without_xarray_says_how(two_layouts, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match="pip install xarray"):
        two_layouts.to_xarray()


def test_import_estimator_stays_light():
    import subprocess

    code = ("import sys, estimator; bad = [m for m in ('jax', 'estimator.sweeps.grid', 'typer', "
            "'rich', 'matplotlib') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_to_xarray_has_named_dims_and_each_cell_is_plans_verdict(two_layouts):
    pytest.importorskip("xarray")
    ds = two_layouts.to_xarray()
    assert ds["feasible"].dims == ("layout", "kv_dtype", "page_size", "utilization", "batch", "length")
    for layout in ("tp2", "dp2"):
        for batch in (8, 512):
            for length in (8192, 131072):
                cell = ds.sel(layout=layout, batch=batch, length=length).isel(kv_dtype=0, page_size=0,
                                                                            utilization=0)
                expected = plan("llama-3.1-8b", "2xH100-80GB", layout, max_length=length,
                                max_batch_size=batch).fits
                assert bool(cell["feasible"]) is expected
    assert ds.attrs["model"] == "llama-3.1-8b"
