"""``kvfit engines`` and ``kvfit translate`` (registered here on a local app, as estimator.cli.app does)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from estimator.cli.engines import engines_command, parse_sets, parse_value, translate_command
from meshes import InputError

app = typer.Typer()
app.command("engines")(engines_command)
app.command("translate")(translate_command)
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_engines_table_side_by_side_with_log_lines():
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--max-model-len", "32768")
    assert r.exit_code == 0, r.output
    for header in ("max 26.7.0", "vllm 0.34", "sglang 0.5.23", "trtllm", "budget GiB", "KV tokens",
                   "max concurrency", "non-KV GiB"):
        assert header in r.output
    assert "GPU KV cache size:" in r.output
    assert "Maximum concurrency for 32,768 tokens per request:" in r.output
    assert "KV Cache is allocated. #tokens:" in r.output and "for max tokens in paged KV cache" in r.output


def test_engines_json_and_set_knobs():
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--engines", "vllm,sglang",
            "--max-model-len", "8192", "--set", "vllm.gpu_memory_utilization=0.8",
            "--set", "sglang.mem_fraction_static=0.8", "--json")
    assert r.exit_code == 0, r.output
    plans = json.loads(r.output)
    assert [p["engine"] for p in plans] == ["vllm", "sglang"]
    assert plans[0]["knobs"]["gpu_memory_utilization"] == 0.8
    assert plans[1]["knobs"]["mem_fraction_static"] == 0.8
    assert plans[0]["max_model_len"] == 8192 and plans[1]["max_model_len"] == 8192
    assert set(plans[0]["tokens_band"]) == {"low", "central", "high"}
    assert plans[0]["non_kv"]["activation"]["source"]


def test_engines_tpu_mesh_defaults_to_tpu():
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "v6e-4", "--max-model-len", "4096", "--json")
    assert r.exit_code == 0, r.output
    assert [p["engine"] for p in json.loads(r.output)] == ["tpu"]


def test_engines_exit_1_when_an_engine_would_not_start():
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xRTX3090-24GB", "--engines", "vllm",
            "--set", "vllm.version=v0", "--max-model-len", "29000")
    assert r.exit_code == 1
    assert "is larger than the maximum number of tokens that can be stored in KV cache" in r.output


@pytest.mark.parametrize(("args", "named"), [
    (("--engines", "vlm"), "--engines"),
    (("--set", "sglang.gpu_memory_utilization=0.9"), "sglang calls this mem_fraction_static"),
    (("--set", "vllm.gpu_memory_utilization=1.5"), "vllm.gpu_memory_utilization=1.5"),
    (("--set", "gpu_memory_utilization=0.9"), "--set"),
    (("--set", "vllm.version="), "--set"),  # an empty value is not the default
    # a zero count is refused under the flag's own name, not dropped for the default
    (("--max-num-seqs", "0"), "--max-num-seqs=0"),
    (("--max-num-batched-tokens", "0"), "--max-num-batched-tokens=0"),
    (("--enable-lora", "--max-loras", "0"), "--max-loras=0"),
    (("--max-beam-width", "0"), "--max-beam-width=0"),
    (("--engines", "sglang", "--max-model-len", "-1"), "--max-model-len=-1"),  # sglang's context_length
    (("--max-model-len", "0"), "--max-model-len=0"),
    (("--set", "trtllm.max_batch_size=-1"), "trtllm.max_batch_size=-1"),
    (("--enable-lora", "--max-lora-rank", "7"), "--max-lora-rank=7"),  # vllm/config/lora.py MaxLoRARanks
    # finite but absurd: 1e300 GiB would overflow to inf in bytes
    (("--cpu-offload-gb", "1e300"), "--cpu-offload-gb"),
    (("--set", "max.device_memory_utilization=1e308"), "max.device_memory_utilization"),
])
def test_engines_bad_input_exit_2(args, named):
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", *args)
    assert r.exit_code == 2 and "error:" in r.output and named in r.output, r.output


def test_engines_refuse_an_expert_group_for_a_dense_model():
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "2xH100-80GB", "--layout", "dp2xep2")
    assert r.exit_code == 2 and "--expert-parallel-size=2" in r.output, r.output


def test_a_pinned_kv_pool_larger_than_the_device_does_not_start():
    # --kv-cache-memory-bytes / num_gpu_blocks_override skip profiling, so the pool is allocated as
    # asked: 1 TiB on an 80 GB card is torch.OutOfMemoryError, not a start
    for knob in ("vllm.kv_cache_memory_bytes=1099511627776", "vllm.num_gpu_blocks_override=4611686018427387904"):
        r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--engines", "vllm",
                "--max-model-len", "8192", "--set", knob)
        assert r.exit_code == 1 and "CUDA out of memory" in r.output, r.output
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--engines", "vllm",
            "--max-model-len", "8192", "--set", "vllm.kv_cache_memory_bytes=10737418240")
    assert r.exit_code == 0, r.output


def test_translate_command():
    r = run("translate", "--from", "vllm", "--to", "sglang", "--knob-value", "0.9", "--model", "llama-3.1-8b",
            "--mesh", "1xH100-80GB", "--max-model-len", "32768")
    assert r.exit_code == 0, r.output
    assert "vllm gpu_memory_utilization=0.9 →" in r.output and "sglang needs mem_fraction_static=" in r.output
    j = run("translate", "--from", "vllm", "--to", "trtllm", "--knob-value", "0.9", "--model", "llama-3.1-8b",
            "--mesh", "1xH100-80GB", "--json")
    t = json.loads(j.output)
    assert t["target_knob"] == "free_gpu_memory_fraction" and t["target_tokens"] >= t["source_tokens"]


def test_translate_bad_engine():
    r = run("translate", "--from", "vllm", "--to", "sglng", "--knob-value", "0.9")
    assert r.exit_code == 2 and "did you mean sglang" in r.output


def test_parse_helpers():
    assert [parse_value(v) for v in ("1", "0.9", "true", "none", "v0")] == [1, 0.9, True, None, "v0"]
    assert parse_sets(["vllm.block_size=32"], ("vllm",)) == {"vllm": {"block_size": 32}}
    with pytest.raises(InputError):
        parse_sets(["trtllm.max_tokens=5"], ("vllm",))


def test_engine_flags_reach_each_engines_own_knob():
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--engines", "vllm,sglang,trtllm",
            "--max-model-len", "8192", "--max-num-seqs", "512", "--max-num-batched-tokens", "4096",
            "--enforce-eager", "--quantization", "fp8", "--dtype", "bfloat16", "--enable-lora",
            "--max-lora-rank", "32", "--no-enable-prefix-caching", "--cpu-offload-gb", "1",
            "--mem-fraction-static", "0.8", "--cuda-graph-max-bs", "64", "--max-batch-size", "64",
            "--max-input-len", "2048", "--max-num-tokens", "4096", "--max-beam-width", "2", "--json")
    assert r.exit_code == 0, r.output
    v, s, t = json.loads(r.output)
    assert (v["knobs"]["max_num_seqs"], v["knobs"]["max_num_batched_tokens"]) == (512, 4096)
    assert v["knobs"]["enforce_eager"] is True and v["knobs"]["quantization"] == "fp8"
    assert v["knobs"]["enable_lora"] is True and v["knobs"]["max_lora_rank"] == 32
    assert v["knobs"]["enable_prefix_caching"] is False and v["knobs"]["cpu_offload_gb"] == 1.0
    assert v["non_kv"]["cuda_graph"]["central"] == 0  # --enforce-eager: no graph term
    assert s["knobs"]["disable_cuda_graph"] is True and s["knobs"]["mem_fraction_static"] == 0.8
    assert s["knobs"]["chunked_prefill_size"] == 4096 and s["knobs"]["cuda_graph_max_bs"] == 64
    # TRT-LLM's own build limits win over the shared --max-num-seqs / --max-num-batched-tokens
    assert (t["knobs"]["max_batch_size"], t["knobs"]["max_input_len"], t["knobs"]["max_num_tokens"],
            t["knobs"]["max_beam_width"]) == (64, 2048, 4096, 2)


def test_would_log_lines_mark_estimates():
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--engines", "vllm",
            "--max-model-len", "8192")
    assert r.exit_code == 0, r.output
    assert "≈ GPU KV cache size:" in r.output and "KV tokens band" in r.output
    v0 = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--engines", "vllm",
             "--max-model-len", "8192", "--set", "vllm.version=v0")
    assert "  the current vLLM instance can use total_gpu_memory" in v0.output  # exact: not marked
    pinned = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--engines", "vllm",
                 "--max-model-len", "8192", "--set", "vllm.kv_cache_memory_bytes=10000000000")
    assert "≈" not in pinned.output


def test_pipeline_layout_runs_the_engines_that_have_stages():
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "2xH100-80GB", "--pp", "2", "--max-model-len", "8192",
            "--json")
    assert r.exit_code == 0, r.output
    assert [p["engine"] for p in json.loads(r.output)] == ["vllm", "sglang", "trtllm"]  # MAX has no PP


def test_expert_group_inside_the_tensor_group_runs_the_engines_that_allow_it():
    """vLLM's --enable-expert-parallel spans every data × tensor rank: tp8 · ep2 is no vLLM layout,
    so by default the comparison leaves vLLM out, and asked for by name it is refused (exit 2)."""
    args = ("engines", "--model", "qwen3-30b-a3b", "--mesh", "8xH100-80GB", "--layout", "tp8xep2",
            "--max-model-len", "8192")
    r = run(*args, "--json")
    assert "vllm" not in [p["engine"] for p in json.loads(r.stdout)] and r.exit_code in (0, 1), r.output
    named = run(*args, "--engines", "vllm")
    assert named.exit_code == 2 and "expert_parallel_size=2" in named.output and "data × tensor = 8" in named.output
    assert run("engines", "--model", "qwen3-30b-a3b", "--mesh", "8xH100-80GB", "--layout", "tp8xep8",
               "--engines", "vllm", "--max-model-len", "8192").exit_code == 0


def test_a_whole_float_size_is_the_size():
    # --set parses 16.0 as a float; the knob keeps vLLM's integer choice, so counts stay integers
    r = run("engines", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--engines", "vllm", "--enable-lora",
            "--max-model-len", "8192", "--set", "vllm.max_lora_rank=16.0", "--set", "vllm.block_size=16.0",
            "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)[0]
    assert plan["knobs"]["max_lora_rank"] == 16 and isinstance(plan["num_blocks"], int)
