"""What every engine profile shares: knob validation, the resolved setup, the EnginePlan result.

A profile is a small policy over the shared geometry (estimator.core.geometry for weights per stage,
estimator.core.kv_spec for KV bytes per layer on one device): it turns the engine's own knobs into a
budget, subtracts the engine's non-KV terms (estimator.engines.non_kv), counts blocks the way the
engine does and writes the lines the engine logs.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Any

from estimator.core.layout import Layout
from estimator.engines.non_kv import Band, NonKV
from estimator.model.dtypes import canonical_dtype, dtype_bytes
from estimator.model.resolve import resolve_model
from estimator.model.spec import ModelSpec
from meshes.catalog import GiB
from meshes.mesh import DeviceMesh
from meshes.validation import InputError, check_int, check_number, plain_text

ENGINE_NAMES = ("max", "vllm", "sglang", "trtllm", "tpu")

# The same idea under each engine's own name: used to say "sglang calls this mem_fraction_static".
CONCEPTS: dict[str, dict[str, str]] = {
    "memory fraction": {"max": "device_memory_utilization", "vllm": "gpu_memory_utilization",
                        "sglang": "mem_fraction_static", "trtllm": "free_gpu_memory_fraction",
                        "tpu": "gpu_memory_utilization"},
    "max length": {"max": "max_length", "vllm": "max_model_len", "sglang": "context_length",
                   "trtllm": "max_seq_len", "tpu": "max_model_len"},
    "block size": {"max": "kv_cache_page_size", "vllm": "block_size", "sglang": "page_size",
                   "trtllm": "tokens_per_block", "tpu": "block_size"},
    "kv dtype": {"max": "kv_cache_format", "vllm": "kv_cache_dtype", "sglang": "kv_cache_dtype",
                 "trtllm": "dtype", "tpu": "kv_cache_dtype"},
    "max batch": {"max": "max_batch_size", "vllm": "max_num_seqs", "sglang": "max_running_requests",
                  "trtllm": "max_batch_size", "tpu": "max_num_seqs"},
    "batched tokens": {"max": "max_batch_input_tokens", "vllm": "max_num_batched_tokens",
                       "sglang": "chunked_prefill_size", "trtllm": "max_num_tokens",
                       "tpu": "max_num_batched_tokens"},
    "kv bytes": {"vllm": "kv_cache_memory_bytes", "trtllm": "max_gpu_total_bytes",
                 "tpu": "kv_cache_memory_bytes"},
    "token cap": {"sglang": "max_total_tokens", "trtllm": "max_tokens"},
    "block count": {"vllm": "num_gpu_blocks_override", "tpu": "num_gpu_blocks_override"},
    "no cuda graphs": {"vllm": "enforce_eager", "sglang": "disable_cuda_graph"},
    "weight quantization": {"vllm": "quantization", "sglang": "quantization", "trtllm": "quantization"},
    "model dtype": {"vllm": "dtype", "sglang": "dtype"},
}

# Measured values a caller may pin instead of the model (per device, bytes): e.g. from a log.
MEASURED = ("weights_bytes", "activation_bytes", "non_torch_bytes", "cuda_graph_bytes",
            "context_bytes")


@dataclass(frozen=True)
class Knob:
    """One engine knob: its default and the check that normalises a value (or raises)."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    help: str = ""


# ----------------------------------------------------------------------------- checkers
def fraction(*, low: float = 0.0, high: float = 1.0, high_inclusive: bool = True,
             message: str = "") -> Callable[[str, Any], float]:
    """A number in (low, high] (or (low, high)); ``message`` is the engine's own wording."""
    def check(field_: str, value: Any) -> float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = low < value <= high if high_inclusive else low < value < high
        if not ok:
            bracket = "]" if high_inclusive else ")"
            raise InputError(field_, value, f"a number in ({low}, {high}{bracket}" +
                             (f" — {message}" if message else ""))
        return float(value)
    return check


def positive_number(field_: str, value: Any) -> float:
    """A positive finite number up to 2^40, above any GiB count or ratio a knob takes (1e308 · bytes
    would overflow to inf)."""
    return float(check_number(field_, value))


