"""meshes.live: reading live memory_stats() as JAX's GPU allocator really reports them.

Live devices are simulated by small objects with ``memory_stats()`` returning the dicts measured
on an H100 with jax 0.11.2 (this project's GPU runs, benchmarks/RESULTS.md), so every allocator setting is
tested without a GPU.
"""

from __future__ import annotations

import warnings

import pytest

from meshes import DeviceMesh, InputError, MemoryStats
from meshes.live import (
    JAX_BOTH_FRACTIONS_TEXT,
    AllocatorSettings,
    MixedDevicesWarning,
    mixed_device_warnings,
    read_live_stats,
    refresh_stats,
    stats_changes,
)

H100_KIND = "NVIDIA H100 80GB HBM3"
H100_CAP = 85_018_542_080  # what the CUDA allocator sees on an H100 (measured, benchmarks/RESULTS.md)
DEFAULT_LIMIT = 63_763_906_560  # 0.75 × H100_CAP, measured bytes_limit with no variables set
BASE_KEYS = ("num_allocs", "bytes_in_use", "peak_bytes_in_use", "largest_alloc_size", "bytes_reserved",
             "peak_bytes_reserved", "largest_free_block_bytes")


class FakeDevice:
    """Answers memory_stats() like a JAX device; mutable so tests can change memory under a plan."""

    def __init__(self, i: int, stats: dict | None, *, platform: str = "gpu", kind: str = H100_KIND,
                 fail: Exception | None = None):
        self.id, self.platform, self.device_kind, self.fail = i, platform, kind, fail
        self.stats = stats

    def memory_stats(self):
        if self.fail is not None:
            raise self.fail
        return None if self.stats is None else dict(self.stats)

    def __str__(self) -> str:
        return f"{self.platform}:{self.id}"


def gpu_stats(limit=DEFAULT_LIMIT, in_use=0, pool: int | None = -2, **extra) -> dict:
    """A GPU memory_stats() dict: pool=-2 → preallocated (pool_bytes = limit), None → no pool keys."""
    stats = dict.fromkeys(BASE_KEYS, 0) | {"bytes_in_use": in_use, "bytes_limit": limit}
    if pool is not None:
        stats["pool_bytes"] = stats["peak_pool_bytes"] = limit if pool == -2 else pool
    return stats | extra


# ------------------------------------------------------------------------- allocator variables
def test_no_variables_means_jax_defaults():
    s = AllocatorSettings.from_env({})
    assert (s.allocator, s.mem_fraction, s.preallocate, s.effective_fraction) == ("default", None, True, 0.75)
    assert s.reports_stats and s.pools and "JAX default 0.75" in s.describe()


@pytest.mark.parametrize("var", ["XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"])
def test_either_fraction_variable_is_read(var):
    s = AllocatorSettings.from_env({var: ".5"})
    assert s.mem_fraction == 0.5 and s.fraction_var == var and f"{var}=0.5" in s.describe()


def test_both_fraction_variables_refused_as_jax_does():
    with pytest.raises(ValueError, match="Remove the latter one") as e:
        AllocatorSettings.from_env({"XLA_CLIENT_MEM_FRACTION": ".9", "XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"})
    assert isinstance(e.value, InputError) and JAX_BOTH_FRACTIONS_TEXT in str(e.value)
    assert "Unset XLA_PYTHON_CLIENT_MEM_FRACTION" in str(e.value)


def test_from_jax_refuses_both_fraction_variables_before_touching_devices(monkeypatch):
    monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", ".9")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".5")
    with pytest.raises(InputError, match="XLA_CLIENT_MEM_FRACTION is specified together"):
        DeviceMesh.from_jax([FakeDevice(0, gpu_stats())])


