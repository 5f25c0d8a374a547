"""Element sizes of the dtypes weights and KV caches come in, and the names users type for them."""

from __future__ import annotations

from meshes.validation import check_choice

# bytes per element; sub-byte formats are handled where they are packed (quantisation)
DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int8": 1,
    "uint8": 1,
    "int32": 4,
}

ALIASES: dict[str, str] = {
    "fp32": "float32", "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16", "f16": "float16", "half": "float16",
    "fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "f8e4m3fn": "float8_e4m3fn",
    "float8": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
    "i8": "int8",
}


def canonical_dtype(name: str, field: str = "dtype") -> str:
    """Canonical dtype name for ``name`` or one of its aliases (``bf16``, ``fp8``, ...)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    return check_choice(field, key, [*DTYPE_BYTES, *ALIASES]) if key not in DTYPE_BYTES else key


def dtype_bytes(name: str, field: str = "dtype") -> int:
    """Bytes per element of ``name``."""
    return DTYPE_BYTES[canonical_dtype(name, field)]
