"""pytest wiring of the conformance suite: port selection, expected failures, time limit, report.

    nox -s conformance -- --port package.module:object     # any port (docs/porting.md)
    pytest conformance --port rac.reference                # the default

Every test carries ``@req("ID")`` naming the rule of docs/spec.md it checks; the
run ends with one row per requirement (report.py), printed and written as JSON
and Markdown under ``--report-dir``. The run fails if a requirement fails or an
expected failure passes.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from rac.conformance.harness import expected as xf
from rac.conformance.harness import measure as measure_mod
from rac.conformance.harness import report as rep
from rac.conformance.harness.ports import DEFAULT_PORT, LEVELS, Port, module_dir
from rac.conformance.harness.timeout import time_limit

# Profiles: "ci" is derandomised and bounded so CI is stable and quick; "dev"
# draws fresh examples; "thorough" for nightly or pre-release runs. Pinned
# hard cases (@example) run in every profile. Linear algebra is slow to start,
# hence no deadline.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=60, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
# the self-test only needs a verdict per mutant, not a minimal example: no shrinking
settings.register_profile(
    "selftest", max_examples=25, derandomize=True, phases=[Phase.explicit, Phase.generate], **_common
)
_PROFILE = os.environ.get("RAC_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
settings.load_profile(_PROFILE)

#: Level of a test, from the fixtures it uses: "suite" tests check the reference's own
#: building blocks (oracles, the sampler) and do not call the port.
LEVEL_FIXTURES = (("collect", "calibration"), ("compress", "model"), ("port", "layer"))


def pytest_addoption(parser):
    group = parser.getgroup("rac conformance")
    group.addoption("--port", default=DEFAULT_PORT,
                    help="implementation under test, package.module[:object] (default: %(default)s)")
    group.addoption("--device", default=None,
                    help="device the port's inputs are put on (default: cpu if the port declares it, else its first)")
    group.addoption(
        "--expected-failures",
        default=None,
        metavar="FILE",
        help="file of 'ID: reason' lines: requirements the port knowingly fails (added to its CAPABILITIES')",
    )
    group.addoption(
        "--report-dir",
        default="reports",
        metavar="DIR",
        help="where the JSON and Markdown reports go (default: %(default)s; empty: do not write)",
    )
    group.addoption(
        "--test-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="stop a test (setup or call) after this long and fail its requirements (default: %(default)s; 0: off)",
    )
    group.addoption("--req", default=None, metavar="ID[,ID...]", help="run only the tests of these requirement IDs")
    group.addoption(
        "--level",
        default=None,
        metavar="LEVEL[,LEVEL...]",
        help=f"run only tests of these levels: {', '.join(LEVELS)}, suite",
    )
    group.addoption(
        "--inventory",
        default=None,
        metavar="FILE",
        help="write {test id: {reqs, level}} of every collected test as JSON (used by the self-test)",
    )


class _Run:
    """State of one conformance run (kept on the config)."""

    def __init__(self, config):
        self.config = config
        self.spec = config.getoption("--port")
        self.port = None
        self.port_error = None
        self.records: list = []
        self.errors: list = []
        self.started = time.time()
        self.rows = None
        self.paths = ()
        self.statements, self.statements_source = rep.load_statements([config.rootpath])
        try:
            self.port = Port.load(self.spec, device=config.getoption("--device"))
        except ImportError as exc:
            self.port_error = f"port not importable: {exc}"
        self.expected = self._expected_failures()

    def _expected_failures(self) -> dict:
        try:
            out = {}
            if self.port is not None:
                out.update(xf.from_capabilities(self.port.expected_failures, module_dir(self.spec), self.spec))
            path = self.config.getoption("--expected-failures")
            if path:
                out.update(xf.read_file(path))
            xf.check_known(out, self.statements, "expected failures")
            return out
        except xf.ExpectedFailuresError as exc:
            raise pytest.UsageError(str(exc)) from None

    def meta(self) -> dict:
        import torch

        p = self.port
        return {
            "port": self.spec,
            "name": p.name if p else self.spec,
            "dtype": p.dtype if p else None,
            "device": p.device if p else None,
            "levels": list(p.levels) if p else [],
            "port_error": self.port_error,
            "expected_failures": self.expected,
            "statements_source": self.statements_source,
            "hypothesis_profile": _PROFILE,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - self.started, 1),
            "commit": _commit(self.config.rootpath),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            "errors": self.errors,
        }


def _commit(root) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except Exception:
        return None


_RUN = pytest.StashKey[_Run]()


def pytest_configure(config):
    config.addinivalue_line("markers", "req(id): requirement ID of docs/spec.md that the test checks")
    config.stash[_RUN] = _Run(config)


@pytest.fixture(scope="session")
def port(request) -> Port:
    run = request.config.stash[_RUN]
    if run.port is None:
        pytest.fail(run.port_error, pytrace=False)
    return run.port


@pytest.fixture(scope="module")
def toy():
    """(model, tokenizer) of the bundled toy reasoner (fixtures/toy-reasoner), in eval mode; one copy
    per test module, so a module that changes it cannot affect another."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    toy_dir = Path(__file__).resolve().parents[1] / "fixtures" / "toy-reasoner"
    model = AutoModelForCausalLM.from_pretrained(str(toy_dir))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(toy_dir))


@pytest.fixture(scope="session")
def measure():
    """``measure(req_id, value, tolerance, what="")``: record a numeric result for the report."""
    return measure_mod.measure


# --------------------------------------------------------------------------- selection


def _req_ids(item) -> tuple:
    return tuple(arg for m in item.iter_markers("req") for arg in m.args)


def item_level(item) -> str:
    names = set(getattr(item, "fixturenames", ()))
    for fixture, level in LEVEL_FIXTURES:
        if fixture in names:
            return level
    return "suite"


