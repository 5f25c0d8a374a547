"""An engine release string → its (major, minor, patch): "0.11.0", "v0.10.1.1", "0.8.5.post1",
"0.4.6.post5", a container's "0.11.0+582e4e37.nv25.11", a nightly's "0.16.0rc2.dev377+g…" (PEP 440
as the engines' wheels and logs print them). The engine profiles map the number to the behaviour
they model (estimator.engines.vllm_releases, estimator.engines.sglang ``release_family``)."""

from __future__ import annotations

import re

_RELEASE = re.compile(
    r"v?(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?(?:\.\d+)*"  # 0.10.1.1: a fourth part
    r"(?P<pre>(?:\.?(?:rc|a|b|post|dev)\d*)*)"  # 0.8.5.post1, 0.16.0rc2.dev377
    r"(?:\+[0-9A-Za-z.\-_]*)?",  # local part: +g0b7f11a1e, +582e4e37.nv25.11, +cu128
    re.IGNORECASE)


def release_number(release: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a release string, None for text that is not one."""
    match = _RELEASE.fullmatch(str(release).strip())
    if match is None:
        return None
    return int(match["major"]), int(match["minor"]), int(match["patch"] or 0)
