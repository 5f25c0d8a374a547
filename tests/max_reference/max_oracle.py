"""Oracle: Modular MAX 26.7.0's own answers for KV-cache page math and memory planning.

Plain numbers in, MAX's numbers out, for differential tests of kvfit. Every public function
builds real MAX objects (``MHAKVCacheParams`` / ``MLAKVCacheParams``, ``MemoryEstimator``) and
calls MAX's code; nothing here re-implements MAX.

Where MAX runs
--------------
``max`` is never imported at module level, so this file imports fine without MAX installed.
By default every call goes to a persistent worker subprocess (``python max_oracle.py --serve``)
running an interpreter that has ``max==26.7.0``. That keeps MAX's import side effects
(``os.environ`` gains ``MODULAR_*`` / ``TRANSFORMERS_*`` variables, the ``max.pipelines`` logger,
heavy imports) out of the test process. The interpreter is

* ``$KVFIT_MAX_PYTHON`` if set (e.g. ``/tmp/maxenv/bin/python``), else
* ``sys.executable`` if ``max`` is importable there.

``KVFIT_MAX_INPROCESS=1`` runs MAX in this process instead (faster, but leaks the side effects).
``available()`` says whether an oracle interpreter exists (use it for ``pytest.skip``).

``estimate_footprint`` and ``available_kv_cache_memory`` need ``max.pipelines`` and therefore
MAX's ``serve`` dependencies (at least: huggingface-hub, pydantic, pydantic-settings, pyyaml,
transformers>=5.12,<5.13, requests, pillow, av). The page-math functions need only the bare
``max`` wheel. ``kv_cache_memory_size`` / ``max_seq_len_fitting_in_cache`` (the registry's
Jenga-aware versions) import ``max.pipelines.kv_cache`` and need the serve deps too.

Errors
------
A MAX exception is re-raised here with the same builtin type (``ValueError``,
``RuntimeError``, ...) and MAX's exact message; ``exc.max_type`` holds MAX's type name. A
non-builtin MAX exception type becomes ``MaxOracleError``.

Batches
-------
``batch([(fn, kwargs), ...])`` runs many calls in one round trip and returns one response per
call, exceptions included (not raised): ``{"ok", "result" | "type"/"message", "logs"}``, where
``logs`` are the ``[level, message]`` records MAX logged on ``max.pipelines`` (INFO and above)
during that call. ``jenga_geometry`` (batch only) calls ``plan_jenga_geometry`` itself with
``available_bytes, cache_sizes, row_sizes, include_null_block, max_padding_fraction``.

Geometry keywords (shared by the page-math functions)
-----------------------------------------------------
``n_kv_heads, head_dim, num_layers, dtype, page_size=128, n_devices=1, dp=1, is_mla=False,
num_q_heads=None, allow_replication=False, num_draft_tokens=0, speculative_method=None,
quant_scale_dtype=None, quant_granularity=128, window_size=None, enable_prefix_caching=False,
device_kind="gpu", slots_per_page=None, per_layer_buffers=False, kv_connector="null"``.
``dtype`` and ``quant_scale_dtype`` accept every ``max.dtype.DType`` name plus the short forms
bf16, f32, f16, fp8. ``n_kv_heads`` is ignored when ``is_mla`` (MLA caches one latent
"head"). ``speculative_method`` is passed through (MAX's names None, "eagle", "mtp", "dflash",
"dflash2", "dspark"; anything else reaches MAX's "Unrecognized speculative_method" error; kvfit's
"none" maps to None). ``kv_params_info`` reports every derived property as ``[outcome, value]``
(a property MAX refuses gives its exception's type and text).

``estimate_footprint`` also takes ``has_kv_cache`` (False: an arch config without a KV cache),
``with_arch`` / ``arch_name`` (the ``SupportedArchitecture`` stub, or None), ``vision_entry_bytes``
and ``vision_row_spec`` (``[hidden_size, dtype]`` or None: a vision tower),
``vision_cache_utilization`` (0.05), ``is_disaggregated``, ``virtual_devices`` (MAX's
``set_virtual_device_count`` for the call: cross-compilation mode), ``device_stats`` (a dict that replaces
every device's ``stats``, e.g. ``{}`` for a device that reports none) and ``legacy`` (a bool, or a
raw ``MODULAR_USE_LEGACY_KV_CACHE`` string). Its result adds ``vision_bytes_per_device``.
"""

