"""MAX's byte formatting (``max/support/human_readable_formatter.py::to_human_readable_bytes``,
Modular MAX 26.7.0): the one function every MAX message that prints bytes goes through."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """``int(n)``, then TiB / GiB / MiB when at least one of them, else KiB; two decimals."""
    n = int(n)
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 1024:.2f} KiB"
