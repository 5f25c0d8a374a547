"""Cold start of the ``kvfit`` CLI (a script, not a test): wall time of a fresh process per run.

Times, each as the median of ``--runs`` fresh subprocesses (one untimed run first, so the OS file
cache is warm but nothing else is shared between runs):

* ``kvfit plan`` (the embedded default preset) and
  ``kvfit plan --model llama-3.1-70b --mesh 8xH100-80GB`` through the installed console script,
* ``python -c "import estimator"`` and, for reference, ``python -c "pass"`` (the interpreter alone),

then prints each against the 1.0 s target. It also checks, in fresh interpreters, that jax, flax
and matplotlib are not in ``sys.modules`` after ``import estimator.cli.app`` nor after a whole
``kvfit plan`` run in-process, and lists the slowest imports of ``estimator.cli.app`` from
``python -X importtime``. Exit status 1 if a heavy module loads (timings never fail the script:
they depend on the machine).

    python benchmarks/bench_cli_cold.py              # 9 runs each
    python benchmarks/bench_cli_cold.py --runs 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
HEAVY = ("jax", "jaxlib", "flax", "matplotlib", "numpy", "safetensors")
MUST_NOT_LOAD = ("jax", "flax", "matplotlib")


def kvfit_exe() -> str:
    exe = shutil.which("kvfit") or str(Path(sys.executable).with_name("kvfit"))
    if not Path(exe).exists():
        sys.exit("kvfit console script not found: pip install -e . in this venv first")
    return exe


def wall(argv: list[str], runs: int) -> list[float]:
    """Seconds per fresh run of argv (after one untimed run); every run must exit 0."""
    subprocess.run(argv, capture_output=True, check=True, cwd=ROOT)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return times


def loaded_after(code: str) -> list[str]:
    """Top-level packages of HEAVY present in sys.modules after running ``code`` in a fresh interpreter."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def slowest_imports(module: str, top: int) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the slowest top-level-ish imports under ``python -X importtime``."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed fresh processes per command (>= 7)")
    parser.add_argument("--top", type=int, default=10, help="slowest imports to list")
    args = parser.parse_args()
    runs = max(args.runs, 7)
    exe = kvfit_exe()
    cases = [
        ("kvfit plan", [exe, "plan"]),
        ("kvfit plan --model llama-3.1-70b --mesh 8xH100-80GB",
         [exe, "plan", "--model", "llama-3.1-70b", "--mesh", "8xH100-80GB"]),
        ('python -c "import estimator"', [sys.executable, "-c", "import estimator"]),
        ('python -c "import estimator.cli.app"', [sys.executable, "-c", "import estimator.cli.app"]),
        ('python -c "pass" (interpreter alone)', [sys.executable, "-c", "pass"]),
    ]
    print(f"# kvfit cold start — {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; median of {runs} fresh processes")
    print(f"{'command':<58} {'median s':>9} {'min s':>7} {'max s':>7} {'/ 1.0 s':>8}")
    for label, argv in cases:
        t = wall(argv, runs)
        med = statistics.median(t)
        verdict = "" if med <= TARGET_S else "  over target"
        print(f"{label:<58} {med:>9.3f} {min(t):>7.3f} {max(t):>7.3f} {med / TARGET_S:>7.0%}{verdict}")

    print("\n# heavy modules in sys.modules (of " + ", ".join(HEAVY) + ")")
    checks = [("import estimator", "import estimator"),
              ("import estimator.cli.app", "import estimator.cli.app"),
              ("kvfit plan, in-process",
               "from estimator.cli.app import app\ntry:\n    app(['plan'], standalone_mode=False)\n"
               "except SystemExit:\n    pass")]
    failed = False
    for label, code in checks:
        mods = loaded_after(code)
        bad = sorted(set(mods) & set(MUST_NOT_LOAD))
        failed |= bool(bad)
        print(f"{label:<26} loaded: {', '.join(mods) or 'none':<28} "
              f"{'FAIL: ' + ', '.join(bad) if bad else 'ok (no jax, flax, matplotlib)'}")

    print(f"\n# slowest imports of estimator.cli.app (python -X importtime, cumulative, top {args.top})")
    for us, name in slowest_imports("estimator.cli.app", args.top):
        print(f"{us / 1000:>9.1f} ms  {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
