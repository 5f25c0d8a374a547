"""A vLLM release string → the behaviour family kvfit models it with ("0.11.0" → "0.11").

Users know the release they run ("0.11.0", "v0.10.1.1", "0.8.5.post1", an NVIDIA container's
"0.11.0+582e4e37.nv25.11", a nightly's "0.16.0rc2.dev377+g…"), not kvfit's family names; the
families (estimator.engines.vllm) differ in the start-up arithmetic, so the release picks one. Each
family starts at the first release carrying the change that sets it apart (``FAMILY_STARTS``).
The boundaries were read from the release wheels' code (PyPI). A nightly ("0.16.0rc2.dev377")
counts as the release in its number: builds of main between two releases can carry changes of
the next one, which the family bands leave room for.
"""

from __future__ import annotations

from estimator.engines.releases import release_number
from meshes.validation import InputError

# (first release, family), newest first, with the change each family begins with:
FAMILY_STARTS: tuple[tuple[tuple[int, int, int], str], ...] = (
    # 0.34.0: the KV cache sized from the memory measured after warmup and CUDA-graph capture (the
    # extensible KV cache, on by default on CUDA and ROCm; gpu_memory_utilization then 1.0:
    # vllm/v1/worker/extensible_kv_cache.py measure_kv_cache_bytes)
    ((0, 34, 0), "0.34"),
    # 0.29.0: the null block held back in the fit check (vllm PR #47272); one capacity line since 0.28.0
    ((0, 29, 0), "0.33"),
    # 0.20.0: the CUDA-graph estimate subtracted and utilization 0.92 by default (vllm PR #38284);
    # FlashInfer top-k/top-p by default again from 0.21.0 (PR #40376)
    ((0, 20, 0), "0.2x"),
    # 0.17.0: the Triton top-k/top-p kernel (vllm PR #33538; topk_topp_triton.py is not in 0.16.0)
    ((0, 17, 0), "0.17"),
    # 0.11.0: memory snapshot after NCCL set-up (vllm PR #25359); FlashInfer sampler opt-in from
    # 0.11.1 (PR #26859) and a wheel dependency only from then
    ((0, 11, 0), "0.11"),
    # 0.9.1: V1's worker profiles with V0's memory_profiling (vllm PR #19312)
    ((0, 9, 1), "0.10"),
    # 0.8.0: the V1 engine by default (VLLM_USE_V1=1), total · util − (torch peak + non-torch)
    ((0, 8, 0), "0.9"),
    # 0.6.5: V0's memory profiling overhaul (vllm PR #10511)
    ((0, 6, 5), "v0"),
    # 0.2.5: the profile charges non-torch memory (vllm PR #2031)
    ((0, 2, 5), "v0-early"),
)
FIRST_MODELLED = FAMILY_STARTS[-1][0]
# the first release newer than those whose wheels kvfit's families were read from (0.34.x is the newest)
NOT_YET_MODELLED = (0, 35, 0)


def release_family(release: str, families: tuple[str, ...]) -> str:
    """The family of ``release`` (a family name itself is returned as it is); an InputError for
    text that is no vLLM release, a source build without a tag, or a release before 0.2.5."""
    text = str(release).strip()
    if text in families:
        return text
    allowed = (f"a vLLM release {'.'.join(map(str, FIRST_MODELLED))}–0.34.x (e.g. 0.11.0, v0.10.1.1, "
               f"0.8.5.post1) or one of {', '.join(families)}")
    number = release_number(text)
    if number is None:
        raise InputError("version", release, allowed)
    if number[:2] < (0, 2) and "dev" in text.lower():
        raise InputError("version", release, "a tagged vLLM release (this reads like a source build "
                         "without tags, numbered 0.1.devN); name the release it was built from "
                         f"or one of {', '.join(families)}")
    if number < FIRST_MODELLED:
        raise InputError("version", release, allowed + " — before 0.2.5 vLLM's profile charged no "
                         "non-torch memory at all (vllm PR #2031), which kvfit does not model")
    if number >= NOT_YET_MODELLED:
        raise InputError("version", release, allowed + " — kvfit has read the code of vLLM releases up to "
                         "0.34.x, not this one; pass version=0.34 to size it as 0.34 does")
    return next(family for start, family in FAMILY_STARTS if number >= start)
