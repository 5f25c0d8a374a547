"""MAX's Jenga huge-block geometry: how its default KV manager carves one device's budget.

Ported (rules, not code) from Modular MAX 26.7.0, ``site-packages/max/``:

* ``pipelines/kv_cache/paged_kv_cache/jenga_block_pool.py``: ``plan_jenga_geometry`` (exact
  tiling = lcm of the leaves' page bytes, priced against padded candidates on the lcm-of-rows
  grid, cost = mean padding + share of the budget stranded or spent on the null huge block, ties
  to the smaller block), ``_pristine_pool_can_satisfy``; its knobs
  ``MODULAR_KV_JENGA_MAX_PADDING_FRACTION`` (0), ``MODULAR_KV_JENGA_MAX_HUGE_PAGE_BYTES``
  (128 MiB) and ``MODULAR_KV_JENGA_MAX_TILING_RATIO`` (256), read here at call time.
* ``pipelines/kv_cache/paged_kv_cache/jenga_block_manager.py::_max_seq_len_fitting_in_geometry``
  (a ``bisect_left`` over ``range(upper + 2)``, so it raises ``OverflowError`` past
  ``sys.maxsize`` exactly as MAX does).

Leaves are given as ``{leaf_id: bytes_per_page}`` / ``{leaf_id: row_bytes}`` per device; the
demand side is any object with ``blocks_to_reserve(num_blocks, *, enable_prefix_caching)``.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from math import lcm
from typing import Any

from estimator.core.kv_spec import cdiv
from estimator.seed.text import human_bytes


def max_padding_fraction() -> float:
    """``_MAX_PADDING_FRACTION`` (env MODULAR_KV_JENGA_MAX_PADDING_FRACTION, default 0)."""
    return float(os.getenv("MODULAR_KV_JENGA_MAX_PADDING_FRACTION") or 0.0)


def _max_huge_page_bytes() -> int:
    return int(os.getenv("MODULAR_KV_JENGA_MAX_HUGE_PAGE_BYTES") or 128 * 1024 * 1024)


def _max_tiling_ratio() -> int:
    return int(os.getenv("MODULAR_KV_JENGA_MAX_TILING_RATIO") or 256)


@dataclass(frozen=True)
class JengaGeometry:
    """A huge-block geometry (MAX ``JengaGeometry``): blocks, block bytes, pages per block."""

    num_huge_blocks: int
    huge_page_bytes: int
    ratios: dict[str, int]
    padded_sizes: dict[str, int]



def _smallest_tiling_page(huge: int, data: int, row: int) -> int | None:
    # Largest ratio first: the smallest page that divides the block and is whole rows.
    for ratio in range(huge // data, 0, -1):
        if huge % ratio:
            continue
        page = huge // ratio
        if page % row == 0:
            return page
    return None


def _fit_huge_page(huge: int, sizes: Mapping[str, int], rows: Mapping[str, int],
                   max_padding: float) -> dict[str, int] | None:
    padded: dict[str, int] = {}
    for cache_id, data in sizes.items():
        page = _smallest_tiling_page(huge, data, rows[cache_id])
        if page is None or page / data - 1 > max_padding:
            return None
        padded[cache_id] = page
    return padded


def _geometry_cost(available: int, huge: int, sizes: Mapping[str, int],
                   padded: Mapping[str, int], include_null_block: bool) -> float | None:
    blocks = available // huge
    if blocks < (2 if include_null_block else 1):
        return None
    padding = sum(padded[c] / d - 1 for c, d in sizes.items()) / len(sizes)
    unusable = available - blocks * huge
    if include_null_block:
        unusable += huge
    return padding + unusable / available


def _candidates(sizes: Mapping[str, int], rows: Mapping[str, int], ceiling: int) -> list[int]:
    grid = lcm(*rows.values())
    floor = max(sizes.values())
    found = set()
    for data in sizes.values():
        for ratio in range(1, _max_tiling_ratio() + 1):
            size = cdiv(ratio * data, grid) * grid
            if size < floor:
                continue
            if size > ceiling:
                break
            found.add(size)
    return sorted(found)


def plan_jenga_geometry(available_bytes: int, cache_sizes: Mapping[str, int],
                        row_sizes: Mapping[str, int], *, include_null_block: bool = True,
                        max_padding: float | None = None) -> JengaGeometry:
    """MAX ``plan_jenga_geometry``: the huge-block geometry for one device's budget.

    Raises MAX's ValueErrors (non-positive sizes, mismatched leaves, a page that is not whole
    rows, a budget too small for any geometry).
    """
    if max_padding is None:
        max_padding = max_padding_fraction()
    if len(cache_sizes) == 0:
        raise ValueError(f"cache_sizes must be non-empty, found {cache_sizes}")
    if any(size <= 0 for size in cache_sizes.values()):
        raise ValueError(f"cache_sizes must be positive, found {cache_sizes}")
    if any(size <= 0 for size in row_sizes.values()):
        raise ValueError(f"row_sizes must be positive, found {row_sizes}")
    if cache_sizes.keys() != row_sizes.keys():
        raise ValueError(f"cache_sizes and row_sizes must cover the same caches, found "
                         f"{sorted(cache_sizes)} and {sorted(row_sizes)}")
    for cache_id, data in cache_sizes.items():
        if data % row_sizes[cache_id]:
            raise ValueError(
                f"cache {cache_id!r} holds {data} bytes per page, which is not a whole number of "
                f"its {row_sizes[cache_id]}-byte rows. A page the kernel addresses by row cannot "
                "be a fraction of one.")
    if available_bytes <= 0:
        raise ValueError(f"available_bytes must be positive, found {available_bytes}")

    best: tuple[float, int, dict[str, int]] | None = None
    exact = lcm(*cache_sizes.values())
    cost = _geometry_cost(available_bytes, exact, cache_sizes, cache_sizes, include_null_block)
    if cost is not None:
        best = (cost, exact, dict(cache_sizes))
    ceiling = min(_max_huge_page_bytes(), available_bytes // 2)
    for huge in _candidates(cache_sizes, row_sizes, ceiling):
        padded = _fit_huge_page(huge, cache_sizes, row_sizes, max_padding)
        if padded is None:
            continue
        cost = _geometry_cost(available_bytes, huge, cache_sizes, padded, include_null_block)
        if cost is not None and (best is None or cost < best[0]):
            best = (cost, huge, padded)
    if best is None:
        pages = ", ".join(f"{c}={human_bytes(s)}" for c, s in cache_sizes.items())
        raise ValueError(
            f"{human_bytes(available_bytes)} is too small to build a pool from the page sizes "
            f"({pages}), even allowing each page to pad by {max_padding:.0%} to tile a smaller "
            f"huge block. Exact tiling would take {human_bytes(exact)} per huge block.")
    _, huge, padded = best
    return JengaGeometry(num_huge_blocks=available_bytes // huge, huge_page_bytes=huge,
                         ratios={c: huge // s for c, s in padded.items()}, padded_sizes=padded)


def pristine_pool_can_satisfy(allocatable_huge_blocks: int, ratios: Mapping[str, int],
                              demand: Mapping[str, int]) -> bool:
    """MAX ``_pristine_pool_can_satisfy``: each leaf's demand in whole huge blocks fits."""
    claimable = allocatable_huge_blocks
    for cache_id, blocks in demand.items():
        if blocks > 0:
            claimable -= cdiv(blocks, ratios[cache_id])
    return claimable >= 0


def max_seq_len_fitting_in_geometry(leaves: Mapping[str, Any], block_size: int,
                                    allocatable_huge_blocks: int, ratios: Mapping[str, int], *,
                                    enable_prefix_caching: bool) -> int | None:
    """MAX ``_max_seq_len_fitting_in_geometry``: longest single request an empty pool serves."""

    def fits(seq_len: int) -> bool:
        num_blocks = cdiv(seq_len, block_size)
        demand = {leaf_id: leaf.blocks_to_reserve(num_blocks,
                                                  enable_prefix_caching=enable_prefix_caching)
                  for leaf_id, leaf in leaves.items()}
        return pristine_pool_can_satisfy(allocatable_huge_blocks, ratios, demand)

    upper = allocatable_huge_blocks * block_size * max(ratios.values())
    space = upper + 2
    idx = bisect_left(range(space), True, key=lambda n: not fits(n))
    return (idx - 1) if idx < space else None
