"""KV specs by hand, and their integer-array path checked against the exact Python-int path."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator.core.kv_spec import (
    NO_LIMIT,
    FullAttentionSpec,
    KVSpecs,
    MLASpec,
    NoCacheSpec,
    RecurrentStateSpec,
    SlidingWindowSpec,
)
from meshes import InputError

LLAMA_8B_LAYER = FullAttentionSpec(heads=8, head_dim=128, value_bytes=2)  # Llama-3.1-8B at tp1
GEMMA2_LOCAL = SlidingWindowSpec(heads=8, head_dim=256, value_bytes=2, sliding_window=4096)
DEEPSEEK_V32 = MLASpec(latent_dim=512 + 64, value_bytes=2, indexer_dim=128)


def test_full_attention_by_hand():
    assert LLAMA_8B_LAYER.token_bytes == 2 * 8 * 128 * 2 == 4096
    assert LLAMA_8B_LAYER.page_bytes(128) == 4096 * 128
    assert LLAMA_8B_LAYER.pages_for(129, 128) == 2
    assert LLAMA_8B_LAYER.request_bytes(129, 128) == 2 * 128 * 4096


def test_fp8_scales_count_per_head_and_token():
    # one fp32 scale per 64 values of each 128-wide head: 2 scales × 4 B per head and token, K and V
    spec = FullAttentionSpec(heads=8, head_dim=128, value_bytes=1, scale_bytes_per_head=8)
    assert spec.token_bytes == 2 * 8 * (128 + 8)
    assert spec.dense_shape is None  # scales make it a byte pool, not one dense array


def test_sliding_window_holds_at_most_window_over_page_plus_one():
    assert GEMMA2_LOCAL.pages_for(4096 * 4, 128) == 4096 // 128 + 1
    assert GEMMA2_LOCAL.pages_for(100, 128) == 1
    assert GEMMA2_LOCAL.group_key != FullAttentionSpec(8, 256, 2).group_key


def test_mla_latent_and_indexer_by_hand():
    # 576 bf16 latent values + 128 fp8 indexer keys + one fp32 scale per 128 keys = 1284 B per token
    assert DEEPSEEK_V32.token_bytes == 576 * 2 + 128 + 4
    assert DEEPSEEK_V32.replicated_across_tensor


def test_recurrent_state_is_per_request():
    spec = RecurrentStateSpec(conv_bytes=1000, ssm_bytes=24)
    assert spec.state_bytes == 1024 and spec.pages_for(10**9, 16) == 0 and not spec.holds_tokens
    assert spec.request_bytes(10**9, 16) == 1024
    assert NoCacheSpec().request_bytes(10**6, 16) == 0


def test_pool_groups_mixed_layers_by_hand():
    # 4 global + 20 local layers: gcd 4 → a page is 4 layers' slice; 1 global and 5 local groups
    specs = KVSpecs((*[FullAttentionSpec(8, 256, 2)] * 4, *[GEMMA2_LOCAL] * 20), "bfloat16")
    pool = specs.pool(128)
    assert pool.page_bytes == 4 * 2 * 8 * 256 * 2 * 128
    assert pool.pages(8192) == 1 * 64 + 5 * 33
    # 1000 usable pages: local groups cap at 5·33 = 165, the global group takes the rest: 835 pages
    assert pool.max_tokens(1000) == 835 * 128


def test_pool_refuses_layers_of_different_token_sizes():
    with pytest.raises(InputError):
        KVSpecs((FullAttentionSpec(8, 128, 2), FullAttentionSpec(4, 128, 2)), "bfloat16").pool(16)


def test_recurrent_only_pool_is_one_state_per_page():
    pool = KVSpecs((RecurrentStateSpec(10, 6),) * 3, "bfloat16").pool(64)
    assert pool.page_bytes == 48 and pool.pages(10**7) == 1 and pool.max_tokens(1) == NO_LIMIT
    assert pool.max_tokens(0) == 0


SPECS = [LLAMA_8B_LAYER, GEMMA2_LOCAL, DEEPSEEK_V32, RecurrentStateSpec(7, 9), NoCacheSpec(),
         SlidingWindowSpec(2, 64, 1, 4, sliding_window=1)]


@settings(max_examples=200, deadline=None)
@given(tokens=st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=16),
       page=st.sampled_from([1, 16, 64, 128, 256, 4096]), which=st.integers(0, len(SPECS) - 1))
def test_array_path_equals_int_path(tokens, page, which):
    """The sweep evaluates the same methods on int64 arrays: every element equals the int result."""
    spec = SPECS[which]
    arr = np.asarray(tokens, dtype=np.int64)
    assert spec.pages_for(arr, page).tolist() == [spec.pages_for(t, page) for t in tokens]
    assert spec.request_bytes(arr, page).tolist() == [spec.request_bytes(t, page) for t in tokens]
    pool = KVSpecs((LLAMA_8B_LAYER, *[SlidingWindowSpec(8, 128, 2, sliding_window=512)] * 3), "bf16").pool(page)
    assert pool.pages(arr).tolist() == [pool.pages(t) for t in tokens]


@pytest.mark.parametrize("budget_pages", [2**31, 2**32, 2**53, 2**63])
def test_max_tokens_exact_at_large_page_counts(budget_pages):
    pool = KVSpecs((LLAMA_8B_LAYER,) * 2 + (RecurrentStateSpec(1, 1),), "bf16").pool(128)
    state = pool.state_pages  # 2 B of state in pages of 2·4096·128 B: one page
    assert state == 1
    assert pool.max_tokens(budget_pages) == (budget_pages - 1) * 128


def _bisect_max_tokens(pool, usable: int) -> int:
    """Scalar reference: the largest whole-page length p · page with pages(p · page) ≤ usable,
    by bisection over p (NO_LIMIT when no layer grows and a request fits)."""
    if not any(not s.window for s, _ in pool.groups):
        return NO_LIMIT if pool.pages(2**62) <= usable else 0
    if usable - pool.state_pages <= 0:
        return 0
    lo, hi = 0, usable + 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if pool.pages(mid * pool.page_size) <= usable else (lo, mid - 1)
    return lo * pool.page_size


@settings(max_examples=300, deadline=None)
@given(full=st.integers(0, 6), windows=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 4)), max_size=3),
       state=st.integers(0, 3), page=st.sampled_from([16, 64, 128]),
       usable=st.lists(st.integers(0, 5000), min_size=1, max_size=8))
def test_closed_form_max_tokens_equals_bisection_on_ints_and_arrays(full, windows, state, page, usable):
    from estimator.core.kv_spec import PoolGroups

    groups = ([(FullAttentionSpec(1, 8, 2), full)] if full else []) + [
        (SlidingWindowSpec(1, 8, 2, sliding_window=w), n) for w, n in windows]
    pool = PoolGroups(page, page * 16, tuple(groups), state)
    expected = [_bisect_max_tokens(pool, u) for u in usable]
    assert [pool.max_tokens(u) for u in usable] == expected
    assert pool.max_tokens(np.asarray(usable, dtype=np.int64)).tolist() == expected


def test_select_keeps_scalars_scalar_and_uses_where_on_arrays():
    """``select`` serves Python ints, NumPy scalars (still hashable) and arrays alike."""
    import numpy as np

    from estimator.core.kv_spec import select

    assert select(True, 3, 5) == 3 and select(False, 3, 5) == 5
    scalar = select(np.int64(2) > 1, np.int64(7), 0)
    assert scalar == 7 and hash(scalar) == hash(7)
    assert select(np.array([4, 0, 9]) > 1, np.array([1, 2, 3]), -1).tolist() == [1, -1, 3]
