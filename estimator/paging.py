"""Page arithmetic shared by the seed API, plan() and the sweep kernels' scalar twins.

Floor for pages that fit a budget, ceil for pages a request needs: a page exists only if every
device has room for its slice, and a request of L tokens holds ceil(L / page_size) pages.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def max_batch_at_length(usable_pages: int, length: int, page_size: int, slack: int = 0) -> int:
    """Requests of ``length`` tokens that fit in ``usable_pages`` pages of one replica."""
    if length <= 0:
        return 0
    return usable_pages // pages_for_tokens(length + slack, page_size)


def max_length_at_batch(usable_pages: int, batch: int, page_size: int, slack: int = 0) -> int:
    """Longest request length such that ``batch`` of them fit in ``usable_pages`` pages."""
    if batch <= 0:
        return 0
    return max(usable_pages // batch * page_size - slack, 0)


@dataclass(frozen=True)
class RequestPages:
    """Pages one request holds on one device, by KV group.

    Layers are grouped so every group's page has the same bytes (the pool's page): a full group
    holds ceil(L / page) pages, a sliding group at most ``sliding_cap`` (window / page + 1), and
    recurrent state takes ``state_pages`` whole pages per request whatever its length. A model
    with only full-attention layers is one full group: ceil(L / page), the classic rule.
    """

    page_size: int
    full_groups: int = 1
    sliding_groups: int = 0
    sliding_cap: int = 0
    state_pages: int = 0

    def pages(self, tokens: int) -> int:
        """Pages a request of ``tokens`` tokens (slack included) holds."""
        p = pages_for_tokens(tokens, self.page_size)
        return self.full_groups * p + self.sliding_groups * min(p, self.sliding_cap) + self.state_pages

    def max_tokens(self, usable_pages: int) -> int | None:
        """Most tokens one request can hold in ``usable_pages`` (None: no length limit, since no
        layer grows without bound), 0 when not even one token fits."""
        f, s, cap, state = self.full_groups, self.sliding_groups, self.sliding_cap, self.state_pages
        if f == 0:
            return None if s * cap + state <= usable_pages and (s or state) else (
                None if not (s or state) else 0)
        room = usable_pages - state
        if room <= 0:
            return 0
        if s and (room - s * cap) // f > cap:  # long requests: sliding groups are capped
            return (room - s * cap) // f * self.page_size
        most = room // (f + s)
        return (min(most, cap) if s else most) * self.page_size
