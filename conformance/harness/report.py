"""The requirement report that ends every conformance run (docs/porting.md, "The report").

One row per requirement ID of docs/spec.md that the run touched: a short
statement, the verdict, and for numeric requirements the worst measured value
next to its tolerance; then, for every failure, the error and a one-line
reproduction. Printed at the end of the run and written as JSON and Markdown
(``--report-dir``, default ``reports/``).

Verdicts (per requirement, over all its tests):

- ``fail``: a test attributed to it failed (and it is not an expected failure);
- ``xfail``: listed as an expected failure, and it failed (reason shown);
- ``XPASS``: listed as an expected failure, but every test of it passed (fails the run);
- ``pass``: at least one test passed and none failed;
- ``skip``: nothing checked it (port lacks the method/level, or a test of several
  requirements stopped on another one's failure first).

A failure is attributed to the requirement its message starts with (``"SGPT-4: ..."``)
when that is one of the test's ``@req`` IDs, otherwise to all of them.

Statements come from docs/spec.md: the one of the repository the run is in, else
the copy installed with this package (``conformance/spec.md`` is a symlink to
``../docs/spec.md``, which a wheel build copies in), else none (the table then
shows IDs only).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent.parent  # conformance/, not resolved: its spec.md must be read through the symlink
PACKAGED_SPEC = PACKAGE_DIR / "spec.md"
_REQ_LINE = re.compile(r"^\*\*([A-Z][A-Z0-9]*-\d+)\*\*\s*(.*)$")
_LEADING_ID = re.compile(r"^\s*([A-Z][A-Z0-9]*-\d+)\b")
#: Verdicts of a requirement (PORT-6, PORT-8, PORT-9): the port answered wrongly (fail), raised where
#: it should answer (error), hung (timeout), an expected failure passed (XPASS) or failed (xfail), it
#: passed, was measured (metric: reported, not judged), does not apply to the port by its own
#: declaration (n/a), or was not checked (unchecked: skipped for another reason, or blocked).
VERDICTS = ("fail", "error", "timeout", "XPASS", "xfail", "pass", "metric", "n/a", "unchecked")
#: Requirements reported as a measured figure rather than judged (docs/spec.md: OPT-1's optimality gap).
METRICS = frozenset({"OPT-1"})
#: A skip reason starting so means "not applicable to this port" (helpers.not_applicable).
NOT_APPLICABLE = "not applicable: "
#: Outcomes of one test (TestRecord.outcome).
OUTCOMES = ("passed", "failed", "error", "timeout", "xfailed", "n/a", "skipped")


# --------------------------------------------------------------------------- statements


def parse_spec(text: str) -> dict:
    """{ID: short statement} from the ``**ID** text`` paragraphs of docs/spec.md (first occurrence)."""
    out: dict = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _REQ_LINE.match(line.strip())
        if not m or m.group(1) in out:
            continue
        para = [m.group(2)]
        for nxt in lines[i + 1:]:
            if not nxt.strip() or _REQ_LINE.match(nxt.strip()) or nxt.startswith(("#", "|", "```")):
                break
            para.append(nxt.strip())
        out[m.group(1)] = _short(" ".join(para))
    return out


def _short(text: str, limit: int = 110) -> str:
    text = re.split(r"\s+Tests?:\s", text)[0]
    text = text.replace("*(reference)*", "(reference)").replace("`", "").replace("**", "")
    text = re.sub(r"\s+", " ", text).strip()
    m = re.match(r"(.+?[.;:])\s+(?=[A-Z(])", text)
    sentence = m.group(1) if m else text
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


def find_spec(candidates=()) -> Path | None:
    """docs/spec.md next to the run (rootdir, cwd), next to this package's source tree, or installed with it."""
    for base in (*candidates, Path.cwd(), PACKAGE_DIR.resolve().parent):
        path = Path(base) / "docs" / "spec.md"
        if path.is_file():
            return path
    if PACKAGED_SPEC.is_file() and PACKAGED_SPEC.read_text(encoding="utf-8").startswith("#"):
        return PACKAGED_SPEC
    return None


def load_statements(candidates=()) -> tuple[dict, str]:
    """(statements, where they came from); ({}, "none ...") when no spec can be found."""
    spec = find_spec(candidates)
    if spec is None:
        return {}, "none (docs/spec.md not found)"
    return parse_spec(spec.read_text(encoding="utf-8")), str(spec)


# --------------------------------------------------------------------------- records


