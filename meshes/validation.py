"""Boundary checks shared by both packages: one clear error naming field, value and what is allowed.

Every value a user gives passes through one of these before any arithmetic, so a bad number
never travels deep into the code and comes back as a traceback or a silent wrong answer.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable
from numbers import Integral, Real
from pathlib import Path

MAX_BYTES = 2**63 - 1  # the largest byte count any runtime can report (signed 64-bit)


class InputError(ValueError):
    """A value the user gave is not allowed: names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        shown = repr(value)
        if len(shown) > 240:  # a 5,000-character path: keep the message one readable line
            shown = f"{shown[:160]}…{shown[-60:]}"
        super().__init__(f"{field}={shown} is not allowed: {allowed}")


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


def check_number(field: str, value: object, *, zero_ok: bool = False, maximum: float = 2.0**40) -> float:
    """Return ``value`` (any real number type, numpy's too) if finite and in (0, maximum] — or
    [0, maximum] with ``zero_ok`` — else raise InputError naming it; bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or not (value >= 0 if zero_ok else value > 0) or value > maximum:
        raise InputError(field, plain_text(value, 60), f"a finite number {'≥ 0' if zero_ok else '> 0'} and "
                         f"≤ {maximum:.0f}")
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


# ------------------------------------------------------------------ bounded reads of user files
MAX_JSON_BYTES = 16 * 2**20  # a config.json or index.json: real ones are < 1 MiB
MAX_JSON_DEPTH = 64  # nesting levels of a JSON document: HF configs use < 8, safetensors headers 2


def read_regular_file(field: str, path: object, max_bytes: int, *, what: str = "file") -> bytes:
    """The bytes of ``path``, read only if it is a regular file of at most ``max_bytes`` bytes.

    A FIFO, a socket or a device (``/dev/zero``) would block or never end: refused before it is
    opened. The size is checked on the open file too (it may grow between stat and read)."""
    import os
    import stat as st

    text = os.fspath(path)  # type: ignore[arg-type]
    try:
        info = os.stat(text)
    except FileNotFoundError:
        raise InputError(field, text, f"an existing {what}") from None
    except (OSError, ValueError) as err:
        raise InputError(field, text, f"a readable {what} ({getattr(err, 'strerror', None) or err})") from None
    if st.S_ISDIR(info.st_mode):
        raise InputError(field, text, f"a {what}, not a folder")
    if not st.S_ISREG(info.st_mode):
        raise InputError(field, text, f"a regular {what} (not a pipe, socket or device)")
    if info.st_size > max_bytes:
        raise InputError(field, text, f"a {what} of at most {max_bytes:,} bytes (it has {info.st_size:,})")
    try:
        with open(text, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise InputError(field, text, f"a readable {what} ({err.strerror or err})") from None
    if len(data) > max_bytes:
        raise InputError(field, text, f"a {what} of at most {max_bytes:,} bytes")
    return data


def json_depth_ok(value: object, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` (parsed JSON) nests at most ``max_depth`` arrays/objects deep (no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return False
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def parse_json(field: str, path: object, raw: bytes, *, max_depth: int = MAX_JSON_DEPTH,
               object_pairs_hook: object = None) -> object:
    """Parse ``raw`` as UTF-8 JSON with a nesting cap: one InputError for every way it is unusable."""
    import json

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=object_pairs_hook)  # type: ignore[arg-type]
    except RecursionError:
        raise InputError(field, str(path), f"JSON nested at most {max_depth} levels deep") from None
    except UnicodeDecodeError as err:
        raise InputError(field, str(path), f"readable UTF-8 JSON ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputError(field, str(path),
                         f"valid JSON (line {err.lineno}: {err.msg}; UTF-8 JSON text expected)") from None
    except ValueError as err:  # e.g. a duplicate key refused by object_pairs_hook
        raise InputError(field, str(path), f"valid JSON ({err}; UTF-8 JSON text expected)") from None
    if not json_depth_ok(value, max_depth):
        raise InputError(field, str(path), f"JSON nested at most {max_depth} levels deep")
    return value


# ------------------------------------------------------------------ text shown to people
def plain_text(value: object, limit: int = 200) -> str:
    """``value`` as one line of printable text: control characters (ESC, CR, NUL, ...) dropped,
    cut to ``limit`` characters. For names and paths that come from users or files."""
    text = "".join(ch for ch in str(value) if ch.isprintable())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ------------------------------------------------------------------ checks plan() can call
def check_page_size(page_size: object, platform: str, *, mla: bool = False) -> int:
    """Tokens per page as the mesh's kernels take them: any count in [1, 2^24] on GPUs; on TPUs a
    power of two in [16, 256] (1024 also for MLA), the page sizes of tpu-inference's Pallas
    ragged paged-attention kernels."""
    size = check_int("page_size", page_size, maximum=2**24)
    if platform == "tpu":
        allowed = [16, 32, 64, 128, 256] + ([1024] if mla else [])
        if size not in allowed:
            raise InputError("page_size", page_size, "on a TPU mesh one of "
                             f"{', '.join(map(str, allowed))}" + ("" if mla else " (1024 for MLA models)"))
    return size


_SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def check_output_path(field: str, path: str | os.PathLike[str] | None, *, folder: bool = False,
                      suffixes: tuple[str, ...] = (), overwrite: bool = True,
                      inputs: tuple[str | os.PathLike[str] | None, ...] = ()) -> Path | None:
    """Refuse an output path that cannot be written, before any work is done: empty, under
    /proc, /sys or /dev, under a file, in a folder that does not exist or is not writable, an
    existing folder where a file is wanted (or the reverse), a suffix not in ``suffixes``; a file
    that is a symbolic link (never written through), one of the user's ``inputs``, or (without
    ``overwrite``) a file that exists."""
    try:
        target = _check_output_path(field, path, folder, suffixes)
        if target is not None and not folder:
            _check_not_clobbering(field, target, overwrite, inputs)
        return target
    except InputError:
        raise
    except (OSError, ValueError) as err:  # a name too long, a loop of links, a NUL byte
        reason = getattr(err, "strerror", None) or err
        raise InputError(field, os.fspath(path or ""), f"a usable path ({reason})") from None


def _check_not_clobbering(field: str, target: Path, overwrite: bool,
                          inputs: tuple[str | os.PathLike[str] | None, ...]) -> None:
    text = os.fspath(target)
    if target.is_symlink():
        raise InputError(field, text, "a path that is not a symbolic link (kvfit does not write through links)")
    for given in inputs:
        if given is not None and target.exists() and Path(given).exists() and target.samefile(given):
            raise InputError(field, text, "a file other than the inputs (this is one of them)")
    if target.exists() and not overwrite:
        raise InputError(field, text, "a new file (it exists; pass --overwrite to replace it)")


def _check_output_path(field: str, path: str | os.PathLike[str] | None, folder: bool,
                       suffixes: tuple[str, ...]) -> Path | None:
    if path is None:
        return None
    text = os.fspath(path)
    if not text.strip():
        raise InputError(field, text, "a non-empty path")
    target = Path(text).expanduser()
    resolved = Path(os.path.abspath(target))
    if any(str(resolved) == d or str(resolved).startswith(d + "/") for d in _SYSTEM_DIRS):
        raise InputError(field, text, "a path outside /proc, /sys and /dev")
    if suffixes and target.suffix.lower() not in suffixes:
        raise InputError(field, text, f"a file name ending in {' or '.join(suffixes)}")
    if folder:
        if target.exists() and not target.is_dir():
            raise InputError(field, text, "a folder (this path is a file)")
        parent = target
        while not parent.exists():  # the nearest existing folder above it must be writable
            parent = parent.parent
    else:
        if target.is_dir():
            raise InputError(field, text, "a file name (this path is a folder)")
        if target.exists() and not os.access(target, os.W_OK):
            raise InputError(field, text, "a writable file")
        parent = target.parent
        if not parent.exists():
            raise InputError(field, text, f"a path in an existing folder ({parent} does not exist)")
    if not parent.is_dir():
        raise InputError(field, text, f"a path whose folders are folders ({parent} is a file)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(field, text, f"a path in a writable folder ({parent} is not writable)")
    return target
