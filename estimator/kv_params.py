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
        """Pages per replica: what the budget allows, capped by what the workload needs."""
        per_replica = available_cache_memory // self.data_parallel_degree
        allocable = per_replica // self.bytes_per_block
        if allocable <= 0:
            raise RuntimeError(f"Insufficient cache memory to allocate even a single page: one "
                               f"page needs {self.bytes_per_block:,} B, {per_replica:,} B "
                               f"available per replica")
        needed = self._max_total_blocks(max_batch_size, max_seq_len)
        return min(allocable, needed) if needed else allocable

    def estimated_memory_size(self, available_cache_memory: int, max_batch_size: int,
                              max_seq_len: int) -> int:
        """KV bytes committed over all replicas (never above the budget)."""
        blocks = self.compute_num_device_blocks(available_cache_memory, max_batch_size,
                                                max_seq_len)
        return blocks * self.bytes_per_block * self.data_parallel_degree

    def uncapped_memory_size(self, available_cache_memory: int, max_batch_size: int,
                             max_seq_len: int) -> int:
        """KV bytes the workload needs over all replicas, not capped by the budget."""
        needed = self._max_total_blocks(max_batch_size, max_seq_len) or 0
        return needed * self.bytes_per_block * self.data_parallel_degree

    def compute_max_seq_len_fitting_in_cache(self, available_cache_memory: int) -> int:
        """Longest single request: usable pages (less the null page) × page size − slack."""
        blocks = self.compute_num_device_blocks(available_cache_memory)
        usable = blocks - int(self.include_null_block)
        return max(1, usable * self.page_size - self.slack)
