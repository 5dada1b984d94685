"""PORT-*: the suite's own machinery (port loading, robustness, time limit, expected failures, report).

Not collected by ``pytest conformance`` (the file name does not start with test_):
these check the suite, not a port, and run in the self-test
(``python -m rac.conformance.harness.selftest``, job "protocol") or by naming the file.
Each end-to-end check runs the suite in a subprocess on a few tests and reads
the JSON report it writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rac.conformance.harness import expected as xf
from rac.conformance.harness import report as rep
from rac.conformance.checking.helpers import req
from rac.conformance.harness.ports import Port

SUITE = Path(__file__).resolve().parents[1]  # conformance/: the rootdir, where conftest.py is


def run_suite(tmp_path, port, *args, files=("layer/test_general.py",)) -> tuple[int, dict, str]:
    """Run the suite (hypothesis profile selftest) and return (exit code, {ID: report row}, output)."""
    report_dir = tmp_path / "report"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *(str(SUITE / f) for f in files),
        "-q",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
        "--rootdir",
        str(SUITE),
        f"--port={port}",
        f"--report-dir={report_dir}",
        *args,
    ]
    env = dict(os.environ, RAC_HYPOTHESIS_PROFILE="selftest", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    found = sorted(report_dir.glob("conformance-*.json")) if report_dir.is_dir() else []
    rows = {r["id"]: r for r in json.loads(found[0].read_text())["requirements"]} if found else {}
    return proc.returncode, rows, proc.stdout + proc.stderr


def _meta(tmp_path) -> dict:
    """The meta part of the report run_suite wrote."""
    return json.loads(next((tmp_path / "report").glob("conformance-*.json")).read_text())["meta"]


# --------------------------------------------------------------------------- PORT-1


@req("PORT-1")
def test_port_1_unimportable_port_is_reported_per_requirement(tmp_path):
    """PORT-1: a port that cannot be imported fails every requirement that needs it, with the import
    error, in a run that completes (report written, exit 1), not a crash."""
    code, rows, out = run_suite(tmp_path, "rac.conformance.no_such_module:port", "--req=GEN-1,GEN-7")
    assert code == 1, out[-2000:]
    assert {"GEN-1", "GEN-7"} <= set(rows), f"PORT-1: no report rows for the requirements: {sorted(rows)}"
    for rid in ("GEN-1", "GEN-7"):
        assert rows[rid]["verdict"] == "fail"
        assert all("not importable" in f["error"] and "no_such_module" in f["error"] for f in rows[rid]["failures"])


@req("PORT-1")
@pytest.mark.parametrize(
    "caps,word",
    [
        ({"dtype": "float16"}, "dtype"),
        ({"levels": ("layer", "model")}, "compress"),
        ({"levels": ("phase3",)}, "levels"),
        ({"devices": ("cpu",), "colour": "red"}, "colour"),
        ({"devices": ("no-such-device",)}, "device"),
    ],
)
def test_port_1_capabilities_are_checked(caps, word, monkeypatch):
    """PORT-1: CAPABILITIES that contradict the port (unknown key, dtype, a level without its entry
    point, an unavailable device) are refused at load time with the offending item named."""
    import types

    module = types.ModuleType("rac_fake_port")
    module.prune_layer = lambda W, H, **kw: (W, W != 0)
    module.CAPABILITIES = caps
    monkeypatch.setitem(sys.modules, "rac_fake_port", module)
    with pytest.raises(ImportError, match=word):
        Port.load("rac_fake_port")


@req("PORT-1")
def test_port_1_levels_follow_the_entry_points(monkeypatch):
    """PORT-1: without CAPABILITIES["levels"] a port has the levels whose entry points it defines;
    a port with no layer level is never asked to prune a layer."""
    import types

    module = types.ModuleType("rac_fake_cal_port")
    module.collect_calibration = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "rac_fake_cal_port", module)
    port = Port.load("rac_fake_cal_port")
    assert port.levels == ("calibration",)
    assert not port.supports("magnitude") and not port.has_hessian


# --------------------------------------------------------------------------- PORT-2, PORT-3


@req("PORT-2")
def test_port_2_broken_results_fail_the_requirement_not_the_run(tmp_path):
    """PORT-2: a port that raises, returns the wrong shape, NaN, a tensor on another device or a
    non-bool mask fails the requirement under test with that error; every other test still runs."""
    code, rows, out = run_suite(tmp_path, "rac.conformance.mutants.broken:misbehaves", "--req=GEN-1,GEN-5")
    assert code == 1, out[-2000:]
    errors = " | ".join(f["error"] for f in rows["GEN-1"]["failures"])
    for needle in ("RuntimeError: port exploded", "shape", "NaN", "meta", "bool"):
        assert needle in errors, f"PORT-2: {needle!r} not reported for GEN-1: {errors}"
    # GEN-5's bad inputs are refused before the misbehaviour: those tests must still run and pass
    assert rows["GEN-5"]["verdict"] == "pass", "PORT-2: the run must go on after broken results"
    assert all(f["repro"].startswith('pytest "') for f in rows["GEN-1"]["failures"]), "PORT-6: one-line repro"


@req("PORT-3")
@req("PORT-9")
def test_port_3_a_hanging_port_is_stopped_and_reported(tmp_path):
    """PORT-3/9: a test that runs past --test-timeout is stopped and reported once as a timeout (not a
    wrong answer); the port's later tests of that method are not run again, and say why."""
    code, rows, out = run_suite(
        tmp_path, "rac.conformance.mutants.broken:hangs", "--req=GEN-1,GEN-3", "--test-timeout=1", "-k", "magnitude"
    )
    assert code == 1, out[-2000:]
    timed_out = [rid for rid in ("GEN-1", "GEN-3") if rows[rid]["verdict"] == "timeout"]
    assert len(timed_out) == 1, f"PORT-3: {rows['GEN-1']} {rows['GEN-3']}"
    first = rows[timed_out[0]]
    assert all("TestTimeout" in f["error"] and "--test-timeout=1" in f["error"] for f in first["failures"])
    other = rows["GEN-3" if timed_out == ["GEN-1"] else "GEN-1"]
    assert other["verdict"] == "unchecked" and "hung on magnitude" in " ".join(other["notes"]), other
    meta = _meta(tmp_path)
    assert [g["outcome"] for g in meta["port_errors"]] == ["timeout"], meta["port_errors"]