@dataclass
class TestRecord:
    """What one test contributed: its requirement IDs, outcome, and where a failure points."""

    nodeid: str
    req_ids: tuple
    outcome: str  # one of OUTCOMES
    failed_ids: tuple = ()  # the IDs a failure, error or timeout is attributed to
    error: str = ""
    repro: str = ""
    reason: str = ""  # skip reason / expected-failure reason
    measurements: list = field(default_factory=list)
    methods: tuple = ()  # the pruners the test checked (helpers.needs)
    kind: str = ""  # for xfailed: what the excused test did ("failed", "error", "timeout")


@dataclass
class Measurement:
    req: str
    value: float
    tolerance: float
    what: str = ""
    test: str = ""

    @property
    def ratio(self) -> float:
        if self.tolerance > 0:
            return self.value / self.tolerance
        return 0.0 if self.value <= 0 else math.inf


def attribute(message: str, req_ids: tuple) -> tuple:
    """The requirement(s) a failure message blames: its leading ID if the test carries it, else all."""
    m = _LEADING_ID.match(message or "")
    if m and m.group(1) in req_ids:
        return (m.group(1),)
    return tuple(req_ids)


def _tally(records, rid: str, expected: dict):
    """Counts of the outcomes of ``records`` for requirement ``rid``, failures and notes."""
    counts = dict.fromkeys(("passed", "failed", "error", "timeout", "xfailed", "n/a", "skipped", "blocked"), 0)
    failures, notes = [], []
    for r in records:
        if rid not in r.req_ids:
            continue
        if r.outcome in ("failed", "error", "timeout", "xfailed"):
            if rid in r.failed_ids:
                did = (r.kind or "failed") if r.outcome == "xfailed" else r.outcome
                key = "xfailed" if rid in expected else did
                counts[key] += 1
                failures.append({"test": r.nodeid, "error": r.error, "repro": r.repro, "outcome": did})
            else:
                counts["blocked"] += 1
                notes.append(f"not checked: {r.nodeid} stopped on {', '.join(r.failed_ids)} first")
        elif r.outcome == "passed":
            counts["passed"] += 1
        else:
            counts["n/a" if r.outcome == "n/a" else "skipped"] += 1
            if r.reason and r.reason not in notes:
                notes.append(r.reason)
    return counts, failures, notes


def _verdict(counts: dict, is_expected: bool, rid: str = "") -> str:
    for outcome, verdict in (("failed", "fail"), ("error", "error"), ("timeout", "timeout"), ("xfailed", "xfail")):
        if counts[outcome]:
            return verdict
    clean_pass = counts["passed"] and not counts["blocked"]
    if is_expected and clean_pass:
        return "XPASS"
    if clean_pass:
        return "metric" if rid in METRICS else "pass"
    if counts["n/a"] and not counts["skipped"] and not counts["blocked"]:
        return "n/a"
    return "unchecked"


def summarise(records, expected: dict, statements: dict) -> list:
    """One row per requirement touched by the run (or listed as expected to fail), in spec order;
    ``by_method``: the verdict of the requirement per pruner its tests checked."""
    ids = {rid for r in records for rid in r.req_ids} | set(expected)
    rows = []
    for rid in sorted(ids, key=lambda r: _spec_order(r, statements)):
        counts, failures, notes = _tally(records, rid, expected)
        worst = None
        for r in records:
            for m in r.measurements if rid in r.req_ids else ():
                if m.req == rid and (worst is None or m.ratio > worst.ratio):
                    worst = m
        methods = sorted({m for r in records if rid in r.req_ids for m in r.methods})
        by_method = {}
        for m in methods:
            m_counts = _tally([r for r in records if m in r.methods], rid, expected)[0]
            by_method[m] = _verdict(m_counts, False, rid)  # an excuse is per requirement: XPASS is judged there
        rows.append({
            "id": rid,
            "statement": statements.get(rid, ""),
            "verdict": _verdict(counts, rid in expected, rid),
            "tests": {k: v for k, v in counts.items() if v},
            "by_method": by_method,
            "measured": asdict(worst) if worst else None,
            "expected_failure": expected.get(rid),
            "failures": failures,
            "notes": notes[:3],
        })
    return rows


#: verdicts that count as checked for coverage (the rule was exercised on the port)
CHECKED = frozenset({"fail", "error", "timeout", "XPASS", "xfail", "pass", "metric"})


