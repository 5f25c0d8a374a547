"""The ``kvfit`` command line (typer + rich): ``plan`` and ``models`` here, the other commands in
estimator.cli_* modules, all registered on one app.

Exit codes: 0 the request fits, 1 it does not (suggestions on stderr), 2 bad input (one line:
field, value, what is allowed), 3 an unexpected error (a bug: one line; the traceback with
``--debug`` or ``KVFIT_DEBUG=1``), 130 interrupted. jax, flax and matplotlib load only inside the
commands that need them, so ``kvfit plan`` starts fast.
"""
# ruff: noqa: E402  (the SIGINT guard below runs before the slow imports)

from __future__ import annotations

import os
import signal
import sys
import threading


def _quit_on_sigint(signum: int, frame: object) -> None:  # Ctrl-C while the CLI's modules load
    os.write(2, b"interrupted\n")
    os._exit(130)


_SIGINT_AT_IMPORT = (signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread()
                     else None)
if _SIGINT_AT_IMPORT is signal.default_int_handler:
    signal.signal(signal.SIGINT, _quit_on_sigint)

import re
from typing import Annotated, Any

import typer
from rich.table import Table

from estimator.cli.options import (
    BatchOpt,
    CsvOpt,
    DpOpt,
    DtypeOpt,
    EpOpt,
    GiB,
    JsonOpt,
    LayoutOpt,
    LengthOpt,
    MeshOpt,
    ModelOpt,
    NumSeqsOpt,
    PageOpt,
    PpOpt,
    TpOpt,
    UtilOpt,
    check_jax_env,
    check_layout_applies,
    check_one_format,
    err,
    error_line,
    fail_input,
    gib,
    interruptible,
    layout_text,
    out,
    print_json,
    print_table,
    replicas_of,
    safe,
    slow_work,
    total_batch,
)
from estimator.model.presets import DEFAULT_MESH, DEFAULT_MODEL
from estimator.planning.plan import MemoryPlan, plan
from meshes.validation import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"],
                                                           "max_content_width": 100},
                  help="kvfit: how many KV-cache pages fit on every device, how long a request "
                       "may be, and how many requests fit — before you rent the GPUs.\n\n"
                       "Example: kvfit plan --model llama-3.1-70b --mesh 8xH100-80GB --tp 8 --max-model-len 32768")


def plan_table(p: MemoryPlan, unit: int = GiB) -> Table:
    """Per-device rows of a plan, in GiB (``unit=1``: exact bytes)."""
    table = Table(title=f"{safe(p.model)} on {safe(p.mesh)} — {safe(p.layout)}, KV {safe(p.kv_cache_dtype)}, "
                        f"page {p.page_size}", title_justify="left")
    name = {GiB: "GiB", 1: "bytes"}[unit]
    columns = ("device", "stage", f"limit {name}", f"in use {name}", f"weights {name}", f"activ. {name}",
               f"signal {name}", f"KV pool {name}", "page MiB" if unit == GiB else "page bytes", f"free {name}")
    for col in columns:
        table.add_column(col, justify="left" if col == "device" else "right")

    def show(n: int) -> str:
        return gib(n) if unit == GiB else str(n)

    for r in p.devices:
        table.add_row(safe(r.device), str(r.stage), show(r.bytes_limit), show(r.bytes_in_use),
                      show(r.weights_bytes), show(r.activation_bytes), show(r.signal_bytes),
                      show(r.kv_pool_bytes), f"{r.page_bytes / 2**20:,.2f}" if unit == GiB else str(r.page_bytes),
                      show(r.free_bytes))
    return table


def print_plan(p: MemoryPlan, context_limit: int | None = None) -> None:
    """The table, then pages, lengths and batch; ``context_limit`` (the model's
    max_position_embeddings, shown when no --max-model-len was given) beside the capacity."""
    out.print(plan_table(p))
    limit = f" (model's context limit: {context_limit:,})" if context_limit is not None else ""
    out.print(f"pages per replica: [bold]{p.pages_per_replica:,}[/] × {p.num_replicas} replicas "
              f"({p.reserved_pages} reserved)   max sequence length: "
              f"[bold]{p.max_supported_sequence_length:,}[/] tokens{limit}   "
              f"max batch at {p.planned_max_length:,} tokens: [bold]{p.max_batch_size:,}[/]",
              highlight=False)
    if p.budget_note:
        out.print(f"[dim]{safe(p.budget_note, 2000)}[/]", highlight=False)
    for w in p.warnings:
        err.print(f"[yellow]warning:[/] {safe(w, 2000)}", highlight=False)