@req("PORT-9")
def test_port_9_a_port_that_prints_while_it_hangs_does_not_flood_the_output(tmp_path):
    """PORT-9: a hanging port that prints without end is stopped, and the run's output keeps only the
    end of what it printed (MAX_OUTPUT characters per stream), not megabytes."""
    code, rows, out = run_suite(tmp_path, "rac.conformance.mutants.broken:chatty_hang", "--req=GEN-1",
                                "--test-timeout=2", "-k", "magnitude and unstructured")
    assert code == 1 and rows["GEN-1"]["verdict"] == "timeout", out[-2000:]
    assert "characters cut" in out and len(out) < 60_000, f"PORT-9: {len(out)} characters of output"


@req("PORT-9")
def test_port_9_an_exception_is_an_error_named_once(tmp_path):
    """PORT-9: a port that raises on valid input is reported as an error (not a failure of each rule),
    and the exception is listed once with the tests and requirements it stopped."""
    code, rows, out = run_suite(tmp_path, "rac.conformance.mutants.broken:raises", "--req=GEN-1,GEN-2,GEN-7")
    assert code == 1, out[-2000:]
    for rid in ("GEN-1", "GEN-2", "GEN-7"):
        assert rows[rid]["verdict"] == "error", f"PORT-9: {rid} {rows[rid]['verdict']}"
    groups = _meta(tmp_path)["port_errors"]
    assert len(groups) == 1 and "LinAlgError: linalg.cholesky" in groups[0]["error"], groups
    assert groups[0]["requirements"] == ["GEN-1", "GEN-2", "GEN-7"] and len(groups[0]["tests"]) > 3
    summary = out[out.index("requirements (rac.conformance.mutants.broken:raises)"):]
    summary = summary[: summary.find("short test summary")]  # the report, not pytest's own list of failures
    assert summary.count("LinAlgError: linalg.cholesky") == 1, f"PORT-9: named once in the report: {summary}"


@req("PORT-3")
def test_port_3_time_limit_in_a_worker_thread():
    """PORT-3 (fallback): outside the main thread the watchdog raises TestTimeout in the test's thread."""
    import threading
    import time

    from rac.conformance.harness.timeout import TestTimeout, time_limit

    seen = []

    def body():
        try:
            with time_limit(0.3, "worker"):
                while True:
                    time.sleep(0.01)
        except TestTimeout as exc:
            seen.append(str(exc))

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert seen and "worker ran past" in seen[0]


# --------------------------------------------------------------------------- PORT-4, PORT-5


@req("PORT-4")
def test_port_4_expected_failure_is_excused_and_reported(tmp_path):
    """PORT-4: a port that knowingly reads N:M the other way lists NM-2 with a reason: the run passes,
    and the report shows NM-2 as xfail with the reason and the failure."""
    listing = tmp_path / "expected.txt"
    listing.write_text("# known deviations\nNM-2: we read N as the number pruned, as the original SparseGPT code\n")
    code, rows, out = run_suite(
        tmp_path,
        "rac.conformance.mutants.ports:nm_reads_n_as_pruned",
        "--req=NM-2",
        f"--expected-failures={listing}",
        files=("layer/test_masks.py",),
    )
    assert code == 0, f"PORT-4: an excused failure must not fail the run\n{out[-2000:]}"
    assert rows["NM-2"]["verdict"] == "xfail" and "original SparseGPT" in rows["NM-2"]["expected_failure"]
    assert rows["NM-2"]["failures"] and "NM-2" in rows["NM-2"]["failures"][0]["error"]


