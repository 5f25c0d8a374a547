"""``kvfit engines`` and ``kvfit translate``: engine profiles side by side, and knob translation.

Plain command functions; estimator.cli.app registers them on its app. Exit codes as for
``kvfit plan``: 0 every profile starts, 1 one would fail at start-up (its error on stderr), 2 bad
input.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from estimator.cli.options import (
    CsvOpt,
    DpOpt,
    JsonOpt,
    LayoutOpt,
    MeshOpt,
    ModelOpt,
    PpOpt,
    TpOpt,
    check_layout_applies,
    check_one_format,
    comma_list,
    err,
    error_line,
    fail_input,
    gib,
    layout_text,
    out,
    print_json,
    print_table,
    safe,
)
from estimator.core.layout import Layout
from estimator.engines import CONCEPTS, EnginePlan, engine_plan, engines_for, profile, translate
from estimator.model.presets import DEFAULT_MESH, DEFAULT_MODEL
from meshes.mesh import DeviceMesh
from meshes.validation import InputError

LengthOpt = Annotated[int | None, typer.Option(
    "--max-model-len", "--max-length", help="Tokens of one request (each engine's own knob: "
    "max_model_len, context_length, max_seq_len, max_length).")]
DtypeOpt = Annotated[str | None, typer.Option("--kv-cache-dtype", help="bf16, fp8, ... for every engine.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="ENGINE.KNOB=VALUE with the engine's own knob name, e.g. "
    "vllm.gpu_memory_utilization=0.95, sglang.mem_fraction_static=0.88, vllm.version=0.11.0 (a release "
    "or a family: v0, 0.9, 0.10, ...; VALUE none: the engine's default). Repeatable.")]

# The flags users pass to the engines themselves. A shared flag goes to every selected engine that has
# the same concept under its own name (estimator.engines.CONCEPTS); an engine-specific flag only to its
# engine; --set ENGINE.KNOB=VALUE wins over both.
_F = typer.Option
QuantOpt = Annotated[str | None, _F("--quantization", "-q", help="Weight scheme as the engines name it: fp8 "
                                    "(online), awq, gptq, mxfp4, ... (vllm, sglang, trtllm).")]
ModelDtypeOpt = Annotated[str | None, _F("--dtype", help="Model dtype: auto, bfloat16, float16, float32 "
                                         "(vllm, sglang).")]
EagerOpt = Annotated[bool, _F("--enforce-eager", help="No CUDA graphs (vllm enforce_eager, sglang "
                              "disable_cuda_graph).")]
BatchedOpt = Annotated[int | None, _F("--max-num-batched-tokens", help="Tokens per forward step (vllm; "
                                      "sglang chunked_prefill_size, trtllm max_num_tokens unless set).")]
SeqsOpt = Annotated[int | None, _F("--max-num-seqs", help="Sequences per step per data-parallel rank, as "
                                   "vLLM means it (sglang max_running_requests, trtllm max_batch_size "
                                   "unless set).")]
LoraOpt = Annotated[bool, _F("--enable-lora", help="vLLM: LoRA adapter slots and dummy adapters.")]
LoraRankOpt = Annotated[int | None, _F("--max-lora-rank", help="vLLM LoRA rank (default 16).")]
LorasOpt = Annotated[int | None, _F("--max-loras", help="vLLM LoRA slots (default 1).")]
PrefixOpt = Annotated[bool | None, _F("--enable-prefix-caching/--no-enable-prefix-caching",
                                      help="vLLM prefix caching (Mamba hybrids: 2 state blocks a request).")]
OffloadOpt = Annotated[float | None, _F("--cpu-offload-gb", help="vLLM: GiB of weights per GPU kept in CPU "
                                        "memory.")]
FractionOpt = Annotated[float | None, _F("--mem-fraction-static", help="SGLang memory fraction.")]
ChunkOpt = Annotated[int | None, _F("--chunked-prefill-size", help="SGLang chunked prefill size.")]
GraphBsOpt = Annotated[int | None, _F("--cuda-graph-max-bs", help="SGLang largest CUDA-graph batch.")]
TrtBatchOpt = Annotated[int | None, _F("--max-batch-size", help="TRT-LLM build limit max_batch_size.")]
TrtInputOpt = Annotated[int | None, _F("--max-input-len", help="TRT-LLM build limit max_input_len.")]
TrtTokensOpt = Annotated[int | None, _F("--max-num-tokens", help="TRT-LLM build limit max_num_tokens.")]
TrtBeamOpt = Annotated[int | None, _F("--max-beam-width", help="TRT-LLM build limit max_beam_width.")]


NO_PIPELINE = ("max", "tpu")  # profiles without pipeline stages (they refuse a pp layout)
EP_OVER_ALL_RANKS = ("vllm",)  # expert parallelism only over every data × tensor rank (they refuse others)


SHARED_FLAGS = {"quantization": "weight quantization", "dtype": "model dtype", "enforce_eager": "no cuda graphs",
                "max_num_batched_tokens": "batched tokens", "max_num_seqs": "max batch"}
ENGINE_FLAGS = {"vllm": ("enable_lora", "max_lora_rank", "max_loras", "enable_prefix_caching", "cpu_offload_gb"),
                "sglang": ("mem_fraction_static", "chunked_prefill_size", "cuda_graph_max_bs"),
                "trtllm": ("max_batch_size", "max_input_len", "max_num_tokens", "max_beam_width")}


def flag_knobs(engine: str, flags: dict[str, Any]) -> dict[str, Any]:
    """The engine's own knobs for the user's engine flags (None / False flags are not passed)."""
    knobs: dict[str, Any] = {}
    for flag, concept in SHARED_FLAGS.items():
        value = flags.get(flag)
        name = CONCEPTS[concept].get(engine)
        if value is not None and value is not False and name and name in profile(engine).KNOBS:
            knobs[name] = value
    for flag in ENGINE_FLAGS.get(engine, ()):
        value = flags.get(flag)
        if value is not None and (value is not False or flag == "enable_prefix_caching"):
            knobs[flag] = value
    return knobs


def knob_flags(engine: str, given: dict[str, Any]) -> dict[str, str]:
    """{--flag: the engine's knob} for the flags the user gave."""
    concepts = {"max_model_len": "max length", "kv_cache_dtype": "kv dtype", **SHARED_FLAGS}
    named = {f"--{flag.replace('_', '-')}": CONCEPTS[concept].get(engine)
             for flag, concept in concepts.items() if given.get(flag) is not None and given.get(flag) is not False}
    named.update({f"--{flag.replace('_', '-')}": flag for flag in ENGINE_FLAGS.get(engine, ())
                  if given.get(flag) is not None})
    return {flag: knob for flag, knob in named.items() if knob}


INT_FLAGS = ("max_num_batched_tokens", "max_num_seqs", "max_lora_rank", "max_loras", "chunked_prefill_size",
             "cuda_graph_max_bs", "max_batch_size", "max_input_len", "max_num_tokens", "max_beam_width")


def check_flags(flags: dict[str, Any]) -> None:
    """The engine flags' own ranges, named as the user typed them (before they become each engine's
    knob): counts are positive, --cpu-offload-gb at least 0."""
    for name in INT_FLAGS:
        value = flags.get(name)
        if value is not None and not 1 <= value <= 2**31:
            raise InputError(f"--{name.replace('_', '-')}", value, f"an integer in [1, {2**31}]")
    offload = flags.get("cpu_offload_gb")
    if offload is not None and not 0 <= offload <= 2**40:  # NaN fails both
        raise InputError("--cpu-offload-gb", offload, f"GiB in [0, {2**40}]")


def user_named(err: InputError, engine: str, knobs: dict[str, str], sets: dict[str, Any]) -> InputError:
    """``err`` with the field as the user gave it: ``ENGINE.KNOB`` for a --set knob, the flag for a
    shared flag that became this engine's knob under another name."""
    if err.field in sets:
        return InputError(f"{engine}.{err.field}", err.value, err.allowed)
    for flag, knob in knobs.items():
        if knob == err.field:
            return InputError(flag, err.value, err.allowed)
    return err


def parse_value(text: str) -> Any:
    """A knob value typed on the command line: int, float, bool, none, else the string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_sets(items: list[str] | None, engines: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``ENGINE.KNOB=VALUE`` items → {engine: {knob: value}}."""
    knobs: dict[str, dict[str, Any]] = {e: {} for e in engines}
    for item in items or []:
        key, eq, value = item.partition("=")
        engine, dot, name = key.strip().partition(".")
        engine, name = engine.strip(), name.strip()
        if not eq or not dot or not name or not value.strip():
            raise InputError("--set", item, "ENGINE.KNOB=VALUE with a value (none: the engine's default), "
                             "e.g. vllm.gpu_memory_utilization=0.95")
        engine = profile(engine).NAME
        if engine not in knobs:
            raise InputError("--set", item, f"a knob of a selected engine ({', '.join(engines)})")
        # a version is a name ("0.10" is not the number 0.1)
        knobs[engine][name] = value.strip() if name == "version" else parse_value(value)
    return knobs


def _common(engine: str, max_model_len: int | None, kv_cache_dtype: str | None) -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    if max_model_len is not None:
        knobs[CONCEPTS["max length"][engine]] = max_model_len
    if kv_cache_dtype is not None:
        knobs[CONCEPTS["kv dtype"][engine]] = kv_cache_dtype
    return knobs


def short_number(value: Any) -> str:
    """A knob value for the table: floats to 4 significant digits (1.0 → "1"), anything else as is."""
    return f"{value:.4g}" if isinstance(value, float) else f"{value}"


def engines_table(plans: list[EnginePlan]) -> Table:
    """One column per engine, one row per quantity."""
    first = plans[0]
    table = Table(title=f"{safe(first.model)} on {safe(first.mesh)} — {safe(first.layout)}", title_justify="left")
    table.add_column("", no_wrap=True)
    for p in plans:
        table.add_column(f"{p.engine} {p.version}", justify="right", overflow="fold")
    fraction = CONCEPTS["memory fraction"]
    rows = [
        ("memory fraction", lambda p: short_number(p.knobs.get(fraction[p.engine]))),
        ("scope of GiB", lambda p: p.scope),
        ("memory seen GiB", lambda p: gib(p.total_bytes)),
        ("budget GiB", lambda p: gib(p.budget_bytes)),
        ("non-KV GiB (low–high)", lambda p: f"{gib(p.non_kv_bytes)} ({gib(p.non_kv.total('low'))}–"
                                           f"{gib(p.non_kv.total('high'))})"),
        ("KV pool GiB", lambda p: gib(p.kv_bytes)),
        ("KV dtype", lambda p: p.kv_cache_dtype),
        ("blocks × block size", lambda p: f"{p.num_blocks:,} × {p.block_size}"),
        ("KV tokens (as logged)", lambda p: f"{p.kv_tokens:,}"),
        ("tokens band", lambda p: f"{p.tokens_band.low:,}–{p.tokens_band.high:,}"),
        ("max model len", lambda p: f"{p.max_model_len:,}"),
        ("max concurrency", lambda p: f"{p.max_concurrency:.2f}x"),
        ("longest request", lambda p: f"{p.max_model_len_fit:,}"),
        ("starts", lambda p: "yes" if p.starts else "[red]no[/]"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(p) for p in plans))
    return table


def engines_command(
    model: ModelOpt = DEFAULT_MODEL,
    mesh: MeshOpt = DEFAULT_MESH,
    layout: LayoutOpt = None,
    tensor_parallel_size: TpOpt = None,
    data_parallel_size: DpOpt = None,
    pipeline_parallel_size: PpOpt = None,
    max_model_len: LengthOpt = None,
    kv_cache_dtype: DtypeOpt = None,
    engines: Annotated[str | None, typer.Option(
        "--engines", help="Comma list of max, vllm, sglang, trtllm, tpu; default: those that run on "
        "the mesh's devices.")] = None,
    knob: SetOpt = None,
    quantization: QuantOpt = None,
    dtype: ModelDtypeOpt = None,
    enforce_eager: EagerOpt = False,
    max_num_batched_tokens: BatchedOpt = None,
    max_num_seqs: SeqsOpt = None,
    enable_lora: LoraOpt = False,
    max_lora_rank: LoraRankOpt = None,
    max_loras: LorasOpt = None,
    enable_prefix_caching: PrefixOpt = None,
    cpu_offload_gb: OffloadOpt = None,
    mem_fraction_static: FractionOpt = None,
    chunked_prefill_size: ChunkOpt = None,
    cuda_graph_max_bs: GraphBsOpt = None,
    max_batch_size: TrtBatchOpt = None,
    max_input_len: TrtInputOpt = None,
    max_num_tokens: TrtTokensOpt = None,
    max_beam_width: TrtBeamOpt = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """The KV cache each serving engine would allocate, side by side, with the lines it would log.

    Lines marked "≈" rest on estimated non-KV terms (the tokens band says how far they may move).

    Example: kvfit engines --model llama-3.1-8b --mesh 1xH100-80GB --max-model-len 32768
    --max-num-seqs 256 --quantization fp8 --set vllm.gpu_memory_utilization=0.9
    --mem-fraction-static 0.88 --max-batch-size 64 --max-num-tokens 8192
    """
    flags = dict(quantization=quantization, dtype=dtype, enforce_eager=enforce_eager,
                 max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                 enable_lora=enable_lora, max_lora_rank=max_lora_rank, max_loras=max_loras,
                 enable_prefix_caching=enable_prefix_caching, cpu_offload_gb=cpu_offload_gb,
                 mem_fraction_static=mem_fraction_static, chunked_prefill_size=chunked_prefill_size,
                 cuda_graph_max_bs=cuda_graph_max_bs, max_batch_size=max_batch_size, max_input_len=max_input_len,
                 max_num_tokens=max_num_tokens, max_beam_width=max_beam_width)
    try:
        check_one_format(as_json, as_csv)
        text = layout_text(layout, tensor_parallel_size, data_parallel_size, pipeline_parallel_size)
        try:
            names = tuple(profile(e).NAME for e in comma_list(engines)) if engines else engines_for(mesh)
        except InputError as problem:
            if problem.field != "engine":
                raise
            raise InputError("--engines", problem.value, problem.allowed) from None
        lay = Layout.resolve(text, DeviceMesh.from_preset(mesh)) if not engines and text else None
        if lay and lay.pipeline > 1:
            names = tuple(e for e in names if e not in NO_PIPELINE)  # by default, only those that can
        if lay and lay.expert not in (1, lay.data * lay.tensor):
            names = tuple(e for e in names if e not in EP_OVER_ALL_RANKS)
        if not names:
            raise InputError("--engines", engines, "at least one engine")
        check_flags(flags)
        check_layout_applies(model, text)
        sets = parse_sets(knob, names)
        plans = []
        given = {**flags, "max_model_len": max_model_len, "kv_cache_dtype": kv_cache_dtype}
        for e in names:
            try:
                plans.append(engine_plan(model, mesh, text, engine=e, **{
                    **_common(e, max_model_len, kv_cache_dtype), **flag_knobs(e, flags), **sets[e]}))
            except InputError as problem:
                raise user_named(problem, e, knob_flags(e, given), sets[e]) from None
    except InputError as e:
        fail_input(e)
    if as_json:
        print_json([p.to_dict() for p in plans])
    elif as_csv:
        print_table(engines_table(plans), as_csv=True)
    else:
        out.print(engines_table(plans))
        for p in plans:
            marks = p.estimated_lines or tuple(False for _ in p.log_lines)
            if p.log_lines:
                note = (f" (≈ = estimate: rests on modelled non-KV terms; KV tokens band "
                        f"{p.tokens_band.low:,}–{p.tokens_band.high:,})" if any(marks) else "")
                out.print(f"[bold]{p.engine} {p.version}[/] would log{note}:", highlight=False)
            for line, estimated in zip(p.log_lines, marks, strict=True):
                out.print(f"{'≈ ' if estimated else '  '}{line}", highlight=False, markup=False, soft_wrap=True)
            for w in p.warnings:
                err.print(f"[yellow]{p.engine}:[/] {safe(w, 2000)}", highlight=False, soft_wrap=True)
    failed = [p for p in plans if not p.starts]
    for p in failed:
        typer.echo(f"{p.engine} {p.version} would not start: {error_line(p.error)}", err=True)
    if failed:
        raise typer.Exit(1)


def translate_command(
    from_engine: Annotated[str, typer.Option("--from", help="Engine whose knob value is given.")],
    to_engine: Annotated[str, typer.Option("--to", help="Engine whose knob value is wanted.")],
    knob_value: Annotated[float, typer.Option("--knob-value", help="The --from engine's memory-fraction "
                                              "value (gpu_memory_utilization, mem_fraction_static, ...).")],
    model: ModelOpt = DEFAULT_MODEL,
    mesh: MeshOpt = DEFAULT_MESH,
    layout: LayoutOpt = None,
    tensor_parallel_size: TpOpt = None,
    data_parallel_size: DpOpt = None,
    pipeline_parallel_size: PpOpt = None,
    max_model_len: LengthOpt = None,
    kv_cache_dtype: DtypeOpt = None,
    knob: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The memory-fraction value engine B needs to hold the KV tokens engine A holds.

    Example: kvfit translate --from vllm --to sglang --knob-value 0.9 --model llama-3.1-8b
    --mesh 1xH100-80GB
    """
    try:
        text = layout_text(layout, tensor_parallel_size, data_parallel_size, pipeline_parallel_size)
        src, dst = profile(from_engine).NAME, profile(to_engine).NAME
        sets = parse_sets(knob, tuple(dict.fromkeys((src, dst))))
        t = translate(src, dst, knob_value, model, mesh, text,
                      source_knobs={**_common(src, max_model_len, kv_cache_dtype), **sets[src]},
                      target_knobs={**_common(dst, max_model_len, kv_cache_dtype), **sets[dst]})
    except InputError as e:
        fail_input(e)
    if t.source_tokens <= 0:  # the model does not fit the source engine at this value: nothing to match
        typer.echo(f"{t.source} holds no KV token at {t.source_knob}={knob_value} for this model and mesh "
                   "(it would not start): nothing to translate", err=True)
        raise typer.Exit(1)
    if as_json:
        print_json(t.to_dict())
    else:
        out.print(f"{t.source} {t.source_knob}={t.source_value} → {t.source_tokens:,} KV tokens",
                  highlight=False)
        verb = "needs" if t.achievable else "cannot reach it; at most"
        out.print(f"{t.target} {verb} [bold]{t.target_knob}={t.target_value}[/] → "
                  f"{t.target_tokens:,} KV tokens",
                  highlight=False)
    if not t.achievable:
        typer.echo(t.note, err=True)
        raise typer.Exit(1)


__all__ = ["engines_command", "engines_table", "flag_knobs", "parse_sets", "parse_value", "translate_command"]
