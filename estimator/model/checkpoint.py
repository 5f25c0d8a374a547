"""Exact weight bytes from safetensors checkpoints, read from their headers alone.

A ``.safetensors`` file is an 8-byte little-endian unsigned header length N, then N bytes of UTF-8
JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the data region that follows the header) plus an optional ``"__metadata__"`` object
of strings. This module parses that header itself with ``struct`` + ``json``: it reads 8 + N bytes
of each file and never the tensor data, never unpickles, never runs code and never touches the
network. Sharded checkpoints are read through ``model.safetensors.index.json`` (``weight_map``:
tensor name → shard file).

Every malformed input — a truncated file, a header over :data:`MAX_HEADER_BYTES`, a header that
is not a JSON object, an unknown dtype, a byte range that disagrees with shape × dtype, offsets
that overlap or leave the data region, an index naming a shard that is missing or a tensor the
shard lacks — raises one :class:`~meshes.validation.InputError` naming the file and the tensor.
Pickle checkpoints (``.bin``, ``.pt``, ...) are refused: loading them can run arbitrary code.
Only regular files are opened (a FIFO or a device such as /dev/zero is refused before it is
opened), an index.json is read up to ``MAX_JSON_BYTES`` bytes, and JSON nested deeper than
``MAX_JSON_DEPTH`` levels (headers and indexes use 2–3) is refused.

Why a hand parser and not the ``safetensors`` package (``safe_open`` + ``get_slice``): safe_open
reads the same header without loading tensors, but it maps the whole file, reports malformed input
as one generic error (``HeaderTooLarge``, ``InvalidOffset``, ...) without the tensor or the field,
and exposes neither the data offsets nor the header length this module checks and reports. The
format is 8 bytes and a JSON object (huggingface/safetensors, ``safetensors/src/tensor.rs``,
``Metadata::validate``); the checks here follow that validation, with the same 100 MB header cap.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshes.validation import MAX_JSON_BYTES, MAX_JSON_DEPTH, InputError, json_depth_ok, parse_json, read_regular_file

# The largest header accepted, in bytes. The safetensors library refuses headers above the same
# 100 MB ("header too large"); real checkpoints stay far below (a DeepSeek-V3 shard: ~200 kB).
MAX_HEADER_BYTES = 100_000_000

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# Bits per element of every dtype the safetensors format defines (the Rust crate's ``Dtype``,
# safetensors 0.6–0.8: 22 variants). Sub-byte formats are packed: a tensor's bytes are
# numel × bits / 8, which must be whole.
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,  # float4_e2m1fn, two per byte
    "F6_E2M3": 6, "F6_E3M2": 6,  # four per three bytes
    "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}

# suffixes of pickle-based checkpoints; reading one means unpickling, which can execute code
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_REFUSE_PICKLE = ("a safetensors checkpoint (.safetensors file, model.safetensors.index.json or a "
                  "folder holding them); pickle checkpoints (.bin/.pt/.pth/.ckpt) are refused "
                  "because loading them can run arbitrary code — convert them to safetensors, or "
                  "plan from config.json")


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor as its header describes it; ``nbytes`` is the stored size, ``file`` its shard."""

    name: str
    dtype: str  # safetensors dtype code: BF16, F8_E4M3, ...
    shape: tuple[int, ...]
    nbytes: int
    file: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def bits(self) -> int:
        """Bits per element (4 for F4, 6 for F6_*)."""
        return SAFETENSORS_DTYPE_BITS[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one ``.safetensors`` file."""

    file: str
    tensors: tuple[CheckpointTensor, ...]  # in data-offset order
    metadata: dict[str, str]
    header_bytes: int  # N
    data_bytes: int  # size of the data region (file size − 8 − N)


@dataclass(frozen=True)
class Checkpoint:
    """Every tensor of a checkpoint (one file or the shards of an index), header facts only."""

    path: str  # what was read: a .safetensors file or an index.json
    tensors: tuple[CheckpointTensor, ...]  # sorted by name
    files: tuple[str, ...]
    metadata: dict[str, str] = field(default_factory=dict)  # the first file's __metadata__
    warnings: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def parameter_count(self) -> int:
        """Elements over all tensors (packed sub-byte elements counted one by one)."""
        return sum(t.numel for t in self.tensors)

    def bytes_by_dtype(self) -> dict[str, int]:
        """Stored bytes per safetensors dtype, largest first."""
        totals: dict[str, int] = {}
        for t in self.tensors:
            totals[t.dtype] = totals.get(t.dtype, 0) + t.nbytes
        return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))

    def __getitem__(self, name: str) -> CheckpointTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.tensors)


# ---------------------------------------------------------------------------------------- one file
def _fail(path: Path | str, what: str, value: object, allowed: str) -> InputError:
    return InputError(f"{path}: {what}", value, allowed)


def _is_pickle(path: Path) -> bool:
    name = path.name.lower().removesuffix(".index.json")
    return name.endswith(PICKLE_SUFFIXES)


def _refuse_pickle(path: Path) -> None:
    if _is_pickle(path):
        raise InputError("checkpoint", str(path), _REFUSE_PICKLE)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path: str | os.PathLike[str], *, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Parse the header of one ``.safetensors`` file, reading only its first 8 + N bytes."""
    path = Path(path)
    _refuse_pickle(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(str(path))
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, /dev/zero never end
            raise InputError("checkpoint file", str(path), "a regular .safetensors file (not a pipe, "
                             "socket or device)")
        size = info.st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, "file size", f"{size} bytes",
                            "at least 8 bytes (the little-endian u64 header length); truncated file")
            (n,) = struct.unpack("<Q", prefix)
            if n > max_header_bytes:
                raise _fail(path, "header length", n,
                            f"at most {max_header_bytes:,} bytes (MAX_HEADER_BYTES); not a safetensors "
                            "file, or a corrupt one")
            if n > size - 8:
                raise _fail(path, "header length", n,
                            f"at most the {size - 8:,} bytes after the 8-byte prefix; truncated file")
            raw = f.read(n)
    except FileNotFoundError:
        raise InputError("checkpoint file", str(path), "an existing .safetensors file") from None
    except IsADirectoryError:
        raise InputError("checkpoint file", str(path), "a .safetensors file, not a folder") from None
    except OSError as err:
        raise InputError("checkpoint file", str(path), f"a readable file ({err.strerror or err})") from None
    if len(raw) < n:
        raise _fail(path, "header", f"{len(raw)} of {n} bytes", "the whole header; truncated file")
    too_deep = False
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        header, too_deep = None, True
    except (UnicodeDecodeError, ValueError) as err:
        raise _fail(path, "header", f"{n} bytes", f"UTF-8 JSON ({err})") from None
    if too_deep or not json_depth_ok(header, MAX_JSON_DEPTH):
        raise _fail(path, "header", f"{n} bytes", f"JSON nested at most {MAX_JSON_DEPTH} levels deep")
    if not isinstance(header, dict):
        raise _fail(path, "header", type(header).__name__,
                    "a JSON object mapping tensor names to {dtype, shape, data_offsets}")
    data_bytes = size - 8 - n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "__metadata__", metadata, "a JSON object of strings")
    spans: list[tuple[int, int, str]] = []
    tensors: list[CheckpointTensor] = []
    for name, entry in header.items():
        tensors.append(_tensor(path, name, entry, data_bytes, spans))
    _check_overlaps(path, spans)
    order = {name: begin for begin, _, name in spans}
    tensors.sort(key=lambda t: (order[t.name], t.name))
    return SafetensorsHeader(str(path), tuple(tensors), dict(metadata), n, data_bytes)