@app.command("plan")
def plan_command(
    model: ModelOpt = DEFAULT_MODEL,
    mesh: MeshOpt = DEFAULT_MESH,
    layout: LayoutOpt = None,
    tensor_parallel_size: TpOpt = None,
    data_parallel_size: DpOpt = None,
    pipeline_parallel_size: PpOpt = None,
    expert_parallel_size: EpOpt = None,
    max_length: LengthOpt = None,
    max_batch_size: BatchOpt = None,
    max_num_seqs: NumSeqsOpt = None,
    device_memory_utilization: UtilOpt = 0.9,
    kv_cache_dtype: DtypeOpt = None,
    page_size: PageOpt = 128,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="safetensors checkpoint (folder, model.safetensors.index.json or "
        ".safetensors file): charge each device its exact shard of the checkpoint's tensors "
        "instead of the analytic weights (headers only are read).")] = None,
    activations: Annotated[str, typer.Option(
        "--activations", help="analytic, or xla: compile kvfit's reference prefill and decode steps "
        "on the mesh and charge XLA's temp bytes (needs the mesh's platform here).")] = "analytic",
    allow_cpu_proxy: Annotated[bool, typer.Option(
        "--allow-cpu-proxy", help="With --activations xla: compile a GPU/TPU mesh on this CPU "
        "(XLA:CPU bytes, marked as a proxy).")] = False,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Also plan with the other activation model (analytic and XLA side by side) "
        "and say where each device's memory goes.")] = False,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """Plan the KV-cache pool device by device.

    Example: kvfit plan --model llama-3.1-70b --mesh 8xH100-80GB --tp 8 --max-model-len 32768
    """
    try:
        check_one_format(as_json, as_csv)
        if allow_cpu_proxy and activations != "xla" and not explain:
            raise InputError("--allow-cpu-proxy", True, "only with --activations xla or --explain")
        text = layout_text(layout, tensor_parallel_size, data_parallel_size, pipeline_parallel_size,
                           expert_parallel_size)
        check_layout_applies(model, text)
        max_batch_size = total_batch(max_batch_size, max_num_seqs,
                                     replicas_of(mesh, text) if max_num_seqs is not None else 1)
        check_platform_page_size(model, mesh, page_size)
        if activations == "xla" or explain:  # a TPU mesh compiles through libtpu's topologies
            from meshes.mesh import DeviceMesh

            check_jax_env(quiet_tpu=DeviceMesh.from_preset(mesh).platform != "tpu")
        if allow_cpu_proxy:
            _simulate_cpu_devices(mesh)
        with slow_work("planning"):
            p = plan(model, mesh, text, kv_cache_dtype=kv_cache_dtype, page_size=page_size,
                     device_memory_utilization=device_memory_utilization, max_length=max_length,
                     max_batch_size=max_batch_size, weights=weights, activations=activations,
                     xla_options={"allow_cpu_proxy": True} if allow_cpu_proxy and activations == "xla" else None)
            both = activation_models(model, mesh, text, p, activations, allow_cpu_proxy,
                                     kv_cache_dtype=kv_cache_dtype, page_size=page_size,
                                     device_memory_utilization=device_memory_utilization, max_length=max_length,
                                     max_batch_size=max_batch_size, weights=weights) if explain else None
    except InputError as e:
        fail_input(e)
    if as_json:
        print_json({**p.to_dict(), **({"activation_models": both} if both else {})})
    elif as_csv:  # the per-device rows in bytes
        print_table(plan_table(p, unit=1), as_csv=True)
    else:
        print_plan(p, None if max_length is not None else _context_limit(model))
        if both:
            print_activation_models(p, both)
    suggestions = list(p.suggestions)
    if max_num_seqs is not None:  # advise in the flag the user gave: requests per replica
        replicas = replicas_of(mesh, text)
        suggestions = [re.sub(r"reduce --max-batch-size to (\d+)",
                              lambda m: f"reduce --max-num-seqs to {int(m.group(1)) // replicas}", line)
                       for line in suggestions]
    exit_on_verdict(p.fits, suggestions)