@pytest.mark.parametrize(("env", "field"), [
    ({"XLA_CLIENT_MEM_FRACTION": "1.5"}, "XLA_CLIENT_MEM_FRACTION"),
    ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "half"}, "XLA_PYTHON_CLIENT_MEM_FRACTION"),
    ({"XLA_PYTHON_CLIENT_ALLOCATOR": "magic"}, "XLA_PYTHON_CLIENT_ALLOCATOR"),
    ({"XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB": "lots"}, "XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB"),
])
def test_bad_allocator_variables_name_the_variable(env, field):
    with pytest.raises(InputError) as e:
        AllocatorSettings.from_env(env)
    assert e.value.field == field


@pytest.mark.parametrize(("value", "on"), [("false", False), ("False", False), ("0", False),
                                           ("true", True), ("", True)])
def test_preallocate_values_as_jaxlib_reads_them(value, on):
    assert AllocatorSettings.from_env({"XLA_PYTHON_CLIENT_PREALLOCATE": value}).preallocate is on


# ------------------------------------------------------------------------- reading one device
def test_default_gpu_budget_is_bytes_limit_and_preallocated():
    r = read_live_stats(FakeDevice(0, gpu_stats(in_use=2**30)), settings=AllocatorSettings())
    assert r.budget_key == "bytes_limit" and r.stats.bytes_limit == DEFAULT_LIMIT
    assert r.stats.pool_bytes == DEFAULT_LIMIT and r.stats.free == DEFAULT_LIMIT - 2**30
    text = r.describe()
    assert "from bytes_limit" in text and "preallocated" in text and "allocator cap" in text
    assert "read once" not in text  # 0.75 × the catalog's H100 capacity: consistent


def test_fraction_is_respected_as_reported_not_applied_twice():
    settings = AllocatorSettings.from_env({"XLA_CLIENT_MEM_FRACTION": ".5"})
    r = read_live_stats(FakeDevice(0, gpu_stats(limit=42_509_271_040)), settings=settings)
    assert r.stats.bytes_limit == 42_509_271_040  # the cap as JAX reports it, not 0.5 × it again
    assert "XLA_CLIENT_MEM_FRACTION=0.5" in r.describe() and "read once" not in r.describe()


def test_fraction_set_after_backend_start_is_noticed():
    settings = AllocatorSettings.from_env({"XLA_CLIENT_MEM_FRACTION": ".5"})
    r = read_live_stats(FakeDevice(0, gpu_stats()), settings=settings)  # limit still 0.75 × cap
    assert r.stats.bytes_limit == DEFAULT_LIMIT and "read once" in r.describe()


