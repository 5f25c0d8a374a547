"""MAX's ``KVCacheParams`` (MHA and MLA) and its generic page counting, Modular MAX 26.7.0 rules.

Ported from MAX 26.7.0 (PyPI wheel, ``site-packages/max/nn/kv_cache/cache_params.py``):
``KVCacheParams`` / ``MHAKVCacheParams`` / ``MLAKVCacheParams`` (validation texts, derived
properties, ``shape_per_block``, ``bytes_per_block`` = value + scale bytes of one page over the
tensor-parallel group of one replica, ``leaves()``), ``spec_decode_cache_slack``,
``compute_num_device_blocks``, ``estimated_memory_size`` and
``compute_max_seq_len_fitting_in_cache``. The geometry here is MAX's own (no shared kvfit
geometry): kvfit's native plan() prices pages elsewhere. Scales come from ``estimator.seed.kv_quant``.
Which KV manager prices a plan (Jenga or legacy) is ``estimator.seed.kv_manager``.

Log lines go to the ``kvfit.max`` logger with MAX's levels and words (MAX logs on
``max.pipelines``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from estimator.core.kv_spec import cdiv
from estimator.core.paging import spec_decode_slack
from estimator.seed.kv_quant import (
    KVCacheQuantizationConfig,
    block_bytes,
    dtype_size,
    is_nvfp4,
    is_quantized,
    max_dtype,
    scale_groups,
    scale_row_bytes,
    storage_head_dim,
    validate_quantization,
)
from estimator.seed.log import emit, logger
from estimator.seed.text import human_bytes
from meshes.validation import InputError

__all__ = ["KVCacheParams", "KVCacheQuantizationConfig", "KVLeaf", "compute_max_seq_len_fitting_in_cache",
           "compute_num_device_blocks", "estimated_memory_size", "human_bytes", "logger",
           "spec_decode_cache_slack"]

KV_CONNECTORS = ("null", "tiered", "rust_tiered", "dkv")  # MAX KVConnectorType
TIERED_CONNECTORS = ("tiered", "rust_tiered")  # MAX TIERED_CONNECTOR_TYPES
SCALE_TMA_ALIGN_BYTES = 16  # cache_params.py _SCALE_TMA_ALIGN_BYTES: scale rows pad to 16 B


@dataclass(frozen=True)
class KVLeaf:
    """One region of MAX's page pool as ``leaves()`` reports it (``PagedKVLeafRegion``).

    ``bytes_per_page`` and ``row_bytes`` are per device; ``window_size`` is None for full
    attention (group ``full_group``), else the sliding window (``sliding_window_group(w)``).
    """

    leaf_id: str
    bytes_per_page: int
    row_bytes: int
    page_size: int
    window_size: int | None = None

    @property
    def is_full(self) -> bool:
        return self.window_size is None

    def blocks_to_reserve(self, num_blocks: int, *, enable_prefix_caching: bool = False) -> int:
        """Pages one request of ``num_blocks`` slots draws: all of them, or the window's span."""
        if self.window_size is None:
            return num_blocks
        return min(num_blocks, cdiv(self.window_size - 1, self.page_size) + 1)


def _group_id(window_size: int | None) -> str:
    """MAX ``KVCacheGroupId`` repr, with its check on sliding windows (ValueError)."""
    if window_size is None:
        return "full_group"
    if window_size <= 1:
        raise ValueError("Window size must be greater than 1 for sliding window"
                         f" groups, got {window_size}.")
    return f"sliding_window_group({window_size})"


def _is_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(name, value, "an integer")
    return value


