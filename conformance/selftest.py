"""Self-test: the suite must reject every deliberately broken port, naming the rule it broke.

    python -m rac.conformance.selftest [--jobs N] [NAME ...]     (nox -s selftest)

Runs the whole suite once per mutant of ``rac.conformance.mutants.ports``
(each in its own pytest process) and checks that (1) the run fails and (2) the
requirements it reports failing include the ones the mutant was built to
break. Exits non-zero if any mutant slips through.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rac.conformance.mutants.ports import MUTANTS

SUITE_DIR = Path(__file__).resolve().parent
_FAIL_LINE = re.compile(r"^([A-Z][A-Z0-9]*-\d+)\s+FAIL\b", re.MULTILINE)


def run_suite(port: str, extra=()) -> tuple[int, set, str]:
    """Run the conformance suite against ``port``; return (exit code, failed requirement IDs, output)."""
    env = dict(os.environ, RAC_HYPOTHESIS_PROFILE="selftest")
    cmd = [sys.executable, "-m", "pytest", str(SUITE_DIR), f"--port={port}", "-q", "--import-mode=importlib",
           "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning", "--tb=no", "--rootdir", str(SUITE_DIR), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    output = proc.stdout + proc.stderr
    return proc.returncode, set(_FAIL_LINE.findall(output)), output


def check_mutant(name: str) -> tuple[bool, str]:
    _, expected, bug = MUTANTS[name]
    code, failed, output = run_suite(f"rac.conformance.mutants.ports:{name}")
    caught = code != 0 and bool(expected & failed)
    verdict = "caught" if caught else "MISSED"
    line = f"{name:<38} {verdict:<7} expected {sorted(expected)} failed {sorted(failed)}  ({bug})"
    if not caught and code not in (0, 1):
        line += "\n" + output[-3000:]
    return caught, line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MUTANTS))
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; known: {sorted(MUTANTS)}")
    names = args.names or sorted(MUTANTS)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(check_mutant, names))
    for _, line in results:
        print(line)
    missed = [n for n, (ok, _) in zip(names, results) if not ok]
    print(f"{len(names) - len(missed)} passed, {len(missed)} failed")  # every mutant caught = passed
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
