"""The kvfit CLI as a user runs it: compare, explain, fit, devices, models and report through typer's
CliRunner and (a few cases) the installed console script; --help of every command; bad input for
every command (exit 2, one ``error: <field>...`` line on stderr).

Numbers are checked against architecture facts worked out here by hand (llama-3.1-70b: 80 layers,
hidden 8192, 64 heads, 8 KV heads, head_dim 128, MLP 28672, vocab 128256, bf16, untied embeddings)
and against fresh estimator.plan() calls, never against the command's own output alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from estimator import plan
from estimator.cli.app import app
from meshes.validation import InputError

runner = CliRunner()
MiB, GiB = 2**20, 2**30
H100_USABLE = 85_018_542_080  # bytes_limit of a simulated H100-80GB (catalog usable_bytes)
H100_BUDGET = H100_USABLE * 9 // 10  # floor(limit · 0.9), the default utilization
PAGE = 128  # tokens per page (the default)
NULL_PAGES = 1  # each replica keeps one page back


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def kvfit(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("kvfit") or str(Path(sys.executable).with_name("kvfit"))
    if not Path(exe).exists():
        pytest.skip("kvfit console script not installed")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


# --- llama-3.1-70b by hand -------------------------------------------------------------------------

L70 = dict(layers=80, hidden=8192, kv_heads=8, head_dim=128, mlp=28672, vocab=128256)


def page_bytes(tp: int, pp: int = 1, dtype_bytes: int = 2, layers: int | None = None) -> int:
    """K and V of one page on one device: layers of the stage × KV heads of the shard × head_dim
    (an even pipeline split unless ``layers`` says how many layers the stage holds)."""
    layers = layers or L70["layers"] // pp
    kv_heads = max(1, L70["kv_heads"] // tp)  # tp above 8 would replicate heads; not used here
    return 2 * layers * kv_heads * L70["head_dim"] * dtype_bytes * PAGE


def stage_layers(rows: list[dict], tp: int, pp: int) -> dict[int, int]:
    """Layers each stage holds, read off its page bytes: whole layers, all 80 once, balanced to ±1
    (kvfit may give the embedding stages the shorter share)."""
    per_layer = page_bytes(tp, layers=1)
    layers = {}
    for row in rows:
        assert row["page_bytes"] % per_layer == 0
        layers.setdefault(row["stage"], row["page_bytes"] // per_layer)
        assert layers[row["stage"]] == row["page_bytes"] // per_layer  # every rank of a stage alike
    assert sorted(layers) == list(range(pp)) and sum(layers.values()) == L70["layers"]
    assert max(layers.values()) - min(layers.values()) <= 1
    return layers


def weights_bytes(tp: int) -> int:
    """bf16 weights per device for a pp1 layout: q, k, v, o, gate/up/down and both embeddings
    split tp ways; the 2 RMSNorms per layer and the final norm replicated."""
    h, kv = L70["hidden"], L70["kv_heads"] * L70["head_dim"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * L70["mlp"]
    split = L70["layers"] * per_layer + 2 * L70["vocab"] * h
    replicated = 2 * L70["layers"] * h + h
    return 2 * (split // tp + replicated)


def test_hand_facts_match_the_brief():
    assert page_bytes(8) == 2 * 80 * 1 * 128 * 2 * 128 == 5_242_880
    assert weights_bytes(1) == 2 * 70_553_706_496  # 70.55 B parameters (Meta: "70B", HF: 70.6 B)
    assert weights_bytes(8) == 17_640_734_720


def check_plan_by_hand(d: dict, layout_degrees: tuple[int, int, int], length: int) -> None:
    """One plan dict (plan --json / compare --json / explain alternatives) against the hand facts."""
    dp, tp, pp = layout_degrees
    assert d["num_replicas"] == dp and len(d["devices"]) == dp * tp * pp
    assert d["reserved_pages"] == NULL_PAGES
    layers = stage_layers(d["devices"], tp, pp)
    for row in d["devices"]:
        assert row["bytes_limit"] == H100_USABLE and row["budget_bytes"] == H100_BUDGET
        assert row["page_bytes"] == page_bytes(tp, layers=layers[row["stage"]])
        if pp == 1:
            assert row["weights_bytes"] == weights_bytes(tp)
        assert row["kv_budget_bytes"] == (row["budget_bytes"] - row["weights_bytes"] - row["activation_bytes"]
                                          - row["signal_bytes"] - row["reserve_bytes"])
    pages = min(row["kv_budget_bytes"] // page_bytes(tp, layers=layers[row["stage"]]) for row in d["devices"])
    assert d["pages_per_replica"] == pages
    assert d["max_supported_sequence_length"] == (pages - NULL_PAGES) * PAGE
    assert d["max_batch_size"] == dp * ((pages - NULL_PAGES) // math.ceil(length / PAGE))


# --- compare -------------------------------------------------------------------------------------

COMPARE = ["compare", "--model", "llama-3.1-70b", "--mesh", "8xH100-80GB", "--layouts", "tp8,dp2xtp4,tp4xpp2",
           "--max-model-len", "32768"]
DEGREES = {"tp8": (1, 8, 1), "dp2xtp4": (2, 4, 1), "tp4xpp2": (1, 4, 2)}


def test_compare_json_equals_plan_and_hand_page_counts():
    r = invoke(*COMPARE, "--json")
    assert r.exit_code == 0, r.output
    cands = json.loads(r.stdout)
    assert [c["layout"] for c in cands] == ["tp8", "dp2xtp4", "tp4xpp2"]
    for c in cands:
        assert c["mesh_preset"] == "8xH100-80GB" and c["candidate"] == f"8xH100-80GB {c['layout']}"
        again = plan("llama-3.1-70b", "8xH100-80GB", c["layout"], max_length=32768).to_dict()
        assert {k: c[k] for k in again} == again
        check_plan_by_hand(c, DEGREES[c["layout"]], 32768)
    tp8 = cands[0]
    assert {row["page_bytes"] for row in tp8["devices"]} == {5_242_880}
    # 76,516,687,872 − 17,640,734,720 weights − activations − signal buffers, in 5 MiB pages
    act, sig = tp8["devices"][0]["activation_bytes"], tp8["devices"][0]["signal_bytes"]
    assert tp8["pages_per_replica"] == (76_516_687_872 - 17_640_734_720 - act - sig) // 5_242_880
    assert tp8["max_batch_size"] == (tp8["pages_per_replica"] - 1) // 256  # 32768 tokens = 256 pages


def test_compare_meshes_keeps_each_preset():
    r = invoke("compare", "--model", "llama-3.1-70b", "--mesh", "8xH100-80GB,8xH200-141GB", "--layouts", "tp8",
               "--json")
    assert r.exit_code == 0, r.output
    h100, h200 = json.loads(r.stdout)
    assert (h100["mesh_preset"], h200["mesh_preset"]) == ("8xH100-80GB", "8xH200-141GB")
    assert h200["devices"][0]["budget_bytes"] == 143156 * MiB * 9 // 10  # CUDA-visible H200 bytes · 0.9
    assert h200["devices"][0]["page_bytes"] == h100["devices"][0]["page_bytes"] == page_bytes(8)
    assert h200["pages_per_replica"] > 2 * h100["pages_per_replica"]


def test_compare_csv_parses_and_matches_plan():
    r = invoke(*COMPARE, "--csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["metric", "8xH100-80GB tp8", "8xH100-80GB dp2xtp4", "8xH100-80GB tp4xpp2"]
    assert all(len(row) == 4 for row in rows)
    table = {row[0]: row[1:] for row in rows[1:]}
    plans = [plan("llama-3.1-70b", "8xH100-80GB", lay, max_length=32768) for lay in DEGREES]
    assert table["pages per replica"] == [str(p.pages_per_replica) for p in plans]
    assert table["max batch at 32,768 tokens"] == [str(p.max_batch_size) for p in plans]
    assert table["page / device (MiB)"] == [f"{page_bytes(tp, pp) / MiB:.2f}" for _, tp, pp in DEGREES.values()]
    assert table["weights / device (GiB)"][:2] == [f"{weights_bytes(8) / GiB:.2f}", f"{weights_bytes(4) / GiB:.2f}"]
    assert table["replicas"] == ["1", "2", "1"] and table["fits"] == ["yes", "yes", "yes"]


def test_compare_csv_as_a_subprocess():
    done = kvfit("compare", "--layouts", "tp8,dp2xtp4", "--csv")
    assert done.returncode == 0, done.stderr
    table = {row[0]: row[1:] for row in csv.reader(io.StringIO(done.stdout))}
    assert table["pages per replica"] == [str(plan("llama-3.1-70b", "8xH100-80GB", lay).pages_per_replica)
                                          for lay in ("tp8", "dp2xtp4")]


def test_compare_exits_1_when_no_candidate_fits():
    r = invoke("compare", "--layouts", "tp8,dp2xtp4", "--max-model-len", "131072", "--max-batch-size", "64",
               "--csv")
    assert r.exit_code == 1
    assert r.stdout.splitlines()[-1] == "fits,no,no"
    assert "no candidate fits" in r.stderr


# --- explain -------------------------------------------------------------------------------------

def test_explain_alternatives_each_replan_and_fit():
    r = invoke("explain", "--model", "llama-3.1-70b", "--mesh", "8xH100-80GB", "--max-length", "131072",
               "--max-batch-size", "64", "--json")
    assert r.exit_code == 1, r.output  # the asked configuration does not fit
    e = json.loads(r.stdout)
    assert e["fits"] is False
    pages = (H100_BUDGET - weights_bytes(8)) // page_bytes(8)  # an upper bound: before activations
    assert f"{weights_bytes(8):,} B weights" in e["reasons"][0] and f"pages of {page_bytes(8):,} B" in e["reasons"][0]
    changes = {a["change"]: a for a in e["alternatives"]}
    assert "shorter requests" in changes and "fewer requests at once" in changes
    assert any(re.fullmatch(r"\d+ devices, .+", c) for c in changes)
    for a in e["alternatives"]:
        p = a["plan"]
        assert p["fits"] is True
        argv = shlex.split(a["command"])
        assert argv[:2] == ["kvfit", "plan"]
        again = invoke(*argv[1:], "--json")  # the command a user would copy
        assert again.exit_code == 0, (a["command"], again.output)
        assert json.loads(again.stdout) == p
        if "devices" in a["change"]:
            assert p["planned_max_length"] == 131072 and p["max_batch_size"] >= 64
            assert len(p["devices"]) == int(a["change"].split()[0]) > 8
    shorter, fewer = changes["shorter requests"]["plan"], changes["fewer requests at once"]["plan"]
    usable = shorter["pages_per_replica"] - NULL_PAGES
    assert shorter["pages_per_replica"] <= pages
    assert shorter["planned_max_length"] == usable // 64 * PAGE  # the longest that 64 requests reach
    assert not plan("llama-3.1-70b", "8xH100-80GB", "tp8", max_length=usable // 64 * PAGE + 1,
                    max_batch_size=64).fits
    assert fewer["planned_max_length"] == 131072 and fewer["max_batch_size"] == usable // (131072 // PAGE)


def test_explain_a_fitting_configuration_exits_0_without_alternatives():
    r = invoke("explain", "--model", "llama-3.1-8b", "--mesh", "1xH100-80GB", "--max-length", "8192",
               "--max-batch-size", "4", "--json")
    assert r.exit_code == 0, r.output
    e = json.loads(r.stdout)
    assert e["fits"] is True and e["alternatives"] == []


# --- fit -----------------------------------------------------------------------------------------

def all_layouts(n: int) -> list[str]:
    """Every dp × tp × pp factorisation of n devices, by name."""
    out = []
    for dp in (d for d in range(1, n + 1) if n % d == 0):
        for tp in (t for t in range(1, n // dp + 1) if n // dp % t == 0):
            pp = n // dp // tp
            out.append("x".join(f"{k}{v}" for k, v in (("dp", dp), ("tp", tp), ("pp", pp)) if v > 1) or "tp1")
    return out


def degree(layout: str, axis: str) -> int:
    m = re.search(axis + r"(\d+)", layout)
    return int(m.group(1)) if m else 1


def fits(layout: str, n: int, length: int, batch: int) -> bool:
    try:
        return plan("llama-3.1-70b", f"{n}xH100-80GB", layout, max_length=length, max_batch_size=batch).fits
    except InputError:  # tp not a divisor of the heads
        return False


def fits_on(n: int, length: int, batch: int) -> bool:
    """Does any layout of one host of n H100s serve batch × length? (independent of review.fit)"""
    return any(fits(layout, n, length, batch) for layout in all_layouts(n))


@pytest.mark.parametrize(("length", "batch", "fewest"), [(8192, 16, 3), (32768, 24, 6)])
def test_fit_fewest_devices_none_smaller_fits_and_headroom_by_hand(length, batch, fewest):
    r = invoke("fit", "--model", "llama-3.1-70b", "--target-length", str(length), "--target-concurrency",
               str(batch), "--device", "H100-80GB", "--json")
    assert r.exit_code == 0, r.output
    options = json.loads(r.stdout)
    assert options and {o["devices"] for o in options} == {fewest}
    assert not any(fits_on(n, length, batch) for n in range(1, fewest))
    assert {o["layout"] for o in options} == {lay for lay in all_layouts(fewest) if fits(lay, fewest, length, batch)}
    heads = [o["headroom_bytes"] for o in options]
    assert heads == sorted(heads, reverse=True)
    for o in options:
        assert o["mesh"] == f"{fewest}xH100-80GB"
        p = plan("llama-3.1-70b", o["mesh"], o["layout"], max_length=length, max_batch_size=batch)
        assert p.fits and p.max_batch_size == o["max_batch_size"] >= batch
        dp, tp, pp = (degree(o["layout"], k) for k in ("dp", "tp", "pp"))
        assert p.num_replicas == dp and dp * tp * pp == fewest
        layers = stage_layers([vars(row) for row in p.devices], tp, pp)
        need = math.ceil(batch / dp) * (length // PAGE) + NULL_PAGES  # pages on each device of a replica
        assert o["headroom_bytes"] == min(row.kv_budget_bytes - need * page_bytes(tp, layers=layers[row.stage])
                                          for row in p.devices)


def test_fit_default_target_fewest_devices_span_hosts():
    # fit tries every size; a tensor group stays inside one host (hosts of at most 8)
    r = invoke("fit", "--json")
    assert r.exit_code == 0, r.output
    options = json.loads(r.stdout)
    assert {o["devices"] for o in options} == {12}
    assert not any(fits_on(n, 32768, 64) for n in range(1, 12))
    best = options[0]
    assert best["layout"] == "tp4xpp3" and best["mesh"] == "3x4xH100-80GB"  # tp4 fits 3 hosts of 4, not 2 of 6
    assert {o["layout"] for o in options} == {lay for lay in all_layouts(12) if fits(lay, 12, 32768, 64)}
    # by hand: 64 requests × 32768 tokens × 320 KiB a token = 640 GiB of KV, plus 131 GiB of weights
    kv = 64 * 32768 * 2 * 80 * 8 * 128 * 2
    assert kv + weights_bytes(1) > 8 * H100_BUDGET


def test_fit_nothing_fits_exits_1():
    r = invoke("fit", "--model", "llama-3.1-405b", "--device", "L4-24GB", "--max-devices", "2",
               "--target-length", "1024", "--target-concurrency", "1")
    assert r.exit_code == 1
    assert "nothing up to 2" in r.stderr


# --- devices, models, plan on a config file ------------------------------------------------------

def test_devices_json_catalog_facts():
    r = invoke("devices", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    catalog = {c["name"]: c for c in d["catalog"]}
    assert len(catalog) == len(d["catalog"]) >= 16 and d["live"] == []
    h100 = catalog["H100-80GB"]
    assert h100["platform"] == "gpu" and "H100" in h100["aliases"]
    assert h100["memory_bytes"] == 81559 * MiB and 79.5 < h100["memory_bytes"] / GiB <= 80
    assert h100["usable_bytes"] == H100_USABLE and 79 < H100_USABLE / GiB < h100["memory_bytes"] / GiB
    assert h100["hbm_bandwidth"] == 3.35e12
    assert catalog["H200-141GB"]["memory_bytes"] > 1.7 * h100["memory_bytes"]
    assert all(0 < c["usable_bytes"] <= c["memory_bytes"] for c in catalog.values())
    assert {c["platform"] for c in catalog.values()} >= {"gpu", "tpu", "cpu"}


def test_models_json_presets_by_hand():
    r = invoke("models", "--json")
    assert r.exit_code == 0, r.output
    models = {m["name"]: m for m in json.loads(r.stdout)}
    assert len(models) >= 10 and {"llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"} <= set(models)
    m = models["llama-3.1-70b"]
    assert (m["num_layers"], m["hidden_size"], m["num_attention_heads"], m["num_kv_heads"], m["head_dim"]) == \
        (80, 8192, 64, 8, 128)
    assert m["parameters"] == weights_bytes(1) // 2
    h, kv, layers = 4096, 8 * 128, 32  # llama-3.1-8b: 8,030,261,248 parameters
    assert models["llama-3.1-8b"]["parameters"] == (layers * (2 * h * h + 2 * h * kv + 3 * h * 14336 + 2 * h)
                                                    + 2 * 128256 * h + h) == 8_030_261_248


def test_plan_on_a_config_file_equals_the_preset(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
        "torch_dtype": "bfloat16", "tie_word_embeddings": False}))
    r = invoke("plan", "--model", str(config), "--mesh", "8xH100-80GB", "--layout", "tp8", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    check_plan_by_hand(d, (1, 8, 1), d["planned_max_length"])
    assert d["pages_per_replica"] == plan("llama-3.1-70b", "8xH100-80GB", "tp8").pages_per_replica


# --- report --------------------------------------------------------------------------------------

def png_ok(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 400 and im.height >= 300, im.size
        pixels = np.asarray(im.convert("RGB"), dtype=float)
    assert pixels.std() > 20  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8  # several colours, not a flat fill


def report_table(md: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in md.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_report_folder_overwrite_and_reproduce(tmp_path):
    out = tmp_path / "review"
    r = invoke("report", "--model", "llama-3.1-70b", "--mesh", "8xH100-80GB", "--layouts", "tp8,dp2xtp4",
               "--max-model-len", "32768", "--out", str(out))
    assert r.exit_code == 0, r.output
    files = [out / "report.md", out / "memory.png", out / "feasibility.png"]
    assert r.stdout.split() == [str(f) for f in files]
    md = files[0].read_text()
    table = report_table(md)
    assert table[""] == ["8xH100-80GB tp8", "8xH100-80GB dp2xtp4"]
    tp8, dp2 = (plan("llama-3.1-70b", "8xH100-80GB", lay, max_length=32768) for lay in ("tp8", "dp2xtp4"))
    assert table["pages per replica"] == [f"{tp8.pages_per_replica:,}", f"{dp2.pages_per_replica:,}"]
    assert table["max batch at 32,768 tokens"] == [str((tp8.pages_per_replica - 1) // 256),
                                           str(2 * ((dp2.pages_per_replica - 1) // 256))]
    assert table["page / device (MiB)"] == ["5.00", "10.00"] and table["fits"] == ["yes", "yes"]
    assert "![memory per device](memory.png)" in md and "(feasibility.png)" in md
    command = re.search(r"## Reproduce\n\n```bash\n(.+)\n```", md).group(1)
    argv = shlex.split(command)
    assert argv[:2] == ["kvfit", "report"] and argv[argv.index("--out") + 1] == str(out)
    for png in files[1:]:
        png_ok(png)

    # a second run into the same folder: refused, nothing touched
    old = 1_000_000_000
    for f in files:
        os.utime(f, (old, old))
    before = [f.read_bytes() for f in files]
    again = invoke(*argv[1:])
    assert again.exit_code == 2
    lines = again.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out=") and "--overwrite" in lines[0]
    assert [f.stat().st_mtime for f in files] == [old] * 3 and [f.read_bytes() for f in files] == before

    # the reproduce command with --overwrite rewrites the same report
    again = invoke(*argv[1:], "--overwrite")
    assert again.exit_code == 0, again.output
    assert all(f.stat().st_mtime > old for f in files)
    assert files[0].read_text() == md


def test_report_refuses_a_file_and_leaves_no_folder_on_bad_input(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    r = invoke("report", "--out", str(a_file))
    assert r.exit_code == 2 and r.stderr.startswith("error: --out=") and a_file.read_text() == "mine"
    r = invoke("report", "--mesh", "8xH1000", "--out", str(tmp_path / "never"))
    assert r.exit_code == 2
    assert not (tmp_path / "never").exists()


# --- --help --------------------------------------------------------------------------------------

COMMANDS = ["plan", "models", "sweep", "compare", "explain", "fit", "devices", "report", "engines", "translate"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_an_example(command):
    r = invoke(*([command] if command else []), "--help")
    assert r.exit_code == 0, r.output
    assert re.search(r"^\W*Example: kvfit ", r.output, re.M), r.output


def test_help_as_a_subprocess():
    done = kvfit("--help")
    assert done.returncode == 0 and "Example: kvfit" in done.stdout
    assert all(c in done.stdout for c in COMMANDS)


# --- bad input: exit 2, one line on stderr naming the field --------------------------------------

# What each command needs besides the bad value (report: a folder; translate: its engines; sweep: a
# one-cell grid so that a surprise pass stays cheap).
REQUIRED = {"report": lambda tmp: ["--out", str(tmp / "review")],
            "translate": lambda tmp: ["--from", "vllm", "--to", "sglang", "--knob-value", "0.9"],
            "sweep": lambda tmp: ["--batch", "1", "--length", "128"]}
MESH_FLAG = {"fit": ("--device", "H1000", "device")}
LAYOUT_FLAG = {"plan": "--layout", "explain": "--layout", "engines": "--layout", "translate": "--layout",
               "compare": "--layouts", "sweep": "--layouts", "report": "--layouts"}
CONFLICTS = {
    "plan": [["--layout", "tp8", "--tp", "8"], ["--allow-cpu-proxy"]],
    "engines": [["--layout", "tp8", "--tp", "8"]],
    "translate": [["--layout", "tp8", "--tp", "8"]],
    "compare": [["--csv", "--json"]],
    "sweep": [["--csv", "--json"]],
}
# models and devices take no model, mesh or layout: nothing to get wrong but typer's own flag parsing.
# fit chooses its layouts itself (no layout flag). --csv prints to stdout on every command (sweep's
# every-cell file is --cells-csv), so it excludes --json everywhere.
WITH_MODEL = sorted([*LAYOUT_FLAG, "fit"])
BAD = ([(c, "model", ["--model", "llama-9"], "model") for c in WITH_MODEL]
       + [(c, "config", ["--model", "/nonexistent/config.json"], "model") for c in WITH_MODEL]
       + [(c, "mesh", [flag, value], field) for c in WITH_MODEL
          for flag, value, field in [MESH_FLAG.get(c, ("--mesh", "8xH1000", "mesh"))]]
       + [(c, "layout", ["--mesh", "8xH100-80GB", flag, "tp3"], "layout") for c, flag in LAYOUT_FLAG.items()]
       + [(c, "conflict", args, args[0]) for c, cases in CONFLICTS.items() for args in cases])


def assert_one_error_line(exit_code: int, stdout: str, stderr: str, field: str) -> None:
    assert exit_code == 2, (exit_code, stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {field}="), lines[0]
    assert stdout == "" and "Traceback" not in stderr


@pytest.mark.parametrize(("command", "kind", "args", "field"), BAD,
                         ids=[f"{c}-{k}-{' '.join(a)}" for c, k, a, _ in BAD])
def test_bad_input_exits_2_with_one_error_line(tmp_path, command, kind, args, field):
    extra = REQUIRED.get(command, lambda _: [])(tmp_path)
    r = invoke(command, *extra, *args)
    assert_one_error_line(r.exit_code, r.stdout, r.stderr, field)
    assert not (tmp_path / "review").exists()


@pytest.mark.parametrize(("args", "field"), [
    (["plan", "--model", "llama-3.1-70b", "--mesh", "8xH100-80GB", "--layout", "tp3"], "layout"),
    (["compare", "--json", "--csv"], "--csv"),
])
def test_bad_input_as_a_subprocess(args, field):
    done = kvfit(*args)
    assert_one_error_line(done.returncode, done.stdout, done.stderr, field)


# ----------------------------------------------------------------------------- --csv on every table
def _csv(*args: str) -> list[list[str]]:
    r = runner.invoke(app, [*args, "--csv"])
    assert r.exit_code == 0, r.output
    return list(csv.reader(io.StringIO(r.stdout)))


def test_models_csv_has_plain_numbers():
    rows = _csv("models")
    assert rows[0][:3] == ["preset", "type", "layers"]
    llama = next(r for r in rows if r[0] == "llama-3.1-8b")
    # per layer: q, o (2·h²), k, v (2·h·kv), gate/up/down (3·h·ffn), two norms (2·h);
    # then the untied embedding and LM head, and the final norm
    h, kv, ffn, vocab = 4096, 1024, 14336, 128256
    params = 32 * (2 * h * h + 2 * h * kv + 3 * h * ffn + 2 * h) + 2 * vocab * h + h
    assert llama[2] == "32" and llama[7] == f"{params / 1e9:.2f}" and llama[8] == "131072"


def test_fit_csv_rows_are_the_json_options():
    args = ("fit", "--model", "llama-3.1-8b", "--target-length", "131072", "--target-concurrency", "16")
    rows = _csv(*args)
    options = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert rows[0][:3] == ["devices", "mesh", "layout"]
    assert [(int(r[0]), r[1], r[2]) for r in rows[1:]] == [(o["devices"], o["mesh"], o["layout"]) for o in options]


def test_engines_and_devices_csv():
    engines = _csv("engines", "--engines", "vllm,sglang", "--max-model-len", "8192")
    assert engines[0] == ["", "vllm 0.34", "sglang 0.5.23"]
    tokens = next(r for r in engines if r[0] == "KV tokens (as logged)")
    plans = json.loads(runner.invoke(app, ["engines", "--engines", "vllm,sglang", "--max-model-len", "8192",
                                           "--json"]).stdout)
    assert [int(t) for t in tokens[1:]] == [p["kv_tokens"] for p in plans]
    devices = _csv("devices")
    h100 = next(r for r in devices if r[0] == "H100-80GB")
    assert h100[1] == "gpu" and float(h100[2]) == pytest.approx(81559 / 1024, abs=0.005)


@pytest.mark.parametrize("command", [["models"], ["devices"], ["fit"], ["engines"], ["compare"]])
def test_json_and_csv_together_is_bad_input(command):
    r = runner.invoke(app, [*command, "--json", "--csv"])
    assert r.exit_code == 2 and r.stderr.startswith("error: --csv=")


def test_the_spinner_appears_only_for_slow_work(monkeypatch):
    import time

    from estimator.cli import options as cli_options

    events: list[str] = []

    class FakeStatus:
        def start(self) -> None:
            events.append("start")

        def stop(self) -> None:
            events.append("stop")

    monkeypatch.setattr(cli_options.err, "status", lambda *a, **k: FakeStatus())
    with cli_options.slow_work("quick", delay=5.0):
        pass
    assert events == ["stop"]  # never started
    events.clear()
    with cli_options.slow_work("slow", delay=0.01):
        time.sleep(0.2)
    assert events == ["start", "stop"]


def test_explain_without_a_target_still_finds_more_devices():
    # 70B in bf16 is 141 GB of weights: one 80 GB card cannot hold it, two can (70.5 GB each)
    r = runner.invoke(app, ["explain", "--model", "llama-3.1-70b", "--mesh", "1xH100-80GB", "--json"])
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert not d["fits"] and d["alternatives"]
    first = d["alternatives"][0]
    assert first["plan"]["fits"] and len(first["plan"]["devices"]) == 2
    assert "--mesh 2xH100-80GB" in first["command"]


def test_report_never_writes_through_a_link_or_over_a_folder(tmp_path):
    # even with --overwrite: memory.png as a link to a user's file, report.md as a folder
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    out = tmp_path / "review"
    out.mkdir()
    (out / "memory.png").symlink_to(precious)
    r = invoke("report", "--out", str(out), "--overwrite")
    assert r.exit_code == 2 and "symbolic link" in r.stderr and precious.read_text() == "mine"
    (out / "memory.png").unlink()
    (out / "report.md").mkdir()
    r = invoke("report", "--out", str(out), "--overwrite")
    assert r.exit_code == 2 and "report.md" in r.stderr and not (out / "memory.png").exists()
