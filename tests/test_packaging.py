"""The distribution ships every package of the source tree, not only what an editable install finds."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_package_discovery_covers_every_subpackage():
    source = {".".join(init.parent.relative_to(ROOT).parts)
              for top in ("estimator", "meshes") for init in (ROOT / top).rglob("__init__.py")}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(where=str(ROOT), include=config["include"]))
    assert {"estimator.engines", "estimator.xla"} <= source
    assert source <= shipped, sorted(source - shipped)
    assert not {p for p in shipped if p.split(".")[0] not in ("estimator", "meshes")}  # no tests/, notebooks/