def integer(minimum: int = 1, maximum: int = 2**62, *, optional: bool = True,
            message: str = "") -> Callable[[str, Any], int | None]:
    def check(field_: str, value: Any) -> int | None:
        if value is None and optional:
            return None
        try:
            return check_int(field_, value, minimum=minimum, maximum=maximum)
        except InputError as err:
            if message:
                raise InputError(field_, value, f"{err.allowed} — {message}") from None
            raise
    return check


def choice(options: tuple[Any, ...], message: str = "") -> Callable[[str, Any], Any]:
    def check(field_: str, value: Any) -> Any:
        is_bool = isinstance(value, bool)  # True == 1: a flag is not a size
        if value in options and (not is_bool or any(isinstance(o, bool) for o in options)):
            return options[options.index(value)]  # the option itself: 16.0 becomes 16
        text = ", ".join(map(str, options))
        raise InputError(field_, value, f"one of {text}" + (f" — {message}" if message else ""))
    return check


def boolean(field_: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise InputError(field_, value, "true or false")


def kv_dtype_choice(names: Mapping[str, str | None], message: str = "") -> Callable[[str, Any], str]:
    """An engine's KV-cache dtype names → canonical dtype (None = 'auto'); also accepts kvfit's
    own names (bf16, fp8, float8_e4m3fn ...) so one --kv-cache-dtype works for every engine."""
    def check(field_: str, value: Any) -> str:
        key = str(value).strip().lower()
        if key in names:
            return key
        try:
            canon = canonical_dtype(key)
        except InputError:
            canon = None
        for name, target in names.items():
            if canon is not None and target == canon:
                return name
        raise InputError(field_, value, f"one of {', '.join(names)}" + (f" — {message}" if message else ""))
    return check


# Weight-quantization names the engines take (vllm --quantization, sglang --quantization, TRT-LLM
# QuantConfig.quant_algo) → kvfit's ModelSpec.weight_quant. "fp8" quantises a bf16/fp16 checkpoint
# online (one scale per tensor: vllm/model_executor/layers/quantization/fp8.py Fp8LinearMethod with
# is_checkpoint_fp8_serialized False); the int4 and MXFP4 methods need a checkpoint in that format.
QUANTIZATION = {"none": "", "fp8": "fp8", "fp8_block": "fp8_block", "awq": "awq", "awq_marlin": "awq",
                "gptq": "gptq", "gptq_marlin": "gptq", "mxfp4": "mxfp4", "w4a16_awq": "awq",
                "w4a16_gptq": "gptq", "fp8_block_scales": "fp8_block"}
MODEL_DTYPES = {"auto": None, "half": "float16", "float16": "float16", "bfloat16": "bfloat16",
                "float": "float32", "float32": "float32"}


def quantization_choice(field_: str, value: Any) -> str | None:
    key = str(value).strip().lower().replace("-", "_")
    if key not in QUANTIZATION:
        raise InputError(field_, value, f"one of {', '.join(QUANTIZATION)} (the checkpoint's own scheme "
                         "when unset)")
    return key


def model_dtype_choice(field_: str, value: Any) -> str:
    key = str(value).strip().lower()
    if key not in MODEL_DTYPES:
        raise InputError(field_, value, f"one of {', '.join(MODEL_DTYPES)}")
    return key


def apply_model_knobs(model: ModelSpec, quantization: str | None, dtype: str | None) -> ModelSpec:
    """The model as the engine loads it: ``--dtype`` sets the activation/unquantised weight dtype,
    ``--quantization`` the weight scheme (a checkpoint already in that scheme is kept as is)."""
    changes: dict[str, Any] = {}
    if dtype is not None and MODEL_DTYPES.get(dtype):
        changes["weight_dtype"] = MODEL_DTYPES[dtype]
    if quantization is not None:
        q = QUANTIZATION[quantization]
        if q in ("awq", "gptq", "mxfp4") and model.weight_quant not in (q, ""):
            raise InputError("quantization", quantization, f"the checkpoint's scheme ({model.weight_quant})")
        if not (q == "fp8" and model.weight_quant == "fp8_block"):
            changes["weight_quant"] = q
    return replace(model, **changes) if changes else model


# ----------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class Setup:
    """A profile's resolved inputs: model, mesh, layout, knobs (defaults filled), measured terms."""

    engine: str
    version: str
    model: ModelSpec
    mesh: DeviceMesh
    layout: Layout
    knobs: dict[str, Any]
    measured: dict[str, int]
    release: str | None = None  # the engine release the user named, when it was one ("0.8.5")


def unknown_knob(engine: str, name: str, value: Any, knobs: Mapping[str, Knob]) -> InputError:
    """The error for a knob ``engine`` does not have: name its equivalent when there is one."""
    for concept, names in CONCEPTS.items():
        owners = [e for e, n in names.items() if n == name and e != engine]
        if not owners:
            continue
        if engine in names:
            return InputError(name, value, f"{engine} calls this {names[engine]} "
                              f"({name} is {', '.join(owners)}'s {concept} knob)")
        return InputError(name, value, f"{engine} has no {concept} knob ({name} belongs to "
                          f"{', '.join(owners)})")
    close = difflib.get_close_matches(name, list(knobs) + list(MEASURED), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return InputError(name, value, f"{hint}a {engine} knob: {', '.join(sorted(knobs))} "
                      f"(or a measured value: {', '.join(MEASURED)})")


def make_setup(engine: str, versions: tuple[str, ...], knob_specs: Mapping[str, Knob],
               model: ModelSpec | str, mesh: DeviceMesh | str, layout: Layout | str | None,
               knobs: Mapping[str, Any], platforms: tuple[str, ...],
               measured_names: tuple[str, ...] = MEASURED,
               release_family: Callable[[str], str] | None = None) -> Setup:
    """Resolve model/mesh/layout, check every knob and measured value, fill defaults.
    ``release_family`` maps a release the engine numbers ("0.11.0") to one of ``versions``."""
    model = resolve_model(model)
    if not isinstance(mesh, (DeviceMesh, str)):
        raise InputError("mesh", plain_text(mesh, 60), "a DeviceMesh or a mesh preset name such as 8xH100-80GB")
    if layout is not None and not isinstance(layout, (Layout, str)):
        raise InputError("layout", plain_text(layout, 60), "a Layout, a layout such as tp8 or dp2xtp4, or None")
    mesh = DeviceMesh.from_preset(mesh) if isinstance(mesh, str) else mesh
    if mesh.platform not in platforms:
        others = [e for e, p in PLATFORMS.items() if mesh.platform in p]
        raise InputError("engine", engine, f"an engine that runs on {mesh.platform} devices "
                         f"({', '.join(others) or 'none'}); {engine} needs {'/'.join(platforms)}")
    layout = Layout.resolve(layout, mesh)
    given = dict(knobs)
    version = given.pop("version", None) or versions[0]
    release = None
    if version not in versions and release_family is not None:
        release, version = str(version).strip(), release_family(version)
    if version not in versions:
        raise InputError("version", version, f"one of {', '.join(versions)} ({engine} semantics "
                         "kvfit follows)")
    measured = {}
    for name in MEASURED:
        if given.get(name) is not None:
            if name not in measured_names:
                raise InputError(name, given[name], f"a measured value {engine} subtracts: "
                                 f"{', '.join(measured_names)} ({engine} does not charge {name})")
            measured[name] = check_int(name, given.pop(name), minimum=0)
        given.pop(name, None)
    resolved = {}
    for name in given:
        if name not in knob_specs:
            raise unknown_knob(engine, name, given[name], knob_specs)
    for name, spec in knob_specs.items():
        value = given.get(name)
        value = spec.default if value is None else value  # None given means the engine's default
        resolved[name] = spec.check(name, value) if value is not None else None
    return Setup(engine, version, model, mesh, layout, resolved, measured, release)


PLATFORMS = {"max": ("gpu", "cpu"), "vllm": ("gpu",), "sglang": ("gpu",), "trtllm": ("gpu",),
             "tpu": ("tpu",)}


def default_kv_dtype(model: ModelSpec) -> str:
    """'auto' KV dtype of the GPU engines: the model's activation dtype (bf16 for 1-byte weights)."""
    return model.weight_dtype if dtype_bytes(model.weight_dtype) >= 2 else "bfloat16"


def scaled(total: int, fraction_: float, *, ceil: bool = False) -> int:
    """total · fraction, exact on the decimal the user wrote; floor (or ceil)."""
    product = total * Fraction(str(fraction_))
    return math.ceil(product) if ceil else math.floor(product)


def gib(n: float, digits: int = 2) -> str:
    return f"{n / GiB:.{digits}f}"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------- result
@dataclass(frozen=True)
class EnginePlan:
    """What one engine would allocate at start-up, and what it would log.

    Byte figures are per device (the tightest device of the tightest replica) unless ``scope``
    says otherwise (MAX pools memory over all devices). Blocks and tokens are per replica (one
    data-parallel engine instance), as the engine logs them.
    """

    engine: str
    version: str
    model: str
    mesh: str
    layout: str
    knobs: dict[str, Any]
    scope: str
    kv_cache_dtype: str
    block_size: int
    kv_bytes_per_token: int
    bytes_per_block: int
    total_bytes: int
    budget_bytes: int
    non_kv: NonKV
    non_kv_bytes: int
    kv_available_bytes: int
    kv_bytes: int
    num_blocks: int
    usable_blocks: int
    pool_tokens: int
    kv_tokens: int
    max_model_len: int
    max_concurrency: float
    max_model_len_fit: int
    num_replicas: int
    starts: bool
    error: str | None
    log_lines: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    tokens_band: Band = field(default_factory=lambda: Band(0, 0, 0))
    devices: tuple[dict[str, Any], ...] = ()
    # one flag per log line: True where the line's figures rest on estimated (modelled, not
    # measured) non-KV terms — the CLI marks those lines as estimates
    estimated_lines: tuple[bool, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["non_kv"] = self.non_kv.to_dict()
        out["tokens_band"] = self.tokens_band.to_dict()
        out["log_lines"], out["warnings"] = list(self.log_lines), list(self.warnings)
        out["estimated_lines"] = list(self.estimated_lines)
        out["devices"] = [dict(d) for d in self.devices]
        return out


def with_band(compute: Callable[[Setup, str], EnginePlan], setup: Setup, band: bool = True) -> EnginePlan:
    """Run a profile at the central non-KV estimate, and at its high/low ends for the token band."""
    central = compute(setup, "central")
    if not band:
        return replace(central, tokens_band=Band.exact(central.kv_tokens))
    low = compute(setup, "high").kv_tokens  # most non-KV → fewest tokens
    high = compute(setup, "low").kv_tokens
    return replace(central, tokens_band=Band(min(low, central.kv_tokens), central.kv_tokens,
                                             max(high, central.kv_tokens)))


def estimated_flags(lines: tuple[str, ...] | list[str], exact_prefixes: tuple[str, ...], estimated: bool
                    ) -> tuple[bool, ...]:
    """Per line: estimated unless it starts with one of ``exact_prefixes`` or nothing is estimated."""
    return tuple(estimated and not line.startswith(exact_prefixes) for line in lines)


__all__ = [
    "CONCEPTS",
    "ENGINE_NAMES",
    "MEASURED",
    "MODEL_DTYPES",
    "PLATFORMS",
    "QUANTIZATION",
    "EnginePlan",
    "Knob",
    "Setup",
    "apply_model_knobs",
    "boolean",
    "cdiv",
    "choice",
    "default_kv_dtype",
    "estimated_flags",
    "fraction",
    "gib",
    "integer",
    "kv_dtype_choice",
    "make_setup",
    "model_dtype_choice",
    "positive_number",
    "quantization_choice",
    "scaled",
    "unknown_knob",
    "with_band",
]
