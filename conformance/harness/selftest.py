"""Self-test: the suite must reject every deliberately broken port, naming the rule it broke (SELF-1).

    python -m rac.conformance.harness.selftest [--jobs N] [--full] [NAME ...]     (nox -s selftest)

Jobs, run in parallel (each its own pytest process, hypothesis profile "selftest"):

- every mutant of ``rac.conformance.mutants`` (layer, calibration and model
  levels), against the tests of the requirements it was built to break (``--full``:
  every test of its level). It is caught when the run fails and the JSON report
  gives verdict ``fail`` to at least one of those requirements, with real test
  failures (a port that cannot even be loaded is a broken mutant, not a catch).
  A layer-level mutant runs in the four settings of ``mutants.matrix``: as a
  float64 and as a float32 port, taking every option and taking none (the suite
  then checks at the spec's defaults), and must be caught in each;
- ``control``: the unbroken reference through the same wrapper, per level: must pass
  (proves a catch is the bug's doing, not the harness's); at the layer level in the
  four settings, against every layer test, and verified for every method (its report's
  coverage: each method's core rules checked, PORT-8);
- ``numpy-example``: the port written from docs/porting.md alone
  (``rac.conformance.examples.numpy_port``) against every layer-level test: must pass;
- ``float32-example`` (``examples/float32_port``, no options) and ``fast-defaults``
  (rac.fast taking no options): must pass, verified for every method they declare;
- ``protocol``: the suite's own machinery (``selfcheck_*.py``: expected failures,
  report, robustness to broken ports, golden vectors): must pass.

Exits non-zero if any mutant slips through or any must-pass job fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rac.conformance.mutants import all_mutants
from rac.conformance.mutants.matrix import SETTINGS

SUITE_DIR = Path(__file__).resolve().parents[1]  # conformance/: the rootdir, where conftest.py is
EXAMPLE_PORT = "rac.conformance.examples.numpy_port"
FLOAT32_PORT = "rac.conformance.examples.float32_port"
MATRIX = "rac.conformance.mutants.matrix"
#: A mutant's run is stopped after this long (a hang would otherwise stall CI); per test: --test-timeout.
JOB_TIMEOUT_S = 900


@dataclass
class Job:
    name: str
    port: str | None  # None: the protocol job (no --port)
    args: list
    files: list
    kind: str  # "mutant", "pass"
    expected: frozenset = frozenset()
    verify: bool = False  # a must-pass job whose every declared method must be verified (PORT-8)
    bug: str = ""
    result: dict = field(default_factory=dict)


def pytest_command(port, files, args, report_dir) -> list:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *map(str, files),
        "-q",
        "-p",
        "no:cacheprovider",
        "--tb=line",
        "--import-mode=importlib",
        "-W",
        "ignore::RuntimeWarning",
        "--rootdir",
        str(SUITE_DIR),
        f"--report-dir={report_dir}",
        *args,
    ]
    return cmd + ([f"--port={port}"] if port else [])


def environment() -> dict:
    # one BLAS/intra-op thread per job: the jobs are the parallelism
    return dict(os.environ, RAC_HYPOTHESIS_PROFILE="selftest", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def inventory(workdir: Path) -> dict:
    """{test id: {reqs, level, file}} of the whole suite (one collection pass)."""
    path = workdir / "inventory.json"
    cmd = pytest_command(None, [SUITE_DIR], ["--collect-only", f"--inventory={path}"], "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environment(), timeout=JOB_TIMEOUT_S)
    if not path.is_file():
        raise RuntimeError(f"collecting the suite failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return json.loads(path.read_text())


def files_for(inv: dict, reqs=None, levels=None) -> list:
    """The test files holding tests of these requirements / levels (so a job imports only those)."""
    out = set()
    for entry in inv.values():
        if (reqs is None or set(entry["reqs"]) & set(reqs)) and (levels is None or entry["level"] in levels):
            out.add(entry["file"])
    return sorted(out)


def build_jobs(names, full: bool, inv: dict) -> list:
    mutants = all_mutants()
    jobs = []
    union: dict = {}
    for name in names:
        spec, m = mutants[name]
        union.setdefault(m.level, set()).update(m.expected)
        if full:
            args, files = [f"--level={m.level}"], files_for(inv, levels={m.level})
        else:
            args, files = [f"--req={','.join(sorted(m.expected))}"], files_for(inv, reqs=m.expected)
        if m.level == "layer":
            for dtype, options in SETTINGS:
                jobs.append(Job(f"{name}[{dtype},{options}]", f"{MATRIX}:{name}__{dtype}__{options}", args, files,
                                "mutant", m.expected, bug=m.bug))
        else:
            jobs.append(Job(name, spec, args, files, "mutant", m.expected, bug=m.bug))
    for level, reqs in sorted(union.items()):
        if level == "layer":  # every layer test, in every setting, verified
            for dtype, options in SETTINGS:
                jobs.append(Job(f"control-layer[{dtype},{options}]", f"{MATRIX}:control__{dtype}__{options}",
                                ["--level=layer"], files_for(inv, levels={"layer"}), "pass", verify=True))
            continue
        if full:
            args, files = [f"--level={level}"], files_for(inv, levels={level})
        else:
            args, files = [f"--req={','.join(sorted(reqs))}"], files_for(inv, reqs=reqs)
        jobs.append(Job(f"control-{level}", "rac.conformance.mutants:control", args, files, "pass"))
    return jobs


def standard_jobs(inv: dict) -> list:
    checks = sorted(str(p) for p in SUITE_DIR.glob("meta/selfcheck_*.py"))
    layer = files_for(inv, levels={"layer"})
    return [
        Job("numpy-example", EXAMPLE_PORT, ["--level=layer"], layer, "pass", verify=True),
        Job("float32-example", FLOAT32_PORT, ["--level=layer"], layer, "pass", verify=True),
        Job("fast-defaults", f"{MATRIX}:fast__f32__defaults", ["--level=layer"], layer, "pass", verify=True),
        Job("protocol", None, [], checks, "pass"),
    ]


def run_job(job: Job, workdir: Path) -> Job:
    report_dir = workdir / job.name
    cmd = pytest_command(job.port, job.files, job.args, report_dir)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=environment(), timeout=JOB_TIMEOUT_S)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = "timeout", f"stopped after {JOB_TIMEOUT_S} s\n{exc.stdout or ''}"
    seconds = time.perf_counter() - start
    reports = sorted(report_dir.glob("conformance-*.json")) if report_dir.is_dir() else []
    report = json.loads(reports[0].read_text()) if reports else {"requirements": [], "meta": {}}
    job.result = dict(code=code, seconds=seconds, rows=report["requirements"], output=output, command=" ".join(cmd),
                      coverage=report["meta"].get("coverage") or {})
    return job


def judge(job: Job) -> tuple[bool, str]:
    r = job.result
    failed = {row["id"] for row in r["rows"] if row["verdict"] == "fail"}
    timing = f"{r['seconds']:5.1f}s"
    if job.kind == "pass":
        passed = sum(row["verdict"] == "pass" for row in r["rows"])
        ok = r["code"] == 0 and passed > 0  # a run that skipped everything proves nothing
        unverified = {m: c["status"] for m, c in r["coverage"].items() if not c["status"].startswith("conforming")}
        if job.verify and (unverified or not r["coverage"]):
            ok = False
        detail = f"passed ({passed} requirements)" if ok else (
            f"FAILED (exit {r['code']}; failing {sorted(failed)}, {passed} passing"
            + (f"; not verified: {unverified or 'no coverage reported'}" if job.verify else "") + ")")
        if ok and job.verify:
            detail += ", verified: " + ", ".join(f"{m} {c['coverage']:.0%}" for m, c in r["coverage"].items())
        return ok, f"{job.name:<44} {timing} must pass: {detail}"
    errors = [f["error"] for row in r["rows"] for f in row["failures"]]
    harness = [e for e in errors if "port not importable" in e]
    caught_by = sorted(job.expected & failed)
    ok = r["code"] == 1 and bool(caught_by) and not harness
    if ok:
        others = sorted(failed - job.expected)
        verdict = f"caught by {caught_by}" + (f" (also {others})" if others else "")
    elif harness:
        verdict = f"BROKEN MUTANT: {harness[0]}"
    else:
        verdict = f"MISSED: expected a failure of {sorted(job.expected)}, failing {sorted(failed)} (exit {r['code']})"
    return ok, f"{job.name:<44} {timing} {verdict}  [{job.bug}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all, plus the must-pass jobs)")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument(
        "--full", action="store_true", help="run every test of a mutant's level, not only its requirements'"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the per-job reports in this directory")
    args = parser.parse_args(argv)
    mutants = all_mutants()
    unknown = sorted(set(args.names) - set(mutants))
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; known: {sorted(mutants)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rac-selftest-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        inv = inventory(workdir)
        jobs = build_jobs(args.names or sorted(mutants), args.full, inv)
        if not args.names:
            jobs += standard_jobs(inv)
        # longest first (model level, the must-pass runs), so the pool ends together
        order = {"model": 0, "calibration": 1}
        jobs.sort(
            key=lambda j: (j.kind != "pass", order.get(getattr(mutants.get(j.name, (0, None))[1], "level", ""), 2))
        )
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda j: run_job(j, workdir), jobs))
    verdicts = [judge(j) for j in done]
    for job, (ok, line) in zip(done, verdicts):
        print(line)
        if not ok:
            print("    " + job.result["command"])
            print("    " + job.result["output"][-2500:].replace("\n", "\n    "))
    bad = sum(not ok for ok, _ in verdicts)
    n_mut = sum(j.kind == "mutant" for j in done)
    print(
        f"{n_mut} mutants, {len(done) - n_mut} must-pass jobs: {len(done) - bad} passed, {bad} failed "
        f"in {time.perf_counter() - started:.0f} s with {args.jobs} jobs"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