def coverage(rows, methods, core_rules: dict) -> dict:
    """Per declared pruner: the requirements checked / not applicable / not checked, the coverage figure
    (checked / (checked + not checked)) and a status (PORT-8): "failing" (a rule failed, errored or timed
    out), "not verified" (a core rule of the method was not checked), "conforming with expected failures",
    or "conforming"."""
    out = {}
    notes = {r["id"]: r["notes"] for r in rows}
    for method in methods:
        cells = {r["id"]: r["by_method"][method] for r in rows if method in r.get("by_method", {})}
        checked = sorted(rid for rid, v in cells.items() if v in CHECKED)
        na = sorted(rid for rid, v in cells.items() if v == "n/a")
        unchecked = sorted(rid for rid, v in cells.items() if v == "unchecked")
        missing_core = [rid for rid in core_rules.get(method, ()) if cells.get(rid) not in CHECKED | {"n/a"}]
        total = len(checked) + len(unchecked)
        if any(v in ("fail", "error", "timeout", "XPASS") for v in cells.values()):
            status = "failing"
        elif missing_core:
            status = "not verified"
        elif any(v == "xfail" for v in cells.values()):
            status = "conforming with expected failures"
        else:
            status = "conforming"
        out[method] = {
            "status": status, "coverage": len(checked) / total if total else 0.0,
            "checked": checked, "not_applicable": na, "not_checked": unchecked,
            "core_not_checked": {rid: (notes.get(rid) or ["no test of it ran"])[:2] for rid in missing_core},
        }
    return out


def error_groups(records) -> list:
    """Each distinct exception a port raised (or hang), once: the message, the tests and the requirements
    it hit (PORT-9: an error is named once, not charged to every rule as a wrong answer)."""
    groups: dict = {}
    for r in records:
        kind = r.kind if r.outcome == "xfailed" else r.outcome
        if kind not in ("error", "timeout"):
            continue
        g = groups.setdefault((kind, r.error), {"outcome": kind, "error": r.error, "tests": [], "requirements": [],
                                                "excused": True})
        g["tests"].append(r.nodeid)
        g["excused"] = g["excused"] and r.outcome == "xfailed"  # every test of it an expected failure
        g["requirements"] = sorted(set(g["requirements"]) | set(r.failed_ids))
    return list(groups.values())


def _spec_order(rid: str, statements: dict):
    order = list(statements)
    prefix, _, number = rid.partition("-")
    return (order.index(rid) if rid in order else len(order), prefix, int(number) if number.isdigit() else 0)


def run_failed(rows) -> bool:
    """The run fails if any requirement fails, errors or times out, or an expected failure passes (XPASS)."""
    return any(r["verdict"] in ("fail", "error", "timeout", "XPASS") for r in rows)


# --------------------------------------------------------------------------- rendering


def _fmt(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) else str(x)


def measured_cell(row) -> tuple[str, str]:
    m = row["measured"]
    if not m:
        return "", ""
    return f"{_fmt(m['value'])}" + (f" ({m['what']})" if m["what"] else ""), _fmt(m["tolerance"])


def _coverage_lines(meta: dict) -> list:
    lines = []
    coverage = meta.get("coverage") or {}
    if coverage and not any(c["checked"] or c["not_applicable"] or c["not_checked"] for c in coverage.values()):
        return ["coverage: no rule of a pruning method ran (every method not verified)"]
    for method, c in coverage.items():
        lines.append(f"{method:<10} {c['status']}: {len(c['checked'])} rules checked ({c['coverage']:.0%} of those "
                     f"that apply), {len(c['not_applicable'])} not applicable, {len(c['not_checked'])} not checked"
                     + (f" ({', '.join(c['not_checked'])})" if c["not_checked"] else ""))
        for rid, why in c["core_not_checked"].items():
            lines.append(f"    core rule {rid} not checked: {why[0]}")
    return lines


def _error_lines(meta: dict) -> list:
    lines = []
    for g in meta.get("port_errors", []):
        tag = "ERROR" if g["outcome"] == "error" else "TIMEOUT"
        tag = f"xfail ({tag.lower()})" if g.get("excused") else tag
        lines.append(f"{tag} in {len(g['tests'])} test(s) ({', '.join(g['requirements'])}): {g['error']}")
        lines.append(f"    first: {g['tests'][0]}")
    return lines


