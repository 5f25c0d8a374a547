"""kvfit sweep as a user runs it: ranges, the frontier table, JSON, CSV, PNG, exit codes 0/1/2."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from estimator.cli.app import app
from estimator.cli.sweep import _LazyProgress, parse_axis
from estimator.sweeps.grid import sweep_frontier
from meshes import InputError

runner = CliRunner()
BASE = ["sweep", "--model", "llama-3.1-8b", "--mesh", "8xH100-80GB", "--layouts", "tp8,dp2xtp4"]


@pytest.mark.parametrize(("text", "values"), [
    ("1:4096", [2**k for k in range(13)]),
    ("128:131072", [2**k for k in range(7, 18)]),
    ("100:1000", [100, 128, 256, 512, 1000]),
    ("1:10:3", [1, 4, 7, 10]),
    ("5", [5]),
    ("1,8:32, 100", [1, 8, 16, 32, 100]),
    ("7:7", [7]),
])
def test_parse_axis(text, values):
    assert parse_axis("--batch", text) == values


@pytest.mark.parametrize("text", ["", "a:b", "0:8", "8:4", "1:8:0", "1:2:3:4", "1.5", "1:"])
def test_parse_axis_refuses(text):
    with pytest.raises(InputError) as e:
        parse_axis("--batch", text)
    assert e.value.field == "--batch"


def test_parse_axis_floats_for_utilizations():
    assert parse_axis("--utilizations", "0.8,0.9", float) == [0.8, 0.9]
    with pytest.raises(InputError):
        parse_axis("--utilizations", "0.1:0.9", float)


def test_table_of_max_batch_per_length():
    r = runner.invoke(app, [*BASE, "--batch", "1:4096", "--length", "128:131072"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "max batch per length" in r.output and "dp2xtp4" in r.output
    assert "131,072" in r.output and "4,096" in r.output
    assert f"{13 * 11 * 2:,} cells" in r.output


def test_json_frontiers_equal_the_library():
    r = runner.invoke(app, [*BASE, "--batch", "1:4096", "--length", "1024:131072",
                            "--kv-cache-dtypes", "bf16,fp8", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    f = sweep_frontier("llama-3.1-8b", "8xH100-80GB", layouts=["tp8", "dp2xtp4"],
                       batch_sizes=parse_axis("b", "1:4096"), lengths=parse_axis("l", "1024:131072"),
                       kv_cache_dtypes=["bf16", "fp8"])
    assert d["coords"]["kv_dtype"] == ["bfloat16", "float8_e4m3fn"]
    assert [x["max_batch"] for x in d["frontiers"]] == f.max_batch.reshape(4, -1).tolist()
    assert d["frontiers"][0]["layout"] == "tp8" and d["frontiers"][3]["layout"] == "dp2xtp4"


def test_cells_csv_has_every_cell(tmp_path):
    path = tmp_path / "cells.csv"
    r = runner.invoke(app, [*BASE, "--batch", "1,64", "--length", "1000:3000:1000", "--cells-csv",
                            str(path)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 * 2 * 3
    assert {row["layout"] for row in rows} == {"tp8", "dp2xtp4"}
    assert rows[0]["feasible"] == "True" and rows[0]["reason_name"] == "fits"


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "frontier.png"
    r = runner.invoke(app, [*BASE, "--batch", "1:64", "--length", "128:4096", "--plot", str(path)])
    assert r.exit_code == 0, r.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_fits_exits_1():
    r = runner.invoke(app, ["sweep", "--model", "llama-3.1-405b", "--mesh", "1xH100-80GB",
                            "--batch", "1", "--length", "128"])
    assert r.exit_code == 1
    assert "no cell fits" in r.output


@pytest.mark.parametrize(("args", "field"), [
    (["--batch", "0:8"], "--batch"),
    (["--length", "x"], "--length"),
    (["--layouts", "tp3"], "layout"),
    (["--kv-cache-dtypes", "fp9"], "--kv-cache-dtypes"),
    (["--device-memory-utilization", "1.5"], "--device-memory-utilization"),
    (["--page-sizes", "0"], "--page-sizes"),
    (["--batch", "0"], "--batch=0"),
    (["--max-batch-input-tokens", "4611686018427387904"], "--max-batch-input-tokens"),
    (["--mesh", "8xH1000"], "mesh"),
])
def test_bad_input_exits_2_with_one_line(args, field):
    r = runner.invoke(app, [*BASE, *args])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0]


def test_lazy_progress_bar_shows_only_after_the_delay():
    quick = _LazyProgress(delay=3600)
    quick(1, 10)
    assert quick._bar is None
    slow = _LazyProgress(delay=0)
    slow(1, 10)
    slow(10, 10)
    assert slow._bar is not None
    slow.close()


def test_outputs_never_clobber_what_the_user_gave(tmp_path):
    # an existing file is kept unless --overwrite; a link is never written through; an input
    # (the model's config.json) is never an output
    grid = [*BASE, "--batch", "1,64", "--length", "1000:2000:1000"]
    kept = tmp_path / "kept.csv"
    kept.write_text("precious\n")
    r = runner.invoke(app, [*grid, "--cells-csv", str(kept)])
    assert r.exit_code == 2 and "--overwrite" in r.output and kept.read_text() == "precious\n"
    r = runner.invoke(app, [*grid, "--cells-csv", str(kept), "--overwrite"])
    assert r.exit_code == 0 and kept.read_text().startswith("layout")
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    (tmp_path / "link.png").symlink_to(target)
    r = runner.invoke(app, [*grid, "--plot", str(tmp_path / "link.png"), "--overwrite"])
    assert r.exit_code == 2 and "symbolic link" in r.output and target.read_text() == "precious\n"
    config = tmp_path / "model.csv"
    config.write_text(json.dumps({"model_type": "llama"}))
    r = runner.invoke(app, ["sweep", "--model", str(config), "--cells-csv", str(config), "--overwrite"])
    assert r.exit_code == 2 and "inputs" in r.output and json.loads(config.read_text()) == {"model_type": "llama"}
