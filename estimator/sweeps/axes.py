"""Sweep axes as people write them on a command line: ``a:b`` powers of two, ``a:b:step`` linear,
comma lists of both. Shared by ``kvfit sweep`` and ``python -m estimator.sweeps.distributed``, so
the same text means the same grid in both; imports nothing heavy."""

from __future__ import annotations

from typing import Any

from meshes.validation import InputError

MAX_AXIS_VALUES = 1 << 16  # values of one axis (--batch or --length), over all its ranges
_INT_MAX = 2**31 - 1


def parse_axis(field: str, text: str, cast: Any = int, *, max_values: int = MAX_AXIS_VALUES) -> list:
    """Values of a sweep axis: ``a:b`` powers of two from a to b (a and b included),
    ``a:b:step`` linear from a to b inclusive, or a comma list mixing both (``1,8:64``).
    At most ``max_values`` values over the whole axis, counted before any list is built."""
    values: list = []
    count = 0
    for item in (t.strip() for t in str(text).split(",")):
        parts = item.split(":")
        try:
            if len(parts) == 1 and item:
                if len(item) > 40:
                    raise ValueError(item)
                values.append(cast(item))
                count += 1
                if count > max_values:
                    raise InputError(field, text, f"at most {max_values:,} values")
                continue
            if cast is not int or len(parts) not in (2, 3) or any(len(p) > 12 for p in parts):
                raise ValueError(item)
            lo, hi = int(parts[0]), int(parts[1])
            step = int(parts[2]) if len(parts) == 3 else 0
        except ValueError:
            raise InputError(field, text, "a number, a:b (powers of two from a to b), a:b:step "
                             "(linear) or a comma list of those") from None
        if lo < 1 or hi < lo or hi > _INT_MAX or (len(parts) == 3 and step < 1):
            raise InputError(field, text, f"ranges a:b or a:b:step with 1 ≤ a ≤ b ≤ {_INT_MAX} and step ≥ 1")
        count += (hi - lo) // step + 1 if step else hi.bit_length() + 2
        if count > max_values:
            raise InputError(field, text, f"at most {max_values:,} values over the whole axis")
        if step:
            values.extend(range(lo, hi + 1, step))
        else:
            values.extend(sorted({lo, hi} | {1 << k for k in range(hi.bit_length())
                                             if lo <= 1 << k <= hi}))
    return values
