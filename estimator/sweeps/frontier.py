"""SweepResult and SweepFrontier: labelled results of estimator.sweeps.grid, with frontiers and exports.

Plain numpy (no jax): a result can be pickled, saved or plotted without a device. Dimensions are
named; configuration dimensions come first, in the order (layout, kv_dtype, page_size,
utilization), then batch and length.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Reason codes (int8) a cell carries; the kernels in estimator.sweeps.kernel produce them.
FITS, STATIC_MEMORY, LENGTH_CAP, KV_PAGES, BATCH_TOKENS = 0, 1, 2, 3, 4
PADDING = -1  # cells added to fill a chunk, never returned
REASONS = ("fits", "static memory", "single-request length cap", "KV pages", "batch-token limit")

CONFIG_DIMS = ("layout", "kv_dtype", "page_size", "utilization")
DIMS = (*CONFIG_DIMS, "batch", "length")
CRITERIA = ("headroom", "fewest_devices")


@dataclass(frozen=True, eq=False, repr=False)
class _Axes:
    """Coordinates shared by cell results and frontiers."""

    model: str
    mesh: str
    layouts: tuple[str, ...]
    kv_dtypes: tuple[str, ...]
    page_sizes: tuple[int, ...]
    utilizations: tuple[float, ...]
    batches: np.ndarray  # int64, ascending, unique
    lengths: np.ndarray  # int64, ascending, unique
    devices_per_replica: tuple[int, ...]  # per layout: tensor × pipeline
    num_replicas: tuple[int, ...]  # per layout: data
    max_batch_input_tokens: int

    def __repr__(self) -> str:
        sizes = ", ".join(f"{d}={len(v)}" for d, v in self.coords.items())
        return f"{type(self).__name__}({self.model} on {self.mesh}; {sizes}; {self.cells:,} cells)"

    @property
    def config_shape(self) -> tuple[int, int, int, int]:
        return (len(self.layouts), len(self.kv_dtypes), len(self.page_sizes),
                len(self.utilizations))

    @property
    def coords(self) -> dict[str, list]:
        """Coordinate values of every dimension (plain Python values)."""
        return {"layout": list(self.layouts), "kv_dtype": list(self.kv_dtypes),
                "page_size": list(self.page_sizes), "utilization": list(self.utilizations),
                "batch": self.batches.tolist(), "length": self.lengths.tolist()}

    @property
    def cells(self) -> int:
        return int(np.prod(self.config_shape)) * self.batches.size * self.lengths.size

    def _config_frame(self) -> dict[str, np.ndarray]:
        """One entry per configuration, in C order of CONFIG_DIMS."""
        index = np.indices(self.config_shape).reshape(4, -1)
        values = (self.layouts, self.kv_dtypes, self.page_sizes, self.utilizations)
        return {d: np.asarray(v, dtype=object)[i] for d, v, i in zip(CONFIG_DIMS, values, index,
                                                                     strict=True)}

    def _meta(self) -> dict[str, Any]:
        return {"model": self.model, "mesh": self.mesh, "dims": list(DIMS), "coords": self.coords,
                "devices_per_replica": dict(zip(self.layouts, self.devices_per_replica,
                                                strict=True)),
                "num_replicas": dict(zip(self.layouts, self.num_replicas, strict=True)),
                "max_batch_input_tokens": self.max_batch_input_tokens,
                "reasons": list(REASONS)}


@dataclass(frozen=True, eq=False, repr=False)
class SweepFrontier(_Axes):
    """What an aggregate sweep keeps: frontiers and counts, never the cells (bounded memory).

    ``max_batch[..., length]``: the largest batch of the grid that fits at that length (0: none);
    ``max_length[..., batch]``: the longest length of the grid that fits at that batch (0: none);
    ``reason_counts[..., k]``: cells whose reason code is k (see sweep_kernel.REASONS).
    Leading dimensions are CONFIG_DIMS.
    """

    max_batch: np.ndarray
    max_length: np.ndarray
    reason_counts: np.ndarray

    @property
    def feasible_count(self) -> np.ndarray:
        return self.reason_counts[..., FITS]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable frontiers (ints exact)."""
        frontiers = []
        frame = self._config_frame()
        flat_b = self.max_batch.reshape(-1, self.lengths.size)
        flat_l = self.max_length.reshape(-1, self.batches.size)
        flat_c = self.reason_counts.reshape(-1, len(REASONS))
        for i in range(flat_b.shape[0]):
            frontiers.append({**{d: _plain(frame[d][i]) for d in CONFIG_DIMS},
                              "max_batch": flat_b[i].tolist(), "max_length": flat_l[i].tolist(),
                              "reason_counts": dict(zip(REASONS, flat_c[i].tolist(), strict=True))})
        return {**self._meta(), "cells": self.cells, "frontiers": frontiers}

    def to_pandas(self) -> Any:
        """Long-format frontier: one row per (config, length) with max_batch."""
        pd = _pandas()
        frame = {d: np.repeat(v, self.lengths.size) for d, v in self._config_frame().items()}
        frame["length"] = np.tile(self.lengths, int(np.prod(self.config_shape)))
        frame["max_batch"] = self.max_batch.reshape(-1)
        return pd.DataFrame(frame)


