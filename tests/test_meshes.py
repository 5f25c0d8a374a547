"""meshes/: catalog, memory stats, simulated devices, DeviceMesh presets and live devices."""

from __future__ import annotations

import jax
import pytest

from meshes import CATALOG, DeviceMesh, InputError, MemoryStats, SimulatedDevice, device_spec

REQUIRED = ["H100-80GB", "H100-PCIe-80GB", "H200-141GB", "B200-192GB", "A100-40GB", "A100-80GB",
            "L4-24GB", "L40S-48GB", "A10G-24GB", "RTX4090-24GB", "MI300X-192GB", "MI325X-256GB",
            "TPU-v4", "TPU-v5e", "TPU-v5p", "TPU-v6e"]


def test_catalog_has_the_parts_serving_engineers_rent():
    assert len(CATALOG) >= 16
    for name in REQUIRED:
        spec = CATALOG[name]
        assert 0 < spec.usable_bytes <= spec.memory_bytes
        assert spec.hbm_bandwidth > 0 and spec.peak_bf16_flops > 0
        assert spec.platform == ("tpu" if name.startswith("TPU") else "gpu")


def test_catalog_capacities_match_datasheets():
    # nvidia-smi totals: H100 81559 MiB, A100-80GB 81920 MiB; TPU v5e 16 GiB HBM per chip
    assert CATALOG["H100-80GB"].memory_bytes == 81559 * 2**20
    assert CATALOG["A100-80GB"].memory_bytes == 81920 * 2**20
    assert CATALOG["TPU-v5e"].memory_bytes == 16 * 2**30
    assert CATALOG["MI300X-192GB"].memory_bytes == 192 * 2**30


def test_device_lookup_by_alias_and_close_names():
    assert device_spec("h200") is CATALOG["H200-141GB"]
    assert device_spec(" v5e ") is CATALOG["TPU-v5e"]
    with pytest.raises(InputError, match="H100") as e:
        device_spec("H1OO")
    assert e.value.field == "device"


def test_memory_stats_free_and_budget_key():
    s = MemoryStats.from_jax({"bytes_limit": 1000, "bytes_in_use": 300, "peak_bytes_in_use": 400,
                              "bytes_reservable_limit": -1})
    assert s.free == 700 and s.budget_key == "bytes_limit" and s.bytes_reservable_limit is None
    tpu = MemoryStats.from_jax({"bytes_reservable_limit": 5000, "bytes_in_use": 1})
    assert tpu.bytes_limit == 5000 and tpu.budget_key == "bytes_reservable_limit"
    assert s.to_dict()["free"] == 700


def test_memory_stats_none_says_how_to_pass_capacity():
    with pytest.raises(InputError, match="capacity_bytes") as e:
        MemoryStats.from_jax(None, device="cpu:0")
    assert "preset" in str(e.value)


def test_simulated_device_answers_like_jax_and_may_start_non_empty():
    spec = CATALOG["H100-80GB"]
    d = SimulatedDevice(0, spec, bytes_in_use=10 * 2**30)
    stats = d.memory_stats()
    assert stats["bytes_limit"] == spec.usable_bytes
    assert stats["bytes_in_use"] == 10 * 2**30
    assert d.stats["free_memory"] == spec.usable_bytes - 10 * 2**30
    with pytest.raises(InputError, match="bytes_in_use"):
        SimulatedDevice(0, spec, bytes_in_use=spec.usable_bytes + 1)


@pytest.mark.parametrize(("preset", "size", "axes", "kind"), [
    ("8xH100-80GB", 8, {"device": 8}, "H100-80GB"),
    ("2x8xH100-80GB", 16, {"host": 2, "device": 8}, "H100-80GB"),
    ("v5e-16", 16, {"device": 16}, "TPU-v5e"),
    ("H200", 1, {"device": 1}, "H200-141GB"),
])
def test_mesh_presets(preset, size, axes, kind):
    mesh = DeviceMesh.from_preset(preset)
    assert mesh.size == size and mesh.shape == axes
    assert all(d.spec.name == kind for d in mesh.devices)
    assert len(mesh.stats) == size


def test_two_host_preset_assigns_processes():
    mesh = DeviceMesh.from_preset("2x8xH100-80GB")
    assert [d.process_index for d in mesh.devices] == [0] * 8 + [1] * 8


@pytest.mark.parametrize("bad", ["", "8xH1000", "0xH100-80GB", "v9z-4", "8x"])
def test_bad_presets_name_the_field(bad):
    with pytest.raises(InputError) as e:
        DeviceMesh.from_preset(bad)
    assert e.value.field.startswith("mesh")


def test_axes_must_multiply_to_device_count():
    devs = [SimulatedDevice(i, CATALOG["A100-80GB"]) for i in range(8)]
    with pytest.raises(InputError, match="product"):
        DeviceMesh.from_devices(devs, {"data": 3, "model": 2})
    mesh = DeviceMesh.from_devices(devs, {"data": 2, "model": 4})
    assert mesh.reshape({"x": 8}).shape == {"x": 8}


def test_simulated_mesh_gives_abstract_mesh_with_shard_shapes():
    mesh = DeviceMesh.from_devices([SimulatedDevice(i, CATALOG["H100-80GB"]) for i in range(8)],
                                   {"data": 2, "model": 4})
    jm = mesh.jax_mesh()
    assert isinstance(jm, jax.sharding.AbstractMesh)
    sharding = jax.sharding.NamedSharding(jm, jax.sharding.PartitionSpec("data", "model"))
    assert sharding.shard_shape((64, 1024)) == (32, 256)


def test_live_cpu_devices_have_no_stats_and_say_so():
    with pytest.raises(InputError, match="preset"):
        DeviceMesh.from_jax()
    mesh = DeviceMesh.from_jax(capacity_bytes=2**34)
    assert mesh.stats[0].free == 2**34 and mesh.stats[0].budget_key == "capacity_bytes"
    assert isinstance(mesh.jax_mesh(), jax.sharding.Mesh)


def test_meshes_never_imports_estimator():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "meshes"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "import estimator" not in text and "from estimator" not in text, path
