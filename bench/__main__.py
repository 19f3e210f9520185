"""`python -m bench [names...]`: run benchmarks, each writing bench/results/<name>.json and printing it.

Without names, every module of bench/ that defines a top-level `main()` runs (files starting with
"_" are helpers). Each benchmark runs in its own fresh interpreter, so that one's imports, CA and
caches cannot change another's figures; `--inline` runs them in this process instead.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench._common import REPO_ROOT, RESULTS_DIR, child_env

BENCH_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Modules of bench/ with a top-level `def main(` (read, not imported: no side effects)."""
    names = []
    for path in sorted(BENCH_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            names.append(path.stem)
    return names


def run_inline(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    module.main()


def run_isolated(name: str) -> int:
    return subprocess.run([sys.executable, "-m", "bench", "--inline", name], cwd=REPO_ROOT, env=child_env(),
                          check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    known = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {known})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--inline", action="store_true", help="run in this process, not one process each")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(known))
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    names = args.names or known

    outcomes: list[tuple[str, str, float]] = []
    for name in names:
        started = time.perf_counter()
        if args.inline:
            try:
                run_inline(name)
                status = "ok"
            except Exception:  # report and go on with the others; the exit code tells
                traceback.print_exc()
                print(f"bench {name}: failed", file=sys.stderr)
                status = "failed"
        else:
            code = run_isolated(name)
            status = "ok" if code == 0 else f"failed (exit {code})"
        outcomes.append((name, status, time.perf_counter() - started))

    if not (args.inline and len(names) == 1):
        print(f"\nbenchmarks (results in {RESULTS_DIR}):", file=sys.stderr)
        for name, status, seconds in outcomes:
            print(f"  {name:<14} {status:<18} {seconds:6.1f} s", file=sys.stderr)
    return 0 if all(status == "ok" for _, status, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
