"""estimator.planning.serving, the checks before any allocation: plan vs mesh, model, layout, live memory.

Live GPUs are objects with ``memory_stats()`` (as in test_live_stats.py), so a card whose memory
changes under a plan is simulated by changing what it reports. Allocation itself on 8 simulated
CPU devices is in test_serving_cpu.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from estimator import Layout, ModelSpec, load_preset, plan
from estimator.planning.serving import (
    allocate_kv_pool,
    allocate_weights_like,
    check_plan_matches_mesh,
    check_plan_still_fits,
    grown_pages,
    pool_bytes_per_device,
    resolve_plan,
)
from meshes import DeviceMesh, InputError
from meshes.live import MixedDevicesWarning

# an H100's bytes_limit under XLA's GPU allocator default: 75 % of what CUDA reports (XLA_PYTHON_CLIENT_MEM_FRACTION)
LIMIT = 63_763_906_560
GiB = 2**30


class FakeGpu:
    """A live GPU as JAX shows it: memory_stats() with bytes_limit, bytes_in_use and pool keys."""

    platform = "gpu"

    def __init__(self, i: int, in_use: int = 0, limit: int = LIMIT, kind: str = "NVIDIA H100 80GB HBM3"):
        self.id, self.in_use, self.limit, self.device_kind = i, in_use, limit, kind

    def memory_stats(self) -> dict[str, int]:
        return {"bytes_limit": self.limit, "bytes_in_use": self.in_use, "peak_bytes_in_use": self.in_use,
                "pool_bytes": self.limit, "peak_pool_bytes": self.limit, "num_allocs": 1,
                "largest_alloc_size": 0, "bytes_reserved": 0, "peak_bytes_reserved": 0,
                "largest_free_block_bytes": self.limit - self.in_use}

    def __str__(self) -> str:
        return f"cuda:{self.id}"


def gpus(n: int, **kw) -> list[FakeGpu]:
    return [FakeGpu(i, **kw) for i in range(n)]


@pytest.fixture
def eight():
    devs = gpus(8)
    mesh = DeviceMesh.from_jax(devs, {"data": 2, "model": 4})
    return devs, mesh, plan("llama-3.1-8b", mesh, "dp2xtp4")


# ------------------------------------------------------------------------- import weight
def test_import_estimator_stays_light():
    code = ("import sys, estimator; bad = [m for m in ('jax', 'estimator.planning.serving', 'flax', 'matplotlib') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------- plan vs mesh
def test_plan_for_another_device_count_is_refused(eight):
    devs, _, p = eight
    with pytest.raises(InputError) as e:
        allocate_kv_pool(p, DeviceMesh.from_jax(devs[:4], {"data": 1, "model": 4}))
    assert e.value.field == "mesh" and "device count: plan 8, mesh 4" in str(e.value)
    assert "re-plan on this mesh" in str(e.value)


def test_plan_for_other_axes_is_refused(eight):
    devs, _, p = eight
    with pytest.raises(InputError) as e:
        allocate_weights_like(p, DeviceMesh.from_jax(devs))
    assert "axes: plan (data=2 x model=4), mesh (device=8)" in str(e.value)


def test_count_and_axes_both_named_in_one_error(eight):
    devs, _, p = eight
    with pytest.raises(InputError) as e:
        check_plan_still_fits(p, DeviceMesh.from_jax(devs[:2]))
    assert "device count" in str(e.value) and "axes" in str(e.value)


def test_other_device_kind_with_same_shape_only_warns(eight):
    _, _, p = eight
    h200 = DeviceMesh.from_jax(gpus(8, limit=107 * GiB, kind="NVIDIA H200"), {"data": 2, "model": 4})
    with pytest.warns(UserWarning, match="plan was made for NVIDIA H100 80GB HBM3, the mesh has NVIDIA H200"):
        check_plan_matches_mesh(p, h200)


def test_not_a_plan_or_not_a_mesh(eight):
    _, mesh, p = eight
    with pytest.raises(InputError, match="MemoryPlan"):
        allocate_kv_pool(p.to_dict(), mesh)
    with pytest.raises(InputError, match="DeviceMesh"):
        allocate_kv_pool(p, list(mesh.devices))


# ------------------------------------------------------------------------- plan vs model, layout
def test_layout_must_be_the_plans(eight):
    _, mesh, p = eight
    with pytest.raises(InputError) as e:
        allocate_kv_pool(p, mesh, layout="tp8")
    assert e.value.field == "layout" and "dp2xtp4" in str(e.value)
    assert resolve_plan(p, mesh, layout=Layout(data=2, tensor=4)).layout == Layout(data=2, tensor=4)


def test_model_must_be_the_plans(eight):
    _, mesh, p = eight
    with pytest.raises(InputError, match="the plan's model 'llama-3.1-8b'"):
        allocate_kv_pool(p, mesh, model="qwen3-8b")
    fp8 = load_preset("llama-3.1-8b").with_weight_dtype("fp8")
    with pytest.raises(InputError, match="weights_bytes is .* in the plan but"):
        allocate_weights_like(p, mesh, model=fp8)


def test_model_not_a_preset_must_be_passed():
    mesh = DeviceMesh.from_jax(gpus(1))
    tiny = ModelSpec(name="my-model", model_type="llama", num_layers=2, hidden_size=64,
                     num_attention_heads=4, num_kv_heads=2, head_dim=16, vocab_size=100,
                     intermediate_size=128, max_position_embeddings=1024)
    p = plan(tiny, mesh)
    with pytest.raises(InputError, match="'my-model' is not a preset, pass model="):
        allocate_kv_pool(p, mesh)
    assert resolve_plan(p, mesh, model=tiny).model is tiny


def test_plan_with_no_pages_has_nothing_to_allocate():
    mesh = DeviceMesh.from_jax(gpus(1))
    p = plan("llama-3.1-70b", mesh)  # 141 GB of weights on one 64 GB budget
    assert p.pages_per_replica == 0
    with pytest.raises(InputError, match="fits no KV page"):
        allocate_kv_pool(p, mesh)


def test_kv_dtype_of_another_width_is_refused(eight):
    _, mesh, p = eight
    with pytest.raises(InputError) as e:
        allocate_kv_pool(p, mesh, dtype="float32")
    assert e.value.field == "dtype" and "2-byte" in str(e.value)


def test_simulated_mesh_has_no_memory_to_allocate():
    mesh = DeviceMesh.from_preset("8xH100-80GB")
    p = plan("llama-3.1-8b", mesh, "tp8")
    with pytest.raises(InputError, match="live JAX devices"):
        allocate_kv_pool(p, mesh)


# ------------------------------------------------------------------------- memory since planning
def test_unchanged_memory_still_fits_exactly(eight):
    _, mesh, p = eight
    check = check_plan_still_fits(p, mesh)
    assert check.fits and not check.changed and check.pages_fit_now == p.pages_per_replica
    assert "unchanged" in check.summary
    check.raise_if_not_fits()


def test_memory_taken_since_planning_is_reread_and_reported(eight):
    devs, mesh, p = eight
    page = p.devices[5].page_bytes
    devs[5].in_use = 100 * page  # another process took 100 pages' worth on cuda:5
    check = check_plan_still_fits(p, mesh)
    assert not check.fits and check.changed and check.tightest_device == "cuda:5"
    assert check.changes == (f"cuda:5: bytes_in_use 0 → {100 * page:,} B (+{100 * page:,} B)",)
    assert check.pages_fit_now < p.pages_per_replica
    assert "no longer fits" in check.summary and "re-plan" in check.summary
    with pytest.raises(InputError, match="no longer fits"):
        check.raise_if_not_fits()


def test_memory_changed_on_a_device_that_is_not_the_tightest_still_fits():
    devs = gpus(4)
    devs[0].in_use = 2 * GiB  # cuda:0 sets the page count
    with pytest.warns(MixedDevicesWarning, match="free memory"):
        mesh = DeviceMesh.from_jax(devs)
    p = plan("llama-3.1-8b", mesh, "tp4")
    devs[3].in_use = GiB
    check = check_plan_still_fits(p, mesh)
    assert check.fits and check.changed and check.pages_fit_now == p.pages_per_replica
    assert "still fits" in check.summary and "cuda:3: bytes_in_use 0 →" in check.changes[0]


def test_budget_change_is_reported():
    devs = gpus(1)
    mesh = DeviceMesh.from_jax(devs)
    p = plan("llama-3.1-8b", mesh)
    devs[0].limit = LIMIT // 2  # e.g. restarted with XLA_CLIENT_MEM_FRACTION=.375
    check = check_plan_still_fits(p, mesh)
    assert not check.fits and check.changes[0].startswith(f"cuda:0: budget {LIMIT:,} → {LIMIT // 2:,} B")


class _Loaded:
    """Stands in for an allocation of the plan's own arrays (only bytes_per_device is read)."""

    def __init__(self, per_device):
        self.per_device = per_device

    def bytes_per_device(self):
        return self.per_device


