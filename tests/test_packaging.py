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


def test_engine_calibration_data_ships_with_the_package():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "calibration.json" in data["estimator.engines"]
    assert (ROOT / "estimator" / "engines" / "calibration.json").is_file()


def test_module_graph_has_no_cycles_and_import_estimator_stays_light():
    """Every import between kvfit's modules, lazy ones included, read from the source: no cycle."""
    import ast

    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for top in ("estimator", "meshes") for p in (ROOT / top).rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        edges[name] = {d for d in deps if d in mods and d != name}
    assert not any(d.startswith("estimator") for m, ds in edges.items() if m.startswith("meshes") for d in ds)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(d == b or (d not in seen and not seen.add(d) and reaches(d, b, seen)) for d in edges[a])

    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if reaches(b, a, set())})
    assert not cycles, cycles


def test_old_module_paths_still_import_and_public_names_stay_functions():
    import subprocess
    import sys

    code = ("import estimator, sys\n"
            "from estimator.memory_estimator import MemoryEstimator\n"
            "from estimator.kv_params import KVCacheParams\n"
            "from estimator.plan import MemoryPlan\n"
            "import estimator.geometry\n"
            "assert MemoryEstimator.__module__ == 'estimator.seed.memory_estimator'\n"
            "assert callable(estimator.plan) and callable(estimator.geometry)\n"
            "assert estimator.plan.__module__ == 'estimator.planning.plan'\n"
            "print(sorted(m for m in ('jax', 'flax', 'matplotlib', 'typer', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
