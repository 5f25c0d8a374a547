"""kvfit plan as a user runs it: exit codes 0 / 1 / 2, JSON keys, one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from estimator.cli.app import app
from meshes.validation import InputError

runner = CliRunner()


def test_default_plan_fits_and_prints_a_table():
    r = runner.invoke(app, ["plan"])
    assert r.exit_code == 0, r.output
    assert "pages per replica" in r.output and "llama-3.1-8b" in r.output


def test_json_has_the_promised_keys():
    r = runner.invoke(app, ["plan", "--model", "llama-3.1-70b", "--mesh", "8xH100-80GB",
                            "--tensor-parallel-size", "8", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["layout"] == "tp8" and d["page_size"] == 128
    assert {row["page_bytes"] for row in d["devices"]} == {5_242_880}


def test_does_not_fit_exits_1_with_a_suggestion():
    r = runner.invoke(app, ["plan", "--model", "llama-3.1-70b", "--mesh", "8xH100-80GB",
                            "--max-model-len", "131072", "--max-batch-size", "64"])
    assert r.exit_code == 1
    assert "reduce --max-length" in r.output


@pytest.mark.parametrize("args", [
    ["--mesh", "8xH1000"],
    ["--model", "llama-9"],
    ["--model", "/nonexistent/config.json"],
    ["--mesh", "8xH100-80GB", "--layout", "dp3xtp2"],
    ["--mesh", "8xH100-80GB", "--layout", "tp8", "--tp", "8"],
    ["--gpu-memory-utilization", "1.5"],
    ["--page-size", "0"],
])
def test_bad_input_one_line_exit_2(args):
    r = runner.invoke(app, ["plan", *args])
    assert r.exit_code == 2, r.output
    assert "error:" in r.output and "Traceback" not in r.output


def test_installed_console_script():
    exe = shutil.which("kvfit")
    if exe is None:
        pytest.skip("kvfit console script not on PATH (package not installed)")
    done = subprocess.run([exe, "plan", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pages_per_replica"] > 0


def _hand_pages(row: dict) -> int:
    """Pages of a device row, by hand: what is left of the budget over the page bytes."""
    left = row["budget_bytes"] - row["weights_bytes"] - row["activation_bytes"] - row["signal_bytes"]
    return left // row["page_bytes"]


def test_explain_puts_both_activation_models_side_by_side():
    r = runner.invoke(app, ["plan", "--explain", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    analytic, xla = d["activation_models"]["analytic"], d["activation_models"]["xla"]
    row = d["devices"][0]
    assert row["page_bytes"] == 2 * 32 * 8 * 128 * 2 * 128  # llama-3.1-8b, bf16, page 128: 16 MiB
    assert analytic["activation_bytes"] == row["activation_bytes"]
    assert analytic["pages_per_replica"] == _hand_pages(row) == d["pages_per_replica"]
    # a GPU mesh is never compiled on this CPU host without --allow-cpu-proxy, and says why
    assert xla["available"] is False and "gpu" in xla["reason"] and "allow_cpu_proxy" in xla["reason"]


@pytest.mark.slow
def test_explain_with_a_cpu_proxy_compiles_the_mesh():
    # a subprocess: the CLI asks XLA for one CPU device per mesh device before JAX starts
    kvfit = shutil.which("kvfit")
    if kvfit is None:
        pytest.skip("the kvfit console script is not installed")
    out = subprocess.run([kvfit, "plan", "--model", "llama-3.1-8b", "--mesh", "2xH100-80GB", "--explain",
                          "--allow-cpu-proxy", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    xla = d["activation_models"]["xla"]
    assert xla["available"] and xla["cpu_proxy"] and xla["activation_bytes"] > 0
    row = dict(d["devices"][0], activation_bytes=xla["activation_bytes"])
    assert xla["pages_per_replica"] == _hand_pages(row)


def test_allow_cpu_proxy_needs_xla_or_explain():
    r = runner.invoke(app, ["plan", "--allow-cpu-proxy"])
    assert r.exit_code == 2 and "--allow-cpu-proxy" in r.output


def test_a_length_past_the_context_limit_is_planned_with_a_warning():
    r = runner.invoke(app, ["plan", "--model", "llama-3.1-8b", "--max-model-len", "262144", "--json"])
    assert r.exit_code == 0, r.output
    warnings = json.loads(r.stdout)["warnings"]
    assert any("context limit" in w and "131,072" in w for w in warnings)


@pytest.mark.parametrize(("args", "field"), [
    (["plan", "--max-length", "1000", "--max-model-len", "2000"], "--max-length"),
    (["plan", "--gpu-memory-utilization", "0.5", "--device-memory-utilization=0.8"], "--device-memory-utilization"),
    (["plan", "--tp", "2", "--tp", "4"], "--tensor-parallel-size"),
    (["plan", "--max-length", "nan"], "--max-length"),
    (["plan", "--nope"], "--nope"),
])
def test_the_installed_kvfit_gives_one_line_for_typer_level_errors(args, field):
    kvfit = shutil.which("kvfit")
    if kvfit is None:
        pytest.skip("the kvfit console script is not installed")
    out = subprocess.run([kvfit, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], out.stderr


def test_same_option_under_two_names_is_refused():
    from estimator.cli.app import check_repeated_options

    check_repeated_options(["plan", "--max-length", "10", "--tp", "2", "--layout", "tp8"])  # no repeats: fine
    with pytest.raises(InputError) as err:
        check_repeated_options(["plan", "--max-model-len", "10", "--max-length=20"])
    assert err.value.field == "--max-length"
    with pytest.raises(InputError) as err:  # an attached short form after the long one
        check_repeated_options(["plan", "--model", "llama-3.1-70b", "-mllama-3.1-8b"])
    assert err.value.field == "-m"


@pytest.mark.parametrize(("args", "code"), [([], 0), (["--model", "llama-3.1-70b", "--mesh", "8xH100-80GB",
                                                       "--max-model-len", "32768", "--max-num-seqs", "64"], 1)])
def test_a_reader_that_stops_early_keeps_the_verdict(args, code):
    """``kvfit plan | head -1``: the pipe closes mid-output, the exit code is still the plan's verdict."""
    exe = shutil.which("kvfit")
    if exe is None:
        pytest.skip("the kvfit console script is not installed")
    proc = subprocess.Popen([exe, "plan", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away before kvfit writes (it takes ~0.3 s to start)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_advice_uses_the_batch_flag_the_user_gave():
    # --max-num-seqs counts requests per replica: the advice divides the total by the 8 replicas
    total = runner.invoke(app, ["plan", "--mesh", "8xH100-80GB", "--dp", "8", "--max-batch-size", "2048"])
    per = runner.invoke(app, ["plan", "--mesh", "8xH100-80GB", "--dp", "8", "--max-num-seqs", "256"])
    assert total.exit_code == per.exit_code == 1
    n = int(re.search(r"reduce --max-batch-size to (\d+)", total.output).group(1))
    assert f"reduce --max-num-seqs to {n // 8}" in per.output and "--max-batch-size" not in per.output