def test_the_plans_own_arrays_are_not_a_change(eight):
    devs, mesh, p = eight
    for d, row in zip(devs, p.devices, strict=True):
        d.in_use = row.weights_bytes  # the weights were loaded since planning
    loaded = _Loaded({d: row.weights_bytes for d, row in zip(devs, p.devices, strict=True)})
    assert check_plan_still_fits(p, mesh).changed  # seen as other memory without allocated=
    check = check_plan_still_fits(p, mesh, allocated=[loaded])
    assert check.fits and not check.changed


def test_allocation_refuses_in_words_when_memory_shrank(eight):
    devs, mesh, p = eight
    devs[2].in_use = LIMIT - p.devices[2].kv_pool_bytes + 1  # one byte short for the pool
    with pytest.raises(InputError) as e:
        allocate_kv_pool(p, mesh)
    text = str(e.value)
    assert "cuda:2: the KV pool needs" in text and "since planning bytes_in_use 0 →" in text
    assert "check_plan_still_fits" in text
    with pytest.raises(InputError, match="live JAX devices"):  # check skipped: fails later
        allocate_kv_pool(p, mesh, check_fit=False)


def test_mixed_live_kinds_plan_per_device_and_warn():
    devs = [*gpus(2), *(FakeGpu(i, limit=107 * GiB, kind="NVIDIA H200") for i in (2, 3))]
    with pytest.warns(MixedDevicesWarning):
        mesh = DeviceMesh.from_jax(devs)
    p = plan("llama-3.1-8b", mesh, "dp2xtp2")
    assert any("mixed device kinds" in w for w in p.warnings)
    assert [r.bytes_limit for r in p.devices] == [LIMIT, LIMIT, 107 * GiB, 107 * GiB]
    assert p.tightest_device in ("cuda:0", "cuda:1")


def test_grown_pages_is_exact_integer_arithmetic(eight):
    assert [grown_pages(n) for n in (1, 10, 50, 51, 1000, 10**12)] == [2, 11, 51, 53, 1020, 1_020_000_000_000]
    _, _, p = eight
    assert pool_bytes_per_device(p) == [r.kv_pool_bytes for r in p.devices]