def _tensor(path: Path, name: str, entry: object, data_bytes: int,
            spans: list[tuple[int, int, str]]) -> CheckpointTensor:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise _fail(path, where, entry, "an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:  # a list is not hashable
        raise _fail(path, f"{where} dtype", dtype, f"one of {', '.join(SAFETENSORS_DTYPE_BITS)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _fail(path, f"{where} shape", shape, "a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise _fail(path, f"{where} data_offsets", offsets,
                    "[begin, end] with 0 ≤ begin ≤ end (bytes into the data region)")
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    bits = numel * SAFETENSORS_DTYPE_BITS[dtype]
    if bits % 8:
        raise _fail(path, f"{where} shape", shape,
                    f"a whole number of bytes of {dtype} ({numel} elements × {bits // numel} bits)")
    nbytes = bits // 8
    if end - begin != nbytes:
        raise _fail(path, f"{where} data_offsets", offsets,
                    f"a range of shape {shape} × {dtype} = {nbytes:,} bytes (got {end - begin:,})")
    if end > data_bytes:
        raise _fail(path, f"{where} data_offsets", offsets,
                    f"inside the data region of {data_bytes:,} bytes after the header "
                    "(out of the file; truncated?)")
    spans.append((begin, end, name))
    return CheckpointTensor(name, dtype, tuple(shape), nbytes, str(path))


def _check_overlaps(path: Path, spans: list[tuple[int, int, str]]) -> None:
    spans.sort()
    last_end, last_name = 0, ""
    for begin, end, name in spans:
        if begin == end:
            continue  # empty tensors occupy no bytes
        if begin < last_end:
            raise _fail(path, f"tensor {name!r} data_offsets", [begin, end],
                        f"a range that does not overlap tensor {last_name!r} (which ends at {last_end})")
        last_end, last_name = end, name


# --------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path: str | os.PathLike[str], *,
                    max_header_bytes: int = MAX_HEADER_BYTES) -> Checkpoint:
    """Headers of a checkpoint: a ``.safetensors`` file, an ``*.index.json`` or a folder.

    A folder is read through its ``model.safetensors.index.json`` (or its only ``*.index.json``),
    else its ``model.safetensors``, else every ``*.safetensors`` file in it (with a warning).
    """
    try:
        return _read_checkpoint(Path(path), max_header_bytes)
    except OSError as err:  # a name too long, a folder that cannot be listed, ...
        raise InputError("checkpoint", str(path), f"a readable path ({err.strerror or err})") from None


def _read_checkpoint(path: Path, max_header_bytes: int) -> Checkpoint:
    _refuse_pickle(path)
    if path.is_dir():
        return _read_folder(path, max_header_bytes)
    if path.name.endswith(".index.json"):
        return read_index(path, max_header_bytes=max_header_bytes)
    if path.suffix == ".safetensors":
        h = read_header(path, max_header_bytes=max_header_bytes)
        return _checkpoint(path, [h], ())
    if not path.exists():
        raise InputError("checkpoint", str(path), "an existing .safetensors file, index.json or folder")
    if not path.is_file():
        raise InputError("checkpoint", str(path), "a regular .safetensors file, index.json or a folder "
                         "(not a pipe, socket or device)")
    raise InputError("checkpoint", str(path), _REFUSE_PICKLE)


def _read_folder(folder: Path, max_header_bytes: int) -> Checkpoint:
    indexes = sorted(p for p in folder.glob("*.safetensors.index.json") if p.is_file())
    if (folder / INDEX_NAME).is_file():
        return read_index(folder / INDEX_NAME, max_header_bytes=max_header_bytes)
    if len(indexes) == 1:
        return read_index(indexes[0], max_header_bytes=max_header_bytes)
    if len(indexes) > 1:
        raise InputError("checkpoint", str(folder),
                         f"a folder with one *.safetensors.index.json (found "
                         f"{', '.join(p.name for p in indexes)}); pass the index file itself")
    if (folder / SINGLE_NAME).is_file():
        return _checkpoint(folder / SINGLE_NAME,
                           [read_header(folder / SINGLE_NAME, max_header_bytes=max_header_bytes)], ())
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if _is_pickle(p))
        found = f" (found only {', '.join(pickles[:3])})" if pickles else ""
        raise InputError("checkpoint", str(folder), _REFUSE_PICKLE + found)
    headers = [read_header(p, max_header_bytes=max_header_bytes) for p in files]
    warn = (f"no index file in {folder}: read every *.safetensors file "
            f"({', '.join(p.name for p in files)})",) if len(files) > 1 else ()
    return _checkpoint(folder, headers, warn)