@dataclass(frozen=True)
class KVCacheParams:
    """MAX ``MHAKVCacheParams`` (or ``MLAKVCacheParams`` when ``is_mla``) for one pipeline.

    ``n_devices`` stands for ``len(devices)``; ``include_null_block`` is the default the methods
    use (MAX's estimator always passes True; MAX's module functions default to False).
    ``speculative_method`` None (or "none") is no speculative decoding, as in MAX.
    """

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
    speculative_method: str | None = None
    include_null_block: bool = True
    kvcache_quant_config: KVCacheQuantizationConfig | None = None
    window_size: int | None = None
    slots_per_page: int | None = None
    enable_prefix_caching: bool = False
    per_layer_buffers: bool = False
    kv_connector: str = "null"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", max_dtype(self.dtype, "kv cache dtype"))
        for name in ("n_kv_heads", "head_dim", "num_layers", "page_size", "n_devices",
                     "data_parallel_degree", "num_draft_tokens"):
            _is_int(name, getattr(self, name))
        if self.speculative_method == "none":
            object.__setattr__(self, "speculative_method", None)
        quant = self.kvcache_quant_config
        if quant is not None and not isinstance(quant, KVCacheQuantizationConfig):
            if not hasattr(quant, "scale_dtype") and not hasattr(quant, "quantization_granularity"):
                raise InputError("kvcache_quant_config", quant, "a KVCacheQuantizationConfig (or MAX's)")
            quant = KVCacheQuantizationConfig(getattr(quant, "scale_dtype", "float32"),
                                              getattr(quant, "quantization_granularity", 128))
            object.__setattr__(self, "kvcache_quant_config", quant)
        if self.kv_connector not in KV_CONNECTORS:
            raise InputError("kv_connector", self.kv_connector, ", ".join(KV_CONNECTORS))
        if self.is_mla and self.num_q_heads is None:  # KVCacheConfig.to_params
            raise ValueError("num_q_heads is required when is_mla=True.")
        dp, n = self.data_parallel_degree, self.n_devices
        if dp < 1:
            raise ValueError(f"Data parallelism degree ({dp}) must be at least 1")
        if n < dp:
            raise ValueError(f"Data parallelism degree ({dp}) cannot be greater than the number "
                             f"of devices ({n})")
        if n % dp != 0:
            raise ValueError(f"Number of devices ({n}) must be divisible by data parallelism "
                             f"degree ({dp})")
        if self.slots_per_page is None:
            object.__setattr__(self, "slots_per_page", self.page_size)
        slots = self.slots_per_page
        if slots <= 0 or self.page_size % slots != 0:
            raise ValueError(f"Slots per page ({slots}) must be a positive divisor of the page "
                             f"size ({self.page_size}).")
        if self.kv_connector in TIERED_CONNECTORS and not self.enable_prefix_caching:
            raise ValueError(f"KV connector '{self.kv_connector}' requires prefix caching to be "
                             "enabled")
        validate_quantization(self.dtype, self.head_dim, quant)
        tp = self.tensor_parallel_degree
        if self.is_mla:
            if self.num_q_heads % tp != 0:
                raise ValueError(f"Number of query heads ({self.num_q_heads}) must be divisible "
                                 f"by the tensor parallel degree ({tp})")
        elif not (self.n_kv_heads % tp == 0
                  or (self.allow_kv_head_replication and tp % self.n_kv_heads == 0)):
            raise ValueError(f"Number of KV heads ({self.n_kv_heads}) must be divisible by the "
                             f"tensor parallel degree ({tp})")

    # ---- derived properties (MAX names) -------------------------------------------------
    @property
    def tensor_parallel_degree(self) -> int:
        return self.n_devices // self.data_parallel_degree

    @property
    def kv_dim(self) -> int:
        """2 (a key and a value per slot) for MHA, 1 (the latent) for MLA."""
        return 1 if self.is_mla else 2

    @property
    def n_kv_heads_per_device(self) -> int:
        if self.is_mla:
            return 1
        tp = self.tensor_parallel_degree
        return max(self.n_kv_heads // tp, 1) if self.n_kv_heads % tp == 0 else 1

    @property
    def num_q_heads_per_device(self) -> int | None:
        if self.num_q_heads is None:
            return None
        return max(self.num_q_heads // self.tensor_parallel_degree, 1)

    @property
    def replicates_kv_across_tp(self) -> bool:
        """MLA: every device of a TP group holds the latent; MHA never."""
        return self.is_mla and self.tensor_parallel_degree > 1

    @property
    def quantized_kv_cache(self) -> bool:
        return is_quantized(self.dtype, self.kvcache_quant_config)

    @property
    def is_nvfp4_kv_cache(self) -> bool:
        return is_nvfp4(self.dtype, self.kvcache_quant_config)

    @property
    def is_fp8_kv_dtype(self) -> bool:
        return self.dtype in ("float8_e4m3fn", "float8_e4m3fnuz")

    @property
    def dtype_shorthand(self) -> str:
        """MAX's short name: bf16, f8_m4e3fn, nvfp4, else f32."""
        if self.dtype == "bfloat16":
            return "bf16"
        if self.dtype == "float8_e4m3fn":
            return "f8_m4e3fn"
        return "nvfp4" if self.is_nvfp4_kv_cache else "f32"

    @property
    def storage_head_dim(self) -> int:
        return storage_head_dim(self.head_dim, self.dtype, self.kvcache_quant_config)

    @property
    def kv_cache_scale_dtype(self) -> str:
        if self.quantized_kv_cache and self.kvcache_quant_config is not None:
            return self.kvcache_quant_config.scale_dtype
        return "float32"

    @property
    def shape_per_block(self) -> list[int]:
        """Per-device page shape: [kv_dim, layers, slots per page, heads per device, head dim]."""
        return [self.kv_dim, self.num_layers, self.slots_per_page, self.n_kv_heads_per_device,
                self.storage_head_dim]

    @property
    def shape_per_scale_block(self) -> list[int]:
        """The page shape with ceil(head_dim / granularity) scales as last dim (needs a config)."""
        assert self.kvcache_quant_config is not None
        shape = self.shape_per_block
        shape[4] = scale_groups(self.head_dim, self.kvcache_quant_config.quantization_granularity)
        return shape

    def _block(self):
        return block_bytes(kv_dim=self.kv_dim, num_layers=self.num_layers,
                           slots=self.slots_per_page, kv_heads=self.n_kv_heads_per_device,
                           head_dim=self.head_dim, dtype=self.dtype,
                           quant=self.kvcache_quant_config,
                           tensor_parallel_degree=self.tensor_parallel_degree)

    @property
    def bytes_per_value_block(self) -> int:
        return self._block().value

    @property
    def bytes_per_scale_block(self) -> int:
        return self._block().scale

    @property
    def bytes_per_block(self) -> int:
        """One page summed over the tensor-parallel devices of a replica (values + scales)."""
        return self._block().total

    @property
    def row_bytes(self) -> int:
        return self.n_kv_heads_per_device * self.storage_head_dim * dtype_size(self.dtype)

    @property
    def scale_row_bytes(self) -> int:
        return scale_row_bytes(head_dim=self.head_dim, dtype=self.dtype,
                               quant=self.kvcache_quant_config,
                               kv_heads=self.n_kv_heads_per_device)

    @property
    def group_id(self) -> str:
        return _group_id(self.window_size)

    def leaf_id(self, prefix: str = "") -> str:
        return prefix + self.group_id

    def leaves(self, prefix: str = "") -> dict[str, KVLeaf]:
        """Per-device pool regions: the values, and ``<id>/scales`` when the cache is quantised."""
        leaf_id = self.leaf_id(prefix)
        tp = self.tensor_parallel_degree
        block = self._block()
        leaves = {leaf_id: KVLeaf(leaf_id, block.value // tp, self.row_bytes, self.page_size,
                                  self.window_size)}
        if self.quantized_kv_cache:
            scales = leaf_id + "/scales"
            leaves[scales] = KVLeaf(scales, block.scale // tp,
                                    math.lcm(self.scale_row_bytes, SCALE_TMA_ALIGN_BYTES),
                                    self.page_size, self.window_size)
        return leaves

    @property
    def num_draft_tokens_per_step(self) -> int:
        """0 without speculation; 1 for eagle/mtp; all drafts for dflash/dflash2/dspark."""
        method = self.speculative_method
        if method is None:
            return 0
        if method in ("dflash", "dflash2", "dspark"):
            return self.num_draft_tokens
        if method in ("mtp", "eagle"):
            return 1
        raise ValueError(f"Unrecognized speculative_method: {method!r}")

    @property
    def spec_decode_cache_slack(self) -> int:
        return spec_decode_cache_slack(self)

    @property
    def slack(self) -> int:
        """Alias of ``spec_decode_cache_slack`` (kvfit's older name)."""
        return spec_decode_cache_slack(self)

    # ---- page counting (methods default to include_null_block=self.include_null_block) ---
    def _null(self, include_null_block: bool | None) -> bool:
        return self.include_null_block if include_null_block is None else include_null_block

    def compute_num_device_blocks(self, available_cache_memory: int,
                                  max_batch_size: int | None = None,
                                  max_seq_len: int | None = None, *,
                                  require_max_seq_len_fits: bool = False,
                                  include_null_block: bool | None = None) -> int:
        """Pages per replica (MAX ``compute_num_device_blocks``)."""
        return compute_num_device_blocks(self, available_cache_memory, max_batch_size,
                                         max_seq_len, require_max_seq_len_fits,
                                         self._null(include_null_block))

    def estimated_memory_size(self, available_cache_memory: int, max_batch_size: int,
                              max_seq_len: int, include_null_block: bool | None = None) -> int:
        """KV bytes over all replicas in whole pages (MAX ``estimated_memory_size``)."""
        return estimated_memory_size(self, available_cache_memory, max_batch_size, max_seq_len,
                                     self._null(include_null_block))

    def compute_max_seq_len_fitting_in_cache(self, available_cache_memory: int,
                                             include_null_block: bool | None = None
                                             ) -> int | None:
        """Longest request the generic pool holds (MAX ``compute_max_seq_len_fitting_in_cache``)."""
        return compute_max_seq_len_fitting_in_cache(self, available_cache_memory,
                                                    self._null(include_null_block))



# ---- MAX's module functions (nn/kv_cache/cache_params.py), same names and defaults ---------

def spec_decode_cache_slack(params: KVCacheParams) -> int:
    """Extra KV positions per request: 0 without drafts, else 3·n + (1 if block draft) + 1."""
    if params.num_draft_tokens <= 0:  # before the method is read: MAX raises for an unknown one only here
        return 0
    return spec_decode_slack(params.num_draft_tokens, params.num_draft_tokens_per_step)


def _leaves_blocks(params: KVCacheParams, max_batch_size: int | None, max_seq_len: int | None,
                   include_null_block: bool) -> int:
    # bytes_per_block == 0: every leaf plateaus, a request costs its largest leaf's blocks.
    slots = cdiv(max_seq_len, params.page_size) if max_seq_len else 1
    per_request = max((leaf.blocks_to_reserve(slots,
                                              enable_prefix_caching=params.enable_prefix_caching)
                       for leaf in params.leaves().values()), default=0)
    blocks = per_request * (max_batch_size or 1)
    return blocks + 1 if include_null_block else blocks


def compute_num_device_blocks(params: KVCacheParams, available_cache_memory: int,
                              max_batch_size: int | None, max_seq_len: int | None,
                              require_max_seq_len_fits: bool = False,
                              include_null_block: bool = False) -> int:
    """Pages per replica: the budget's whole pages, capped by the workload's need when given.

    MAX's rules: need = ceil((L + slack) / page) · B (+1 null page); per-replica budget =
    available // dp; allocable = that // bytes_per_block. Raises only when ``allocable == 0``
    (so a negative budget without a null block returns negative pages), or when the null block
    leaves no request page; warns when B exceeds allocable; raises when one request at L does not
    fit and ``require_max_seq_len_fits``.
    """
    blocks_per_req: int | None = None
    max_total: int | None = None
    if max_seq_len is not None and max_batch_size is not None:
        blocks_per_req = math.ceil((max_seq_len + spec_decode_cache_slack(params))
                                   / params.page_size)
        max_total = blocks_per_req * max_batch_size
        if include_null_block:
            max_total += 1
    bpb = params.bytes_per_block
    if bpb == 0:
        return _leaves_blocks(params, max_batch_size, max_seq_len, include_null_block)
    per_replica = available_cache_memory // params.data_parallel_degree
    allocable = per_replica // bpb
    if max_total is not None:
        num_blocks = min(allocable, max_total)
    elif include_null_block:
        num_blocks = allocable - 1
    else:
        num_blocks = allocable
    page_str, memory_str = human_bytes(bpb), human_bytes(per_replica)
    group = params.n_devices // params.data_parallel_degree
    across = f" across {group} devices" if group > 1 else ""
    if allocable == 0:
        raise RuntimeError("Insufficient cache memory to allocate even a single page.\n"
                           f"One page requires {page_str} but only {memory_str} are "
                           f"available{across}.")
    if include_null_block:
        request_blocks = num_blocks - 1 if max_total is not None else num_blocks
        if request_blocks < 1:
            raise RuntimeError(
                "Insufficient cache memory to allocate the null block plus a single request "
                f"page.\nThe null block and one request page require {human_bytes(2 * bpb)} but "
                f"only {memory_str} are available{across}.")
    if max_batch_size is not None and max_batch_size > allocable:
        emit(logging.WARNING,
             f"Insufficient cache memory to support a batch containing {max_batch_size} requests "
             f"with one token per request. Need to allocate at least {max_batch_size} pages "
             f"({human_bytes(max_batch_size * bpb)}), but only have enough memory for "
             f"{allocable} pages ({memory_str}{across}).")
    if (require_max_seq_len_fits and blocks_per_req is not None
            and blocks_per_req > allocable):
        slack = spec_decode_cache_slack(params)
        slack_str = f" (plus {slack} speculative-decode slack tokens)" if slack > 0 else ""
        raise RuntimeError(
            "Insufficient cache memory to support a batch containing one request at the max "
            f"sequence length of {max_seq_len} tokens{slack_str}. Need to allocate at least "
            f"{blocks_per_req} pages ({human_bytes(blocks_per_req * bpb)}), but only have enough "
            f"memory for {allocable} pages ({memory_str}{across}). A request approaching the "
            "max sequence length would exhaust the KV cache and crash the model worker. Reduce "
            f"--max-length to at most {allocable * params.page_size} or increase the available "
            "KV cache memory (e.g. raise --device-memory-utilization).")
    return num_blocks


def estimated_memory_size(params: KVCacheParams, available_cache_memory: int,
                          max_batch_size: int, max_seq_len: int,
                          include_null_block: bool = False) -> int:
    """KV bytes over all replicas: pages per replica × bytes per block × dp."""
    blocks = compute_num_device_blocks(params, available_cache_memory, max_batch_size,
                                       max_seq_len, include_null_block=include_null_block)
    bpb = params.bytes_per_block or (
        sum(leaf.bytes_per_page for leaf in params.leaves().values())
        * params.tensor_parallel_degree)
    return blocks * bpb * params.data_parallel_degree


def compute_max_seq_len_fitting_in_cache(params: KVCacheParams, available_cache_memory: int,
                                         include_null_block: bool = False) -> int | None:
    """Longest request: max(1, usable pages × page size − slack); None when pages cost nothing."""
    if params.bytes_per_block == 0:
        return None
    blocks = compute_num_device_blocks(params, available_cache_memory, 1, None,
                                       include_null_block=include_null_block)
    return max(1, blocks * params.page_size - spec_decode_cache_slack(params))