from __future__ import annotations

import atexit
import builtins
import importlib.util
import json
import os
import subprocess
import sys
import threading
from typing import Any

__all__ = [
    "MaxOracleError",
    "MaxUnavailableError",
    "available",
    "available_kv_cache_memory",
    "batch",
    "bytes_per_block",
    "estimate_footprint",
    "estimated_memory_size",
    "kv_cache_memory_size",
    "kv_params_info",
    "max_seq_len_fitting",
    "max_seq_len_fitting_in_cache",
    "max_version",
    "num_device_blocks",
    "shutdown",
    "signal_buffer_num_bytes",
    "spec_slack",
]

MAX_VERSION = "26.7.0"


class MaxOracleError(Exception):
    """A MAX exception whose type is not a Python builtin."""

    def __init__(self, max_type: str, message: str):
        super().__init__(message)
        self.max_type = max_type


class MaxUnavailableError(ImportError):
    """No interpreter with ``max`` was found (set ``KVFIT_MAX_PYTHON``)."""


# ----------------------------------------------------------------------------------------
# Public API (client side). Each function forwards its keywords to the matching _impl_*.
# ----------------------------------------------------------------------------------------


def bytes_per_block(**geometry: Any) -> int:
    """``KVCacheParams.bytes_per_block``: one page summed over the TP group of a replica."""
    return _call("bytes_per_block", geometry)


def kv_params_info(**geometry: Any) -> dict:
    """Derived fields of the params object: bytes_per_block, value/scale split, tp,
    n_kv_heads_per_device, per-device leaf page bytes, row bytes, slack."""
    return _call("kv_params_info", geometry)


def spec_slack(**geometry: Any) -> int:
    """``spec_decode_cache_slack(params)``."""
    return _call("spec_slack", geometry)


def num_device_blocks(
    *,
    available_cache_memory: int,
    max_batch_size: int | None,
    max_seq_len: int | None,
    include_null_block: bool = False,
    require_max_seq_len_fits: bool = False,
    **geometry: Any,
) -> int:
    """``compute_num_device_blocks`` (pages per replica). MAX's default is no null block."""
    return _call(
        "num_device_blocks",
        dict(
            geometry,
            available_cache_memory=available_cache_memory,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            include_null_block=include_null_block,
            require_max_seq_len_fits=require_max_seq_len_fits,
        ),
    )


def estimated_memory_size(
    *,
    available_cache_memory: int,
    max_batch_size: int,
    max_seq_len: int,
    include_null_block: bool = False,
    **geometry: Any,
) -> int:
    """``estimated_memory_size`` (bytes over all replicas). MAX's default is no null block."""
    return _call(
        "estimated_memory_size",
        dict(
            geometry,
            available_cache_memory=available_cache_memory,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            include_null_block=include_null_block,
        ),
    )


def max_seq_len_fitting(
    *, available_cache_memory: int, include_null_block: bool = False, **geometry: Any
) -> int | None:
    """``compute_max_seq_len_fitting_in_cache`` (generic). MAX's default is no null block."""
    return _call(
        "max_seq_len_fitting",
        dict(
            geometry,
            available_cache_memory=available_cache_memory,
            include_null_block=include_null_block,
        ),
    )


def kv_cache_memory_size(
    *,
    available_cache_memory: int,
    max_batch_size: int,
    max_seq_len: int,
    legacy: bool = False,
    **geometry: Any,
) -> int:
    """``max.pipelines.kv_cache.kv_cache_memory_size``: what ``MemoryEstimator`` commits.

    ``legacy=False`` is MAX's default (Jenga manager); ``legacy=True`` sets
    ``MODULAR_USE_LEGACY_KV_CACHE=1`` for the call (generic ``estimated_memory_size`` with
    ``include_null_block=True``).
    """
    return _call(
        "kv_cache_memory_size",
        dict(
            geometry,
            available_cache_memory=available_cache_memory,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            legacy=legacy,
        ),
    )