def terminal_lines(rows, meta: dict) -> list:
    lines = [f"port {meta['port']} ({meta.get('name')}, {meta.get('dtype')}, {meta.get('device')}); "
             f"statements from {meta.get('statements_source')}"]
    lines.append(f"{'requirement':<11} {'verdict':<9} {'measured':>10} {'tolerance':>10}  statement")
    for r in rows:
        m = r["measured"]
        value = _fmt(m["value"]) if m else ""
        tol = _fmt(m["tolerance"]) if m else ""
        lines.append(f"{r['id']:<11} {r['verdict']:<9} {value:>10} {tol:>10}  {r['statement'][:90]}")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    lines.append("  ".join(f"{v} {n}" for v, n in counts.items() if n) or "no requirement checked")
    lines += _coverage_lines(meta)
    for r in rows:
        if r["verdict"] == "XPASS":
            lines.append(f"XPASS {r['id']}: listed as an expected failure ({r['expected_failure']}) but every test "
                         "passed: remove it from the expected failures")
        for f in r["failures"] if r["verdict"] in ("fail", "xfail") else ():
            if f["outcome"] != "failed" and r["verdict"] == "fail":
                continue  # errors and hangs are listed once, below
            tag = "xfail" if r["verdict"] == "xfail" else "FAIL"
            lines.append(f"{tag} {r['id']} {f['test']}")
            lines.append(f"    {f['error']}")
            if f["repro"]:
                lines.append(f"    repro: {f['repro']}")
            if r["verdict"] == "xfail":
                lines.append(f"    expected failure: {r['expected_failure']}")
    lines += _error_lines(meta)
    for e in meta.get("errors", []):
        lines.append(f"ERROR {e}")
    return lines


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(rows, meta: dict) -> str:
    out = [f"# Conformance report: {_md(meta.get('name'))}", ""]
    out += [f"- port: `{meta['port']}` (dtype {meta.get('dtype')}, device {meta.get('device')}, levels "
            f"{', '.join(meta.get('levels') or ())})",
            f"- result: **{'FAILED' if meta.get('failed') else 'passed'}**; "
            + ", ".join(f"{v} {n}" for v, n in meta.get("counts", {}).items() if n),
            f"- when: {meta.get('date')}, commit {meta.get('commit') or 'unknown'}, python {meta.get('python')}, "
            f"torch {meta.get('torch')}, hypothesis profile {meta.get('hypothesis_profile')}",
            f"- statements from {meta.get('statements_source')}", ""]
    if meta.get("coverage"):
        out += ["## Coverage per method", "", "| method | status | coverage | checked | not applicable | not checked |",
                "| --- | --- | --- | --- | --- | --- |"]
        for method, c in meta["coverage"].items():
            out.append(f"| {method} | {c['status']} | {c['coverage']:.0%} | {len(c['checked'])} | "
                       f"{_md(', '.join(c['not_applicable']))} | {_md(', '.join(c['not_checked']))} |")
        for method, c in meta["coverage"].items():
            for rid, why in c["core_not_checked"].items():
                out.append(f"\n{method}: core rule {rid} not checked ({_md(why[0])})")
        out.append("")
    out += ["## Requirements", "", "| requirement | statement | verdict | measured | tolerance |",
            "| --- | --- | --- | --- | --- |"]
    for r in rows:
        value, tol = measured_cell(r)
        verdict = r["verdict"] if r["verdict"] not in ("fail", "error", "timeout", "XPASS") else f"**{r['verdict']}**"
        out.append(f"| {r['id']} | {_md(r['statement'])} | {verdict} | {_md(value)} | {tol} |")
    problems = [r for r in rows if r["verdict"] in ("fail", "xfail", "XPASS")]
    if problems or meta.get("errors") or meta.get("port_errors"):
        out += ["", "## Failures, errors and expected failures", ""]
        for g in meta.get("port_errors", []):
            excused = " (expected failure)" if g.get("excused") else ""
            out.append(f"- **{g['outcome']}**{excused} in {len(g['tests'])} test(s) ({', '.join(g['requirements'])}): "
                       f"{_md(g['error'])}; first `{g['tests'][0]}`")
        for r in problems:
            out.append(f"### {r['id']} ({r['verdict']})")
            if r["expected_failure"]:
                out.append(f"Expected failure: {_md(r['expected_failure'])}")
            if r["verdict"] == "XPASS":
                out.append("Every test passed: remove the entry from the expected failures.")
            for f in r["failures"]:
                out += ["", f"- `{f['test']}` ({f['outcome']})", f"  - error: {_md(f['error'])}"]
                if f["repro"]:
                    out.append(f"  - repro: `{f['repro']}`")
            out.append("")
        for e in meta.get("errors", []):
            out.append(f"- error: {_md(e)}")
    return "\n".join(out) + "\n"


def write(rows, meta: dict, directory) -> tuple[Path, Path]:
    """reports/conformance-<port name>.json and .md; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = "conformance-" + re.sub(r"[^A-Za-z0-9._-]+", "-", str(meta.get("name") or meta["port"])).strip("-")
    j, m = directory / f"{stem}.json", directory / f"{stem}.md"
    j.write_text(json.dumps({"meta": meta, "requirements": rows}, indent=1, default=str) + "\n", encoding="utf-8")
    m.write_text(markdown(rows, meta), encoding="utf-8")
    return j, m