def pytest_collection_modifyitems(session, config, items):
    run = config.stash[_RUN]
    wanted_reqs = {r.strip() for r in (config.getoption("--req") or "").split(",") if r.strip()}
    wanted_levels = {lv.strip() for lv in (config.getoption("--level") or "").split(",") if lv.strip()}
    unknown = wanted_levels - set(LEVELS) - {"suite"}
    if unknown:
        raise pytest.UsageError(f"--level: unknown level(s) {sorted(unknown)}; known: {[*LEVELS, 'suite']}")
    inventory = config.getoption("--inventory")
    if inventory:
        data = {
            item.nodeid: {"reqs": list(_req_ids(item)), "level": item_level(item), "file": str(item.path)}
            for item in items
        }
        Path(inventory).write_text(json.dumps(data, indent=0), encoding="utf-8")
    keep, drop = [], []
    for item in items:
        ids = _req_ids(item)
        ok = (not wanted_reqs or bool(wanted_reqs & set(ids))) and (
            not wanted_levels or item_level(item) in wanted_levels
        )
        (keep if ok else drop).append(item)
        if ok and set(ids) & set(run.expected):
            _derandomize(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _derandomize(item) -> None:
    """Expected failures are judged on fixed cases: the same hypothesis examples every run."""
    fn = getattr(item, "obj", None)
    current = getattr(fn, "_hypothesis_internal_use_settings", None)
    if current is not None and not current.derandomize:
        fn._hypothesis_internal_use_settings = settings(current, derandomize=True, database=None)


# --------------------------------------------------------------------------- running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with time_limit(item.config.getoption("--test-timeout"), f"setup of {item.nodeid}"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    item._rac_measurements = []
    measure_mod.start(item.nodeid, item._rac_measurements)
    try:
        with time_limit(item.config.getoption("--test-timeout"), item.nodeid):
            yield
    finally:
        measure_mod.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    run = item.config.stash[_RUN]
    ids = _req_ids(item)
    report.req_ids = ids
    if not ids:
        return
    if call.when == "setup" and report.passed:
        return
    if call.when == "teardown" and not report.failed:
        return
    if report.failed:
        exc = call.excinfo.value if call.excinfo else None
        message = _message(exc) if exc is not None else str(report.longrepr)[:400]
        blamed = rep.attribute(message, ids)
        record = rep.TestRecord(item.nodeid, ids, "failed", blamed, message, _repro(item, run, exc))
        if call.when == "call" and all(r in run.expected for r in blamed):
            reasons = "; ".join(f"{r}: {run.expected[r]}" for r in blamed)
            report.outcome = "skipped"
            report.wasxfail = f"expected failure ({reasons})"
            record.outcome = "xfailed"
            record.reason = reasons
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        record = rep.TestRecord(item.nodeid, ids, "skipped", reason=str(reason).removeprefix("Skipped: "))
    else:
        record = rep.TestRecord(item.nodeid, ids, "passed")
    record.measurements = _worst_per_req(getattr(item, "_rac_measurements", []))
    run.records.append(record)


def _group_first(exc):
    """The first sub-exception of an exception group (hypothesis reports several distinct failures so), else None."""
    subs = getattr(exc, "exceptions", None)  # BaseExceptionGroup is Python 3.11+; the backport has the same shape
    return subs[0] if isinstance(subs, tuple) and subs else None


def _message(exc: BaseException) -> str:
    while _group_first(exc) is not None:
        exc = _group_first(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if not isinstance(exc, AssertionError) or type(exc).__name__ != "AssertionError":
        first = f"{type(exc).__name__}: {first}"
    return first[:500]


def _repro(item, run, exc) -> str:
    """One line that re-runs the failing test (with hypothesis's failing example, when there is one)."""
    line = f'pytest "{item.nodeid}" --port={run.spec}'
    if run.port is not None and run.port.device != "cpu":
        line += f" --device={run.port.device}"
    notes = []
    while exc is not None:
        notes += [n for n in getattr(exc, "__notes__", ()) if n.startswith(("Falsifying", "Failing test case"))]
        exc = _group_first(exc)
    if notes:
        example = " ".join(notes[0].split())
        line += f"  # {example[:400]}"
    return line


def _worst_per_req(measurements) -> list:
    worst: dict = {}
    for m in measurements:
        if m.req not in worst or m.ratio > worst[m.req].ratio:
            worst[m.req] = m
    return list(worst.values())


_pending_errors: list = []


def pytest_collectreport(report):
    if report.failed:
        _pending_errors.append(f"collection of {report.nodeid or 'the suite'} failed: {str(report.longrepr)[-300:]}")


# --------------------------------------------------------------------------- the report


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    run = config.stash.get(_RUN, None)
    if run is None or int(exitstatus) in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED):
        return
    run.errors.extend(_pending_errors)
    run.rows = rep.summarise(run.records, run.expected, run.statements)
    meta = run.meta()
    meta["counts"] = {v: sum(r["verdict"] == v for r in run.rows) for v in rep.VERDICTS}
    tests_failed = int(exitstatus) not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    meta["failed"] = rep.run_failed(run.rows) or tests_failed
    run.meta_final = meta
    if rep.run_failed(run.rows) and int(exitstatus) == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # an XPASS fails the run
    directory = config.getoption("--report-dir")
    if directory and run.rows:
        base = config.invocation_params.dir
        run.paths = rep.write(run.rows, meta, base / directory)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    run = config.stash.get(_RUN, None)
    if run is None or not run.rows:
        return
    tr = terminalreporter
    tr.section(f"requirements ({run.spec})")
    for line in rep.terminal_lines(run.rows, run.meta_final):
        tr.write_line(line)
    for path in run.paths:
        tr.write_line(f"report written: {path}")
