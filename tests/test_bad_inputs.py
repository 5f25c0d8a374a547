"""Every class of bad input from issue 14 is answered at the boundary: one line naming the field,
the value and what is allowed, exit 2, before any work — and InputError through the Python API.

Most runs go through ``estimator.cli.app.main`` in-process (argv checks, exit codes 0/1/2/3/130 and
the one-line errors all live there); a few subprocess runs cover signals and JAX's environment.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshes.validation import MAX_JSON_DEPTH, InputError

ROOT = Path(__file__).resolve().parents[1]
LLAMA = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
         "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336,
         "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}


def run(argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``kvfit ARGV`` in this process: (exit code, stdout, stderr)."""
    from estimator.cli.app import main

    monkeypatch.setattr(sys, "argv", ["kvfit", *argv])
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main()
    got = capsys.readouterr()
    return int(done.value.code or 0), got.out, got.err


def one_error_line(code: int, out: str, err: str, *words: str) -> None:
    """Exit 2, nothing on stdout, one line on stderr naming ``words`` and no traceback."""
    assert code == 2, (code, out, err)
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def write_config(tmp_path: Path, name: str, config: object) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return str(path)


# ------------------------------------------------------------------ configs
GEMMA3 = {"model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8, "num_key_value_heads": 4,
          "head_dim": 256, "num_hidden_layers": 34, "vocab_size": 262208, "intermediate_size": 10240,
          "max_position_embeddings": 131072, "sliding_window": 1024}
MAMBA = {"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280, "state_size": 16,
         "conv_kernel": 4}
JAMBA = {"model_type": "jamba", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
         "num_hidden_layers": 32, "vocab_size": 65536, "intermediate_size": 14336, "attn_layer_offset": 4,
         "mamba_d_state": 16, "mamba_d_conv": 4, "num_experts": 1}
VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "patch_size": 14,
          "image_size": 336}

