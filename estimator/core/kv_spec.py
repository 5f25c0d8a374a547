"""KV cache specs: one frozen class per kind of layer, and the collection that groups them.

The idea of vLLM's ``vllm/v1/kv_cache_interface.py`` (``FullAttentionSpec``,
``SlidingWindowSpec``, ``MLAAttentionSpec``, ``MambaSpec``): every kind of layer knows, for one
device of a tensor group, its bytes per token (scales included), the bytes of one page, the pages
one request of L tokens holds and the worst-case bytes of one request. Nothing outside this module
branches on the kind of a layer: a new kind is one new class.

The page and request methods use only ``+ - * //`` and comparisons, so the same code serves exact
Python ints (plans, the seed API) and integer numpy / jnp arrays (the sweep's per-length tables
and its jitted kernel).

- full attention: K and V of this shard's KV heads, every token kept;
- sliding window / chunked local attention: the same per token, but a request holds at most
  ``window / page + 1`` pages (the window may straddle a page boundary);
- MLA latent: one latent "head" (kv_lora_rank + rope dims) replicated on every tensor shard, plus
  DeepSeek-V3.2's lightning-indexer keys (fp8 values with an fp32 scale per 128);
- recurrent state (Mamba, Mamba2, gated delta net): conv + SSM state per request, not per token;
- no cache: MLP-only layers and layers that reuse an earlier layer's KV.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from estimator.model.dtypes import canonical_dtype, dtype_bytes
from estimator.model.spec import RECURRENT_TYPES, ModelSpec
from estimator.model.weights import kv_heads_per_shard
from meshes.validation import InputError, check_int

INDEXER_SCALE_BLOCK = 128  # DeepSeek-V3.2 indexer: one fp32 scale per 128 fp8 values
SCALE_BYTES = 4  # fp32 per-block scales of 8-bit caches
NO_LIMIT = 2**62  # PoolGroups.max_tokens where no layer grows without bound (the pool sets no cap)


def cdiv(a: Any, b: Any) -> Any:
    """Ceiling division for ints and integer arrays alike."""
    return -(-a // b)


def _namespace(*values: Any) -> Any:
    """The array namespace (``numpy``, ``jax.numpy``) of the first value that is an array of rank
    ≥ 1, or None: ints, and 0-d values whose result should stay a scalar, keep plain arithmetic."""
    for v in values:
        if getattr(v, "ndim", 0) and hasattr(v, "__array_namespace__"):
            return v.__array_namespace__()
    return None


def minimum(a: Any, b: Any) -> Any:
    """``min(a, b)`` for ints and integer arrays alike (an array's own ``minimum``: one pass)."""
    xp = _namespace(a, b)
    return xp.minimum(a, b) if xp is not None else a - (a - b) * (a > b)


def maximum(a: Any, b: Any) -> Any:
    """``max(a, b)`` for ints and integer arrays alike."""
    xp = _namespace(a, b)
    return xp.maximum(a, b) if xp is not None else a + (b - a) * (b > a)


def select(condition: Any, a: Any, b: Any) -> Any:
    """``a if condition else b`` for ints and integer arrays alike (an array's own ``where``)."""
    xp = _namespace(condition)
    return xp.where(condition, a, b) if xp is not None else b + (a - b) * condition


@dataclass(frozen=True)
class KVSpec:
    """One layer's KV cost on one device of a tensor group; the base is a layer with no cache."""

    kind: ClassVar[str] = "none"
    replicated_across_tensor: ClassVar[bool] = False  # every tensor shard stores the whole cache

    @property
    def token_bytes(self) -> int:
        """Bytes one token adds to this layer's cache on this device (scales included)."""
        return 0

    @property
    def state_bytes(self) -> int:
        """Bytes one request holds whatever its length (recurrent state)."""
        return 0

    @property
    def window(self) -> int:
        """Tokens a request keeps in this layer (0: all of them)."""
        return 0

    @property
    def holds_tokens(self) -> bool:
        return self.token_bytes > 0

    @property
    def dense_shape(self) -> tuple[int, ...] | None:
        """Per-token element shape on this device when the cache is one dense array of the
        cache dtype (K/V × heads × head_dim, the engines' layout); None for byte pools."""
        return None

    @property
    def group_key(self) -> tuple[str, int]:
        """Layers with equal keys share a KV group (vLLM's grouping of same-spec layers)."""
        return self.kind, self.window

    def page_bytes(self, page_size: Any) -> Any:
        """Bytes of one page of ``page_size`` tokens of this layer on this device."""
        return self.token_bytes * page_size

    def pages_for(self, tokens: Any, page_size: Any) -> Any:
        """Pages of this layer one request of ``tokens`` tokens holds."""
        return 0 * tokens

    def request_bytes(self, tokens: Any, page_size: Any) -> Any:
        """Worst-case bytes one request of ``tokens`` tokens holds in this layer."""
        return self.pages_for(tokens, page_size) * self.page_bytes(page_size) + self.state_bytes


@dataclass(frozen=True)
class NoCacheSpec(KVSpec):
    """A layer without a cache of its own (MLP-only, or reusing an earlier layer's KV)."""


@dataclass(frozen=True)
class FullAttentionSpec(KVSpec):
    """Full attention: K and V of ``heads`` KV heads per device, every token kept."""

    heads: int
    head_dim: int
    value_bytes: int  # bytes per element
    scale_bytes_per_head: int = 0  # per token and head: scales of 8-bit caches

    kind: ClassVar[str] = "full"

    @property
    def token_bytes(self) -> int:
        return 2 * self.heads * (self.head_dim * self.value_bytes + self.scale_bytes_per_head)

    @property
    def dense_shape(self) -> tuple[int, ...] | None:
        return None if self.scale_bytes_per_head else (2, self.heads, self.head_dim)

    def pages_for(self, tokens: Any, page_size: Any) -> Any:
        return cdiv(tokens, page_size)


@dataclass(frozen=True)
class SlidingWindowSpec(FullAttentionSpec):
    """Sliding-window or chunked local attention: at most ``window / page + 1`` pages a request."""

    sliding_window: int = 0

    kind: ClassVar[str] = "sliding"

    @property
    def window(self) -> int:
        return self.sliding_window

    def pages_for(self, tokens: Any, page_size: Any) -> Any:
        return minimum(cdiv(tokens, page_size), cdiv(self.sliding_window, page_size) + 1)


@dataclass(frozen=True)
class MLASpec(KVSpec):
    """MLA: one latent of ``latent_dim`` values per token, on every tensor shard, plus indexer keys."""

    latent_dim: int
    value_bytes: int
    scale_bytes: int = 0  # per token: scales of an 8-bit latent
    indexer_dim: int = 0  # DeepSeek-V3.2 lightning indexer: fp8 keys with fp32 scales

    kind: ClassVar[str] = "mla"
    replicated_across_tensor: ClassVar[bool] = True

    @property
    def token_bytes(self) -> int:
        indexer = self.indexer_dim + cdiv(self.indexer_dim, INDEXER_SCALE_BLOCK) * SCALE_BYTES
        return self.latent_dim * self.value_bytes + self.scale_bytes + indexer

    def pages_for(self, tokens: Any, page_size: Any) -> Any:
        return cdiv(tokens, page_size)


@dataclass(frozen=True)
class RecurrentStateSpec(KVSpec):
    """Recurrent state (Mamba conv + SSM, gated delta net): per request, not per token."""

    conv_bytes: int
    ssm_bytes: int

    kind: ClassVar[str] = "recurrent"

    @property
    def state_bytes(self) -> int:
        return self.conv_bytes + self.ssm_bytes


@dataclass(frozen=True)
class PoolGroups:
    """How one device's layers share its page pool, and the pages one request holds there.

    Layers that hold tokens are grouped by ``group_key``; groups of equal size share one page of
    ``group_layers`` layers (the gcd of the group sizes), so every group's page has the same
    bytes and a group of n layers takes n / group_layers pages per page of tokens. Recurrent
    state takes ``state_pages`` whole pages per request whatever its length. A model with only
    full-attention layers is one group: ceil(L / page), the classic rule.
    """

    page_size: int
    page_bytes: int  # one page of the pool on this device (0: no KV here)
    groups: tuple[tuple[KVSpec, int], ...]  # (representative spec, pages per page of tokens)
    state_pages: int = 0

    def pages(self, tokens: Any) -> Any:
        """Pool pages one request of ``tokens`` tokens holds (ints or integer arrays)."""
        total = self.state_pages + 0 * tokens
        for spec, count in self.groups:
            total = total + count * spec.pages_for(tokens, self.page_size)
        return total

    def max_tokens(self, usable_pages: Any) -> Any:
        """Most tokens one request can hold in ``usable_pages`` (ints or integer arrays):
        ``NO_LIMIT`` when no layer grows without bound and the request fits, 0 when not even one
        token fits.

        ``pages(p · page)`` is piecewise linear in p: below a sliding group's cap the group grows
        with p, above it the group is saturated. Walking the regions between caps in order, the
        last region whose start still fits holds the answer, ``(room − saturated) // growing``
        clipped to the region's end — one closed form for a scalar and for a whole array.
        """
        room = usable_pages - self.state_pages if self.state_pages else usable_pages
        if not self.groups:
            return select(room >= 0, NO_LIMIT, 0)
        caps: dict[int, int] = {}
        growing = 0
        for spec, count in self.groups:
            if spec.window:
                cap = cdiv(spec.window, self.page_size) + 1
                caps[cap] = caps.get(cap, 0) + count
            else:
                growing += count
        if not growing:
            return select(sum(c * n for c, n in caps.items()) <= room, NO_LIMIT, 0)
        if not caps:  # every group grows with the request: one region (≤ 0 rooms give ≤ 0: none)
            return maximum((room if growing == 1 else room // growing) * self.page_size, 0)
        growing += sum(caps.values())
        best, saturated, start = 0 * room, 0, 0
        for upper in [*sorted(caps), None]:  # the region start ≤ p ≤ upper
            most = (room - saturated) // growing
            fits = room - saturated - growing * start >= 0  # pages(start · page) ≤ usable
            best = select(fits, most if upper is None else minimum(most, upper), best)
            if upper is not None:
                saturated, growing, start = saturated + caps[upper] * upper, growing - caps[upper], upper
        return select(room > 0, best * self.page_size, 0)


@dataclass(frozen=True)
class KVSpecs:
    """The KV spec of every layer of a model on one device of a ``tensor``-way group."""

    layers: tuple[KVSpec, ...]
    kv_cache_dtype: str
    _groupings: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    _counted: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __iter__(self) -> Iterator[KVSpec]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> KVSpec:
        return self.layers[index]

    def token_bytes(self, layers: range | None = None) -> int:
        """KV bytes one token adds over ``layers`` (default: all) on this device."""
        return sum(s.token_bytes * n for s, n in self._counts(layers))

    def state_bytes(self, layers: range | None = None) -> int:
        """Recurrent state of one request over ``layers`` on this device."""
        return sum(s.state_bytes * n for s, n in self._counts(layers))

    @property
    def replicated_across_tensor(self) -> bool:
        return any(s.replicated_across_tensor for s in self.layers)

    def pool(self, page_size: int, layers: range | None = None) -> PoolGroups:
        """Group ``layers`` (default: all) into one page pool (see PoolGroups)."""
        token_bytes, layers_per_page, groups, state = self._grouping(layers)
        if not groups:  # recurrent-only: a page is one request's state
            return PoolGroups(page_size, state, (), 1 if state else 0)
        page = layers_per_page * token_bytes * page_size
        return PoolGroups(page_size, page, groups, cdiv(state, page))

    def _grouping(self, layers: range | None) -> tuple[int, int, tuple[tuple[KVSpec, int], ...], int]:
        """(token bytes of one layer, layers per page, groups, state bytes) of ``layers``: the
        page-size-free part of pool(), cached per layer range (sweeps ask for many page sizes)."""
        key = None if layers is None else (layers.start, layers.stop, layers.step)
        if key not in self._groupings:
            counts = self._counts(layers)
            token = [(s, n) for s, n in counts if s.holds_tokens]
            state = sum(s.state_bytes * n for s, n in counts)
            sizes = {s.token_bytes for s, _ in token}
            if len(sizes) > 1:
                raise InputError("layers", sorted(sizes), "one KV size per token for every attention layer")
            by_key: dict[tuple[str, int], list] = {}
            for s, n in token:
                entry = by_key.setdefault(s.group_key, [s, 0])
                entry[1] += n
            per_page = math.gcd(*(n for _, n in by_key.values())) if by_key else 0
            groups = tuple((first, n // per_page) for first, n in by_key.values())
            self._groupings[key] = (sizes.pop() if sizes else 0, per_page, groups, state)
        return self._groupings[key]

    def _counts(self, layers: range | None) -> tuple[tuple[KVSpec, int], ...]:
        """Each distinct spec object of ``layers`` (in order of first use) and how many layers use it:
        layers of one kind share one spec (kv_specs), so each is read once. Cached per range."""
        key = None if layers is None else (layers.start, layers.stop, layers.step)
        if key not in self._counted:
            chosen = self.layers if layers is None else tuple(self.layers[i] for i in layers)
            distinct = {id(s): s for s in chosen}
            self._counted[key] = tuple((distinct[i], n) for i, n in Counter(map(id, chosen)).items())
        return self._counted[key]


def _scale_bytes(values: int, dtype: str, scale_block: int | None) -> int:
    """fp32 scales of an 8-bit cache: one per ``scale_block`` values (none for wider caches)."""
    if scale_block is None or dtype_bytes(dtype) != 1:
        return 0
    return cdiv(values, scale_block) * SCALE_BYTES


def _recurrent(m: ModelSpec, kind: str, tp: int, dtype: str) -> RecurrentStateSpec:
    """Conv and SSM state of one request on one of ``tp`` shards (vLLM ``MambaSpec`` shapes)."""
    conv_b = dtype_bytes(dtype)
    ssm_b = dtype_bytes(m.ssm_state_dtype or dtype)
    k = m.ssm_conv_kernel - 1
    if kind == "mamba":  # conv (inner, k) and SSM (inner, d_state), inner split over tp
        inner = m.ssm_inner_size // tp
        return RecurrentStateSpec(inner * k * conv_b, inner * m.ssm_state_size * ssm_b)
    if kind == "mamba2":  # conv over x, B, C; SSM (heads, head_dim, d_state)
        conv = (m.ssm_inner_size + 2 * m.ssm_n_groups * m.ssm_state_size) // tp
        return RecurrentStateSpec(conv * k * conv_b,
                                  m.ssm_n_heads // tp * m.ssm_head_dim * m.ssm_state_size * ssm_b)
    conv = (2 * m.linear_key_heads * m.linear_key_dim + m.linear_value_heads * m.linear_value_dim) // tp
    state = m.linear_value_heads // tp * m.linear_value_dim * m.linear_key_dim
    return RecurrentStateSpec(conv * k * conv_b, state * ssm_b)


@lru_cache(maxsize=256)
def kv_specs(m: ModelSpec, tp: int, kv_cache_dtype: str | None = None,
             scale_block: int | None = None) -> KVSpecs:
    """The KV spec of every layer of ``m`` on one device of a ``tp``-way tensor group.

    ``scale_block`` gives an 8-bit cache one fp32 scale per that many values of each head.
    Cached (specs are frozen values): sweeps and engine profiles ask for the same ones often.
    """
    dtype = canonical_dtype(kv_cache_dtype or m.weight_dtype, "kv_cache_dtype")
    width = dtype_bytes(dtype)
    if scale_block is not None:
        check_int("kv_scale_block", scale_block, maximum=2**20)
        if width != 1:
            raise InputError("kv_scale_block", scale_block,
                             f"unset for a {dtype} cache (scales are for 8-bit caches)")
    shared_from = m.num_layers - m.kv_shared_layers
    heads = kv_heads_per_shard(m.num_kv_heads, tp) if m.num_kv_heads else 0

    def spec_of(kind: str) -> KVSpec:
        if kind == "none":
            return NoCacheSpec()
        if kind in RECURRENT_TYPES:
            return _recurrent(m, kind, tp, dtype)
        if m.is_mla:
            latent = m.kv_lora_rank + m.qk_rope_head_dim
            return MLASpec(latent, width, _scale_bytes(latent, dtype, scale_block), m.index_head_dim)
        if kind == "full_attention":
            return FullAttentionSpec(heads, m.head_dim, width, _scale_bytes(m.head_dim, dtype, scale_block))
        return SlidingWindowSpec(heads, m.head_dim, width, _scale_bytes(m.head_dim, dtype, scale_block),
                                 sliding_window=m.sliding_window)

    by_kind: dict[str, KVSpec] = {}  # one spec object per kind, shared by its layers
    specs = []
    for layer in range(m.num_layers):
        kind = m.layer_type(layer)
        kind = "none" if layer >= shared_from or kind == "mlp_only" else kind
        if kind not in by_kind:
            by_kind[kind] = spec_of(kind)
        specs.append(by_kind[kind])
    return KVSpecs(tuple(specs), dtype)


__all__ = [
    "NO_LIMIT",
    "FullAttentionSpec",
    "KVSpec",
    "KVSpecs",
    "MLASpec",
    "NoCacheSpec",
    "PoolGroups",
    "RecurrentStateSpec",
    "SlidingWindowSpec",
    "cdiv",
    "kv_specs",
    "minimum",
    "select",
]
