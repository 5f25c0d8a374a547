"""MAX's ``KVCacheParams``: KV geometry of one pipeline and its page counting, MAX 26.7.0 rules.

Bytes per page come from the shared geometry (``page_bytes_per_device``); this class adds MAX's
policy: one page is summed over a replica's tensor-parallel devices, pages are counted per
data-parallel replica, one null page is reserved, speculative decoding adds slack tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from estimator.dtypes import canonical_dtype
from estimator.geometry import page_bytes_per_device
from estimator.paging import pages_for_tokens, speculative_slack
from meshes.validation import check_int


@dataclass(frozen=True)
class KVCacheParams:
    """KV cache geometry for a set of devices (MHA, or MLA when ``is_mla``)."""

    dtype: str
    n_kv_heads: int
    head_dim: int
    num_layers: int
    page_size: int = 128
    n_devices: int = 1
    data_parallel_degree: int = 1
    is_mla: bool = False
    num_q_heads: int | None = None
    allow_kv_head_replication: bool = False
    num_draft_tokens: int = 0
    speculative_method: str = "eagle"
    include_null_block: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype, "kv cache dtype"))
        for name in ("n_kv_heads", "head_dim", "num_layers", "page_size", "n_devices",
                     "data_parallel_degree"):
            check_int(name, getattr(self, name))
        dp, n = self.data_parallel_degree, self.n_devices
        if n < dp or n % dp:
            raise ValueError(f"n_devices ({n}) must be a multiple of data_parallel_degree ({dp})")
        tp = n // dp
        if self.is_mla:
            if self.num_q_heads is None or self.num_q_heads % tp:
                raise ValueError(f"MLA requires num_q_heads ({self.num_q_heads}) divisible by "
                                 f"the tensor-parallel degree ({tp})")
        elif self.n_kv_heads % tp and not (self.allow_kv_head_replication
                                           and tp % self.n_kv_heads == 0):
            raise ValueError(f"Number of KV heads ({self.n_kv_heads}) must be divisible by the "
                             f"tensor-parallel degree ({tp})")

    @property
    def tensor_parallel_degree(self) -> int:
        return self.n_devices // self.data_parallel_degree

    @property
    def n_kv_heads_per_device(self) -> int:
        if self.is_mla:
            return 1
        tp = self.tensor_parallel_degree
        return max(self.n_kv_heads // tp, 1) if self.n_kv_heads % tp == 0 else 1

    @property
    def bytes_per_block(self) -> int:
        """One page summed over the tensor-parallel devices of a replica."""
        per_device = page_bytes_per_device(num_layers=self.num_layers,
                                           kv_heads_per_device=self.n_kv_heads_per_device,
                                           head_dim=self.head_dim, dtype=self.dtype,
                                           page_size=self.page_size,
                                           kv_dim=1 if self.is_mla else 2)
        return per_device * self.tensor_parallel_degree

    @property
    def slack(self) -> int:
        return speculative_slack(self.num_draft_tokens, self.speculative_method)

    def _max_total_blocks(self, max_batch_size: int | None, max_seq_len: int | None) -> int | None:
        if max_seq_len is None or max_batch_size is None:
            return None
        per_request = pages_for_tokens(max_seq_len + self.slack, self.page_size)
        return per_request * max_batch_size + int(self.include_null_block)

    def compute_num_device_blocks(self, available_cache_memory: int,
                                  max_batch_size: int | None = None,
                                  max_seq_len: int | None = None) -> int:
        """Pages per replica (MAX 26.7.0): the budget's pages capped by the workload's need.

        The null page is added to the need when batch and length are given, and taken off the
        budget's pages when they are not.
        """
        per_replica = available_cache_memory // self.data_parallel_degree
        allocable = per_replica // self.bytes_per_block
        needed = self._max_total_blocks(max_batch_size, max_seq_len)
        if needed is not None:
            blocks = min(allocable, needed)
        else:
            blocks = allocable - int(self.include_null_block)
        group = self.tensor_parallel_degree
        across = f" across {group} devices" if group > 1 else ""
        if allocable <= 0:
            raise RuntimeError(
                "Insufficient cache memory to allocate even a single page.\nOne page requires "
                f"{human_bytes(self.bytes_per_block)} but only {human_bytes(per_replica)} are "
                f"available{across}.")
        if self.include_null_block and (blocks - 1 if needed is not None else blocks) < 1:
            raise RuntimeError(
                "Insufficient cache memory to allocate the null block plus a single request "
                f"page.\nThe null block and one request page require "
                f"{human_bytes(2 * self.bytes_per_block)} but only {human_bytes(per_replica)} "
                f"are available{across}.")
        return blocks

    def estimated_memory_size(self, available_cache_memory: int, max_batch_size: int,
                              max_seq_len: int) -> int:
        """KV bytes over all replicas, whole pages, never above the budget (legacy manager)."""
        blocks = self.compute_num_device_blocks(available_cache_memory, max_batch_size,
                                                max_seq_len)
        return blocks * self.bytes_per_block * self.data_parallel_degree

    def kv_cache_memory_size(self, available_cache_memory: int, max_batch_size: int,
                             max_seq_len: int) -> int:
        """KV bytes MAX 26.7.0 commits (its default Jenga manager): the workload's need with the
        null page when that is below the budget, else the whole unfloored budget."""
        generic = self.estimated_memory_size(available_cache_memory, max_batch_size, max_seq_len)
        need = self.uncapped_memory_size(max_batch_size, max_seq_len)
        jenga = need if need < available_cache_memory else available_cache_memory
        return min(available_cache_memory, max(jenga, generic))

    def uncapped_memory_size(self, max_batch_size: int, max_seq_len: int) -> int:
        """KV bytes the workload needs over all replicas (null page included), not capped."""
        needed = self._max_total_blocks(max_batch_size, max_seq_len) or 0
        return needed * self.bytes_per_block * self.data_parallel_degree

    def compute_max_seq_len_fitting_in_cache(self, available_cache_memory: int) -> int:
        """Longest single request: usable pages (less the null page) × page size − slack."""
        blocks = self.compute_num_device_blocks(available_cache_memory, 1, None)
        return max(1, blocks * self.page_size - self.slack)

    def max_seq_len_fitting_in_cache(self, available_cache_memory: int) -> int:
        """The length cap MAX 26.7.0's estimator uses (its Jenga manager): pages per device of
        the budget, less the null page, × page size − slack; refuses fewer than two pages."""
        per_device = available_cache_memory // self.n_devices
        if per_device <= 0:
            raise ValueError(f"available_bytes must be positive, found {per_device}")
        page = self.bytes_per_block // self.tensor_parallel_degree
        pages = per_device // page
        if pages < 2:
            raise ValueError(
                f"{human_bytes(per_device)} is too small to build a pool from the page sizes "
                f"(full_group={human_bytes(page)}), even allowing each page to pad by 0% to tile "
                f"a smaller huge block. Exact tiling would take {human_bytes(page)} per huge "
                "block.")
        return max(1, (pages - 1) * self.page_size - self.slack)


def human_bytes(n: int) -> str:
    """MAX's ``to_human_readable_bytes``: binary units, two decimals, KiB at the bottom."""
    n = int(n)
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 1024:.2f} KiB"