def test_preallocation_off_reports_pool_as_not_reserved():
    settings = AllocatorSettings.from_env({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    r = read_live_stats(FakeDevice(0, gpu_stats(in_use=2**30, pool=1_075_838_976)), settings=settings)
    assert r.stats.bytes_limit == DEFAULT_LIMIT and r.stats.pool_bytes == 1_075_838_976
    assert "may be taken by another process" in r.describe()


def test_cuda_async_has_no_pool_keys():
    settings = AllocatorSettings.from_env({"XLA_PYTHON_CLIENT_ALLOCATOR": "cuda_async"})
    r = read_live_stats(FakeDevice(0, gpu_stats(limit=63_763_120_128, pool=None)), settings=settings)
    assert r.stats.pool_bytes is None and "no pool is reserved" in r.describe()


def test_platform_allocator_has_no_stats_and_says_how_to_pass_capacity():
    settings = AllocatorSettings.from_env({"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"})
    assert not settings.reports_stats
    with pytest.raises(InputError) as e:
        read_live_stats(FakeDevice(0, None), settings=settings)
    text = str(e.value)
    assert "XLA_PYTHON_CLIENT_ALLOCATOR=platform" in text and "capacity_bytes" in text


def test_cpu_has_no_stats_and_says_how_to_pass_capacity():
    with pytest.raises(InputError) as e:
        read_live_stats(FakeDevice(0, None, platform="cpu"), settings=AllocatorSettings())
    assert "cpu devices report none" in str(e.value) and "capacity_bytes" in str(e.value)
    assert "preset" in str(e.value)
    r = read_live_stats(FakeDevice(0, None, platform="cpu"), capacity_bytes=2**30)
    assert r.budget_key == "capacity_bytes" and r.stats.free == 2**30


def test_tpu_budget_key_is_recorded():
    both = read_live_stats(FakeDevice(0, {"bytes_limit": 33_014_415_360,
                                          "bytes_reservable_limit": 33_014_415_360, "bytes_in_use": 5},
                                      platform="tpu", kind="TPU v4"))
    assert both.budget_key == "bytes_limit" and both.stats.bytes_reservable_limit == 33_014_415_360
    only = read_live_stats(FakeDevice(0, {"bytes_reservable_limit": 34_088_157_184, "bytes_limit": -1},
                                      platform="tpu", kind="TPU v5"))
    assert only.budget_key == "bytes_reservable_limit" and only.stats.bytes_limit == 34_088_157_184


def test_non_addressable_device_is_a_clear_error():
    dev = FakeDevice(3, gpu_stats(), fail=RuntimeError("INVALID_ARGUMENT: MemoryStats is only supported "
                                                       "for addressable PjRt devices"))
    with pytest.raises(InputError, match="local_devices"):
        read_live_stats(dev)
    given = read_live_stats(dev, capacity_bytes=2**30)  # e.g. planning a multi-host mesh
    assert given.stats.free == 2**30 and "not addressable" in given.describe()
    assert refresh_stats(dev, given.stats) == given.stats


def test_capacity_above_the_allocator_cap_warns():
    with pytest.warns(UserWarning, match="exceeds the allocator's cap"):
        r = read_live_stats(FakeDevice(0, gpu_stats(in_use=100)), capacity_bytes=DEFAULT_LIMIT + 1)
    assert r.stats.bytes_limit == DEFAULT_LIMIT + 1 and r.stats.bytes_in_use == 100


# ------------------------------------------------------------------------- meshes of live devices
def test_from_jax_reads_every_device_on_its_own():
    devs = [FakeDevice(i, gpu_stats(in_use=i * 2**20)) for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 3 MiB apart on a 59 GiB budget: alike, no warning
        mesh = DeviceMesh.from_jax(devs)
    assert [s.bytes_in_use for s in mesh.stats] == [0, 2**20, 2 * 2**20, 3 * 2**20]
    assert {s.budget_key for s in mesh.stats} == {"bytes_limit"}


def test_mixed_live_kinds_warn_and_keep_per_device_stats():
    devs = [FakeDevice(0, gpu_stats()), FakeDevice(1, gpu_stats(limit=107_000_000_000), kind="NVIDIA H200")]
    with pytest.warns(MixedDevicesWarning) as record:
        mesh = DeviceMesh.from_jax(devs)
    assert any("mixed device kinds" in str(w.message) for w in record)
    assert any("differ in budget" in str(w.message) for w in record)
    assert [s.bytes_limit for s in mesh.stats] == [DEFAULT_LIMIT, 107_000_000_000]
    assert mesh.device_kinds == (H100_KIND, "NVIDIA H200")


def test_mixed_capacities_of_one_kind_warn():
    devs = [FakeDevice(0, gpu_stats()), FakeDevice(1, gpu_stats(in_use=20 * 2**30))]
    with pytest.warns(MixedDevicesWarning, match="differ in free memory"):
        DeviceMesh.from_jax(devs)
    lines = mixed_device_warnings(devs, [MemoryStats(100), MemoryStats(200)])
    assert lines == ["devices differ in budget (100 … 200 B): planned per device"]


def test_refresh_rereads_and_keeps_a_given_capacity():
    dev = FakeDevice(0, gpu_stats(in_use=10))
    mesh = DeviceMesh.from_jax([dev])
    capped = DeviceMesh.from_jax([dev], capacity_bytes=2**30)
    dev.stats = gpu_stats(in_use=5000)
    assert mesh.refresh().stats[0].bytes_in_use == 5000
    fresh = capped.refresh().stats[0]
    assert (fresh.bytes_limit, fresh.bytes_in_use, fresh.budget_key) == (2**30, 5000, "capacity_bytes")
    assert refresh_stats(FakeDevice(1, None, platform="cpu"), MemoryStats(7)) == MemoryStats(7)


def test_stats_changes_in_words():
    assert stats_changes("gpu:0", MemoryStats(100, 10), MemoryStats(100, 10)) == []
    assert stats_changes("gpu:0", MemoryStats(100, 10), MemoryStats(90, 30)) == [
        "gpu:0: budget 100 → 90 B (-10 B)", "gpu:0: bytes_in_use 10 → 30 B (+20 B)"]


# ----------------------------------------------------------------- which budget a plan used (issue 15)
# bytes_limit read on an H200 with JAX 0.11.2, 2026-12-02 (benchmarks/RESULTS.md §5): with no
# memory-fraction variable, and with XLA_CLIENT_MEM_FRACTION=0.95
H200_DEFAULT_BYTES_LIMIT = 112_583_507_968
H200_BYTES_LIMIT_AT_095 = 142_606_336_000


def test_simulated_gpu_preset_says_what_a_default_jax_process_gets():
    from meshes.live import budget_explanation

    mesh = DeviceMesh.from_preset("H200-141GB")
    line = budget_explanation(mesh.devices, mesh.stats)
    # what a default JAX process was measured to get (within the catalog's MiB rounding), and the
    # cap measured at 0.95 scaled to 0.75
    got = int(line.split("= ")[1].split(" B")[0].replace(",", ""))
    assert abs(got - H200_DEFAULT_BYTES_LIMIT) <= 1e-4 * H200_DEFAULT_BYTES_LIMIT
    assert abs(got - H200_BYTES_LIMIT_AT_095 * 75 // 95) <= 1e-4 * got
    assert "default JAX process" in line and "XLA_CLIENT_MEM_FRACTION" in line


def test_live_gpu_budget_names_the_variable_or_the_default():
    from meshes.live import budget_explanation

    dev = FakeDevice(0, gpu_stats(pool=DEFAULT_LIMIT))
    stats = [read_live_stats(dev, settings=AllocatorSettings()).stats]
    line = budget_explanation([dev], stats, environ={})
    assert f"bytes_limit {DEFAULT_LIMIT:,} B" in line and "default 0.75" in line
    line = budget_explanation([dev], stats, environ={"XLA_CLIENT_MEM_FRACTION": "0.9"})
    assert "XLA_CLIENT_MEM_FRACTION=0.9" in line and "default" not in line


def test_mesh_live_reads_the_local_jax_devices(monkeypatch):
    import jax

    fakes = [FakeDevice(i, gpu_stats(in_use=1000 * i)) for i in range(2)]
    monkeypatch.setattr(jax, "local_devices", lambda: fakes)
    mesh = DeviceMesh.from_preset(" LIVE ")
    assert mesh.devices == tuple(fakes)
    assert [s.bytes_in_use for s in mesh.stats] == [0, 1000]
    assert [s.bytes_limit for s in mesh.stats] == [DEFAULT_LIMIT] * 2
    with pytest.raises(InputError, match="bytes_in_use"):
        DeviceMesh.from_preset("live", bytes_in_use=1)


def test_mesh_live_on_cpu_says_how_to_give_a_capacity(monkeypatch):
    import jax

    monkeypatch.setattr(jax, "local_devices", lambda: [FakeDevice(0, None, platform="cpu", kind="cpu")])
    with pytest.raises(InputError, match="capacity_bytes"):  # CPU devices report no allocator stats
        DeviceMesh.from_preset("live")
