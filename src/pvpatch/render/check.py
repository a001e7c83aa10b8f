"""Describe a ``pvpatch check`` run: a text table, the ``pvpatch.check/1`` JSON document, and
JUnit XML in the shape CI systems render (one testsuite per check family and backend, one
testcase per check id, a failure listing the findings that count).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pvpatch.checks import model as registry
from pvpatch.checks.baseline import Baseline
from pvpatch.checks.model import KNOWN, NEW, SEVERITIES, Finding, reaches
from pvpatch.checks.runner import CheckRun, Suite
from pvpatch.render.nops import nops_dict, nops_line
from pvpatch.render.table import table

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

SCHEMA = "pvpatch.check/1"


def failing(findings: list[Finding], fail_on: str) -> list[Finding]:
    """New findings at or above the threshold: the ones that make the exit status 1."""
    return [f for f in findings if f.status == NEW and reaches(f.severity, fail_on)]


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


def finding_dict(f: Finding) -> dict:
    """One finding as the schema documents it (docs/check.md); also what --baseline reads."""
    return {"check": f.check, "family": f.family, "severity": f.severity, "status": f.status,
            "backend": f.backend, "address": _hex(f.address), "function": f.function,
            "op": f.op, "message": f.message}


def _counts(findings: list[Finding], fail_on: str) -> dict[str, int]:
    c = Counter(f.severity for f in findings)
    s = Counter(f.status for f in findings)
    return {**{sev: c[sev] for sev in SEVERITIES}, NEW: s[NEW], KNOWN: s[KNOWN],
            "failing": len(failing(findings, fail_on))}


def _suite_checks(suite: Suite) -> list[str]:
    """The check ids a suite runs: its family's, image-level or per-backend as the suite is."""
    return [c.id for c in registry.CHECKS
            if c.family == suite.family and c.per_backend == suite.per_backend]


def check_dict(run: CheckRun, fail_on: str, baseline: Baseline | None) -> dict:
    """The ``pvpatch.check/1`` document; it names the checks that ran so a reader of an old
    report knows what was and was not looked at."""
    by_id = registry.BY_ID
    ran = sorted({cid for s in run.suites if not s.skipped for cid in _suite_checks(s)},
                 key=list(by_id).index)
    return {
        "schema": SCHEMA,
        "input": run.path,
        "kernel": run.release,
        "machine": run.machine,
        "build_id": run.build_id,
        "backends": [{"name": b.name, "description": b.description} for b in run.backends],
        "notes": run.notes,
        "nops": nops_dict(run.nops),
        "checked": run.checked,
        "fail_on": fail_on,
        "baseline": None if baseline is None else {
            "source": baseline.source, "kind": baseline.kind, "findings": baseline.findings},
        "counts": _counts(run.findings, fail_on),
        "failed": bool(failing(run.findings, fail_on)),
        "checks": [{"id": cid, "family": by_id[cid].family, "severity": by_id[cid].severity,
                    "per_backend": by_id[cid].per_backend, "title": by_id[cid].title}
                   for cid in ran],
        "findings": [finding_dict(f) for f in run.findings],
    }


def verdict_line(run: CheckRun, fail_on: str) -> str:
    """One line a CI log can show: pass/fail, the counts, and what decided it."""
    c = _counts(run.findings, fail_on)
    known = f", {c[KNOWN]} known" if c[KNOWN] else ""
    word = "FAIL" if c["failing"] else "PASS"
    return (f"{word}: {c['error']} error(s), {c['warning']} warning(s){known}; "
            f"{c['failing']} new at or above --fail-on {fail_on}")


def render_text(run: CheckRun, fail_on: str, baseline: Baseline | None) -> str:
    """A header with what was checked and the verdict, then one row per finding."""
    ch = run.checked
    done = [f"{ch.get('sites', 0)} sites", f"{ch.get('pv_alternatives', 0)} alternatives "
            "on pv sites"]
    if "xen_conditions" in ch:
        done.append(f"{ch['xen_conditions']} Xen builder conditions")
    lines = [run.path, f"  kernel    {run.release or 'unknown'}"]
    lines += [f"  backend   {b.name}: {b.description}" for b in run.backends]
    lines += nops_line(run.nops)
    lines += [f"  note      {n}" for n in run.notes]
    lines.append(f"  checked   {', '.join(done)}")
    if baseline is not None:
        lines.append(f"  baseline  {baseline.source} ({baseline.kind}, "
                     f"{baseline.findings} findings)")
    lines.append(f"  result    {verdict_line(run, fail_on)}")
    if run.findings:
        lines += ["", _table(run.findings, baseline is not None)]
    return "\n".join(lines)


def _table(findings: list[Finding], with_status: bool) -> str:
    """Findings as rows; the status column only when a baseline can make one known."""
    head = ("severity", "check", "backend", "address", "function", "op", "message")
    rows = [(f.severity, f.check, f.backend or "-", _hex(f.address) or "-", f.function or "-",
             f.op or "-", f.message) for f in findings]
    if with_status:
        head = ("status", *head)
        rows = [(f.status, *r) for f, r in zip(findings, rows, strict=True)]
    return table(head, rows)


def _line(f: Finding) -> str:
    """A finding on one line, for JUnit failure and output texts."""
    where = " ".join(x for x in (_hex(f.address), f.function, f.op) if x)
    return f"[{f.status}] {f.severity} {where}: {f.message}"


def render_junit(run: CheckRun, fail_on: str) -> str:
    """JUnit XML with totals on the root, which GitLab and most JUnit viewers read."""
    import xml.etree.ElementTree as ET  # only this format needs it

    root = ET.Element("testsuites", name="pvpatch check")
    totals = Counter()
    for suite in run.suites:
        el = _junit_suite(root, run, suite, fail_on)
        for k in ("tests", "failures", "skipped"):
            totals[k] += int(el.get(k, "0"))
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("skipped", str(totals["skipped"]))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _junit_suite(root: ET.Element, run: CheckRun, suite: Suite, fail_on: str) -> ET.Element:
    """Every check id of the suite is a testcase, so passing checks show as passed tests."""
    import xml.etree.ElementTree as ET

    name = suite.family + (f" ({suite.backend})" if suite.backend else "")
    cls = "pvpatch." + suite.family + (f".{suite.backend}" if suite.backend else "")
    el = ET.SubElement(root, "testsuite", name=name, file=run.path)
    ids = _suite_checks(suite)
    failures = 0
    for cid in ids:
        case = ET.SubElement(el, "testcase", classname=cls, name=cid)
        if suite.skipped:
            ET.SubElement(case, "skipped", message=suite.skipped)
            continue
        mine = [f for f in run.findings if f.check == cid and f.backend == suite.backend]
        bad = failing(mine, fail_on)
        if bad:
            failures += 1
            info = registry.BY_ID[cid]
            fail = ET.SubElement(case, "failure", type=info.severity,
                                 message=f"{len(bad)} new finding(s): {info.title}")
            fail.text = "\n".join(_line(f) for f in mine)
        elif mine:
            ET.SubElement(case, "system-out").text = "\n".join(_line(f) for f in mine)
    el.set("tests", str(len(ids)))
    el.set("failures", str(failures))
    el.set("errors", "0")
    el.set("skipped", str(len(ids) if suite.skipped else 0))
    return el
