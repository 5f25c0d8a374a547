"""Budget arithmetic shared by the seed API, plan(), the sweeps and serving.

Floor for pages that fit a budget: a page exists only if every device has room for its slice.
The pages one request holds are the KV specs' business (estimator.core.kv_spec).
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

SPEC_METHODS = ("none", "eagle", "mtp", "dflash", "dflash2")


def pages_that_fit(budget_bytes: int, page_bytes: int) -> int:
    """Whole pages of ``page_bytes`` in ``budget_bytes`` (0 when the budget is not positive)."""
    return budget_bytes // page_bytes if budget_bytes > 0 else 0


def scaled_budget(free_bytes: int, utilization: float) -> int:
    """floor(free · utilization), exact: the utilization is read as the decimal the user wrote."""
    return int(free_bytes * _decimal(utilization))


@lru_cache(maxsize=1024)
def _decimal(utilization: float) -> Fraction:
    return Fraction(str(utilization))


def spec_decode_slack(num_draft_tokens: int, drafts_per_step: int) -> int:
    """Extra KV tokens per request for speculative decoding (MAX 26.7.0 ``spec_decode_cache_slack``,
    nn/kv_cache/cache_params.py): ``3·n + 1``, plus one more when all n drafts come in one step."""
    if num_draft_tokens <= 0:
        return 0
    return 3 * num_draft_tokens + (1 if drafts_per_step == num_draft_tokens else 0) + 1


def speculative_slack(num_draft_tokens: int, method: str = "eagle") -> int:
    """The slack for ``method`` (SPEC_METHODS): eagle and mtp draft one token a step, dflash all n."""
    per_step = {"none": 0, "eagle": 1, "mtp": 1}.get(method, num_draft_tokens)
    return spec_decode_slack(num_draft_tokens, per_step)
