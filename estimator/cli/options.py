"""What every ``kvfit`` command shares: consoles, option types, the bad-input exit, GiB text,
checks of output paths and of JAX's environment, and Ctrl-C between chunks of work.

Flag names follow the engines users know: ``--max-model-len`` beside ``--max-length``,
``--tensor-parallel-size`` / ``--tp``, ``--gpu-memory-utilization`` beside
``--device-memory-utilization``, ``--max-num-seqs`` (per replica, as vLLM's) beside
``--max-batch-size`` (over all replicas). Exit codes: 0 fits, 1 does not fit, 2 bad input,
3 a bug, 130 interrupted.

Text that comes from users or files (model names, paths, engine messages) goes through
:func:`safe` before rich sees it: control characters dropped, markup escaped.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from meshes.catalog import GiB
from meshes.validation import InputError, check_int, plain_text

# Piped output (CI logs, `| less`, subprocess tests) gets wide tables rather than 80 columns.
# emoji=False: "a:b:step" and other user text with colons prints as written, never as an emoji.
_WIDTH = None if sys.stdout.isatty() else max(160, shutil.get_terminal_size((160, 24)).columns)
out = Console(width=_WIDTH, emoji=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160, emoji=False)


def print_json(data: Any, *, default: Any = None) -> None:
    """``data`` as indented JSON on stdout, unstyled: rich's highlighter takes seconds a megabyte
    (a 16,384-device plan is 6 MB); control characters stay escaped."""
    out.file.write(json.dumps(data, indent=2, ensure_ascii=False, default=default) + "\n")
    out.file.flush()


def safe(value: object, limit: int = 200) -> str:
    """User or file text (a model name, a path, an engine's message) for a rich table or message:
    one printable line, markup escaped."""
    return escape(plain_text(value, limit))


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Preset name (kvfit models) or path to an HF "
                                       "config.json.")]
MeshOpt = Annotated[str, typer.Option("--mesh", help="Mesh preset (8xH100-80GB, 2x8xH100-80GB, v5e-16, ...; "
                                       "kvfit devices lists them) or live: this machine's JAX devices, read live.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]
LayoutOpt = Annotated[str | None, typer.Option("--layout", help="Layout such as tp8, dp2xtp4, pp2xtp4.")]
TpOpt = Annotated[int | None, typer.Option("--tensor-parallel-size", "--tp", help="Devices one layer is split "
                                           "over (a tensor group; instead of --layout).")]
DpOpt = Annotated[int | None, typer.Option("--data-parallel-size", "--dp", help="Replicas, each holding the "
                                           "whole model (instead of --layout).")]
PpOpt = Annotated[int | None, typer.Option("--pipeline-parallel-size", "--pp", help="Pipeline stages the "
                                           "layers are cut into (instead of --layout).")]
EpOpt = Annotated[int | None, typer.Option("--expert-parallel-size", "--ep", help="Devices the experts of an "
                                           "MoE model are spread over (MoE models only).")]
PageOpt = Annotated[int, typer.Option("--page-size", "--block-size", help="Tokens per KV page (vLLM's "
                                      "--block-size); TPU meshes: 16, 32, 64, 128 or 256.")]
LengthOpt = Annotated[int | None, typer.Option("--max-length", "--max-model-len", help="Tokens of one request.")]
BatchOpt = Annotated[int | None, typer.Option("--max-batch-size", help="Requests at once, over all replicas.")]
NumSeqsOpt = Annotated[int | None, typer.Option("--max-num-seqs", help="Requests at once per replica (vLLM's "
                                                "--max-num-seqs); instead of --max-batch-size.")]
UtilOpt = Annotated[float, typer.Option("--device-memory-utilization", "--gpu-memory-utilization",
                                        help="Fraction of each device's free memory kvfit may plan.")]
DtypeOpt = Annotated[str | None, typer.Option("--kv-cache-dtype", help="bf16, fp8, fp16, fp32; default: the "
                                              "weights' dtype.")]


def fail_input(error: InputError) -> NoReturn:
    """Bad input: one unwrapped line on stderr, exit code 2."""
    typer.echo(f"error: {error_line(error)}", err=True)
    raise typer.Exit(2)


def error_line(error: BaseException) -> str:
    """An error as one printable line (values from users may hold newlines or ESC bytes)."""
    return plain_text(str(error), 2000)


_NUMBER = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def print_table(table: Table, as_csv: bool = False) -> None:
    """The table for people, or its cells as CSV (markup stripped, thousands separators dropped)."""
    if not as_csv:
        out.print(table)
        return

    def plain(cell: object) -> str:
        text = Text.from_markup(cell, emoji=False).plain if isinstance(cell, str) else str(cell)
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
    """--json and --csv both print the result to stdout: one of them."""
    if as_json and as_csv:
        raise InputError("--csv", True, "either --json or --csv, not both")


def total_batch(max_batch_size: int | None, max_num_seqs: int | None, replicas: int) -> int | None:
    """Requests at once over all replicas: --max-batch-size as given, or --max-num-seqs × replicas."""
    if max_batch_size is not None and max_num_seqs is not None:
        raise InputError("--max-num-seqs", max_num_seqs, "either --max-num-seqs (per replica) or "
                         "--max-batch-size (over all replicas), not both")
    if max_num_seqs is None:
        return max_batch_size
    # the total over the replicas is what plan() takes (max_batch_size ≤ 2^31 − 1)
    return check_int("--max-num-seqs", max_num_seqs, maximum=(2**31 - 1) // max(replicas, 1)) * replicas


def replicas_of(mesh: str, layout: str | None) -> int:
    """The data-parallel degree of ``layout`` (or the mesh's default layout) on ``mesh``."""
    from estimator.core.layout import Layout
    from meshes.mesh import DeviceMesh

    return Layout.resolve(layout, DeviceMesh.from_preset(mesh)).data


def check_layout_applies(model: str, layout: str | None) -> None:
    """An expert-parallel degree above 1 only for an MoE model (a dense model has no experts)."""
    if not layout:
        return
    from estimator.core.layout import Layout
    from estimator.model.resolve import resolve_model

    expert = Layout.parse(layout).expert
    if expert > 1:
        spec = resolve_model(model)
        if not spec.is_moe:
            raise InputError("--expert-parallel-size", expert, f"1 for {spec.name}, a dense model "
                             "(expert parallelism applies to MoE models)")


# ------------------------------------------------------------------ output paths, before the work
# ------------------------------------------------------------------ Ctrl-C between chunks
_interrupted = threading.Event()


def _on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C: raise KeyboardInterrupt while only Python runs; once JAX is loaded only set a flag
    (an exception raised inside JAX's callbacks is swallowed or crashes), checked between chunks by
    :func:`stop_if_interrupted`. A second Ctrl-C exits at once."""
    if _interrupted.is_set() or ("jax" not in sys.modules and _importing(frame)):
        # a second Ctrl-C; or one inside an import, where KeyboardInterrupt would surface as the
        # C extension's ImportError: nothing is half-written yet, so leave at once
        os.write(2, b"interrupted\n")
        os._exit(130)
    _interrupted.set()
    if "jax" not in sys.modules:
        raise KeyboardInterrupt


def _importing(frame: Any) -> bool:
    """Whether Python is inside an import (importlib's frames are on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def interruptible() -> Iterator[None]:
    """Run the body under :func:`_on_sigint`; a Ctrl-C left pending at its end raises KeyboardInterrupt
    (exit 130). Re-entrant; does nothing outside the main thread or where SIGINT is ignored (nohup)."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None or previous is signal.SIG_IGN or previous is _on_sigint:
        yield
        return
    _interrupted.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
        stop_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted.clear()


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed inside :func:`interruptible`."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


# ------------------------------------------------------------------ JAX's environment, before JAX starts
# jax/_src/config.py bool_env: the spellings JAX accepts for a boolean variable
_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")
_JAX_BOOLS = ("JAX_ENABLE_X64", "JAX_DISABLE_JIT", "JAX_DEBUG_NANS", "JAX_DEBUG_INFS", "JAX_LOG_COMPILES",
              "JAX_ENABLE_CHECKS", "JAX_DISABLE_MOST_OPTIMIZATIONS", "JAX_EXPLAIN_CACHE_MISSES")
_PLATFORMS = {"cpu": (), "tpu": ("libtpu",), "cuda": ("jax_cuda12_plugin", "jax_cuda13_plugin"),
              "gpu": ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin"),
              "rocm": ("jax_rocm60_plugin", "jax_rocm7_plugin")}
_XLA_FLAG = re.compile(r"^--[A-Za-z0-9_]+(=.*)?$")
# flags the XLA in jaxlib 0.9–0.10 accepts (checked by starting JAX with each): no child JAX needed for them
_KNOWN_XLA_FLAGS = {"xla_force_host_platform_device_count", "xla_dump_to", "xla_dump_hlo_as_text",
                    "xla_dump_hlo_pass_re", "xla_cpu_multi_thread_eigen", "xla_gpu_cuda_data_dir"}
_probed_flags: set[str] = set()  # XLA_FLAGS values a child JAX accepted already


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _has_tpu_chips() -> bool:
    """TPU chips on the PCI bus, found as JAX finds them (jax/_src/hardware_utils.py,
    num_available_tpu_chips_and_device_id: Google's vendor id 0x1ae0)."""
    import glob

    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() == "0x1ae0":
                return True
        except OSError:
            continue
    return False


def _has_chips(platform: str) -> bool:
    """Whether this host has devices for ``platform``, by the device files JAX's hardware_utils
    checks (/dev/nvidia0, /dev/nvidiactl, /dev/dxg for NVIDIA; /dev/kfd for AMD)."""
    if platform == "tpu":
        return _has_tpu_chips()
    nvidia = any(os.path.exists(d) for d in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))
    amd = os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg")
    return {"cuda": nvidia, "rocm": amd}.get(platform, nvidia or amd)


def check_jax_env(environ: dict[str, str] | None = None, *, probe: bool = True, quiet_tpu: bool = True) -> None:
    """Check the variables JAX and XLA read at start-up, before JAX starts: a bad value makes JAX
    raise deep in its import or XLA abort the process. Also silences libtpu's start-up errors on a
    host without TPU chips (JAX_PLATFORMS left unset: cpu, or cuda,cpu where a GPU plugin and a
    GPU are present). ``probe``: start JAX once in a subprocess to check XLA_FLAGS' flag names
    (only XLA knows them; an unknown one aborts the process). ``quiet_tpu=False`` leaves the TPU
    plugin loadable (deviceless TPU compiles need it even on hosts without chips)."""
    env = os.environ if environ is None else environ
    for name in _JAX_BOOLS:
        value = env.get(name)
        if value is not None and value.strip().lower() not in (*_TRUE, *_FALSE):
            raise InputError(name, value, f"a boolean: one of {', '.join(_TRUE + _FALSE)}")
    platforms = env.get("JAX_PLATFORMS")
    if platforms is not None and platforms.strip():
        for item in (p.strip().lower() for p in platforms.split(",")):
            if item not in _PLATFORMS:
                raise InputError("JAX_PLATFORMS", platforms, f"a comma list of {', '.join(_PLATFORMS)} "
                                 "(or empty: JAX picks)")
            needs = _PLATFORMS[item]
            if needs and not any(_has_module(m) for m in needs):
                raise InputError("JAX_PLATFORMS", platforms, f"platforms whose JAX plugin is installed "
                                 f"({item} needs {' or '.join(needs)}; install jax[{item}] or unset it)")
            if environ is None and item != "cpu" and not _has_chips(item):  # JAX would fail to start it
                raise InputError("JAX_PLATFORMS", platforms, f"platforms this host has devices for (no {item} "
                                 "device found; unset JAX_PLATFORMS or use cpu)")
    flags = env.get("XLA_FLAGS", "")
    for token in flags.split():
        if not _XLA_FLAG.match(token):
            raise InputError("XLA_FLAGS", flags, f"--name=value flags separated by spaces ({token!r} is not one)")
        name, _, value = token[2:].partition("=")
        if name == "xla_force_host_platform_device_count":
            from meshes.mesh import MAX_MESH_DEVICES

            if not (value.isascii() and value.isdigit() and len(value) <= 6) or not 1 <= int(value) <= MAX_MESH_DEVICES:
                raise InputError("XLA_FLAGS", token, f"--xla_force_host_platform_device_count=N with N in "
                                 f"[1, {MAX_MESH_DEVICES}]")
    if environ is None:
        if quiet_tpu and platforms is None and _has_module("libtpu") and not _has_tpu_chips():
            gpu = any(_has_module(m) for m in _PLATFORMS["cuda"]) and _has_chips("cuda")
            os.environ["JAX_PLATFORMS"] = "cuda,cpu" if gpu else "cpu"  # libtpu would log errors
            os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        names = {t[2:].partition("=")[0] for t in flags.split()}
        if names - _KNOWN_XLA_FLAGS and probe and "jax" not in sys.modules and flags not in _probed_flags:
            _probe_xla_flags(flags)
            _probed_flags.add(flags)


def _probe_xla_flags(flags: str) -> None:
    """Start JAX in a child process with these XLA_FLAGS: XLA aborts on a flag it does not know."""
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ), check=False)
    except (OSError, subprocess.TimeoutExpired):
        return  # cannot tell: let JAX itself decide
    if done.returncode == 0:
        return
    lines = [ln for ln in (done.stderr or "").splitlines() if ln.strip()]
    said = next((ln for ln in lines if "flag" in ln.lower()), lines[-1] if lines else f"exit {done.returncode}")
    said = said.split("] ", 1)[-1] if "] " in said else said
    raise InputError("XLA_FLAGS", flags, f"flags this JAX/XLA accepts (XLA says: {plain_text(said, 300)})")


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