def _context_limit(model: str) -> int | None:
    from estimator.model.resolve import resolve_model

    try:
        return resolve_model(model).max_position_embeddings
    except InputError:
        return None


def check_platform_page_size(model: str, mesh: str, page_size: int) -> None:
    """TPU meshes take the page sizes of tpu-inference's kernels (meshes.validation.check_page_size)."""
    from meshes.mesh import DeviceMesh
    from meshes.validation import check_page_size

    platform = DeviceMesh.from_preset(mesh).platform
    if platform == "tpu":
        from estimator.model.resolve import resolve_model

        check_page_size(page_size, platform, mla=resolve_model(model).is_mla)
    else:
        check_page_size(page_size, platform)


def _simulate_cpu_devices(mesh: str) -> None:
    """A CPU proxy compile needs one CPU device per mesh device: ask XLA for them before JAX starts."""
    import os

    from estimator.xla.limits import MAX_CPU_PROXY_DEVICES
    from meshes.mesh import DeviceMesh

    size = DeviceMesh.from_preset(mesh).size
    if size > MAX_CPU_PROXY_DEVICES:
        raise InputError("--mesh", mesh, f"at most {MAX_CPU_PROXY_DEVICES:,} devices with --allow-cpu-proxy "
                         f"(one XLA:CPU device each, in this process; this mesh has {size:,}): plan with "
                         "the analytic activations, or compile on the mesh's own hardware")
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={size}".strip()