def max_seq_len_fitting_in_cache(
    *, available_cache_memory: int, legacy: bool = False, **geometry: Any
) -> int | None:
    """``max.pipelines.kv_cache.max_seq_len_fitting_in_cache``: the estimator's length cap."""
    return _call(
        "max_seq_len_fitting_in_cache",
        dict(geometry, available_cache_memory=available_cache_memory, legacy=legacy),
    )


def available_kv_cache_memory(
    *,
    free_memory_per_device: list[int],
    utilization: float,
    weights: int,
    activations: int = 0,
    signal: int = 0,
    total_memory_per_device: list[int] | None = None,
) -> int:
    """``MemoryEstimator._available_kv_cache_memory``: ``int(F*util - (w + a + s))``."""
    return _call(
        "available_kv_cache_memory",
        dict(
            free_memory_per_device=free_memory_per_device,
            utilization=utilization,
            weights=weights,
            activations=activations,
            signal=signal,
            total_memory_per_device=total_memory_per_device,
        ),
    )


def signal_buffer_num_bytes() -> int:
    """``max.nn.comm.allreduce.Signals.NUM_BYTES`` (per GPU)."""
    return _call("signal_buffer_num_bytes", {})


def estimate_footprint(
    *,
    free_memory_per_device: list[int],
    utilization: float,
    weights: int,
    max_length: int | None,
    max_length_user_provided: bool,
    max_batch_size: int | None = None,
    activations: int = 0,
    signal: int = 0,
    max_batch_input_tokens: int = 8192,
    max_batch_total_tokens: int | None = None,
    requires_max_batch_context_length: bool = False,
    draft_max_seq_len: int | None = None,
    device_kind: str = "gpu",
    total_memory_per_device: list[int] | None = None,
    max_single_alloc_size_per_device: list[int] | None = None,
    legacy: bool = False,
    **geometry: Any,
) -> dict:
    """``MemoryEstimator.plan_from_sizes`` on fake devices and stub configs.

    ``len(free_memory_per_device)`` is the device count (it overrides ``n_devices``).
    ``device_kind="cpu"`` makes the devices hosts (a single host device infers batch 1).
    ``max_single_alloc_size_per_device`` defaults to each device's total memory (MAX's
    default implementation), and ``total_memory_per_device`` to its free memory.

    Returns ``planned_max_length``, ``planned_max_batch_size``, ``available_cache_memory``
    (the committed KV bytes), ``footprint``, ``planned_max_batch_total_tokens`` and ``logs``
    (``[level, message]`` records MAX logged on ``max.pipelines`` at INFO and above), or raises
    MAX's exception.
    """
    n = len(free_memory_per_device)
    geometry = dict(geometry, n_devices=n)
    return _call(
        "estimate_footprint",
        dict(
            geometry,
            free_memory_per_device=free_memory_per_device,
            utilization=utilization,
            weights=weights,
            activations=activations,
            signal=signal,
            max_length=max_length,
            max_length_user_provided=max_length_user_provided,
            max_batch_size=max_batch_size,
            max_batch_input_tokens=max_batch_input_tokens,
            max_batch_total_tokens=max_batch_total_tokens,
            requires_max_batch_context_length=requires_max_batch_context_length,
            draft_max_seq_len=draft_max_seq_len,
            device_kind=device_kind,
            total_memory_per_device=total_memory_per_device,
            max_single_alloc_size_per_device=max_single_alloc_size_per_device,
            legacy=legacy,
        ),
    )


