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
import re
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

from rac.conformance.harness import expected as xf
from rac.conformance.harness import measure as measure_mod
from rac.conformance.harness import report as rep
from rac.conformance.harness.ports import DEFAULT_PORT, LEVELS, Port, module_dir
from rac.reference.contract import registry
from rac.conformance.harness.timeout import TestTimeout, time_limit

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
    group.addoption("--work-dir", default=None, metavar="DIR",
                    help="where the run writes: its report (unless --report-dir), hypothesis's example database, "
                         "pytest's cache (default: a new temporary directory, never the current one)")
    group.addoption("--report-dir", default=None, metavar="DIR",
                    help="where the JSON and Markdown reports go (default: WORK_DIR/reports; empty: do not write)")
    group.addoption("--test-timeout", type=float, default=300.0, metavar="SECONDS",
                    help="stop a test (setup or call) after this long and report it as a timeout of its "
                         "requirements (default: %(default)s; 0: off)")
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
_WORK = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """What the suite writes goes under the work directory (PORT-10): hypothesis's example database and
    cache, pytest-benchmark's storage and the report, never the caller's directory unless an option asks.
    (pytest's own cache follows pytest's ``cache_dir`` setting; ``-p no:cacheprovider`` turns it off.)"""
    config.addinivalue_line("markers", "req(id): requirement ID of docs/spec.md that the test checks")
    work = config.getoption("--work-dir")
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="rac-conformance-"))
    work.mkdir(parents=True, exist_ok=True)
    config.stash[_WORK] = work
    if hasattr(config.option, "benchmark_storage") and config.option.benchmark_storage == "file://./.benchmarks":
        config.option.benchmark_storage = f"file://{work / 'benchmarks'}"
    set_hypothesis_home_dir(str(work / "hypothesis"))  # its example database and its cache of constants
    settings.register_profile(f"{_PROFILE}-here", settings.get_profile(_PROFILE),
                              database=DirectoryBasedExampleDatabase(str(work / "hypothesis" / "examples")))
    settings.load_profile(f"{_PROFILE}-here")
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
    item._rac_measurements, item._rac_methods = [], []
    measure_mod.start(item.nodeid, item._rac_measurements, item._rac_methods)
    try:
        with time_limit(item.config.getoption("--test-timeout"), item.nodeid):
            yield
    finally:
        measure_mod.stop()


#: Captured output and tracebacks kept per failing test: a port that prints while it hangs must not
#: flood the run's output (PORT-9).
MAX_OUTPUT = 4000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    _truncate_output(report)
    run = item.config.stash[_RUN]
    ids = _req_ids(item)
    report.req_ids = ids
    if not ids:
        return
    if call.when == "setup" and report.passed:
        return
    if call.when == "teardown" and not report.failed:
        return
    methods = tuple(getattr(item, "_rac_methods", None) or _param_method(item))
    if report.failed:
        exc = call.excinfo.value if call.excinfo else None
        kind = _outcome_of(exc)
        message = _message(exc) if exc is not None else str(report.longrepr)[:400]
        if kind == "error":
            message += _raised_at(exc)
        blamed = rep.attribute(message, ids) if kind == "failed" else ids
        record = rep.TestRecord(item.nodeid, ids, kind, blamed, message, _repro(item, run, exc), methods=methods)
        if kind == "timeout":
            for method in methods or ("*",):
                measure_mod.HUNG.setdefault(method, item.nodeid)
        if call.when == "call" and all(r in run.expected for r in blamed):
            reasons = "; ".join(f"{r}: {run.expected[r]}" for r in blamed)
            report.outcome = "skipped"
            report.wasxfail = f"expected failure ({reasons})"
            record.outcome, record.kind, record.reason = "xfailed", kind, reasons
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = str(reason).removeprefix("Skipped: ")
        na = reason.startswith(rep.NOT_APPLICABLE)
        record = rep.TestRecord(item.nodeid, ids, "n/a" if na else "skipped", reason=reason, methods=methods)
    else:
        record = rep.TestRecord(item.nodeid, ids, "passed", methods=methods)
    record.measurements = _worst_per_req(getattr(item, "_rac_measurements", []))
    run.records.append(record)


