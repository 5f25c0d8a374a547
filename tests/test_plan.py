"""plan(): per-device numbers by hand, exact bytes at 2^31..2^63, bad input, invariants."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator import Layout, ModelSpec, plan
from meshes import CATALOG, DeviceMesh, InputError, SimulatedDevice

MiB, GiB = 2**20, 2**30
H100_LIMIT = 85_018_542_080  # the simulated H100's bytes_limit (catalog usable bytes)
LLAMA_8B_WEIGHTS = 8_030_261_248 * 2  # parameters × bf16

TINY = ModelSpec(name="tiny", model_type="llama", num_layers=2, hidden_size=64,
                 num_attention_heads=2, num_kv_heads=2, head_dim=32, vocab_size=128,
                 intermediate_size=128, max_position_embeddings=1 << 40)
TINY_WEIGHTS = 2 * (2 * 128 * 64 + 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64))
TINY_PAGE = 2 * 2 * 128 * 2 * 32 * 2  # K,V · layers · page 128 · heads · dim · bf16


def test_tiny_weights_by_hand():
    assert plan(TINY, "1xH100-80GB", activation_bytes=0).devices[0].weights_bytes == TINY_WEIGHTS


def test_llama_8b_one_h100_by_hand():
    act = 1 * GiB
    p = plan("llama-3.1-8b", "1xH100-80GB", activation_bytes=act)
    budget = H100_LIMIT * 9 // 10
    pages = (budget - LLAMA_8B_WEIGHTS - act) // (16 * MiB)
    row = p.devices[0]
    assert row.budget_bytes == budget and row.weights_bytes == LLAMA_8B_WEIGHTS
    assert p.pages_per_replica == pages
    assert p.max_supported_sequence_length == (pages - 1) * 128  # one null page kept back
    assert p.planned_max_length == 131072  # model default fits, no clamp
    assert p.max_batch_size == (pages - 1) // (131072 // 128)
    assert row.kv_pool_bytes == pages * 16 * MiB
    assert row.free_bytes == H100_LIMIT - LLAMA_8B_WEIGHTS - act - pages * 16 * MiB
    assert p.fits


def test_70b_tp8_signal_buffers_and_activations_on_every_device():
    act = 2 * GiB
    p = plan("llama-3.1-70b", "8xH100-80GB", "tp8", activation_bytes=act)
    assert {r.activation_bytes for r in p.devices} == {act}
    assert {r.signal_bytes for r in p.devices} == {294_387_728}  # MAX Signals.NUM_BYTES
    assert {r.page_bytes for r in p.devices} == {5_242_880}
    w = p.devices[0].weights_bytes
    assert p.pages_per_replica == (H100_LIMIT * 9 // 10 - w - act - 294_387_728) // 5_242_880


def test_data_parallel_replicas_multiply_the_batch():
    one = plan("llama-3.1-8b", "1xH100-80GB", activation_bytes=0, max_length=8192)
    two = plan("llama-3.1-8b", "2xH100-80GB", "dp2", activation_bytes=0, max_length=8192)
    assert two.pages_per_replica == one.pages_per_replica and two.num_replicas == 2
    assert two.max_batch_size == 2 * one.max_batch_size


def test_a_non_empty_device_sets_the_page_count():
    spec = CATALOG["H100-80GB"]
    devices = [SimulatedDevice(0, spec), SimulatedDevice(1, spec, bytes_in_use=20 * GiB)]
    p = plan("llama-3.1-8b", DeviceMesh.from_devices(devices), "tp2", activation_bytes=0,
             signal_bytes=0)
    w = p.devices[1].weights_bytes
    assert p.pages_per_replica == ((H100_LIMIT - 20 * GiB) * 9 // 10 - w) // (8 * MiB)
    assert p.tightest_device == "H100-80GB:1"


def test_requested_length_that_does_not_fit_gives_a_suggestion_that_does():
    p = plan("llama-3.1-70b", "8xH100-80GB", activation_bytes=0, max_length=131072,
             max_batch_size=64)
    assert not p.fits
    usable = p.pages_per_replica - 1
    longest = usable // 64 * 128  # 64 requests share the replica's usable pages
    assert f"reduce --max-length to {longest} " in p.suggestions[0]
    assert plan("llama-3.1-70b", "8xH100-80GB", activation_bytes=0, max_length=longest,
                max_batch_size=64).fits
    assert not plan("llama-3.1-70b", "8xH100-80GB", activation_bytes=0,
                    max_length=longest + 1, max_batch_size=64).fits


def test_model_that_does_not_fit_at_all():
    p = plan("llama-3.1-405b", "1xH100-80GB", activation_bytes=0)
    assert not p.fits and p.pages_per_replica == 0 and "no KV page fits" in p.warnings[0]


def test_to_dict_is_json_with_the_promised_keys():
    d = json.loads(json.dumps(plan("llama-3.1-8b", "1xH100-80GB").to_dict()))
    for key in ("pages_per_replica", "page_size", "max_supported_sequence_length",
                "max_batch_size", "devices"):
        assert key in d
    for key in ("weights_bytes", "activation_bytes", "kv_pool_bytes", "page_bytes", "free_bytes"):
        assert key in d["devices"][0]


@pytest.mark.parametrize("capacity", [2**31, 2**32, 2**53, 2**53 + 1, 2**63 - 1])
def test_exact_bytes_at_large_capacities(capacity):
    mesh = DeviceMesh.from_devices([SimulatedDevice(0, CATALOG["H100-80GB"], bytes_limit=capacity)])
    p = plan(TINY, mesh, activation_bytes=12345, device_memory_utilization=0.9)
    budget = capacity * 9 // 10  # exact decimal 0.9, no float rounding
    kv = budget - TINY_WEIGHTS - 12345
    assert p.devices[0].budget_bytes == budget
    assert p.pages_per_replica == kv // TINY_PAGE
    assert p.pages_per_replica * TINY_PAGE <= kv < (p.pages_per_replica + 1) * TINY_PAGE
    assert p.max_supported_sequence_length == (kv // TINY_PAGE - 1) * 128


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"device_memory_utilization": 0}, "device_memory_utilization"),
    ({"device_memory_utilization": 1.5}, "device_memory_utilization"),
    ({"device_memory_utilization": math.nan}, "device_memory_utilization"),
    ({"device_memory_utilization": math.inf}, "device_memory_utilization"),
    ({"page_size": 0}, "page_size"),
    ({"page_size": -128}, "page_size"),
    ({"max_length": 0}, "max_length"),
    ({"max_length": 2**64}, "max_length"),
    ({"max_batch_size": -1}, "max_batch_size"),
    ({"activation_bytes": -1}, "activation_bytes"),
    ({"activation_bytes": 2**63}, "activation_bytes"),
    ({"kv_cache_dtype": "fp5"}, "kv_cache_dtype"),
])
def test_bad_input_names_field_value_and_what_is_allowed(kwargs, field):
    with pytest.raises(InputError) as e:
        plan("llama-3.1-8b", "1xH100-80GB", **kwargs)
    assert e.value.field == field
    assert repr(next(iter(kwargs.values())))[:6] in str(e.value)


def test_capacity_past_2_63_is_refused():
    with pytest.raises(InputError, match="bytes_limit"):
        SimulatedDevice(0, CATALOG["H100-80GB"], bytes_limit=2**63)


def test_layout_must_divide_the_mesh():
    with pytest.raises(InputError, match="layout"):
        plan("llama-3.1-8b", "8xH100-80GB", "dp3xtp2")


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(2**20, 2**63 - 1), in_use_frac=st.floats(0, 0.5),
       util=st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]), tp=st.sampled_from([1, 2]),
       act=st.integers(0, 2**30))
def test_pages_fill_the_tightest_budget_exactly(capacity, in_use_frac, util, tp, act):
    in_use = int(capacity * in_use_frac)
    devices = [SimulatedDevice(i, CATALOG["H100-80GB"], bytes_limit=capacity,
                               bytes_in_use=in_use if i else 0) for i in range(tp)]
    p = plan(TINY, DeviceMesh.from_devices(devices), Layout(tensor=tp), activation_bytes=act,
             signal_bytes=0, device_memory_utilization=util)
    tight = next(r for r in p.devices if r.device == p.tightest_device)
    if tight.kv_budget_bytes >= 0:
        pages = p.pages_per_replica
        assert pages * tight.page_bytes <= tight.kv_budget_bytes < (pages + 1) * tight.page_bytes
    more = [SimulatedDevice(i, CATALOG["H100-80GB"], bytes_limit=min(capacity * 2, 2**63 - 1),
                            bytes_in_use=in_use if i else 0) for i in range(tp)]
    bigger = plan(TINY, DeviceMesh.from_devices(more), Layout(tensor=tp), activation_bytes=act,
                  signal_bytes=0, device_memory_utilization=util)
    assert bigger.pages_per_replica >= p.pages_per_replica


def test_weights_that_do_not_fit_get_a_useful_suggestion():
    p = plan("llama-3.1-70b", "1xH100-80GB", max_length=131072, max_batch_size=64)
    row = p.devices[0]
    page = 2 * 80 * 8 * 128 * 2 * 128  # 70B, bf16, page 128, whole model on one device
    assert row.page_bytes == page and not p.fits
    left = row.budget_bytes - row.weights_bytes - row.activation_bytes - row.signal_bytes
    short = 2 * page - left  # the null page and one page for a request
    assert len(p.suggestions) == 1 and f"{short:,} B short" in p.suggestions[0]
    assert "--tensor-parallel-size" in p.suggestions[0] and "to 0" not in p.suggestions[0]


@pytest.mark.parametrize(("mesh", "page_size", "ok"), [
    ("v5e-8", 7, False), ("v5e-8", 100, False), ("v5e-8", 64, True), ("v5e-8", 256, True),
    ("1xH100-80GB", 100, True), ("1xH100-80GB", 1, True), ("1xH100-80GB", 0, False),
])
def test_page_size_is_what_the_mesh_kernels_take(mesh, page_size, ok):
    if ok:
        assert plan("llama-3.1-8b", mesh, page_size=page_size).page_size == page_size
    else:
        with pytest.raises(InputError) as err:
            plan("llama-3.1-8b", mesh, page_size=page_size)
        assert err.value.field == "page_size" and err.value.value == page_size