def batch(calls: list[tuple[str, dict]]) -> list[dict]:
    """Runs ``[(fn name, kwargs), ...]`` in one round trip to the worker.

    Returns one response per call: ``{"ok": True, "result": ..., "logs": [[level, msg], ...]}`` or
    ``{"ok": False, "type": ..., "message": ..., "logs": [...]}`` (MAX's exception, not raised).
    ``estimate_footprint`` calls take the same keywords as :func:`estimate_footprint` and must
    give ``n_devices`` consistent with ``free_memory_per_device``.
    """
    return _call("batch", {"calls": [{"fn": n, "kwargs": k} for n, k in calls]})


def max_version() -> str:
    """The installed MAX version the oracle talks to."""
    return _call("max_version", {})


# ----------------------------------------------------------------------------------------
# Transport
# ----------------------------------------------------------------------------------------

_lock = threading.Lock()
_worker: subprocess.Popen | None = None


def _oracle_python() -> str | None:
    exe = os.environ.get("KVFIT_MAX_PYTHON")
    if exe:
        return exe
    if importlib.util.find_spec("max") is not None:
        try:
            if importlib.util.find_spec("max.nn") is not None:
                return sys.executable
        except (ImportError, ValueError):
            return None
    return None


def available() -> bool:
    """Whether an interpreter with ``max`` is configured (does not import it here)."""
    if os.environ.get("KVFIT_MAX_INPROCESS") == "1":
        return importlib.util.find_spec("max") is not None
    exe = _oracle_python()
    return exe is not None and os.path.exists(exe)


