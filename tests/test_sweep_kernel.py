"""The jitted cell kernels against their exact Python twins: chex variants with and without jit,
int32 at its limits, int64 under jax.enable_x64, and headroom saturation at −2^63."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from estimator.sweeps import kernel as k

I32 = 2**31 - 1


def _classic(b, length, usable, page, slack, dp, limit):
    """A kernel case from classic paging numbers: cap = usable · page − slack, q = ceil(...)."""
    return (b, length, usable, max(usable * page - slack, 0), -(-(length + slack) // page), dp,
            limit)


# (b, L, usable, cap, q, dp, limit): edges of every comparison and of int32
CASES = [
    _classic(1, 1, 1, 1, 0, 1, 1),
    _classic(1, 1, 0, 1, 0, 1, 1),  # no page: static memory
    _classic(3, 128, 3, 128, 0, 1, 8),  # exactly fits
    _classic(4, 128, 3, 128, 0, 1, 8),  # one page short
    _classic(4, 128, 3, 128, 0, 2, 8),  # two replicas: 2 requests each
    _classic(9, 1, 100, 16, 0, 1, 8),  # over the batch-token limit
    _classic(1, 129, 1, 128, 0, 1, 8),  # 129 tokens need two pages: length cap
    _classic(1, 120, 1, 128, 9, 1, 8),  # slack pushes 120 tokens over one page
    _classic(1, 119, 1, 128, 9, 1, 8),  # ... 119 does not
    (I32, I32, I32 - 1, I32, I32, 1, I32),  # r · q = 2^62 − …: never formed
    (I32, 1, I32 - 1, I32, 1, 1, I32),  # one page short of one page each
    (I32 - 1, 1, I32 - 1, I32, 1, 1, I32),  # the whole pool, one page each
    (I32, I32 - 7, I32 - 1, I32, I32 // 8, 3, I32),
    (2**16, 2**16, I32 - 1, I32, 2**16, 1, I32),  # r · q = 2^32 overflows int32 if formed
    (2**16 - 1, 2**15 + 1, I32 - 1, I32, 2**15 + 1, 1, I32),
    (5, 1_000_000, 2**30, I32, 333_334, 7, 4),  # length ok, over the token limit
    (3, 5000, 40, 4096, 2, 1, 8),  # sliding window: few pages, but over the cap
    (3, 4000, 40, 4096, 2, 1, 8),  # ... within it
    (0, 5, 10, 10, 1, 1, 10),  # padding
    (5, 0, 10, 10, 1, 1, 10),  # padding
]


def _twin(b, length, usable, cap, q, dp, limit):
    return k.cell_reason_scalar(b, length, usable=usable, cap=cap, q=q, dp=dp,
                                max_batch_input_tokens=limit)


class CellKernelTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_cell_reason_int32_matches_twin(self):
        fn = self.variant(k.cell_reason)
        for case in CASES:
            got = fn(*(np.int32(v) for v in case))
            chex.assert_type(got, jnp.int8)
            self.assertEqual(int(got), _twin(*case), case)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cell_full_int64_matches_twins(self):
        fn = self.variant(k.cell_full)
        rng = np.random.default_rng(0)
        extra = [(int(rng.integers(1, 2**31)), int(rng.integers(1, 2**31)),
                  int(rng.integers(0, 2**40)), int(rng.integers(0, 2**41)),
                  int(rng.integers(1, 2**40)), int(rng.integers(1, 9)), int(rng.integers(1, 2**31)))
                 for _ in range(40)]
        budgets = [(2**63 - 1, 2**24, 1), (-(2**40), 2**21, 1), (2**31, 2, 0), (0, 2, 0),
                   (2**53 + 1, 3, 1), (-(2**63), 2**30, 1), (7, 0, 1)]
        with jax.enable_x64(True):
            for case, (kvb, pb, reserved) in itertools.product(CASES[:-2] + extra, budgets):
                reason, needed, head = fn(*(np.int64(v) for v in (*case, kvb, pb, reserved)))
                chex.assert_type([needed, head], jnp.int64)
                b, _, _, _, q, dp, _ = case
                self.assertEqual(int(reason), _twin(*case), case)
                self.assertEqual(int(needed), k.pages_needed_scalar(b, q, dp), case)
                true_need = -(-b // dp) * q
                want = (kvb if pb == 0 else
                        k.headroom_scalar(true_need, kv_budget=kvb, page_bytes=pb,
                                          reserved=reserved))
                self.assertEqual(int(head), want, (case, kvb, pb))

    @chex.variants(with_jit=True, without_jit=True)
    def test_headroom_saturates_exactly_at_int64_min(self):
        fn = self.variant(k.saturating_headroom)
        with jax.enable_x64(True):
            for kvb, pb in [(2**63 - 1, 2**24), (0, 2**24), (-(2**62), 3), (5, 1), (-(2**63), 1),
                            (2**63 - 1, 1), (2**62 + 7, 2**33 + 1)]:
                edge = (kvb + 2**63) // pb  # the largest n with kvb − n · pb ≥ −2^63
                for n in (0, 1, edge - 1, edge, edge + 1, 2**62):
                    if not 0 <= n < 2**63:
                        continue
                    got = int(fn(np.int64(n), np.int64(kvb), np.int64(pb), np.int64(0)))
                    self.assertEqual(got, max(kvb - n * pb, -(2**63)), (kvb, pb, n))

    @chex.variants(with_jit=True, without_jit=True)
    def test_grid_matches_twin_cell_by_cell(self):
        rng = np.random.default_rng(1)
        batches = np.array([1, 2, 3, 8, 100, 4000, I32], np.int32)
        lengths = np.array([1, 15, 16, 17, 1000, 2**20, I32 - 100], np.int32)
        usable = rng.integers(0, 2**31 - 1, size=(4, batches.size)).astype(np.int32)
        usable[0] = 0
        cap = rng.integers(0, 2**31, size=(4, batches.size)).astype(np.int32)
        q = np.sort(rng.integers(1, 2**31, size=(4, lengths.size)), axis=1).astype(np.int32)
        dp = np.array([1, 2, 4, 8], np.int32)
        args = (batches, lengths, usable, cap, q, dp, np.int32(4096))
        reason = np.asarray(self.variant(k.grid_reason)(*args))
        chex.assert_shape(reason, (4, batches.size, lengths.size))
        for c, i, j in np.ndindex(reason.shape):
            want = _twin(int(batches[i]), int(lengths[j]), int(usable[c, i]), int(cap[c, i]),
                         int(q[c, j]), int(dp[c]), 4096)
            self.assertEqual(int(reason[c, i, j]), want, (c, i, j))
        max_batch, max_length, counts = self.variant(k.grid_aggregate)(*args)
        ok = reason == k.FITS
        np.testing.assert_array_equal(max_batch, np.where(ok, batches[:, None], 0).max(axis=1))
        np.testing.assert_array_equal(max_length, np.where(ok, lengths, 0).max(axis=2))
        np.testing.assert_array_equal(counts, [[(reason[c] == r).sum() for r in range(5)]
                                               for c in range(4)])


def test_aggregate_equals_reason_grid_for_any_length_count():
    # chunks are padded to powers of two, but the kernel itself takes any number of lengths,
    # including padding (L = 0) at the end and batches in any order
    for n_l in (1, 7, 200, 255, 256, 300):
        rng = np.random.default_rng(n_l)
        batches = np.array([5, 1, 0, 3, 2], np.int32)
        lengths = np.sort(rng.integers(1, 10**6, n_l)).astype(np.int32)
        if n_l >= 5:
            lengths[-(n_l // 5):] = 0
        usable = rng.integers(0, 10**5, (3, 5)).astype(np.int32)
        cap = rng.integers(0, 10**6, (3, 5)).astype(np.int32)
        q = (np.maximum(lengths, 1)[None, :] // np.array([[1], [16], [128]]) + 1).astype(np.int32)
        args = (batches, lengths, usable, cap, q, np.array([1, 2, 3], np.int32), np.int32(4))
        reason = np.asarray(k.grid_reason_jit(*args))
        max_batch, max_length, counts = k.grid_aggregate_jit(*args)
        ok = reason == k.FITS
        np.testing.assert_array_equal(counts, [[(reason[c] == r).sum() for r in range(5)]
                                               for c in range(3)])
        np.testing.assert_array_equal(max_batch, np.where(ok, batches[:, None], 0).max(axis=1))
        np.testing.assert_array_equal(max_length, np.where(ok, lengths, 0).max(axis=2))


def test_one_compilation_per_chunk_shape():
    # the same shapes (and dtypes) reuse one executable: the per-chunk loop never recompiles
    jitted = jax.jit(chex.assert_max_traces(k.grid_reason, n=1))
    args = (np.arange(1, 9, dtype=np.int32), np.arange(1, 5, dtype=np.int32),
            np.ones((2, 8), np.int32), np.ones((2, 8), np.int32), np.ones((2, 4), np.int32),
            np.ones(2, np.int32), np.int32(8))
    for _ in range(3):
        jitted(*args)