@req("PORT-5")
def test_port_5_expected_failure_that_passes_fails_the_run(tmp_path):
    """PORT-5: listing a requirement the port passes is reported XPASS and fails the run (a stale entry)."""
    listing = tmp_path / "expected.txt"
    listing.write_text("NM-2: stale entry\n")
    code, rows, out = run_suite(
        tmp_path, "rac.reference", "--req=NM-2", f"--expected-failures={listing}", files=("layer/test_masks.py",)
    )
    assert code == 1, out[-2000:]
    assert rows["NM-2"]["verdict"] == "XPASS"
    assert "XPASS NM-2" in out, "PORT-5: the terminal report must say so"


@req("PORT-4")
@pytest.mark.parametrize(
    "text,word",
    [
        ("NM-2 no colon here\n", "line 1"),
        ("NM-2:\n", "reason"),
        ("\n# c\nnm-2: lower case\n", "line 3"),
        ("NM-2: a\nNM-2: b\n", "twice"),
    ],
)
def test_port_4_malformed_expected_failures_name_the_line(text, word):
    """PORT-4: a malformed line is refused with the file and line named."""
    with pytest.raises(xf.ExpectedFailuresError, match=word) as info:
        xf.parse_text(text, "mine.txt")
    assert "mine.txt" in str(info.value)


@req("PORT-4")
def test_port_4_sources_merge_and_unknown_ids_are_refused(tmp_path):
    """PORT-4: CAPABILITIES may give a dict or a path relative to the port's module; an ID that the
    spec does not know is refused (a typo would excuse nothing)."""
    (tmp_path / "xf.txt").write_text("TIE-1: topk order\n")
    assert xf.from_capabilities("xf.txt", tmp_path, "p") == {"TIE-1": "topk order"}
    assert xf.from_capabilities({"NM-2": " why "}, None, "p") == {"NM-2": "why"}
    with pytest.raises(xf.ExpectedFailuresError, match="reason"):
        xf.from_capabilities({"NM-2": ""}, None, "p")
    with pytest.raises(xf.ExpectedFailuresError, match="NM-99"):
        xf.check_known({"NM-99": "x"}, {"NM-1": "", "NM-2": ""}, "expected failures")


# --------------------------------------------------------------------------- PORT-6


@req("PORT-6")
def test_port_6_report_rows_and_measurements(tmp_path):
    """PORT-6: the report has, per requirement, the spec's statement, a verdict, and for numeric ones
    the worst measured value next to its tolerance; JSON and Markdown are both written."""
    code, rows, out = run_suite(
        tmp_path, "rac.reference", "--req=ALPS-2,CNT-3", files=("layer/test_alps.py", "layer/test_masks.py")
    )
    assert code == 0, out[-2000:]
    alps = rows["ALPS-2"]
    assert alps["verdict"] == "pass" and alps["statement"].startswith("A port reaches the reference's objective")
    m = alps["measured"]
    assert m["tolerance"] == 1e-6 and 0 <= m["value"] <= m["tolerance"], f"PORT-6: ALPS-2 measurement {m}"
    assert rows["CNT-3"]["measured"] is None  # not a numeric requirement
    md = next((tmp_path / "report").glob("conformance-*.md")).read_text()
    assert "| ALPS-2 |" in md and "| requirement | statement | verdict | measured | tolerance |" in md


@req("PORT-6")
def test_port_6_failures_are_attributed_to_the_named_requirement():
    """PORT-6: a failure whose message starts with one of the test's IDs counts against that ID only;
    the test's other IDs are not reported as passing on its account."""
    assert rep.attribute("SGPT-4: group has 3 pruned", ("SGPT-1", "SGPT-3", "SGPT-4")) == ("SGPT-4",)
    assert rep.attribute("weights differ", ("MAG-2", "WANDA-3")) == ("MAG-2", "WANDA-3")
    assert rep.attribute("NM-1: x", ("MAG-2",)) == ("MAG-2",)
    records = [rep.TestRecord("t1", ("SGPT-1", "SGPT-4"), "failed", ("SGPT-4",), "SGPT-4: ...")]
    rows = {r["id"]: r for r in rep.summarise(records, {}, {})}
    assert rows["SGPT-4"]["verdict"] == "fail" and rows["SGPT-1"]["verdict"] == "unchecked"