def read_index(path: str | os.PathLike[str], *, max_header_bytes: int = MAX_HEADER_BYTES) -> Checkpoint:
    """A sharded checkpoint through its ``model.safetensors.index.json``.

    Each indexed tensor must be in the header of the shard the index names; a shard that is
    missing, a tensor the shard lacks, or a tensor stored in two shards is an error. Tensors a
    shard holds beyond the index are counted (loaders read whole shards) with a warning.
    """
    path = Path(path)
    _refuse_pickle(path)
    raw = read_regular_file("checkpoint index", path, MAX_JSON_BYTES, what="index.json file")
    index = parse_json("checkpoint index", path, raw, max_depth=MAX_JSON_DEPTH,
                       object_pairs_hook=_no_duplicate_keys)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _fail(path, "weight_map", weight_map if isinstance(index, dict) else index,
                    'a JSON object {"weight_map": {tensor name: shard file, ...}} with at least one tensor')
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise _fail(path, f"weight_map[{name!r}]", shard,
                        "a shard file name relative to the index's folder")
        shards.setdefault(shard, []).append(name)
    headers = []
    for shard in sorted(shards):
        file = path.parent / shard
        _refuse_pickle(file)
        if not file.exists():
            raise _fail(path, "shard", shard,
                        f"a file next to the index (missing: {file}; it holds {len(shards[shard])} "
                        f"tensors, e.g. {shards[shard][0]!r})")
        h = read_header(file, max_header_bytes=max_header_bytes)
        present = {t.name for t in h.tensors}
        for name in shards[shard]:
            if name not in present:
                raise _fail(path, f"tensor {name!r}", shard,
                            f"a shard whose header holds it (the header of {file} does not)")
        headers.append(h)
    warnings = []
    extra = sorted({t.name for h in headers for t in h.tensors} - set(weight_map))
    if extra:
        warnings.append(f"{len(extra)} tensors in the shards are not in {path.name} "
                        f"(counted, as loaders read whole shards): {', '.join(extra[:3])}"
                        + (", ..." if len(extra) > 3 else ""))
    ckpt = _checkpoint(path, headers, tuple(warnings))
    meta = index.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    if _is_count(total) and total != ckpt.total_bytes:
        ckpt = Checkpoint(ckpt.path, ckpt.tensors, ckpt.files, ckpt.metadata, (*ckpt.warnings, (
            f"{path.name} metadata.total_size={total:,} B but the shard headers hold "
            f"{ckpt.total_bytes:,} B of tensors; the headers are used")))
    return ckpt


def _checkpoint(path: Path, headers: Iterable[SafetensorsHeader], warnings: tuple[str, ...]) -> Checkpoint:
    headers = list(headers)
    seen: dict[str, str] = {}
    tensors = []
    for h in headers:
        for t in h.tensors:
            if t.name in seen:
                raise _fail(h.file, f"tensor {t.name!r}", Path(h.file).name,
                            f"stored once (it is also in {seen[t.name]})")
            seen[t.name] = h.file
            tensors.append(t)
    if not tensors:  # nothing to charge: a weights figure of 0 B would be a silent wrong number
        raise InputError("checkpoint", str(path), "safetensors files holding at least one tensor")
    tensors.sort(key=lambda t: t.name)
    metadata = dict(headers[0].metadata) if headers else {}
    return Checkpoint(str(path), tuple(tensors), tuple(h.file for h in headers), metadata, warnings)


__all__ = ["MAX_HEADER_BYTES", "SAFETENSORS_DTYPE_BITS", "Checkpoint", "CheckpointTensor",
           "SafetensorsHeader", "read_checkpoint", "read_header", "read_index"]
