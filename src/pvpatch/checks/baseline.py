"""``--baseline OLD``: which findings were already there before.

OLD is an earlier ``pvpatch check --format json`` report or an earlier image (checked here with
the same backends). Findings are matched by (check, backend, function without its offset, op),
never by address: a rebuild moves every address, while a defect stays in its function and op.
A matched finding is *known*: still reported, never counted toward the exit status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pvpatch.checks.model import Finding
from pvpatch.cpu import DEFAULT, Cpu
from pvpatch.errors import InputError

Key = tuple[str, str | None, str, str]
REPORT_SCHEMA = "pvpatch.check/1"
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class Baseline:
    source: str
    kind: str  # "report" or "image"
    keys: frozenset[Key]
    findings: int


def key(check: str, backend: str | None, function: str, op: str) -> Key:
    """The identity of a finding across builds: the offset inside the function is dropped."""
    return check, backend, function.split("+", 1)[0], op


def finding_key(f: Finding) -> Key:
    return key(f.check, f.backend, f.function, f.op)


def load_baseline(path: str, names: tuple[str, ...], vcpus: int,
                  cpu: Cpu = DEFAULT) -> Baseline:
    """Read OLD as a report when it is JSON, else check it as an image (on the same CPU)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"cannot open the baseline: {e.strerror}", path) from None
    if head == ELF_MAGIC:
        return _from_image(path, names, vcpus, cpu)
    return _from_report(path)


def _from_report(path: str) -> Baseline:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"baseline is neither an ELF image nor a JSON report ({e})",
                         path) from None
    if not isinstance(doc, dict) or doc.get("schema") != REPORT_SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"baseline report has schema {got!r}, expected {REPORT_SCHEMA!r}",
                         path)
    try:
        keys = [key(f["check"], f["backend"], f["function"], f["op"]) for f in doc["findings"]]
    except (KeyError, TypeError) as e:
        raise InputError(f"baseline report: a finding lacks {e}", path) from None
    return Baseline(path, "report", frozenset(keys), len(keys))


def _from_image(path: str, names: tuple[str, ...], vcpus: int, cpu: Cpu) -> Baseline:
    from pvpatch.checks.runner import run_checks
    from pvpatch.kernel.model import KernelModel

    with KernelModel.open(path) as model:
        old = run_checks(model, names, vcpus, explicit=False, cpu=cpu).findings
    return Baseline(path, "image", frozenset(map(finding_key, old)), len(old))


def mark_known(findings: list[Finding], baseline: Baseline | None) -> list[Finding]:
    """The findings with those the baseline already had turned into known ones."""
    if baseline is None:
        return findings
    return [f.known() if finding_key(f) in baseline.keys else f for f in findings]