def _param_method(item) -> tuple:
    """The ``method`` a test is parametrised with, for a test that stopped before naming it."""
    callspec = getattr(item, "callspec", None)
    method = callspec.params.get("method") if callspec is not None else None
    return (method,) if isinstance(method, str) else ()


def _outcome_of(exc) -> str:
    """failed: an assertion of the suite (the port answered wrongly, or broke the calling convention);
    timeout: the port ran past --test-timeout; error: the port (or the suite) raised an exception."""
    while _group_first(exc) is not None:
        exc = _group_first(exc)
    if isinstance(exc, TestTimeout):
        return "timeout"
    if isinstance(exc, Exception) and not isinstance(exc, AssertionError):
        return "error"
    return "failed"  # AssertionError, PortError, pytest.fail / "DID NOT RAISE"


def _raised_at(exc) -> str:
    """ " (raised at file:line in function)": where the exception came from, to tell the port from the suite."""
    while _group_first(exc) is not None:
        exc = _group_first(exc)
    frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
    if not frames:
        return ""
    f = frames[-1]
    return f" (raised at {Path(f.filename).name}:{f.lineno} in {f.name})"


def _truncate_output(report) -> None:
    """Keep at most MAX_OUTPUT characters of each captured stream and of the traceback."""
    if not report.failed:
        return
    report.sections = [(title, text if len(text) <= MAX_OUTPUT else
                        f"[{len(text) - MAX_OUTPUT} characters cut]\n" + text[-MAX_OUTPUT:])
                       for title, text in report.sections]
    text = str(report.longrepr)
    if len(text) > 4 * MAX_OUTPUT:
        report.longrepr = text[: 2 * MAX_OUTPUT] + f"\n[{len(text) - 4 * MAX_OUTPUT} characters cut]\n" + \
            text[-2 * MAX_OUTPUT:]


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
    """One line that re-runs the failing test: hypothesis's failing example first (the drawn arguments,
    without the port), then the command (PORT-10)."""
    line = f'pytest "{item.nodeid}" --port={run.spec}'
    if run.port is not None and run.port.device != "cpu":
        line += f" --device={run.port.device}"
    notes = []
    while exc is not None:
        notes += [n for n in getattr(exc, "__notes__", ()) if n.startswith(("Falsifying", "Failing test case"))]
        exc = _group_first(exc)
    if not notes:
        return line
    example = " ".join(notes[0].split())
    example = re.sub(r"^(Falsifying (explicit )?example|Failing test case): [\w\[\]-]+\(\s*", "", example)
    example = example.rstrip(") ").rstrip(",")
    example = re.sub(r"port=Port\([^)]*\),\s*", "", example)
    return f"{example[:600]} | {line}"


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
    if run.port is not None and "layer" in run.port.levels:
        core = {m: registry.get(m).core_rules for m in run.port.methods if m in registry.names()}
        meta["coverage"] = rep.coverage(run.rows, run.port.methods, core)
    meta["port_errors"] = rep.error_groups(run.records)
    meta["counts"] = {v: sum(r["verdict"] == v for r in run.rows) for v in rep.VERDICTS}
    tests_failed = int(exitstatus) not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    meta["failed"] = rep.run_failed(run.rows) or tests_failed
    run.meta_final = meta
    if rep.run_failed(run.rows) and int(exitstatus) == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # an XPASS fails the run
    directory = config.getoption("--report-dir")
    if directory is None:
        directory = config.stash[_WORK] / "reports"
    if directory and run.rows:
        run.paths = rep.write(run.rows, meta, config.invocation_params.dir / directory)


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
