"""The dtypes weights and KV caches come in: one table of the names users type, sizes from ml_dtypes.

Element sizes are not written by hand: they come from ``numpy.dtype`` over ml_dtypes' types (the
dtype library JAX itself uses), so a float8 variant means exactly what it means to JAX. Only the
accepted names and their aliases are kvfit's own. Sub-byte formats (fp4) have a width in bits; they
are packed where they are used (weight quantisation, NVFP4 caches), never as whole bytes here.
"""

from __future__ import annotations

from functools import cache

from meshes.validation import InputError, check_choice

# canonical names, as numpy / ml_dtypes spell them
CANONICAL: tuple[str, ...] = (
    "float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn", "int8", "uint8", "int32",
)

ALIASES: dict[str, str] = {
    "fp32": "float32", "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16", "f16": "float16", "half": "float16",
    "fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "f8e4m3fn": "float8_e4m3fn",
    "float8": "float8_e4m3fn",
    "fp8_e4m3fnuz": "float8_e4m3fnuz", "f8e4m3fnuz": "float8_e4m3fnuz",
    "fp8_e5m2": "float8_e5m2", "f8e5m2": "float8_e5m2",
    "e8m0": "float8_e8m0fnu", "float8_e8m0": "float8_e8m0fnu",
    "fp4": "float4_e2m1fn", "nvfp4": "float4_e2m1fn", "mxfp4": "float4_e2m1fn",
    "i8": "int8", "u8": "uint8",
}


def canonical_dtype(name: str, field: str = "dtype") -> str:
    """Canonical dtype name for ``name`` or one of its aliases (``bf16``, ``fp8``, ...)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    return key if key in CANONICAL else check_choice(field, key, [*CANONICAL, *ALIASES])


@cache
def _bits(name: str) -> int:
    import ml_dtypes  # numpy's dtypes plus JAX's low-precision floats; loaded on first use
    import numpy as np

    dtype = np.dtype(getattr(ml_dtypes, name, name))
    if dtype.kind == "V" or name.startswith(("float8", "float4", "bfloat")):
        return int(ml_dtypes.finfo(dtype).bits)
    return dtype.itemsize * 8


@cache
def dtype_bits(name: str, field: str = "dtype") -> int:
    """Bits per element of ``name`` (4 for fp4)."""
    return _bits(canonical_dtype(name, field))


def dtype_bytes(name: str, field: str = "dtype") -> int:
    """Bytes per element of ``name``; sub-byte formats are refused (they are packed elsewhere)."""
    bits = dtype_bits(name, field)
    if bits % 8:
        raise InputError(field, name, f"a dtype of whole bytes here ({name} is {bits}-bit; packed formats "
                         "are accepted only where they are packed)")
    return bits // 8