BAD_CONFIGS = [
    ("quant_string", {**LLAMA, "quantization_config": "fp8"}, "quantization_config"),
    ("block_int", {**LLAMA, "quantization_config": {"quant_method": "fp8", "weight_block_size": 128}},
     "weight_block_size"),
    ("gemma_pattern_0", {**GEMMA3, "sliding_window_pattern": 0}, "sliding_window_pattern"),
    ("mamba_heads_0", {**MAMBA, "num_attention_heads": 0}, "num_attention_heads"),
    ("jamba_period_0", {**JAMBA, "attn_layer_period": 0}, "attn_layer_period"),
    ("vision_hidden_string", {"model_type": "llava", "text_config": LLAMA,
                              "vision_config": {**VISION, "hidden_size": "1024"}}, "vision_config['hidden_size']"),
    ("layers_1e7", {**LLAMA, "num_hidden_layers": 10**7}, "num_hidden_layers"),
    ("layers_1e9", {**LLAMA, "num_hidden_layers": 10**9}, "num_hidden_layers"),
    ("layers_string", {**LLAMA, "num_hidden_layers": "32"}, "num_hidden_layers"),
    ("model_type_list", {**LLAMA, "model_type": ["llama"]}, "model_type"),
    ("layer_types_dicts", {**LLAMA, "layer_types": [{}] * 32}, "layer_types"),
    ("nested_array", "[" * 100_000 + "]" * 100_000, f"nested at most {MAX_JSON_DEPTH} levels"),
    ("nested_value", '{"model_type": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested at most"),
    ("not_an_object", "[1, 2]", "a JSON object"),
]


@pytest.mark.parametrize(("name", "config", "field"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_configs_are_one_line_exit_2(tmp_path, capsys, monkeypatch, name, config, field):
    path = write_config(tmp_path, name, config)
    t0 = time.perf_counter()
    one_error_line(*run(["plan", "--model", path], capsys, monkeypatch), field)
    assert time.perf_counter() - t0 < 5  # refused before anything per-layer is built
    with pytest.raises(InputError):  # the same class through the Python API
        from estimator.model.resolve import resolve_model

        resolve_model(path)


def test_layer_cap_is_stated(tmp_path, capsys, monkeypatch):
    from estimator.model.spec import MAX_LAYERS

    path = write_config(tmp_path, "big", {**LLAMA, "num_hidden_layers": 10**9})
    one_error_line(*run(["plan", "--model", path], capsys, monkeypatch), f"[1, {MAX_LAYERS}]")


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
@pytest.mark.parametrize("flag", ["--model", "--weights"])
def test_devices_and_fifos_are_refused_before_reading(tmp_path, capsys, monkeypatch, special, flag):
    if special == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        special = str(tmp_path / ("fifo.safetensors" if flag == "--weights" else "fifo.json"))
        os.mkfifo(special)
    elif not os.path.exists(special):
        pytest.skip("no /dev/zero here")
    t0 = time.perf_counter()
    one_error_line(*run(["plan", flag, special], capsys, monkeypatch), "regular")
    assert time.perf_counter() - t0 < 5


def test_config_size_cap_is_stated(tmp_path):
    from estimator.model.resolve import resolve_model
    from meshes.validation import MAX_JSON_BYTES

    path = tmp_path / "huge.json"
    path.write_text(json.dumps({**LLAMA, "pad": "x" * (MAX_JSON_BYTES + 1)}))
    with pytest.raises(InputError, match=f"at most {MAX_JSON_BYTES:,} bytes"):
        resolve_model(path)


def test_nested_safetensors_header_and_index(tmp_path):
    from estimator.model.checkpoint import read_header, read_index

    header = b"[" * 50_000 + b"]" * 50_000
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(InputError, match="nested at most"):
        read_header(path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": ' + "{\"a\": " * 5000 + "1" + "}" * 5000 + "}")
    with pytest.raises(InputError, match="nested at most"):
        read_index(index)


# ------------------------------------------------------------------ user text is never markup
def test_markup_and_escape_bytes_in_a_model_name(tmp_path, capsys, monkeypatch):
    name = "evil[/]\x1b[31m[bold]x\r"
    path = write_config(tmp_path, "markup", {**LLAMA, "_name_or_path": name})
    for argv in (["plan", "--model", path], ["compare", "--model", path],
                 ["explain", "--model", path, "--mesh", "1xH100-80GB"]):
        code, out, err = run(argv, capsys, monkeypatch)
        assert code in (0, 1), (argv, err)
        assert "evil[/][31m[bold]x" in out  # shown as written, minus the control bytes
        assert "\x1b" not in out + err and "\r" not in out + err


# ------------------------------------------------------------------ sweep grids and output paths
def test_sweep_grid_caps_before_allocating(tmp_path, capsys, monkeypatch):
    from estimator.cli.sweep import MAX_CSV_CELLS
    from estimator.sweeps.axes import MAX_AXIS_VALUES

    t0 = time.perf_counter()
    csv = str(tmp_path / "cells.csv")
    one_error_line(*run(["sweep", "--batch", "1:100000:1", "--length", "1:100000:1", "--cells-csv", csv],
                        capsys, monkeypatch), "--batch", f"{MAX_AXIS_VALUES:,}")
    one_error_line(*run(["sweep", "--batch", "1:4096:1", "--length", "1:4096:1", "--cells-csv", csv],
                        capsys, monkeypatch), "--cells-csv", f"{MAX_CSV_CELLS:,} cells")
    many = ",".join(["1:2000000000:1"] * 60)  # the cap is per axis, not per range
    one_error_line(*run(["sweep", "--batch", many], capsys, monkeypatch), "--batch", "whole axis")
    assert time.perf_counter() - t0 < 10 and not Path(csv).exists()


@pytest.mark.parametrize(("argv", "field"), [
    (["sweep", "--plot", "{tmp}/out.txt"], "--plot"),
    (["sweep", "--cells-csv", "/proc/kvfit.csv"], "--cells-csv"),
    (["sweep", "--plot", "/sys/kvfit.png"], "--plot"),
    (["sweep", "--cells-csv", "{file}/under.csv"], "--cells-csv"),
    (["report", "--out", "/proc/kvfit"], "--out"),
    (["report", "--out", "{file}/sub"], "--out"),
    (["report", "--out", ""], "--out"),
    (["sweep", "--plot", "{tmp}"], "--plot"),
])
def test_output_paths_checked_before_the_work(tmp_path, capsys, monkeypatch, argv, field):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv = [a.format(tmp=tmp_path, file=a_file) for a in argv]
    t0 = time.perf_counter()
    one_error_line(*run(argv, capsys, monkeypatch), field)
    assert time.perf_counter() - t0 < 3  # no sweep or report ran


# ------------------------------------------------------------------ options
@pytest.mark.parametrize(("argv", "field"), [
    (["plan", "--model", ""], "--model"),
    (["plan", "--model", "llama-3.1-70b", "-mllama-3.1-8b"], "-m"),
    (["plan", "--kv-cache-dtype", "fp8", "--kv-cache-dtype", "bf16"], "--kv-cache-dtype"),
    (["plan", "--kv-cache-dtype", ""], "--kv-cache-dtype"),
    (["plan", "--layout", ""], "--layout"),
    (["plan", "--json", "--json"], "--json"),
    (["plan", "--max-model-len", "1024", "--max-length", "2048"], "--max-length"),
    (["sweep", "--batch", "1:4", "--batch", "1:8"], "--batch"),
    (["engines", "--set", "vllm.gpu_memory_utilization=0.8", "--set", "vllm.gpu_memory_utilization=0.9"],
     "--set"),
    (["plan", "--ep", "8"], "--expert-parallel-size"),
    (["plan", "--layout", "tp1xep1xdp1", "--mesh", "1xH100-80GB", "--model", "llama-3.1-8b"], None),
    (["plan", "--mesh", "v5e-8", "--page-size", "4096"], "page_size"),
    (["plan", "--mesh", "v5e-8", "--page-size", "8"], "page_size"),
    (["plan", "--mesh", "99999999xH100-80GB"], "16,384 devices"),
    (["plan", "--mesh", "4096xH100-80GB", "--dp", "4096", "--activations", "xla", "--allow-cpu-proxy"],
     "2,048 devices"),  # XLA:CPU fails at 4,096 devices in one process and stalls at 16,384
    (["plan", "--max-batch-size", "8", "--max-num-seqs", "8"], "--max-num-seqs"),
    (["plan", "--mesh", "8xH100-80GB", "--dp", "8", "--max-num-seqs", "2147483647"], "--max-num-seqs"),
    (["fit", "--kv-cache-dtype", "nope"], "kv_cache_dtype"),
    (["fit", "--gpu-memory-utilization", "0"], "device_memory_utilization"),
    (["fit", "--target-length", "1000000000000000"], "target_length"),
    (["plan", "--model", "a" * 5000 + ".json"], "model="),  # a name too long for the file system
    (["plan", "--weights", "a" * 5000], "checkpoint="),
    (["sweep", "--plot", "/tmp/" + "a" * 5000 + ".png"], "--plot="),
    (["report", "--out", "/tmp/" + "a" * 5000], "--out="),
])
def test_option_classes(capsys, monkeypatch, argv, field):
    code, out, err = run(argv, capsys, monkeypatch)
    if field is None:  # a layout naming ep1 is no expert parallelism: fine on a dense model
        assert code in (0, 1), err
        return
    one_error_line(code, out, err, field)


def test_mesh_cap_is_fast():
    from meshes.mesh import MAX_MESH_DEVICES, DeviceMesh

    t0 = time.perf_counter()
    for preset in ("99999999xH100-80GB", "1000x1000xH100-80GB", "9" * 5000 + "xH100-80GB"):
        with pytest.raises(InputError, match=f"at most {MAX_MESH_DEVICES:,} devices"):
            DeviceMesh.from_preset(preset)
    assert time.perf_counter() - t0 < 1


def test_max_num_seqs_is_per_replica(capsys, monkeypatch):
    code, out, err = run(["plan", "--model", "llama-3.1-8b", "--mesh", "8xH100-80GB", "--dp", "2", "--tp", "4",
                          "--max-model-len", "4096", "--max-num-seqs", "16", "--json"], capsys, monkeypatch)
    assert code in (0, 1), err
    assert json.loads(out)["requested_max_batch_size"] == 2 * 16  # 16 per replica × 2 replicas


def test_fit_api_raises_bad_input():
    from estimator.planning.review import fit

    for kwargs in ({"kv_cache_dtype": "nope"}, {"device_memory_utilization": 0}, {"per_host": 0},
                   {"sizes": [10**7]}, {"sizes": []}):
        with pytest.raises(InputError):
            fit("llama-3.1-8b", target_length=1024, target_concurrency=1, **kwargs)


def test_explain_on_a_large_mesh_says_does_not_fit(capsys, monkeypatch):
    code, out, err = run(["explain", "--model", "llama-3.1-70b", "--mesh", "4x8xH100-80GB",
                          "--max-model-len", "100000000"], capsys, monkeypatch)
    assert code == 1, err
    assert "max_devices" not in err and err.strip().splitlines()[-1].startswith("does not fit")
    assert "does not fit" not in out  # on stderr, as kvfit plan says it


# ------------------------------------------------------------------ exit codes
def test_a_bug_exits_3_with_one_line(capsys, monkeypatch):
    import estimator.cli.app as cli

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "plan", boom)
    monkeypatch.delenv("KVFIT_DEBUG", raising=False)
    code, _out, err = run(["plan"], capsys, monkeypatch)
    assert code == 3 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "internal error" in err and "RuntimeError: boom" in err
    code, _out, err = run(["plan", "--debug"], capsys, monkeypatch)
    assert code == 3 and "Traceback" in err
    code, _out, err = run(["plan"], capsys, monkeypatch, env={"KVFIT_DEBUG": "1"})
    assert code == 3 and "Traceback" in err


def test_fits_and_does_not_fit(capsys, monkeypatch):
    assert run(["plan", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB"], capsys, monkeypatch)[0] == 0
    code, _out, err = run(["plan", "--model", "llama-3.1-405b", "--mesh", "1xH100-80GB"], capsys, monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1].startswith("does not fit")


# ------------------------------------------------------------------ JAX's environment
@pytest.mark.parametrize(("env", "field"), [
    ({"JAX_ENABLE_X64": "notabool"}, "JAX_ENABLE_X64"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=abc"}, "XLA_FLAGS"),
    ({"XLA_FLAGS": "not-a-flag"}, "XLA_FLAGS"),
    ({"JAX_PLATFORMS": "quantum"}, "JAX_PLATFORMS"),
])
def test_jax_environment_checked_before_jax_starts(env, field):
    from estimator.cli.options import check_jax_env

    with pytest.raises(InputError, match=field):
        check_jax_env({**os.environ, **env}, probe=False)


def test_tpu_platform_without_libtpu():
    from estimator.cli.options import _has_module, check_jax_env

    if _has_module("libtpu"):
        pytest.skip("libtpu is installed here")
    with pytest.raises(InputError, match="libtpu"):
        check_jax_env({"JAX_PLATFORMS": "tpu"}, probe=False)


def _kvfit(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    code = "import sys; sys.argv = ['kvfit', *sys.argv[1:]]; from estimator.cli.app import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("env", [{"XLA_FLAGS": "--xla_bogus_flag=1"}, {"JAX_ENABLE_X64": "notabool"}])
def test_bad_jax_environment_in_a_real_process(env):
    p = _kvfit(["sweep", "--batch", "1:8", "--length", "128:256"], {"PYTHONPATH": str(ROOT), **env})
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and next(iter(env)) in lines[0], err


def test_ctrl_c_during_a_sweep_exits_130():
    p = _kvfit(["sweep", "--batch", "1:65536:1", "--length", "1:65536:1"], {"PYTHONPATH": str(ROOT)})
    time.sleep(4)  # jax imported, the sweep running
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert time.perf_counter() - t0 < 15


# ------------------------------------------------------------------ CLI habits
def test_help_version_and_columns(capsys, monkeypatch):
    code, out, _ = run(["--version"], capsys, monkeypatch)
    assert code == 0 and out.startswith("kvfit ")
    monkeypatch.setenv("COLUMNS", "80")
    for command in ("plan", "sweep", "compare", "explain", "fit", "report", "devices", "models"):
        code, out, err = run([command, "-h"], capsys, monkeypatch)
        assert code == 0, err
        assert "…" not in out  # no option name cut off
    code, out, _ = run(["sweep", "-h"], capsys, monkeypatch)
    assert "a:b:step" in out and "--gpu-memory-utilization" in out
    code, out, _ = run(["plan", "-h"], capsys, monkeypatch)
    assert "Devices one layer is split" in out and "Tokens per KV page" in out


def test_every_option_has_help():
    import typer

    from estimator.cli.app import app

    group = typer.main.get_command(app)
    missing = [f"{name} {'/'.join(p.opts)}" for name, command in group.commands.items() for p in command.params
               if getattr(p, "param_type_name", "") == "option" and not (p.help or "").strip()]
    assert missing == []


def test_plan_shows_the_context_limit(capsys, monkeypatch):
    code, out, _ = run(["plan", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB"], capsys, monkeypatch)
    assert code == 0 and "model's context limit: 131,072" in out  # Llama 3.1: 128k context


def test_csv_means_print_csv_everywhere(capsys, monkeypatch):
    code, out, _ = run(["sweep", "--batch", "1,64", "--length", "1024,2048", "--csv"], capsys, monkeypatch)
    assert code == 0 and out.splitlines()[0].startswith("length,")


def test_api_grid_caps_and_report_paths(tmp_path):
    from estimator.reports.report import write_report
    from estimator.sweeps.grid import MAX_AXIS_VALUES, MAX_FULL_CELLS, sweep

    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"at most {MAX_AXIS_VALUES:,} values"):
        sweep("llama-3.1-8b", "1xH100-80GB", batch_sizes=range(1, 10**12), lengths=[1])
    with pytest.raises(InputError, match=f"at most {MAX_FULL_CELLS:,} cells"):
        sweep("llama-3.1-8b", "1xH100-80GB", batch_sizes=range(1, 20001), lengths=range(1, 20001))
    assert time.perf_counter() - t0 < 10
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (Path("/proc/kvfit-report"), a_file, a_file / "sub"):
        with pytest.raises(InputError, match="out"):
            write_report("llama-3.1-8b", ["1xH100-80GB"], [None], out)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"reserve_null_page": "x"}, "reserve_null_page"), ({"reserve_null_page": None}, "reserve_null_page"),
    ({"include_mtp": []}, "include_mtp"), ({"kv_scale_block": []}, "kv_scale_block"),
    ({"weights": 1.5}, "weights"), ({"xla_options": "x"}, "xla_options"),
])
def test_plan_refuses_options_of_the_wrong_type(kwargs, field):
    from estimator import plan

    with pytest.raises(InputError) as err:
        plan("llama-3.1-8b", "1xH100-80GB", **kwargs)
    assert err.value.field == field


def test_an_engine_knob_given_as_none_means_its_default():
    from estimator.engines import engine_plan

    unset = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="trtllm", band=False)
    given_none = engine_plan("llama-3.1-8b", "1xH100-80GB", engine="trtllm", band=False,
                             free_gpu_memory_fraction=None, max_num_tokens=None, max_beam_width=None)
    assert given_none.kv_tokens == unset.kv_tokens > 0


@pytest.mark.parametrize("devices", [True, "cpu", [object()], []])
def test_sweep_refuses_compute_devices_that_are_not_devices(devices):
    from estimator.sweeps import sweep_frontier

    with pytest.raises(InputError) as err:
        sweep_frontier("llama-3.1-8b", "1xH100-80GB", batch_sizes=[1], lengths=[128], compute_devices=devices)
    assert err.value.field == "compute_devices"


def test_config_values_a_reader_must_not_guess():
    # whole-number floats are counts; strings are not booleans or dtypes; zero experts or a zero
    # latent rank would silently make a different model; per-layer rope objects must be objects
    from estimator.model.hf_config import spec_from_hf_config

    configs = Path(__file__).parent / "model_configs"
    llama = json.loads((configs / "meta-llama__Llama-3.1-8B.json").read_text())
    spec = spec_from_hf_config({**llama, "num_key_value_heads": 8.0, "vocab_size": 128256.0})
    assert (type(spec.num_kv_heads), spec.num_kv_heads, type(spec.vocab_size)) == (int, 8, int)
    deepseek = json.loads((configs / "deepseek-ai__DeepSeek-V3.json").read_text())
    gemma = json.loads((configs / "google__gemma-3-27b-it.json").read_text())
    for config, field in (({**llama, "attention_bias": "false"}, "attention_bias"),
                          ({**llama, "torch_dtype": ""}, "torch_dtype"),
                          ({**llama, "rope_theta": "big"}, "rope_theta"),
                          ({**llama, "hidden_size": 2**62}, "hidden_size"),
                          ({**llama, "text_config": "oops"}, "text_config"),
                          ({**deepseek, "n_routed_experts": 0}, "n_routed_experts"),
                          ({**deepseek, "kv_lora_rank": 0}, "kv_lora_rank"),
                          ({**deepseek, "num_experts_per_tok": 1000}, "num_experts_per_tok"),
                          ({**gemma, "vision_config": {**gemma["vision_config"], "patch_size": 1000}},
                           "patch_size"),
                          ({**gemma, "text_config": {**{k: v for k, v in gemma["text_config"].items()
                                                          if k != "rope_scaling"}, "rope_parameters": {
                              "full_attention": "linear", "sliding_attention": 5}}}, "full_attention")):
        with pytest.raises(InputError, match=field):
            spec_from_hf_config(config)


@pytest.mark.parametrize("argv", [["engines", "--max-model-len", "abc"], ["engines", "--max-num-seqs=1.5"],
                                  ["plan", "--max-length", "nan"]])
def test_a_value_of_the_wrong_type_is_named_with_its_option(argv, capsys, monkeypatch):
    option, _, value = argv[1].partition("=")
    value = value or argv[2]
    one_error_line(*run(argv, capsys, monkeypatch), option, repr(value))


def test_rope_scaling_values_real_configs_carry():
    # YaRN's mscale_all_dim 0 means no attention scaling (vLLM's default; Mistral's converter writes
    # 0.0), and a null rope_type beside "type" is the older key in use
    from estimator.model.hf_config import spec_from_hf_config

    configs = Path(__file__).parent / "model_configs"
    deepseek = json.loads((configs / "deepseek-ai__DeepSeek-V3.json").read_text())
    yarn = {**deepseek["rope_scaling"], "mscale_all_dim": 0.0, "mscale": 0}
    assert spec_from_hf_config({**deepseek, "rope_scaling": yarn}).kv_lora_rank == 512
    llama = json.loads((configs / "meta-llama__Llama-3.1-8B.json").read_text())
    linear = {"type": "linear", "rope_type": None, "factor": 2.0}
    assert spec_from_hf_config({**llama, "rope_scaling": linear}).rope_positions == (2 * 131072,)
    with pytest.raises(InputError, match="mscale"):
        spec_from_hf_config({**deepseek, "rope_scaling": {**yarn, "mscale": -1}})


@pytest.mark.parametrize("argv", [
    ["translate", "--from", "vllm", "--to", "sglang", "--knob-value", "1e-9"],
    ["translate", "--from", "vllm", "--to", "sglang", "--knob-value", "0.9", "--model", "llama-3.1-405b"],
])
def test_translate_from_an_engine_that_would_not_start_is_exit_1(argv, capsys, monkeypatch):
    # a valid value at which the model leaves the source engine no KV: "does not fit", not bad input
    code, _out, err = run(argv, capsys, monkeypatch)
    assert code == 1 and "nothing to translate" in err and "Traceback" not in err


@pytest.mark.parametrize(("kwargs", "field"), [({"weights": ""}, "weights"), ({"weights": {"a": 1}}, "weights stage"),
                                               ({"kv_cache_dtype": ""}, "kv_cache_dtype")])
def test_plan_api_refuses_empty_and_malformed_arguments(kwargs, field):
    # weights='' would read the current folder as a checkpoint; '' is no KV dtype
    from estimator import plan

    with pytest.raises(InputError, match=field):
        plan("llama-3.1-8b", "1xH100-80GB", **kwargs)


def test_an_output_path_error_says_it_once(capsys, monkeypatch):
    code, out, err = run(["sweep", "--plot", "/tmp/x.gif"], capsys, monkeypatch)
    one_error_line(code, out, err, "--plot")
    assert err.count("--plot=") == 1
