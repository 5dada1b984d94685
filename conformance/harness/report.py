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
VERDICTS = ("fail", "XPASS", "xfail", "pass", "skip")


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
    outcome: str  # passed | failed | skipped | xfailed
    failed_ids: tuple = ()  # the IDs a failure is attributed to
    error: str = ""
    repro: str = ""
    reason: str = ""  # skip reason / expected-failure reason
    measurements: list = field(default_factory=list)


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


def summarise(records, expected: dict, statements: dict) -> list:
    """One row per requirement touched by the run (or listed as expected to fail), in spec order."""
    ids = {rid for r in records for rid in r.req_ids} | set(expected)
    rows = []
    for rid in sorted(ids, key=lambda r: _spec_order(r, statements)):
        counts = {"passed": 0, "failed": 0, "xfailed": 0, "skipped": 0, "blocked": 0}
        failures, skips, worst = [], [], None
        for r in records:
            if rid not in r.req_ids:
                continue
            if r.outcome in ("failed", "xfailed"):
                if rid in r.failed_ids:
                    kind = "xfailed" if rid in expected else "failed"
                    counts[kind] += 1
                    failures.append({"test": r.nodeid, "error": r.error, "repro": r.repro})
                else:
                    counts["blocked"] += 1
                    skips.append(f"{r.nodeid}: stopped on {', '.join(r.failed_ids)} first")
            elif r.outcome == "passed":
                counts["passed"] += 1
            else:
                counts["skipped"] += 1
                if r.reason and r.reason not in skips:
                    skips.append(r.reason)
            for m in r.measurements:
                if m.req == rid and (worst is None or m.ratio > worst.ratio):
                    worst = m
        verdict = _verdict(counts, rid in expected)
        rows.append({
            "id": rid,
            "statement": statements.get(rid, ""),
            "verdict": verdict,
            "tests": {k: v for k, v in counts.items() if v},
            "measured": asdict(worst) if worst else None,
            "expected_failure": expected.get(rid),
            "failures": failures,
            "notes": skips[:3],
        })
    return rows


def _verdict(counts: dict, is_expected: bool) -> str:
    if counts["failed"]:
        return "fail"
    if counts["xfailed"]:
        return "xfail"
    clean_pass = counts["passed"] and not counts["blocked"]
    if is_expected:
        return "XPASS" if clean_pass else "skip"
    return "pass" if clean_pass else "skip"


def _spec_order(rid: str, statements: dict):
    order = list(statements)
    prefix, _, number = rid.partition("-")
    return (order.index(rid) if rid in order else len(order), prefix, int(number) if number.isdigit() else 0)


def run_failed(rows) -> bool:
    """The run fails if any requirement fails, or an expected failure passes (XPASS)."""
    return any(r["verdict"] in ("fail", "XPASS") for r in rows)


# --------------------------------------------------------------------------- rendering


def _fmt(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) else str(x)


def measured_cell(row) -> tuple[str, str]:
    m = row["measured"]
    if not m:
        return "", ""
    return f"{_fmt(m['value'])}" + (f" ({m['what']})" if m["what"] else ""), _fmt(m["tolerance"])


def terminal_lines(rows, meta: dict) -> list:
    lines = [f"port {meta['port']} ({meta.get('name')}, {meta.get('dtype')}, {meta.get('device')}); "
             f"statements from {meta.get('statements_source')}"]
    lines.append(f"{'requirement':<11} {'verdict':<7} {'measured':>10} {'tolerance':>10}  statement")
    for r in rows:
        m = r["measured"]
        value = _fmt(m["value"]) if m else ""
        tol = _fmt(m["tolerance"]) if m else ""
        lines.append(f"{r['id']:<11} {r['verdict']:<7} {value:>10} {tol:>10}  {r['statement'][:90]}")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    lines.append("  ".join(f"{v} {n}" for v, n in counts.items() if n) or "no requirement checked")
    for r in rows:
        if r["verdict"] == "XPASS":
            lines.append(f"XPASS {r['id']}: listed as an expected failure ({r['expected_failure']}) but every test "
                         "passed: remove it from the expected failures")
        for f in r["failures"] if r["verdict"] in ("fail", "xfail") else ():
            tag = "xfail" if r["verdict"] == "xfail" else "FAIL"
            lines.append(f"{tag} {r['id']} {f['test']}")
            lines.append(f"    {f['error']}")
            if f["repro"]:
                lines.append(f"    repro: {f['repro']}")
            if r["verdict"] == "xfail":
                lines.append(f"    expected failure: {r['expected_failure']}")
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
            f"- statements from {meta.get('statements_source')}",
            "", "| requirement | statement | verdict | measured | tolerance |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        value, tol = measured_cell(r)
        verdict = r["verdict"] if r["verdict"] not in ("fail", "XPASS") else f"**{r['verdict']}**"
        out.append(f"| {r['id']} | {_md(r['statement'])} | {verdict} | {_md(value)} | {tol} |")
    problems = [r for r in rows if r["verdict"] in ("fail", "xfail", "XPASS")]
    if problems or meta.get("errors"):
        out += ["", "## Failures and expected failures", ""]
        for r in problems:
            out.append(f"### {r['id']} ({r['verdict']})")
            if r["expected_failure"]:
                out.append(f"Expected failure: {_md(r['expected_failure'])}")
            if r["verdict"] == "XPASS":
                out.append("Every test passed: remove the entry from the expected failures.")
            for f in r["failures"]:
                out += ["", f"- `{f['test']}`", f"  - error: {_md(f['error'])}"]
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