@req("PORT-6")
def test_port_6_statements_travel_with_the_package():
    """PORT-6: the spec the report reads its statements from is installed with the package
    (conformance/spec.md links to docs/spec.md), so a run outside the repository still names each rule."""
    docs = rep.PACKAGE_DIR.resolve().parent / "docs" / "spec.md"
    if not docs.is_file():
        pytest.skip("not a source checkout: the installed copy is all there is")
    assert rep.PACKAGED_SPEC.read_text(encoding="utf-8") == docs.read_text(encoding="utf-8")
    statements = rep.parse_spec(rep.PACKAGED_SPEC.read_text(encoding="utf-8"))
    assert statements["NM-2"].startswith("N is the kept count"), statements.get("NM-2")


# --------------------------------------------------------------------------- PORT-7, PORT-8, PORT-10


@req("PORT-7")
def test_port_7_a_port_without_options_is_checked_at_its_defaults(tmp_path):
    """PORT-7: a port that declares no SparseGPT option gets every SparseGPT rule checked at the spec's
    defaults (none skipped for want of an option but SGPT-7, which is about varying the blocksize);
    the same port with a bug no option is needed to show (no lazy update at block ends) is rejected."""
    code, rows, out = run_suite(tmp_path, "rac.conformance.mutants.matrix:control__f32__defaults",
                                files=("layer/test_sparsegpt.py",))
    assert code == 0, out[-3000:]
    verdicts = {rid: rows[rid]["verdict"] for rid in rows}
    assert verdicts.pop("SGPT-7") == "n/a", verdicts
    assert set(verdicts.values()) == {"pass"}, f"PORT-7: {verdicts}"
    bad = tmp_path / "bad"
    bad.mkdir()
    code, rows, out = run_suite(bad, "rac.conformance.mutants.matrix:sparsegpt_no_lazy_update__f32__defaults",
                                "--req=SGPT-1", files=("layer/test_sparsegpt.py",))
    assert code == 1 and rows["SGPT-1"]["verdict"] == "fail", out[-2000:]


@req("PORT-8")
def test_port_8_coverage_per_method_and_not_verified():
    """PORT-8: per declared method, rules checked / not applicable / not checked; a method whose core rule
    was not checked is "not verified", never "conforming"; not applicable is not a hole."""
    records = [
        rep.TestRecord("a", ("SGPT-1",), "passed", methods=("sparsegpt",)),
        rep.TestRecord("b", ("SGPT-2",), "skipped", reason="not checked: needs CUDA", methods=("sparsegpt",)),
        rep.TestRecord("c", ("SGPT-7",), "n/a", reason="not applicable: no blocksize", methods=("sparsegpt",)),
        rep.TestRecord("d", ("MAG-1",), "passed", methods=("magnitude",)),
        rep.TestRecord("e", ("MAG-2",), "n/a", reason="not applicable: no nm", methods=("magnitude",)),
    ]
    rows = rep.summarise(records, {}, {})
    cov = rep.coverage(rows, ("sparsegpt", "magnitude"), {"sparsegpt": ("SGPT-1", "SGPT-2"), "magnitude": ("MAG-1",)})
    assert cov["sparsegpt"]["status"] == "not verified" and "SGPT-2" in cov["sparsegpt"]["core_not_checked"]
    assert cov["sparsegpt"]["coverage"] == 0.5 and cov["sparsegpt"]["not_applicable"] == ["SGPT-7"]
    assert cov["magnitude"]["status"] == "conforming" and cov["magnitude"]["coverage"] == 1.0
    assert {r["id"]: r["verdict"] for r in rows} == {"SGPT-1": "pass", "SGPT-2": "unchecked", "SGPT-7": "n/a",
                                                      "MAG-1": "pass", "MAG-2": "n/a"}


@req("PORT-10")
def test_port_10_nothing_is_written_where_the_suite_runs_and_the_example_comes_first(tmp_path):
    """PORT-10: a run writes its report, hypothesis's database and benchmarks under --work-dir (default a
    temporary directory), nothing into the directory it runs in; a failing hypothesis example's
    reproduction line starts with the drawn arguments (not the port), then the command."""
    here = tmp_path / "checkout"
    here.mkdir()
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "pytest", str(SUITE / "layer" / "test_general.py"), "-q", "-p", "no:cacheprovider",
           "--rootdir", str(SUITE), "--port=rac.conformance.mutants.ports:pruned_not_exactly_zero", "--req=GEN-2",
           f"--work-dir={work}"]
    env = dict(os.environ, RAC_HYPOTHESIS_PROFILE="selftest", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=here)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert list(here.iterdir()) == [], f"PORT-10: the run wrote {sorted(p.name for p in here.iterdir())} here"
    report = json.loads(next((work / "reports").glob("conformance-*.json")).read_text())
    assert (work / "hypothesis").is_dir()
    repro = next(r for r in report["requirements"] if r["id"] == "GEN-2")["failures"][0]["repro"]
    assert repro.startswith(("method=", "layer=")) and " | pytest " in repro and "Port(" not in repro, repro
