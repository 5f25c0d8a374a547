"""Which MAX KV manager holds the cache, and what each one charges: Jenga (default) or legacy.

Ported from Modular MAX 26.7.0 (``site-packages/max/``):

* ``pipelines/kv_cache/registry.py``: ``_use_jenga_kv_cache`` (Jenga unless
  ``MODULAR_USE_LEGACY_KV_CACHE`` is one of 1/true/yes/y, case-insensitive, read with
  ``os.getenv`` on every call; the legacy manager refuses disaggregated inference and KV
  connectors; Jenga under disaggregation needs full-attention leaves), ``kv_cache_memory_size``
  (generic ``estimated_memory_size`` with the null block first, then Jenga's
  ``min(available, max(exact, generic))``) and ``max_seq_len_fitting_in_cache``.
* ``pipelines/kv_cache/paged_kv_cache/jenga_cache_manager.py``: ``_plan_geometry`` (one device's
  share, ``available // n_devices``), ``max_seq_len_fitting_in_cache`` (huge block 0 is the null
  block; net of the speculative slack) and ``memory_size`` (the whole huge blocks a full batch
  needs, re-planned at that smaller size until an empty pool admits the batch).

``legacy`` arguments: None reads the environment as MAX does; True/False choose explicitly.
"""

from __future__ import annotations

import logging
import os

from estimator.core.kv_spec import cdiv
from estimator.seed.jenga import (
    JengaGeometry,
    max_seq_len_fitting_in_geometry,
    plan_jenga_geometry,
    pristine_pool_can_satisfy,
)
from estimator.seed.kv_params import (
    KVCacheParams,
    compute_max_seq_len_fitting_in_cache,
    compute_num_device_blocks,
    estimated_memory_size,
    spec_decode_cache_slack,
)
from estimator.seed.log import emit
from estimator.seed.text import human_bytes

LEGACY_ENV = "MODULAR_USE_LEGACY_KV_CACHE"


def prefers_legacy(legacy: bool | None = None) -> bool:
    """The legacy opt-out: ``legacy`` if given, else the environment as MAX reads it."""
    if legacy is not None:
        return bool(legacy)
    return os.getenv(LEGACY_ENV, "0").lower() in ("1", "true", "yes", "y")


def use_jenga_kv_cache(params: KVCacheParams, is_di_enabled: bool = False,
                       legacy: bool | None = None) -> bool:
    """MAX ``_use_jenga_kv_cache``: True for Jenga; its ValueErrors for impossible choices."""
    if prefers_legacy(legacy):
        if is_di_enabled:
            raise ValueError("Disaggregated inference is incompatible with the legacy KV manager "
                             f"selected by {LEGACY_ENV}. Unset {LEGACY_ENV}.")
        if params.kv_connector != "null":
            raise ValueError(f"The '{params.kv_connector}' KV connector is incompatible with the "
                             f"legacy KV manager selected by {LEGACY_ENV}. Unset {LEGACY_ENV}.")
        return False
    if is_di_enabled and not all(leaf.is_full for leaf in params.leaves().values()):
        raise ValueError("Disaggregated inference supports only full-attention KV caches, but "
                         "this model has a sliding-window, recurrent or scratch KV cache leaf.")
    return True


