"""Fuzzing the command line: hypothesis draws argument vectors for every command (options, aliases,
repeats, odd values), malformed config.json files and malformed safetensors headers. Every run must
end with exit 0 (fits), 1 (does not fit) or 2 (bad input, one line), within a time bound, and never
print a traceback. Runs go through ``estimator.cli.app.main`` in this process (no subprocess start-up),
so a few thousand examples fit in the suite's budget; tests/test_bad_inputs.py has the subprocess
runs for signals and JAX's environment.

``--allow-cpu-proxy`` is left out: it compiles the reference model with XLA (seconds per run).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TIME_BOUND_S = 30.0  # one run, worst case on a loaded 2-core CI machine
def fast(examples: int) -> settings:
    """Reproducible (derandomized, no example database), no per-example deadline: check() bounds time."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=True, database=None)

LLAMA = {"model_type": "llama", "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4,
         "num_hidden_layers": 4, "vocab_size": 32000, "intermediate_size": 1024,
         "max_position_embeddings": 8192, "torch_dtype": "bfloat16", "_name_or_path": "fuzz/llama"}
FAMILIES = {
    "llama": LLAMA,
    "gemma3_text": {**LLAMA, "model_type": "gemma3_text", "head_dim": 64, "sliding_window": 512,
                    "sliding_window_pattern": 6},
    "mixtral": {**LLAMA, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2},
    "mamba": {"model_type": "mamba", "hidden_size": 256, "num_hidden_layers": 4, "vocab_size": 1000,
              "state_size": 16, "conv_kernel": 4},
    "jamba": {**LLAMA, "model_type": "jamba", "attn_layer_period": 2, "attn_layer_offset": 1,
              "mamba_d_state": 16, "mamba_d_conv": 4, "num_experts": 1},
    "deepseek_v3": {**LLAMA, "model_type": "deepseek_v3", "qk_nope_head_dim": 32, "qk_rope_head_dim": 16,
                    "kv_lora_rank": 64, "v_head_dim": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
                    "moe_intermediate_size": 256},
    "llava": {"model_type": "llava", "text_config": LLAMA,
              "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "patch_size": 14, "image_size": 56}},
}

WORK = Path(tempfile.mkdtemp(prefix="kvfit-fuzz-"))


def _files() -> dict[str, str]:
    """Fixed odd files the argument pools point at."""
    out: dict[str, str] = {}
    (WORK / "good.json").write_text(json.dumps(FAMILIES["llama"]))
    (WORK / "nested.json").write_text("[" * 20000 + "]" * 20000)
    (WORK / "markup.json").write_text(json.dumps({**LLAMA, "_name_or_path": "x[/]\x1b[2J[bold]y"}))
    (WORK / "text.json").write_text("not json")
    (WORK / "a_file").write_text("x")
    (WORK / "dir").mkdir(exist_ok=True)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    (WORK / "ok.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    (WORK / "bad.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    out.update({k: str(WORK / k) for k in ("good.json", "nested.json", "markup.json", "text.json", "a_file", "dir",
                                            "ok.safetensors", "bad.safetensors")})
    if hasattr(os, "mkfifo"):
        fifo = WORK / "fifo.json"
        if not fifo.exists():
            os.mkfifo(fifo)
        out["fifo"] = str(fifo)
    return out


FILES = _files()
NASTY = ["", " ", "0", "-1", "1e-9", "nan", "inf", "9" * 30, "[/]", "[bold]x", "\x1b[31m", ":b:", "1:0", ",",
         "../x", "/dev/zero", "é", "--", "-h", "a" * 5000, "/tmp/" + "b" * 300 + ".png"]
MODELS = ["llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b", "qwen3-30b-a3b", "nope", *FILES.values()]
MESHES = ["1xH100-80GB", "8xH100-80GB", "2x4xH100-80GB", "v5e-8", "v5e-4", "99999999xH100-80GB", "0xH100-80GB",
          "8x", "H100-80GB", "4xA100-80GB", "1xH100-80GB,8xH100-80GB"]
LAYOUTS = ["tp1", "tp8", "dp2xtp4", "tp4xpp2", "ep8", "tp8xep8", "tp3", "x", "tp0", "tp1,tp8"]
POOLS: dict[str, list[Any]] = {
    "model": MODELS, "mesh": MESHES, "layout": LAYOUTS, "layouts": LAYOUTS,
    "kv_cache_dtype": ["bf16", "fp8", "fp16", "fp32", "nope", "bf16,fp8"],
    "kv_cache_dtypes": ["bf16", "fp8", "bf16,fp8", "nope", "bf16,bf16"],
    "batch": ["1:64", "1,8", "8:512:8", "1:100000:1", "0:4", "4:1", "1:2:0", "a:b", "1:65536:1", "1:4096"],
    "length": ["128:4096", "1024,2048", "1:100000:1", "0", "4096:1", "1:4096:1", "128:131072"],
    "page_sizes": ["128", "16,128", "0", "3", "4096", "128,128"],
    "utilizations": ["0.9", "0.5,0.9", "0", "1.5", "nan", "0.9,0.9"],
    "engines": ["vllm", "sglang", "max", "trtllm", "tpu", "vllm,sglang", "nope"],
    "knob": ["vllm.gpu_memory_utilization=0.8", "vllm.nope=1", "x", "sglang.mem_fraction_static=2",
             "vllm.block_size=0", "max.device_memory_utilization=0.5"],
    "out_text": [str(WORK / "report"), FILES["a_file"] + "/sub", "/proc/kvfit", ""],
    "plot_path": [str(WORK / "f.png"), str(WORK / "f.txt"), "/proc/f.png", FILES["dir"]],
    "cells_csv": [str(WORK / "c.csv"), "/sys/c.csv", FILES["a_file"] + "/c.csv"],
    "weights": [FILES["ok.safetensors"], FILES["bad.safetensors"], FILES["dir"], "/dev/zero", "missing"],
    "activations": ["analytic", "xla", "nope"],
    "device": ["H100-80GB", "A100-80GB", "TPU-v5e", "nope"],
    "from_engine": ["vllm", "sglang", "max", "nope"], "to_engine": ["vllm", "sglang", "trtllm", "tpu"],
    "max_devices": [1, 4, 16, 0, -1, 257, 10**9],
}
INTS = [0, -1, 1, 2, 8, 128, 4096, 32768, 10**6, 2**31, 2**63, "1e3", "x"]
FLOATS = [0.9, 0.5, 1, 0, -0.1, 1.5, "nan", "inf", 1e-9, "x"]
SKIP = {"allow_cpu_proxy", "help"}


def _commands() -> dict[str, list[Any]]:
    import typer

    from estimator.cli.app import app

    group = typer.main.get_command(app)
    return {name: [p for p in cmd.params if getattr(p, "param_type_name", "") == "option" and p.name not in SKIP]
            for name, cmd in group.commands.items()}


COMMANDS = _commands()


@st.composite
def option(draw: Any, params: list[Any]) -> list[str]:
    p = draw(st.sampled_from(params))
    flag = draw(st.sampled_from([*p.opts, *p.secondary_opts]))
    if p.is_flag:
        return [flag]
    kind = getattr(getattr(p, "type_descriptor", None), "annotation", str)
    pool = POOLS.get(p.name) or (INTS if kind is int else FLOATS if kind is float else NASTY)
    value = str(draw(st.sampled_from(pool) if draw(st.integers(0, 9)) else st.sampled_from(NASTY)))
    if draw(st.booleans()) and flag.startswith("--"):
        return [f"{flag}={value}"]
    return [flag, value]


@st.composite
def argv(draw: Any, commands: tuple[str, ...]) -> list[str]:
    name = draw(st.sampled_from(commands))
    out = [name]
    for _ in range(draw(st.integers(0, 5))):
        out += draw(option(COMMANDS[name])) if COMMANDS[name] else []
    if draw(st.integers(0, 19)) == 0:
        out.append(draw(st.sampled_from(["--nope", "junk", "-x", "--json", "--csv"])))
    return out


def run_main(args: list[str]) -> tuple[int, str, float]:
    """``kvfit ARGS`` in this process: (exit code, stdout + stderr, seconds)."""
    import contextlib
    import io

    from estimator.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["kvfit", *args]
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
            main()
    finally:
        sys.argv = old
    return int(done.value.code or 0), out.getvalue() + err.getvalue(), time.perf_counter() - t0


def check(args: list[str]) -> None:
    code, text, seconds = run_main(args)
    hypothesis.event(f"exit {code}")  # pytest --hypothesis-show-statistics shows the spread
    assert code in (0, 1, 2), (args, code, text[-2000:])
    assert "Traceback" not in text, (args, text[-2000:])
    assert seconds < TIME_BOUND_S, (args, seconds)
    if code == 2:  # bad input: exactly one line
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, text[-2000:])


CHEAP = tuple(sorted(set(COMMANDS) - {"sweep", "report"}))


@fast(1250)
@given(argv(CHEAP))
def test_fuzz_cheap_commands(args):
    check(args)


@fast(150)
@given(argv(("sweep",)))
def test_fuzz_sweep(args):
    check(args)


@fast(15)
@given(argv(("report",)))
def test_fuzz_report(args):
    check(args)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
                           | st.text(max_size=8), lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6)