def activation_models(model: str, mesh: str, layout: str | None, chosen: MemoryPlan, activations: str,
                      allow_cpu_proxy: bool, **plan_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Per-device activation bytes and pages under both activation models (for --explain).

    The model not chosen is planned too; XLA is reported as unavailable (with the reason) when the
    mesh's platform cannot be compiled here and no CPU proxy was allowed."""
    result: dict[str, dict[str, Any]] = {}
    for name in ("analytic", "xla"):
        if name == activations:
            p = chosen
        else:
            try:
                p = plan(model, mesh, layout, activations=name, **plan_kwargs,
                         xla_options={"allow_cpu_proxy": True} if name == "xla" and allow_cpu_proxy else None)
            except InputError as e:
                result[name] = {"available": False, "reason": e.allowed}
                continue
        tight = next(r for r in p.devices if r.device == p.tightest_device)
        result[name] = {"available": True, "activation_bytes": tight.activation_bytes,
                        "pages_per_replica": p.pages_per_replica,
                        "max_supported_sequence_length": p.max_supported_sequence_length,
                        "max_batch_size": p.max_batch_size, "fits": p.fits,
                        "cpu_proxy": name == "xla" and allow_cpu_proxy}
    return result


def print_activation_models(p: MemoryPlan, both: dict[str, dict[str, Any]]) -> None:
    """The --explain table: the two activation models side by side, then the tightest device's budget."""
    table = Table("activation model", "activations / device GiB", "pages per replica", "max sequence length",
                  f"max batch at {p.planned_max_length:,}", title="activation models", title_justify="left")
    for name, row in both.items():
        if not row["available"]:
            table.add_row(name, safe(f"not compiled: {row['reason']}", 400), "—", "—", "—")
            continue
        label = name + (" (XLA:CPU proxy)" if row["cpu_proxy"] else "")
        table.add_row(label, gib(row["activation_bytes"]), f"{row['pages_per_replica']:,}",
                      f"{row['max_supported_sequence_length']:,}", f"{row['max_batch_size']:,}")
    out.print(table)
    r = next(r for r in p.devices if r.device == p.tightest_device)
    out.print(f"tightest device {safe(r.device)}: budget {r.budget_bytes:,} B − weights {r.weights_bytes:,} B − "
              f"activations {r.activation_bytes:,} B − signal buffers {r.signal_bytes:,} B − reserve "
              f"{r.reserve_bytes:,} B = {r.kv_budget_bytes:,} B for KV = {r.kv_budget_bytes // r.page_bytes:,} "
              f"pages of {r.page_bytes:,} B" if r.page_bytes else f"tightest device {safe(r.device)} holds no KV",
              highlight=False)


def exit_on_verdict(fits: bool, suggestions: Any) -> None:
    """Exit code 1, with the suggestions on stderr, when the request does not fit."""
    if not fits:
        typer.echo("does not fit: " + error_line("; ".join(suggestions)), err=True)
        raise typer.Exit(1)


@app.command("models")
def models_command(as_json: JsonOpt = False, as_csv: CsvOpt = False) -> None:
    """List the embedded model presets.

    Example: kvfit models --json
    """
    try:
        check_one_format(as_json, as_csv)
    except InputError as e:
        fail_input(e)
    from estimator.model.presets import PRESETS
    from estimator.model.resolve import load_preset
    from estimator.model.weights import parameter_count

    specs = [load_preset(n) for n in PRESETS]
    if as_json:
        print_json([{**s.to_dict(), "parameters": parameter_count(s)}
                    for s in specs])
        return
    table = Table("preset", "type", "layers", "hidden", "heads", "KV heads", "head dim",
                  "params (B)", "max pos")
    for s in specs:
        table.add_row(safe(s.name), safe(s.model_type), str(s.num_layers), str(s.hidden_size),
                      str(s.num_attention_heads), str(s.num_kv_heads), str(s.head_dim),
                      f"{parameter_count(s) / 1e9:.2f}", f"{s.max_position_embeddings:,}")
    print_table(table, as_csv)


def _register() -> None:
    from estimator.cli import engines as cli_engines
    from estimator.cli import report as cli_report
    from estimator.cli import review as cli_review
    from estimator.cli import sweep as cli_sweep

    for name, command in (("sweep", cli_sweep.sweep_command), ("compare", cli_review.compare_command),
                          ("explain", cli_review.explain_command), ("fit", cli_review.fit_command),
                          ("devices", cli_review.devices_command), ("report", cli_report.report_command),
                          ("engines", cli_engines.engines_command),
                          ("translate", cli_engines.translate_command)):
        app.command(name)(command)


_register()
if _SIGINT_AT_IMPORT is signal.default_int_handler:
    signal.signal(signal.SIGINT, _SIGINT_AT_IMPORT)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"kvfit {version('kvfit')}")
        except PackageNotFoundError:
            typer.echo("kvfit (not installed)")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="On an unexpected error, print the traceback "
                                        "(also KVFIT_DEBUG=1).")] = False,
) -> None:
    """kvfit: how many KV-cache pages fit on every device, how long a request may be, and how many
    requests fit — before you rent the GPUs."""


# Spellings of one option (the engines' names beside kvfit's): giving two of them is ambiguous.
SAME_OPTION = (("--max-length", "--max-model-len"), ("--max-batch-size", "--max-num-seqs"),
               ("--device-memory-utilization", "--gpu-memory-utilization", "--utilizations"),
               ("--tensor-parallel-size", "--tp"), ("--data-parallel-size", "--dp"),
               ("--pipeline-parallel-size", "--pp"), ("--expert-parallel-size", "--ep"),
               ("--page-size", "--block-size"), ("--model", "-m"), ("--mesh",), ("--layout",), ("--layouts",))


def check_repeated_options(argv: list[str]) -> None:
    """Refuse an option given twice, under one name or two, attached short forms (``-mNAME``)
    included; an option with an empty value; ``--set`` of one knob twice. Typer would silently keep
    the last value, or take '' for the default."""
    command = _command_for(argv)
    if command is None:
        return
    names: dict[str, Any] = {}
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            for name in (*param.opts, *param.secondary_opts):
                names[name] = param
    seen: dict[str, str] = {}
    knobs: dict[str, str] = {}
    i = 1 + argv.index(command.name) if command.name in argv else 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            continue
        flag, eq, value = token.partition("=")
        param = names.get(flag)
        if param is None and not eq and token[:2] in names and not token.startswith("--"):
            flag, value, eq = token[:2], token[2:], "="  # attached short form: -mllama-3.1-70b
            param = names[flag]
        if param is None:
            continue  # click reports unknown options itself
        takes_value = not param.is_flag and not param.count
        if takes_value and not eq:
            if i >= len(argv):
                continue  # click says "requires an argument"
            value = argv[i]
            i += 1
        if takes_value and not value.strip():
            raise InputError(flag, value, "a non-empty value")
        if param.multiple:  # --set ENGINE.KNOB=VALUE: each knob once
            knob = value.partition("=")[0].strip().lower()
            if knob in knobs:
                raise InputError(flag, value, f"each knob once ({knobs[knob]!r} sets {knob} already)")
            knobs[knob] = value
            continue
        key = param.name or flag
        if key in seen:
            spellings = ", ".join(sorted({*param.opts, *param.secondary_opts}))
            raise InputError(flag, value if takes_value else True,
                             f"one value: {seen[key]} was given already ({spellings} name the same option)")
        seen[key] = flag


