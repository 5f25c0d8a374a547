"""Boundary checks shared by both packages: one clear error naming field, value and what is allowed.

Every value a user gives passes through one of these before any arithmetic, so a bad number
never travels deep into the code and comes back as a traceback or a silent wrong answer.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from numbers import Integral, Real

MAX_BYTES = 2**63 - 1  # the largest byte count any runtime can report (signed 64-bit)


class InputError(ValueError):
    """A value the user gave is not allowed: names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


def check_int(field: str, value: object, *, minimum: int = 1, maximum: int = MAX_BYTES) -> int:
    """Return ``value`` as a Python int in [minimum, maximum], or raise InputError."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        else:
            raise InputError(field, value, f"an integer in [{minimum}, {maximum}]")
    value = int(value)
    if not minimum <= value <= maximum:
        raise InputError(field, value, f"an integer in [{minimum}, {maximum}]")
    return value


def check_fraction(field: str, value: object, *, upper_inclusive: float = 1.0) -> float:
    """Return ``value`` as a float in (0, upper_inclusive], or raise InputError."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(field, value, f"a number in (0, {upper_inclusive}]")
    value = float(value)
    if not math.isfinite(value) or not 0.0 < value <= upper_inclusive:
        raise InputError(field, value, f"a number in (0, {upper_inclusive}]")
    return value


def check_choice(field: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise name the close ones and the rest."""
    options = list(choices)
    if value in options:
        return value
    lowered = {o.lower(): o for o in options}
    close = difflib.get_close_matches(str(value).lower(), list(lowered), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(lowered[c] for c in close)}? " if close else ""
    raise InputError(field, value, f"{hint}one of {', '.join(sorted(options))}")
