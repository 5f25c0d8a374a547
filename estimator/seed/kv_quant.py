"""KV-cache dtypes and quantisation scales as Modular MAX 26.7.0 stores them.

A small pure module (no jax): the seed API's ``KVCacheParams`` and kvfit's native KV-spec classes
both take their scale bytes from here, so the two agree on which caches carry scales.

Facts ported from MAX 26.7.0 (PyPI wheel ``max-26.7.0``, paths under ``site-packages/max/``):

* ``nn/kv_cache/cache_params.py::KVCacheQuantizationConfig``: ``scale_dtype`` (default float32) and
  ``quantization_granularity`` (default 128, counted in logical elements along the head dim).
* ``KVCacheParams.quantized_kv_cache``: a cache stores scales only when it has a quantisation
  config and either (a) its values are float8_e4m3fn, float8_e4m3fnuz or int8 and its scales are
  float32, float8_e8m0fnu or float16, or (b) it is NVFP4 (``is_nvfp4_kv_cache``: uint8 values
  holding two E2M1 elements each, float8_e4m3fn scales, one scale per 16 elements). Any other
  combination (fp8 without a config, DeepSeek's int8 scales, ...) stores values only.
* ``storage_head_dim``: NVFP4 stores ``head_dim // 2`` bytes per head row; others ``head_dim``.
* ``shape_per_scale_block``: the value block's shape with its last dim replaced by
  ``math.ceil(head_dim / granularity)`` (a float division, as MAX writes it).
* ``KVCacheParams.__post_init__``: NVFP4 needs granularity 16; a quantised cache needs
  ``head_dim % granularity == 0``.
* ``max.dtype.DType.size_in_bytes`` for every DType MAX defines (``MAX_DTYPE_BYTES``).
* ``pipelines/kv_cache/config.py::cache_dtype_for_encoding``: the cache dtype MAX picks from a
  weight encoding or a ``kv_cache_format`` override.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from estimator.model.dtypes import ALIASES
from meshes.validation import InputError

# max.dtype.DType -> size_in_bytes, MAX 26.7.0 (every member; sub-byte formats report 1).
MAX_DTYPE_BYTES: dict[str, int] = {
    "bool": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "float16": 2, "float32": 4, "float64": 8, "bfloat16": 2,
    "float4_e2m1fn": 1, "float6_e2m3fn": 1, "float6_e3m2fn": 1, "float8_e8m0fnu": 1,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1,
}

# KVCacheParams.quantized_kv_cache (cache_params.py): value and scale dtypes that store scales.
QUANTIZED_VALUE_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz", "int8")
QUANTIZED_SCALE_DTYPES = ("float32", "float8_e8m0fnu", "float16")
FP4_KV_CACHE_QUANTIZATION_GRANULARITY = 16  # cache_params.py, NVFP4: one E4M3 scale per 16

# pipelines/kv_cache/config.py::_KV_CACHE_FORMAT_TO_DTYPE and _ENCODING_TO_KV_CACHE_DTYPE.
KV_CACHE_FORMAT_TO_DTYPE = {"float32": "float32", "bfloat16": "bfloat16",
                            "float8_e4m3fn": "float8_e4m3fn", "float4_e2m1fn": "uint8",
                            "float4_e2m1": "uint8"}
ENCODING_TO_KV_CACHE_DTYPE = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
                              "float8_e4m3fn": "bfloat16", "float6_e2m3fn": "bfloat16",
                              "float4_e2m1fnx2": "bfloat16", "q4_k": "float32", "q4_0": "float32",
                              "q6_k": "float32", "gptq": "bfloat16"}


def max_dtype(name: object, field: str = "dtype") -> str:
    """MAX's DType name for ``name`` (a MAX name, or a kvfit alias such as ``bf16``/``fp8``)."""
    key = str(getattr(name, "name", name)).strip().lower()
    key = key.removeprefix("dtype.")
    key = ALIASES.get(key, key)
    if key not in MAX_DTYPE_BYTES:
        raise InputError(field, name, "a MAX DType: " + ", ".join(MAX_DTYPE_BYTES))
    return key


def dtype_size(name: str) -> int:
    """``DType.size_in_bytes`` of a MAX dtype name."""
    return MAX_DTYPE_BYTES[max_dtype(name)]


@dataclass(frozen=True)
class KVCacheQuantizationConfig:
    """MAX ``KVCacheQuantizationConfig``: the scales' dtype and how many elements share a scale.

    Defaults as in MAX 26.7.0 (nn/kv_cache/cache_params.py): float32 scales, granularity 128.
    """

    scale_dtype: str = "float32"
    quantization_granularity: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_dtype", max_dtype(self.scale_dtype, "scale_dtype"))
        g = self.quantization_granularity
        if isinstance(g, bool) or not isinstance(g, int):
            raise InputError("quantization_granularity", g, "an integer")


NVFP4 = KVCacheQuantizationConfig("float8_e4m3fn", FP4_KV_CACHE_QUANTIZATION_GRANULARITY)
"""MAX's NVFP4 cache is dtype ``uint8`` (two E2M1 values per byte) with this config. The DType
``float4_e2m1fn`` (kvfit's "fp4"/"nvfp4" aliases) is a different thing to MAX: one byte per
element, no scales."""


def is_nvfp4(dtype: str, quant: KVCacheQuantizationConfig | None) -> bool:
    """MAX ``is_nvfp4_kv_cache``: uint8 values with float8_e4m3fn scales."""
    return max_dtype(dtype) == "uint8" and quant is not None and quant.scale_dtype == "float8_e4m3fn"