_GROUP: list[Any] = []


def _cli_group() -> Any:
    """The click group typer builds from ``app`` (built once: building it takes ~40 ms)."""
    if not _GROUP:
        _GROUP.append(typer.main.get_command(app))
    return _GROUP[0]


def _command_for(argv: list[str]) -> Any:
    """The (typer/click) command argv runs (the first non-option token names it)."""
    group = _cli_group()
    if not hasattr(group, "commands"):
        return None
    for token in argv:
        if token.startswith("-"):
            continue
        return group.commands.get(token)
    return None


def _debug_requested(argv: list[str]) -> bool:
    env = os.environ.get("KVFIT_DEBUG", "").strip().lower()
    return env in ("1", "true", "yes", "on") or "--debug" in argv[:argv.index("--") if "--" in argv else None]


class _PipeSafeStdout:
    """stdout that stops writing, quietly, once its reader has gone (``kvfit plan | head -1``), so
    the command still ends with its own exit code instead of a broken-pipe error."""

    def __init__(self, stream: Any) -> None:
        self._stream, self.reader_gone = stream, False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.reader_gone = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())  # nothing more reaches the pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _option_value(err: Exception, argv: list[str]) -> str | None:
    """The text the user gave for the option a typer error is about (None if it cannot be told)."""
    param = getattr(err, "param", None)
    opts = [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]
    for i, arg in enumerate(argv):
        for opt in opts:
            if arg == opt and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(f"{opt}="):
                return arg.partition("=")[2]
    return None


def main() -> None:
    """Console entry point: exit 0 fits, 1 does not fit, 2 bad input, 3 a bug, 130 interrupted;
    every error is one line on stderr (the traceback of a bug only with --debug / KVFIT_DEBUG=1)."""
    sys.stdout = _PipeSafeStdout(sys.stdout)
    argv = sys.argv[1:] or ["--help"]
    debug = _debug_requested(argv)
    if debug:
        argv = [a for a in argv if a != "--debug"]
    try:
        check_repeated_options(argv)
        if _needs_jax(argv):
            check_jax_env()
        with interruptible():
            code = _cli_group()(args=argv, prog_name="kvfit", standalone_mode=False)
    except InputError as e:  # a bad value caught outside a command's own handler
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):  # Ctrl-C
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # typer's own usage errors: a misspelt option, "nan" for an integer
        message = e.format_message()
        given = _option_value(e, argv)
        if given is not None and repr(given) not in message:  # name the value as well as the option
            message = f"{message} (got {given!r})"
        print(f"error: {error_line(message)}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # anything else is kvfit's bug, never "does not fit"
        if debug:
            import traceback

            traceback.print_exc()
        print(f"kvfit: internal error (a bug; please report it with the command): {type(e).__name__}: "
              f"{error_line(e)[:500]}" + ("" if debug else " (run with --debug for the traceback)"),
              file=sys.stderr)
        sys.exit(3)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        print("interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


def _needs_jax(argv: list[str]) -> bool:
    """Commands that start JAX: check its environment before it starts."""
    command = next((a for a in argv if not a.startswith("-")), None)
    live_mesh = any("live" in a.lower() and (prev == "--mesh" or a.lower().startswith("--mesh="))
                    for prev, a in zip(["", *argv], argv, strict=False))
    return command in ("sweep", "report") or (command == "devices" and "--live" in argv) or live_mesh
