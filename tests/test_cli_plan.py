"""kvfit plan as a user runs it: exit codes 0 / 1 / 2, JSON keys, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from estimator.cli import app

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