@st.composite
def broken_config(draw: Any) -> dict:
    config = json.loads(json.dumps(FAMILIES[draw(st.sampled_from(sorted(FAMILIES)))]))
    for _ in range(draw(st.integers(1, 3))):
        target = config
        nested = [k for k in ("text_config", "vision_config") if isinstance(config.get(k), dict)]
        if nested and draw(st.booleans()):  # an earlier step may have replaced or deleted one
            target = config[draw(st.sampled_from(nested))]
        if not isinstance(target, dict) or not target:
            continue
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.integers(0, 4)) == 0:
            del target[key]
        else:
            target[key] = draw(st.sampled_from([0, -1, 10**9, 2**64, "8", 1.5, None, [], {}, True, "[/]"])
                               | JSON_VALUES)
    return config


@fast(400)
@given(broken_config(), st.sampled_from(["plan", "explain", "compare"]))
def test_fuzz_configs(config, command):
    path = WORK / "fuzz_config.json"
    path.write_text(json.dumps(config, allow_nan=True))
    check([command, "--model", str(path), "--mesh", "1xH100-80GB"])


DTYPES = ["BF16", "F16", "F32", "F8_E4M3", "F4", "I64", "NOPE", 3, None]


@st.composite
def header_bytes(draw: Any) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # random JSON
        raw = json.dumps(draw(JSON_VALUES)).encode()
    elif kind == 1:  # random bytes
        raw = draw(st.binary(max_size=64))
    else:  # tensor entries with odd fields
        entries = {}
        for i in range(draw(st.integers(0, 3))):
            entry = {"dtype": draw(st.sampled_from(DTYPES)),
                     "shape": draw(st.lists(st.integers(-2, 2**40), max_size=3) | JSON_VALUES),
                     "data_offsets": draw(st.lists(st.integers(-1, 64), min_size=0, max_size=3) | JSON_VALUES)}
            if draw(st.integers(0, 5)) == 0:
                entry.pop(draw(st.sampled_from(sorted(entry))))
            entries[f"model.layers.{i}.mlp.up_proj.weight"] = entry
        if draw(st.booleans()):
            entries["__metadata__"] = draw(JSON_VALUES)
        raw = json.dumps(entries).encode()
    length = draw(st.sampled_from([len(raw), len(raw) + 1, max(len(raw) - 1, 0), 2**63, 0]))
    return struct.pack("<Q", length) + raw + bytes(draw(st.integers(0, 64)))


@fast(300)
@given(header_bytes())
def test_fuzz_safetensors_headers(blob):
    from estimator.model.checkpoint import read_header
    from meshes.validation import InputError

    path = WORK / "fuzz.safetensors"
    path.write_bytes(blob)
    with contextlib.suppress(InputError):
        read_header(path)
    if blob[:1] != b"\x00" or len(blob) % 3 == 0:  # a share of them through the CLI too
        check(["plan", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--weights", str(path)])