@dataclass(frozen=True, eq=False, repr=False)
class SweepResult(_Axes):
    """Every cell of a sweep; arrays have dimensions DIMS (config dims, batch, length).

    ``pages_available`` is the replica's usable pages (per config and batch: activations grow
    with the batch's sampler rows), broadcast over lengths as a read-only view. ``headroom_bytes``
    is what the tightest device has left after the cell's pages and the null page(s); negative
    when the cell does not fit (saturated at −2^63).
    """

    feasible: np.ndarray  # bool, reason == FITS
    reason: np.ndarray  # int8 codes, see REASONS
    pages_needed: np.ndarray  # int64, pages per replica: ceil(b / dp) · ceil((L + slack) / page)
    pages_available: np.ndarray  # int64
    headroom_bytes: np.ndarray  # int64

    @property
    def shape(self) -> tuple[int, ...]:
        return self.reason.shape

    # ------------------------------------------------------------------ frontiers
    def frontier_max_batch(self) -> np.ndarray:
        """Largest batch of the grid that fits, per config and length (0: none); [..., length]."""
        b = self.batches.reshape(1, 1, 1, 1, -1, 1)
        return np.where(self.feasible, b, 0).max(axis=4)

    def frontier_max_length(self) -> np.ndarray:
        """Longest length of the grid that fits, per config and batch (0: none); [..., batch]."""
        return np.where(self.feasible, self.lengths, 0).max(axis=5)

    def frontier(self) -> SweepFrontier:
        """The aggregate view (what sweep_frontier returns for the same grid)."""
        counts = np.stack([(self.reason == k).sum(axis=(4, 5)) for k in range(len(REASONS))],
                          axis=-1).astype(np.int64)
        return SweepFrontier(**self._axes_kwargs(), max_batch=self.frontier_max_batch(),
                             max_length=self.frontier_max_length(), reason_counts=counts)

    def best_layout(self, criterion: str = "headroom") -> np.ndarray:
        """Best feasible layout per (kv_dtype, page_size, utilization, batch, length); '' if none.

        ``headroom``: most bytes left on the tightest device. ``fewest_devices``: fewest devices
        per replica (tensor × pipeline; every layout tiles the same mesh, so this prefers more,
        smaller replicas), ties broken by headroom. Earlier layouts win exact ties.
        """
        if criterion not in CRITERIA:
            from meshes.validation import InputError

            raise InputError("criterion", criterion, f"one of {', '.join(CRITERIA)}")
        lowest = np.iinfo(np.int64).min
        mask = self.feasible
        if criterion == "fewest_devices":
            devices = np.asarray(self.devices_per_replica).reshape(-1, 1, 1, 1, 1, 1)
            fewest = np.where(mask, devices, np.iinfo(np.int64).max).min(axis=0, keepdims=True)
            mask = mask & (devices == fewest)
        head = np.where(mask, self.headroom_bytes, lowest)  # feasible headroom is ≥ 0
        index = head.argmax(axis=0)
        names = np.asarray([*self.layouts, ""], dtype=object)
        return names[np.where(mask.any(axis=0), index, len(self.layouts))].astype(str)

    # ------------------------------------------------------------------ exports
    def to_pandas(self) -> Any:
        """Long format: one row per cell, columns DIMS + feasible, reason, reason_name, pages, headroom."""
        pd = _pandas()
        frame = self._long_columns()
        frame["reason_name"] = pd.Categorical.from_codes(frame["reason"].astype(np.int64),
                                                         categories=list(REASONS))
        return pd.DataFrame(frame)

    def to_xarray(self) -> Any:
        """An xarray.Dataset with named dimensions DIMS and coordinates (needs xarray)."""
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("SweepResult.to_xarray needs xarray, which is not installed: "
                              "pip install xarray (or use to_pandas / to_dict)") from None
        data = {k: (DIMS, getattr(self, k)) for k in
                ("feasible", "reason", "pages_needed", "pages_available", "headroom_bytes")}
        return xr.Dataset(data, coords=self.coords, attrs={"model": self.model, "mesh": self.mesh})

    def to_csv(self, path: str | Path) -> Path:
        """Write the long format as CSV (no pandas needed), one configuration at a time."""
        path = Path(path)
        frame = self._config_frame()
        bb, ll = np.meshgrid(self.batches, self.lengths, indexing="ij")
        flat = {k: getattr(self, k).reshape(-1, self.batches.size * self.lengths.size)
                for k in ("reason", "pages_needed", "pages_available", "headroom_bytes")}
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([*DIMS, "feasible", "reason", "reason_name", "pages_needed",
                             "pages_available", "headroom_bytes"])
            names = np.asarray(REASONS, dtype=object)
            for i in range(flat["reason"].shape[0]):
                reason = flat["reason"][i]
                head = [_plain(frame[d][i]) for d in CONFIG_DIMS]
                columns = zip(bb.ravel().tolist(), ll.ravel().tolist(), (reason == FITS).tolist(),
                              reason.tolist(), names[reason].tolist(), flat["pages_needed"][i].tolist(),
                              flat["pages_available"][i].tolist(), flat["headroom_bytes"][i].tolist(),
                              strict=True)
                writer.writerows([*head, *row] for row in columns)
        return path

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: coordinates, nested lists for every array, and the frontiers."""
        out = self._meta()
        for k in ("feasible", "reason", "pages_needed", "pages_available", "headroom_bytes"):
            out[k] = np.asarray(getattr(self, k)).tolist()
        out["frontier_max_batch"] = self.frontier_max_batch().tolist()
        out["frontier_max_length"] = self.frontier_max_length().tolist()
        return out

    # ------------------------------------------------------------------ helpers
    def _axes_kwargs(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _Axes.__dataclass_fields__}

    def _long_columns(self) -> dict[str, np.ndarray]:
        grids = np.indices(self.shape).reshape(len(DIMS), -1)
        values = (self.layouts, self.kv_dtypes, self.page_sizes, self.utilizations)
        frame: dict[str, np.ndarray] = {
            d: np.asarray(v, dtype=object)[i] for d, v, i in zip(CONFIG_DIMS, values, grids[:4],
                                                                 strict=True)}
        frame["batch"], frame["length"] = self.batches[grids[4]], self.lengths[grids[5]]
        frame["feasible"] = self.feasible.reshape(-1)
        for k in ("reason", "pages_needed", "pages_available", "headroom_bytes"):
            frame[k] = np.asarray(getattr(self, k)).reshape(-1)
        return frame


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("this export needs pandas, which is not installed: pip install pandas "
                          "(or use to_csv / to_dict)") from None
    return pd