def jenga_geometry(params: KVCacheParams, available_bytes: int) -> JengaGeometry:
    """Jenga's geometry for a budget over all devices: every leaf tiles one device's share."""
    leaves = params.leaves()
    pages = {k: v.bytes_per_page for k, v in leaves.items()}
    rows = {k: v.row_bytes for k, v in leaves.items()}
    if params.n_devices < 1:
        raise ValueError("Jenga KV cache requires at least one device")
    return plan_jenga_geometry(available_bytes // params.n_devices, pages, rows)


def jenga_max_seq_len_fitting_in_cache(params: KVCacheParams, available_bytes: int) -> int | None:
    """Longest request one Jenga slab holds (huge block 0 is the null block), net of slack."""
    geometry = jenga_geometry(params, available_bytes)
    longest = max_seq_len_fitting_in_geometry(
        params.leaves(), params.page_size, geometry.num_huge_blocks - 1, geometry.ratios,
        enable_prefix_caching=params.enable_prefix_caching)
    if longest is None:
        return None
    return max(1, longest - spec_decode_cache_slack(params))


def jenga_memory_size(params: KVCacheParams, available_bytes: int, max_batch_size: int,
                      max_seq_len: int) -> int:
    """Bytes over all devices the Jenga slab needs for a full batch (at most the budget)."""
    num_blocks = cdiv(max_seq_len + spec_decode_cache_slack(params), params.page_size)
    demand = {k: max_batch_size * leaf.blocks_to_reserve(
        num_blocks, enable_prefix_caching=params.enable_prefix_caching)
        for k, leaf in params.leaves().items()}
    n = params.n_devices

    def geometry_for(size: int) -> JengaGeometry:
        try:
            geometry = jenga_geometry(params, size)
        except ValueError as e:
            raise RuntimeError(f"Insufficient cache memory to allocate even a single page: {e}"
                               ) from None
        if geometry.num_huge_blocks < 2:
            raise RuntimeError(
                "Insufficient cache memory to allocate even a single page: "
                f"{human_bytes(size)} holds {geometry.num_huge_blocks} huge block of "
                f"{human_bytes(geometry.huge_page_bytes)}, and one is the null block.")
        return geometry

    geometry = geometry_for(available_bytes)
    needed = 1 + sum(cdiv(blocks, geometry.ratios[k]) for k, blocks in demand.items())
    size = min(available_bytes, needed * geometry.huge_page_bytes * n)
    while size < available_bytes:
        planned = geometry_for(size)
        if pristine_pool_can_satisfy(planned.num_huge_blocks - 1, planned.ratios, demand):
            return size
        size = min(available_bytes, size + planned.huge_page_bytes * n)
    return available_bytes


def kv_cache_memory_size(params: KVCacheParams, available_cache_memory: int,
                         max_batch_size: int, max_seq_len: int, is_di_enabled: bool = False,
                         model_name: str = "", *, legacy: bool | None = None) -> int:
    """KV bytes MAX's estimator commits for a full batch (``model_name`` is unused, as in MAX)."""
    generic = estimated_memory_size(params, available_cache_memory, max_batch_size,
                                    max_seq_len, include_null_block=True)
    if not use_jenga_kv_cache(params, is_di_enabled, legacy):
        return generic
    exact = jenga_memory_size(params, available_cache_memory, max_batch_size, max_seq_len)
    return min(available_cache_memory, max(exact, generic))


def max_seq_len_fitting_in_cache(params: KVCacheParams, available_cache_memory: int,
                                 is_di_enabled: bool = False, model_name: str = "", *,
                                 legacy: bool | None = None) -> int | None:
    """The longest request the chosen manager holds (None when no length exhausts it)."""
    if use_jenga_kv_cache(params, is_di_enabled, legacy):
        return jenga_max_seq_len_fitting_in_cache(params, available_cache_memory)
    return compute_max_seq_len_fitting_in_cache(params, available_cache_memory,
                                                include_null_block=True)


def legacy_total_num_pages(params: KVCacheParams, available_cache_memory: int | None,
                           max_batch_size: int | None, max_seq_len: int) -> int:
    """Pages per replica MAX's legacy ``PagedKVCacheManager`` is built with (``load_kv_manager``).

    MAX's checks first (budget and batch set, batch positive, page size a multiple of 128), then
    the pages of the budget less one null page per replica (the manager allocates that page on
    top), raising if one request at ``max_seq_len`` does not fit (``require_max_seq_len_fits``).
    """
    if available_cache_memory is None:
        raise ValueError("available_cache_memory should have been set during memory estimation")
    if max_batch_size is None:
        raise ValueError("max_batch_size should have been set during memory estimation")
    if max_batch_size <= 0:
        raise ValueError("max_batch_size must be greater than 0")
    if params.page_size % 128 != 0 or params.page_size < 128:
        raise ValueError("Page size must be a multiple of 128 and at least 128.")
    emit(logging.INFO, "Using legacy KV cache")
    null_block_bytes = params.bytes_per_block * params.data_parallel_degree
    return compute_num_device_blocks(params, available_cache_memory - null_block_bytes,
                                     max_batch_size, max_seq_len, require_max_seq_len_fits=True)