def is_quantized(dtype: str, quant: KVCacheQuantizationConfig | None) -> bool:
    """MAX ``quantized_kv_cache``: whether this value dtype / scale config stores scales."""
    if quant is None:
        return False
    if is_nvfp4(dtype, quant):
        return True
    return max_dtype(dtype) in QUANTIZED_VALUE_DTYPES and quant.scale_dtype in QUANTIZED_SCALE_DTYPES


def storage_head_dim(head_dim: int, dtype: str, quant: KVCacheQuantizationConfig | None) -> int:
    """Stored elements per head row (MAX ``storage_head_dim``): NVFP4 packs two per byte."""
    return head_dim // 2 if is_nvfp4(dtype, quant) else head_dim


def scale_groups(head_dim: int, granularity: int) -> int:
    """Scales per head row: ``math.ceil(head_dim / granularity)`` exactly as MAX writes it."""
    return math.ceil(head_dim / granularity)


def validate_quantization(dtype: str, head_dim: int,
                          quant: KVCacheQuantizationConfig | None) -> None:
    """MAX's construction checks on a quantised cache, in MAX's order and words (ValueError)."""
    if is_nvfp4(dtype, quant):
        assert quant is not None
        if quant.quantization_granularity != FP4_KV_CACHE_QUANTIZATION_GRANULARITY:
            raise ValueError(
                "An NVFP4 KV cache has one scale per"
                f" {FP4_KV_CACHE_QUANTIZATION_GRANULARITY} elements, got a"
                f" quantization granularity of {quant.quantization_granularity}.")
    if (is_quantized(dtype, quant) and quant is not None
            and head_dim % quant.quantization_granularity != 0):
        raise ValueError("KVCache quantization granularity must evenly divide KV head dimension.")


def scale_bytes_per_token(*, head_dim: int, dtype: str, quant: KVCacheQuantizationConfig | None,
                          kv_heads: int = 1, num_layers: int = 1, kv_dim: int = 2) -> int:
    """Scale bytes one token stores on one device (0 when MAX stores no scales for this cache).

    ``kv_dim · layers · heads · ceil(head_dim / granularity) · scale size`` — the per-token slice
    of MAX's ``bytes_per_scale_block`` (its page is this times the page's slots). ``kv_heads`` is
    the heads one device holds; ``kv_dim`` is 2 for K and V, 1 for an MLA latent. For an NVFP4
    cache pass ``dtype="uint8"`` and ``quant=NVFP4``.
    """
    if not is_quantized(dtype, quant):
        return 0
    assert quant is not None
    return (kv_dim * num_layers * kv_heads * scale_groups(head_dim, quant.quantization_granularity)
            * MAX_DTYPE_BYTES[quant.scale_dtype])


def scale_row_bytes(*, head_dim: int, dtype: str, quant: KVCacheQuantizationConfig | None,
                    kv_heads: int = 1) -> int:
    """MAX ``scale_row_bytes``: one scale row (heads · groups · scale size), 1 when unquantised."""
    if not is_quantized(dtype, quant):
        return 1
    assert quant is not None
    return (kv_heads * scale_groups(head_dim, quant.quantization_granularity)
            * MAX_DTYPE_BYTES[quant.scale_dtype])


@dataclass(frozen=True)
class BlockBytes:
    """One page's bytes split as MAX splits ``bytes_per_block`` (value + scale)."""

    value: int
    scale: int

    @property
    def total(self) -> int:
        return self.value + self.scale


def block_bytes(*, kv_dim: int, num_layers: int, slots: int, kv_heads: int, head_dim: int,
                dtype: str, quant: KVCacheQuantizationConfig | None,
                tensor_parallel_degree: int = 1) -> BlockBytes:
    """MAX ``bytes_per_value_block`` / ``bytes_per_scale_block``: one page over a TP group.

    value = kv_dim · layers · slots · heads per device · stored head dim · size · tp;
    scale = the same with ceil(head_dim / granularity) scales of the scale dtype (0 unquantised).
    """
    tp = tensor_parallel_degree
    value = (math.prod([kv_dim, num_layers, slots, kv_heads, storage_head_dim(head_dim, dtype, quant)])
             * dtype_size(dtype) * tp)
    scale = 0
    if is_quantized(dtype, quant):
        assert quant is not None
        groups = scale_groups(head_dim, quant.quantization_granularity)
        scale = (math.prod([kv_dim, num_layers, slots, kv_heads, groups])
                 * MAX_DTYPE_BYTES[quant.scale_dtype] * tp)
    return BlockBytes(value, scale)


def cache_dtype_for_encoding(quantization_encoding: str | None,
                             kv_cache_format: str | None = None) -> str:
    """MAX ``cache_dtype_for_encoding``: the KV dtype for a weight encoding or format override."""
    if kv_cache_format is not None:
        dtype = KV_CACHE_FORMAT_TO_DTYPE.get(kv_cache_format.lower())
        if dtype is None:
            raise ValueError(
                f"Unrecognized kv_cache_format override: '{kv_cache_format}'. "
                "Supported values are 'float32', 'bfloat16', 'float8_e4m3fn',"
                " and 'float4_e2m1fn'.")
        return dtype
    if not quantization_encoding:
        return "float32"
    try:
        return ENCODING_TO_KV_CACHE_DTYPE[quantization_encoding]
    except KeyError:
        raise ValueError("Unsupported quantization encoding for KV cache dtype resolution: "
                         f"{quantization_encoding}") from None
