"""What every ``kvfit`` command shares: consoles, option types, the bad-input exit, GiB text.

Flag names follow the engines users know: ``--max-model-len`` beside ``--max-length``,
``--tensor-parallel-size`` / ``--tp``, ``--gpu-memory-utilization`` beside
``--device-memory-utilization``. Exit codes: 0 fits, 1 does not fit, 2 bad input.
"""

from __future__ import annotations

import csv
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from meshes.catalog import GiB
from meshes.validation import InputError

# Piped output (CI logs, `| less`, subprocess tests) gets wide tables rather than 80 columns.
_WIDTH = None if sys.stdout.isatty() else max(160, shutil.get_terminal_size((160, 24)).columns)
out = Console(width=_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Preset name (kvfit models) or path to an HF "
                                       "config.json.")]
MeshOpt = Annotated[str, typer.Option("--mesh", help="Mesh preset: 8xH100-80GB, 2x8xH100-80GB, v5e-16, ...")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]
LayoutOpt = Annotated[str | None, typer.Option("--layout", help="Layout such as tp8, dp2xtp4, pp2xtp4.")]
TpOpt = Annotated[int | None, typer.Option("--tensor-parallel-size", "--tp")]
DpOpt = Annotated[int | None, typer.Option("--data-parallel-size", "--dp")]
PpOpt = Annotated[int | None, typer.Option("--pipeline-parallel-size", "--pp")]
EpOpt = Annotated[int | None, typer.Option("--expert-parallel-size", "--ep")]
LengthOpt = Annotated[int | None, typer.Option("--max-length", "--max-model-len", help="Tokens of one request.")]
BatchOpt = Annotated[int | None, typer.Option("--max-batch-size", "--max-num-seqs",
                                              help="Requests at once (per replica).")]
UtilOpt = Annotated[float, typer.Option("--device-memory-utilization", "--gpu-memory-utilization",
                                        help="Fraction of each device's free memory kvfit may plan.")]
DtypeOpt = Annotated[str | None, typer.Option("--kv-cache-dtype", help="bf16, fp8, fp16, fp32; default: the "
                                              "weights' dtype.")]


def fail_input(error: InputError) -> NoReturn:
    """Bad input: one unwrapped line on stderr, exit code 2."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


_NUMBER = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def print_table(table: Table, as_csv: bool = False) -> None:
    """The table for people, or its cells as CSV (markup stripped, thousands separators dropped)."""
    if not as_csv:
        out.print(table)
        return

    def plain(cell: object) -> str:
        text = Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)
        return text.replace(",", "") if _NUMBER.fullmatch(text) else text

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([plain(c.header) for c in table.columns])
    for row in zip(*(list(c.cells) for c in table.columns), strict=True):
        writer.writerow([plain(cell) for cell in row])


@contextmanager
def slow_work(label: str, delay: float = 1.0) -> Iterator[None]:
    """A transient spinner on stderr, shown only once the work has run for ``delay`` seconds."""
    status = err.status(label, spinner="dots")
    timer = threading.Timer(delay, status.start)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        status.stop()


def check_one_format(as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise InputError("--csv", True, "either --json or --csv, not both")


def comma_list(text: str | None) -> list[str]:
    """The items of a comma-separated option, stripped, empty ones dropped."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def gib(n: int) -> str:
    return f"{n / GiB:,.2f}"


def layout_text(layout: str | None, tp: int | None = None, dp: int | None = None, pp: int | None = None,
                ep: int | None = None) -> str | None:
    """``--layout`` or the ``--*-parallel-size`` flags (not both) as one layout string."""
    degrees = {"dp": dp, "tp": tp, "pp": pp, "ep": ep}
    if layout and any(v is not None for v in degrees.values()):
        raise InputError("--layout", layout, "either --layout or the --*-parallel-size flags, not both")
    if layout:
        return layout
    if all(v is None for v in degrees.values()):
        return None
    return "x".join(f"{k}{v}" for k, v in degrees.items() if v is not None)
