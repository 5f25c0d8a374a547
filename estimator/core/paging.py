"""Budget arithmetic shared by the seed API, plan(), the sweeps and serving.

Floor for pages that fit a budget: a page exists only if every device has room for its slice.
The pages one request holds are the KV specs' business (estimator.core.kv_spec).
"""

from __future__ import annotations

from fractions import Fraction

SPEC_METHODS = ("none", "eagle", "mtp", "dflash", "dflash2")


def pages_for_tokens(tokens: int, page_size: int) -> int:
    """Pages one request of ``tokens`` tokens occupies."""
    return -(-tokens // page_size)


def pages_that_fit(budget_bytes: int, page_bytes: int) -> int:
    """Whole pages of ``page_bytes`` in ``budget_bytes`` (0 when the budget is not positive)."""
    return budget_bytes // page_bytes if budget_bytes > 0 else 0


def scaled_budget(free_bytes: int, utilization: float) -> int:
    """floor(free · utilization), exact: the utilization is read as the decimal the user wrote."""
    return int(free_bytes * Fraction(str(utilization)))


def speculative_slack(num_draft_tokens: int, method: str = "eagle") -> int:
    """Extra KV tokens per request for speculative decoding (MAX ``spec_decode_cache_slack``).

    ``3·n + 1``, plus one more when the method drafts all n tokens in one step (dflash).
    """
    if num_draft_tokens <= 0:
        return 0
    per_step = {"none": 0, "eagle": 1, "mtp": 1}.get(method, num_draft_tokens)
    return 3 * num_draft_tokens + (1 if per_step == num_draft_tokens else 0) + 1
