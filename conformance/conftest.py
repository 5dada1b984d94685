"""pytest wiring of the conformance suite: --port, hypothesis profiles, requirement report.

    nox -s conformance -- --port package.module:object     # any port
    pytest conformance --port rac.reference                # the default

Every test carries ``@req("ID")`` naming the rule of docs/spec.md it checks;
the run ends with one line per requirement (pass / fail / skip).
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, Phase, settings

from rac.conformance.ports import DEFAULT_PORT, Port

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
settings.load_profile(os.environ.get("RAC_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    group = parser.getgroup("rac conformance")
    group.addoption("--port", default=DEFAULT_PORT, help="implementation under test, package.module[:object] (default: %(default)s)")


def pytest_configure(config):
    config.addinivalue_line("markers", "req(id): requirement ID of docs/spec.md that the test checks")


@pytest.fixture(scope="session")
def port(request) -> Port:
    spec = request.config.getoption("--port")
    try:
        return Port.load(spec)
    except ImportError as exc:
        pytest.fail(f"port not importable: {exc}", pytrace=False)


_outcomes: dict = defaultdict(lambda: defaultdict(int))


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for rid in getattr(report, "req_ids", ()):
            _outcomes[rid][report.outcome] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.req_ids = tuple(arg for m in item.iter_markers("req") for arg in m.args)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _outcomes:
        return
    tr = terminalreporter
    tr.section(f"requirements ({config.getoption('--port')})")
    for rid in sorted(_outcomes, key=_req_key):
        counts = _outcomes[rid]
        verdict = "FAIL" if counts.get("failed") else ("pass" if counts.get("passed") else "skip")
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        tr.write_line(f"{rid:<10} {verdict:<5} ({detail})")


def _req_key(rid: str):
    prefix, _, number = rid.partition("-")
    return prefix, int(number) if number.isdigit() else 0