def _raise_from(resp: dict) -> None:
    etype, msg = resp["type"], resp["message"]
    cls = getattr(builtins, etype, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        exc: Exception = cls(msg)
    else:
        exc = MaxOracleError(etype, msg)
    exc.max_type = etype  # type: ignore[attr-defined]
    raise exc


def _call(name: str, kwargs: dict) -> Any:
    inprocess = os.environ.get("KVFIT_MAX_INPROCESS") == "1"
    resp = _dispatch(name, kwargs) if inprocess else _remote(name, kwargs)
    if not resp["ok"]:
        _raise_from(resp)
    return resp["result"]


def _start_worker() -> subprocess.Popen:
    exe = _oracle_python()
    if exe is None:
        raise MaxUnavailableError(
            "No Python with max==26.7.0 found; set KVFIT_MAX_PYTHON to one (e.g. /tmp/maxenv/bin/python)."
        )
    env = dict(os.environ)
    # The worker must not inherit a test run's in-process switch or PYTHONPATH games.
    env.pop("KVFIT_MAX_INPROCESS", None)
    return subprocess.Popen(
        [exe, os.path.abspath(__file__), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if os.environ.get("KVFIT_MAX_QUIET", "1") == "1" else None,
        text=True,
        bufsize=1,
        env=env,
    )


def _remote(name: str, kwargs: dict) -> dict:
    global _worker
    with _lock:
        if _worker is None or _worker.poll() is not None:
            _worker = _start_worker()
        assert _worker.stdin is not None and _worker.stdout is not None
        _worker.stdin.write(json.dumps({"fn": name, "kwargs": kwargs}) + "\n")
        _worker.stdin.flush()
        line = _worker.stdout.readline()
        if not line:
            _worker = None
            raise MaxUnavailableError("MAX oracle worker exited (run with KVFIT_MAX_QUIET=0 to see why)")
        return json.loads(line)


def shutdown() -> None:
    """Stops the worker subprocess, if any."""
    global _worker
    with _lock:
        if _worker is not None and _worker.poll() is None:
            assert _worker.stdin is not None
            _worker.stdin.close()
            try:
                _worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _worker.kill()
        _worker = None


atexit.register(shutdown)


# ----------------------------------------------------------------------------------------
# MAX side (runs in the worker, or in-process with KVFIT_MAX_INPROCESS=1)
# ----------------------------------------------------------------------------------------

_DTYPE_NAMES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "f32": "float32",
    "fp32": "float32",
    "float32": "float32",
    "f16": "float16",
    "fp16": "float16",
    "float16": "float16",
    "fp8": "float8_e4m3fn",
    "f8": "float8_e4m3fn",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e8m0fnu": "float8_e8m0fnu",
    "int8": "int8",
    "uint8": "uint8",
}


def _dtype(name: str):
    from max.dtype import DType

    key = name.lower()
    return getattr(DType, _DTYPE_NAMES.get(key, key))


def _make_params(
    *,
    n_kv_heads: int | None = None,
    head_dim: int,
    num_layers: int,
    dtype: str,
    page_size: int = 128,
    n_devices: int = 1,
    dp: int = 1,
    is_mla: bool = False,
    num_q_heads: int | None = None,
    allow_replication: bool = False,
    num_draft_tokens: int = 0,
    speculative_method: str | None = None,
    quant_scale_dtype: str | None = None,
    quant_granularity: int = 128,
    window_size: int | None = None,
    enable_prefix_caching: bool = False,
    device_kind: str = "gpu",
    slots_per_page: int | None = None,
    per_layer_buffers: bool = False,
    kv_connector: str = "null",
):
    from max.graph import DeviceRef
    from max.nn.kv_cache import KVCacheQuantizationConfig, MHAKVCacheParams, MLAKVCacheParams

    if speculative_method == "none":
        speculative_method = None
    if device_kind == "cpu":
        devices = [DeviceRef.CPU(i) for i in range(n_devices)]
    else:
        devices = [DeviceRef.GPU(i) for i in range(n_devices)]
    quant = None
    if quant_scale_dtype is not None:
        quant = KVCacheQuantizationConfig(
            scale_dtype=_dtype(quant_scale_dtype), quantization_granularity=quant_granularity
        )
    common = dict(
        dtype=_dtype(dtype),
        head_dim=head_dim,
        num_layers=num_layers,
        devices=devices,
        page_size=page_size,
        data_parallel_degree=dp,
        kvcache_quant_config=quant,
        speculative_method=speculative_method,
        num_draft_tokens=num_draft_tokens,
        window_size=window_size,
        enable_prefix_caching=enable_prefix_caching,
        slots_per_page=slots_per_page,
        per_layer_buffers=per_layer_buffers,
    )
    if kv_connector != "null":
        from max.pipelines.kv_cache import KVConnectorConfig

        common["kv_connector_config"] = KVConnectorConfig(type=kv_connector)
    if is_mla:
        if num_q_heads is None:
            # Same text as KVCacheConfig.to_params.
            raise ValueError("num_q_heads is required when is_mla=True.")
        return MLAKVCacheParams(num_q_heads=num_q_heads, **common)
    return MHAKVCacheParams(n_kv_heads=n_kv_heads, allow_kv_head_replication=allow_replication, **common)


def _split(kwargs: dict, names: tuple[str, ...]) -> tuple[dict, dict]:
    own = {k: kwargs[k] for k in names if k in kwargs}
    geo = {k: v for k, v in kwargs.items() if k not in names}
    return own, geo


def _impl_max_version() -> str:
    from importlib.metadata import version

    return version("max")


def _impl_bytes_per_block(**geo) -> int:
    return int(_make_params(**geo).bytes_per_block)


def _impl_kv_params_info(**geo) -> dict:
    from max.nn.kv_cache import spec_decode_cache_slack

    p = _make_params(**geo)
    getters = {
        "bytes_per_block": lambda: p.bytes_per_block,
        "bytes_per_value_block": lambda: p.bytes_per_value_block,
        "bytes_per_scale_block": lambda: p.bytes_per_scale_block,
        "tensor_parallel_degree": lambda: p.tensor_parallel_degree,
        "n_kv_heads_per_device": lambda: p.n_kv_heads_per_device,
        "kv_dim": lambda: p.kv_dim,
        "shape_per_block": lambda: list(p.shape_per_block),
        "shape_per_scale_block": lambda: list(p.shape_per_scale_block),
        "replicates_kv_across_tp": lambda: p.replicates_kv_across_tp,
        "quantized_kv_cache": lambda: p.quantized_kv_cache,
        "is_nvfp4_kv_cache": lambda: p.is_nvfp4_kv_cache,
        "storage_head_dim": lambda: p.storage_head_dim,
        "kv_cache_scale_dtype": lambda: p.kv_cache_scale_dtype.name,
        "row_bytes": lambda: p.row_bytes,
        "scale_row_bytes": lambda: p.scale_row_bytes,
        "num_draft_tokens_per_step": lambda: p.num_draft_tokens_per_step,
        "leaves": lambda: {
            k: {"bytes_per_page": v.bytes_per_page, "row_bytes": v.row_bytes, "full": v.group_id.is_full()}
            for k, v in p.leaves().items()
        },
        "spec_slack": lambda: spec_decode_cache_slack(p),
    }
    out = {}
    for key, get in getters.items():
        try:
            out[key] = ["ok", get()]
        except Exception as e:  # a property MAX refuses is part of the answer
            out[key] = [type(e).__name__, str(e)]
    return out


def _impl_spec_slack(**geo) -> int:
    from max.nn.kv_cache import spec_decode_cache_slack

    return spec_decode_cache_slack(_make_params(**geo))


def _impl_num_device_blocks(**kw) -> int:
    from max.nn.kv_cache import compute_num_device_blocks

    own, geo = _split(
        kw,
        (
            "available_cache_memory",
            "max_batch_size",
            "max_seq_len",
            "include_null_block",
            "require_max_seq_len_fits",
        ),
    )
    return compute_num_device_blocks(_make_params(**geo), **own)


def _impl_estimated_memory_size(**kw) -> int:
    from max.nn.kv_cache import estimated_memory_size

    own, geo = _split(kw, ("available_cache_memory", "max_batch_size", "max_seq_len", "include_null_block"))
    return estimated_memory_size(_make_params(**geo), **own)


def _impl_max_seq_len_fitting(**kw) -> int | None:
    from max.nn.kv_cache import compute_max_seq_len_fitting_in_cache

    own, geo = _split(kw, ("available_cache_memory", "include_null_block"))
    return compute_max_seq_len_fitting_in_cache(_make_params(**geo), **own)


class _LegacyKV:
    """Sets MODULAR_USE_LEGACY_KV_CACHE for the duration of one call (a bool, or a raw string)."""

    def __init__(self, legacy):
        self.legacy = legacy

    def __enter__(self):
        self.old = os.environ.get("MODULAR_USE_LEGACY_KV_CACHE")
        if isinstance(self.legacy, str):
            os.environ["MODULAR_USE_LEGACY_KV_CACHE"] = self.legacy
        else:
            os.environ["MODULAR_USE_LEGACY_KV_CACHE"] = "1" if self.legacy else "0"

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("MODULAR_USE_LEGACY_KV_CACHE", None)
        else:
            os.environ["MODULAR_USE_LEGACY_KV_CACHE"] = self.old


def _impl_kv_cache_memory_size(**kw) -> int:
    from max.pipelines.kv_cache import kv_cache_memory_size

    own, geo = _split(kw, ("available_cache_memory", "max_batch_size", "max_seq_len", "legacy", "is_di_enabled"))
    legacy = own.pop("legacy", False)
    di = own.pop("is_di_enabled", False)
    params = _make_params(**geo)
    with _LegacyKV(legacy):
        return kv_cache_memory_size(params=params, is_di_enabled=di, model_name="dummy", **own)


def _impl_max_seq_len_fitting_in_cache(**kw) -> int | None:
    from max.pipelines.kv_cache import max_seq_len_fitting_in_cache

    own, geo = _split(kw, ("available_cache_memory", "legacy", "is_di_enabled"))
    legacy = own.pop("legacy", False)
    di = own.pop("is_di_enabled", False)
    params = _make_params(**geo)
    with _LegacyKV(legacy):
        return max_seq_len_fitting_in_cache(params=params, is_di_enabled=di, model_name="dummy", **own)


def _impl_signal_buffer_num_bytes() -> int:
    from max.nn.comm.allreduce import Signals

    return int(Signals.NUM_BYTES)


class _FakeDevice:
    """What MemoryEstimator reads off a ``max.driver.Device``."""

    def __init__(self, free: int, total: int, single_alloc: int, is_host: bool):
        self.stats = {"free_memory": free, "total_memory": total}
        self.is_host = is_host
        self.max_single_alloc_size = single_alloc


def _fake_devices(free, total, single, device_kind):
    n = len(free)
    total = list(total) if total is not None else list(free)
    single = list(single) if single is not None else list(total)
    if len(total) != n or len(single) != n:
        raise TypeError("per-device lists must have the same length")
    return [_FakeDevice(free[i], total[i], single[i], device_kind == "cpu") for i in range(n)]


def _ns(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**kw)


def _stub_model_config(utilization, max_length=None, user=False):
    return _ns(
        device_specs=[],
        max_length=max_length,
        max_length_is_user_provided=user,
        kv_cache=_ns(device_memory_utilization=utilization),
        model_name="dummy",
        huggingface_config=None,
    )


def _impl_available_kv_cache_memory(
    *, free_memory_per_device, utilization, weights, activations, signal, total_memory_per_device
) -> int:
    from max.pipelines.lib.memory_estimation import MemoryEstimator

    devices = _fake_devices(free_memory_per_device, total_memory_per_device, None, "gpu")
    return MemoryEstimator._available_kv_cache_memory(
        weights, activations, _stub_model_config(utilization), devices, signal
    )


def _impl_estimate_footprint(**kw) -> dict:
    from max.pipelines.lib.memory_estimation import MemoryEstimator

    own_names = (
        "free_memory_per_device",
        "utilization",
        "weights",
        "activations",
        "signal",
        "max_length",
        "max_length_user_provided",
        "max_batch_size",
        "max_batch_input_tokens",
        "max_batch_total_tokens",
        "requires_max_batch_context_length",
        "draft_max_seq_len",
        "total_memory_per_device",
        "max_single_alloc_size_per_device",
        "legacy",
        "has_kv_cache",
        "with_arch",
        "arch_name",
        "vision_entry_bytes",
        "vision_row_spec",
        "vision_cache_utilization",
        "is_disaggregated",
        "device_stats",
        "virtual_devices",
    )
    o, geo = _split(kw, own_names)
    has_kv = o.get("has_kv_cache", True)
    params = _make_params(**geo) if has_kv else None
    max_length = o["max_length"]
    row_spec = o.get("vision_row_spec")
    entry_bytes = o.get("vision_entry_bytes", 0)

    class _Base:
        @classmethod
        def initialize(cls, pipeline_config, model_config=None, *, max_seq_len):
            raise NotImplementedError

        def get_max_seq_len(self):
            return max_length

        @classmethod
        def calculate_max_seq_len(cls, huggingface_config, model_config):
            return max_length

    members = {}
    if has_kv:
        members["get_kv_params"] = lambda self: params
    if entry_bytes:
        members["estimate_vision_cache_entry_bytes"] = classmethod(lambda cls, hf: entry_bytes)
        members["get_vision_cache_row_spec"] = classmethod(
            lambda cls, hf: None if row_spec is None else (row_spec[0], _dtype(row_spec[1]))
        )
    stub = type("_StubArchConfig", (_Base,), members)

    arch = None
    if o.get("with_arch", True):
        arch = _ns(
            name=o.get("arch_name", "kvfit_stub"),
            config=stub,
            requires_max_batch_context_length=o["requires_max_batch_context_length"],
        )
    pipeline_config = _ns(
        runtime=_ns(
            max_batch_input_tokens=o["max_batch_input_tokens"],
            max_batch_total_tokens=o["max_batch_total_tokens"],
            is_disaggregated=o.get("is_disaggregated", False),
            vision_cache_utilization=o.get("vision_cache_utilization", 0.05),
        )
    )
    model_config = _stub_model_config(o["utilization"], max_length, o["max_length_user_provided"])
    devices = _fake_devices(
        o["free_memory_per_device"],
        o["total_memory_per_device"],
        o["max_single_alloc_size_per_device"],
        geo.get("device_kind", "gpu"),
    )
    if o.get("device_stats") is not None:  # replace every device's stats dict (e.g. {} to fail)
        for d in devices:
            d.stats = dict(o["device_stats"])
    from max.driver import set_virtual_device_count

    try:
        set_virtual_device_count(o.get("virtual_devices", 0))
        with _LegacyKV(o["legacy"]):
            plan = MemoryEstimator.plan_from_sizes(
                pipeline_config,
                model_config,
                stub(),
                devices,
                o["weights"],
                o["activations"],
                o["signal"],
                arch=arch,
                max_batch_size=o["max_batch_size"],
                draft_max_seq_len=o["draft_max_seq_len"],
            )
    finally:
        set_virtual_device_count(0)
    vp = plan.vision_cache_plan
    return {
        "planned_max_length": plan.planned_max_length,
        "planned_max_batch_size": plan.planned_max_batch_size,
        "available_cache_memory": plan.available_cache_memory,
        "footprint": plan.footprint,
        "planned_max_batch_total_tokens": plan.planned_max_batch_total_tokens,
        "vision_bytes_per_device": None if vp is None else vp.bytes_per_device,
    }


def _impl_jenga_geometry(
    *, available_bytes: int, cache_sizes: dict, row_sizes: dict, include_null_block: bool = True,
    max_padding_fraction: float = 0.0,
) -> dict:
    """``plan_jenga_geometry`` itself (its padding fraction is a parameter, so no env needed)."""
    from max.pipelines.kv_cache.paged_kv_cache.jenga_block_pool import plan_jenga_geometry

    g = plan_jenga_geometry(
        available_bytes,
        cache_sizes,
        row_sizes,
        include_null_block=include_null_block,
        max_padding_fraction=max_padding_fraction,
    )
    return {
        "num_huge_blocks": g.num_huge_blocks,
        "huge_page_bytes": g.huge_page_bytes,
        "ratios": g.ratios,
        "padded_sizes": g.padded_sizes,
    }


def _impl_batch(calls: list) -> list:
    """Runs many calls in one round trip: ``[{"fn": name, "kwargs": {...}}, ...]``."""
    return [_dispatch(c["fn"], c["kwargs"]) for c in calls]


class _Capture:
    """Collects max.pipelines log records (INFO+) emitted during one call."""

    def __init__(self):
        import logging

        self.records: list[list[str]] = []
        outer = self

        class _H(logging.Handler):
            def emit(self, record):
                outer.records.append([record.levelname, record.getMessage()])

        self.handler = _H(level=logging.INFO)
        self.logger = logging.getLogger("max.pipelines")

    def __enter__(self):
        import logging

        self.old_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)


def _dispatch(name: str, kwargs: dict) -> dict:
    fn = globals().get("_impl_" + name)
    if fn is None:
        return {"ok": False, "type": "AttributeError", "message": f"no oracle function {name!r}"}
    env_before = dict(os.environ)
    cap = _Capture()
    try:
        with cap:
            result = fn(**kwargs)
        if name == "estimate_footprint":
            result["logs"] = cap.records
        return {"ok": True, "result": result, "logs": cap.records}
    except Exception as e:  # MAX's own errors are the point of the oracle
        return {"ok": False, "type": type(e).__name__, "message": str(e), "logs": cap.records}
    finally:
        if os.environ.get("KVFIT_MAX_INPROCESS") == "1":
            # Undo whatever importing MAX wrote into os.environ.
            for k in set(os.environ) - set(env_before):
                del os.environ[k]
            os.environ.update(env_before)


def _serve() -> None:
    # Protocol on a private copy of stdout; anything MAX prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import logging

    logging.getLogger("max.pipelines").propagate = False
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        proto.write(json.dumps(_dispatch(req["fn"], req["kwargs"])) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        print(__doc__)
