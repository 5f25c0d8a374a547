"""Differential tests: the seed API against Modular MAX 26.7.0 itself, on generated inputs.

MAX runs in its own interpreter (``KVFIT_MAX_PYTHON``; .ci/run builds one) through ``max_oracle``,
one round trip per family (``max_oracle.batch``); the group skips where MAX is absent. Every
case compares the whole response: value, or exception type and text, and the log lines (level and
words) — MAX's ``max.pipelines`` records against kvfit's ``kvfit.max`` ones. ``cases.py`` says
which edges the generators aim at; the terminal summary reports how many cases ran and matched.
"""

from __future__ import annotations

import json
import random

import pytest

from tests.max_reference import cases, kvfit_side, max_oracle

pytestmark = [pytest.mark.maxref,
              pytest.mark.skipif(not max_oracle.available(),
                                 reason="Modular MAX 26.7.0 not installed (set KVFIT_MAX_PYTHON; "
                                        ".ci/run installs tests/max_reference/requirements.txt)")]

# family -> (generator, cases, seed): ~17k cases, about 45 s on 2 cores (MAX's side dominates).
FAMILIES = {
    "params": (cases.params_cases, 3000, 101),
    "page_count": (cases.page_count_cases, 3000, 102),
    "manager": (cases.manager_cases, 2000, 103),
    "jenga": (cases.jenga_cases, 2000, 104),
    "jenga_geometry": (cases.geometry_plan_cases, 800, 107),
    "footprint": (cases.footprint_cases, 5000, 105),
    "available": (cases.available_cases, 1000, 106),
}


def test_version():
    assert max_oracle.max_version().startswith("26.7.0")


def _normal(response: dict) -> dict:
    return json.loads(json.dumps(response))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_max(family):
    make, n, seed = FAMILIES[family]
    generated = make(random.Random(seed), n)
    theirs = max_oracle.batch(generated)
    mismatches = []
    for (fn, kwargs), their in zip(generated, theirs, strict=True):
        ours = _normal(kvfit_side.run(fn, kwargs))
        if ours != their:
            mismatches.append({"fn": fn, "kwargs": kwargs, "kvfit": ours, "max": their})
    cases.TALLY[family] = [len(generated), len(generated) - len(mismatches)]
    assert not mismatches, (f"{len(mismatches)} of {len(generated)} {family} cases differ; first: "
                            + json.dumps(mismatches[0])[:4000])
