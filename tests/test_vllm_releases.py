"""vLLM release strings → the family kvfit models them with. Expectations come from the vLLM changes
each family begins with, as the release wheels' code shows them (vllm PRs #2031 → 0.2.5, #10511 →
0.6.5, V1 by default → 0.8.0, #19312 → 0.9.1, #25359 → 0.11.0, #33538 → 0.17.0, #38284 → 0.20.0,
#47272 → 0.29.0), written out release by release."""

from __future__ import annotations

import pytest

from estimator.engines import engine_plan
from estimator.engines.vllm import VERSIONS, release_family
from meshes import InputError


@pytest.mark.parametrize("release, family", [
    ("0.2.5", "v0-early"), ("0.3.0", "v0-early"), ("0.6.4.post1", "v0-early"),
    ("0.6.5", "v0"), ("0.7.3", "v0"),
    ("0.8.0", "0.9"), ("0.8.5.post1", "0.9"), ("0.9.0.1", "0.9"),
    ("0.9.1", "0.10"), ("0.9.2", "0.10"), ("0.10.0", "0.10"), ("v0.10.1.1", "0.10"), ("0.10.2", "0.10"),
    ("0.11.0", "0.11"), ("0.11.0+582e4e37.nv25.11", "0.11"), ("0.15.0rc1", "0.11"),
    ("0.16.0rc2.dev377+g0123abc", "0.11"), ("0.16.0", "0.11"),
    ("0.17.0", "0.17"), ("0.19.1rc1.dev301+g60995c05b", "0.17"),
    ("0.20.0", "0.2x"), ("0.24.0", "0.2x"), ("0.28.0", "0.2x"),
    ("0.29.0", "0.33"), ("0.29.1rc1.dev468+g0b7f11a1e", "0.33"), ("0.30.0", "0.33"),
    ("0.33.0", "0.33"), ("V0.33.1", "0.33"), ("0.34.0", "0.34"), ("0.34.1rc1.dev12+g0123abc", "0.34"),
])
def test_release_to_family(release, family):
    assert release_family(release) == family


@pytest.mark.parametrize("family", VERSIONS)
def test_family_names_are_kept(family):
    assert release_family(family) == family


@pytest.mark.parametrize("release, says", [
    ("0.2.4", "before 0.2.5"),
    ("0.35.0", "has read the code of vLLM releases up to 0.34.x"), ("1.0.0", "pass version=0.34"),
    ("0.1.dev3512+g388ee3d", "source build without tags"),
    ("latest", "a vLLM release 0.2.5–0.34.x"),
    ("0.11.0; rm -rf /", "a vLLM release 0.2.5–0.34.x"),
    ("", "a vLLM release 0.2.5–0.34.x"),
])
def test_what_is_no_release_is_refused(release, says):
    with pytest.raises(InputError) as err:
        release_family(release)
    assert says in str(err.value) and "version" in str(err.value)


def test_a_release_plans_as_its_family():
    by_release = engine_plan("llama-3.1-8b", "2xH100-80GB", "tp2", engine="vllm", version="0.15.1")
    by_family = engine_plan("llama-3.1-8b", "2xH100-80GB", "tp2", engine="vllm", version="0.11")
    assert by_release.version == "0.11"
    assert by_release.to_dict() == by_family.to_dict()
    other = engine_plan("llama-3.1-8b", "2xH100-80GB", "tp2", engine="vllm", version="0.10.1.1")
    assert other.version == "0.10" and other.to_dict() != by_family.to_dict()


def test_engines_without_releases_keep_their_names():
    with pytest.raises(InputError, match="one of pytorch"):
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine="trtllm", version="0.20.0")


@pytest.mark.parametrize("release, mesh, batched, seqs", [
    # vllm/engine/arg_utils.py of each release (the API server's defaults)
    ("0.8.0", "1xH100-80GB", 8192, 1024), ("0.8.3", "1xA10-24GB", 2048, 1024),  # by name; 1024 for all
    ("0.8.4", "1xH20-96GB", 2048, 256), ("0.8.4", "1xH200-141GB", 8192, 1024),  # by name, 256 for others
    ("0.8.5", "1xA100-80GB", 8192, 1024), ("0.8.5", "1xH20-96GB", 8192, 1024),  # ≥ 70 GiB
    ("0.9.0", "1xA100-80GB", 2048, 256), ("0.19.1", "1xH20-96GB", 8192, 1024),  # A100s left out
    ("0.27.0", "1xB200-192GB", 8192, 1024), ("0.28.0", "1xB200-192GB", 16384, 1024),  # ≥ 160 GiB
    ("0.9", "1xA100-80GB", 2048, 256), ("0.33", "1xB200-192GB", 16384, 1024),  # a family: its release
])
def test_batch_defaults_follow_the_release(release, mesh, batched, seqs):
    plan = engine_plan("llama-3.1-8b", mesh, engine="vllm", version=release, max_model_len=8192)
    assert (plan.knobs["max_num_batched_tokens"], plan.knobs["max_num_seqs"]) == (batched, seqs)


@pytest.mark.parametrize("release", ["v0", "0.9", "0.8.5", "0.10.1"])
def test_kv_cache_memory_bytes_is_refused_before_0_10_2(release):
    with pytest.raises(InputError, match="kv_cache_memory_bytes"):
        engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", version=release, max_model_len=8192,
                    kv_cache_memory_bytes=10 * 2**30)


def test_the_budget_is_rounded_up_from_0_14():
    # vllm/v1/worker/utils.py request_memory: ceil(total × util) from 0.14.0; total × util before
    total = 85_018_542_080  # H100 80GB as torch reports it
    old = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", version="0.13.0", max_model_len=8192,
                      gpu_memory_utilization=0.37)
    new = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="vllm", version="0.14.0", max_model_len=8192,
                      gpu_memory_utilization=0.37)
    assert (old.budget_bytes, new.budget_bytes) == (int(total * 0.37), -(-total * 37 // 100))


def test_model_runner_v2_by_release():
    # vllm/config/vllm.py use_v2_model_runner: dense decoders from 0.25.0, every model from 0.29.0
    from estimator.engines.non_kv import model_runner_v2
    from estimator.model.resolve import load_preset

    dense, moe = load_preset("llama-3.1-8b"), load_preset("qwen3-30b-a3b")
    assert [model_runner_v2(r, dense) for r in ((0, 24, 0), (0, 25, 0), (0, 33, 0))] == [False, True, True]
    assert [model_runner_v2(r, moe) for r in ((0, 28, 0), (0, 29, 0))] == [False, True]
