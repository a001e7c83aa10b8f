"""``--baseline OLD``: which findings were already there before.

OLD is an earlier ``pvpatch check --format json`` report or an earlier image (checked here with
the same backends). Findings are matched by (check, backend, function without its offset, op),
never by address: a rebuild moves every address, while a defect stays in its function and op.
A matched finding is *known*: still reported, never counted toward the exit status.

OLD is by design another build, so it is not held to "same build": it must be a kernel of the
same architecture, series (major.minor) and flavour (``cloud-amd64``), where the keys mean the
same functions and ops. A report says its kernel in ``kernel`` and ``machine``; one that does
not (an older report) is compared on what it says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pvpatch.checks.model import Finding
from pvpatch.cpu import DEFAULT, Cpu
from pvpatch.errors import InputError
from pvpatch.inputs import REPORT_LIMIT, read_bounded
from pvpatch.kernel.version import release_flavour, release_series

Key = tuple[str, str | None, str, str]
REPORT_SCHEMA = "pvpatch.check/1"
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class Baseline:
    source: str
    kind: str  # "report" or "image"
    keys: frozenset[Key]
    findings: int


@dataclass(frozen=True)
class KernelKind:
    """What a baseline must share with the checked image: architecture, series, flavour."""

    path: str
    machine: str | None
    release: str | None

    def differs(self, other: KernelKind) -> str | None:
        """Which of the three ``other`` does not share (None: it shares what both say)."""
        if self.machine and other.machine and self.machine != other.machine:
            return "architecture"
        if self.release and other.release:
            if release_series(self.release) != release_series(other.release):
                return "kernel series"
            if release_flavour(self.release) != release_flavour(other.release):
                return "flavour"
        return None

    @property
    def described(self) -> str:
        return f"{self.release or 'an unknown release'} ({self.machine or 'unknown machine'})"


def key(check: str, backend: str | None, function: str, op: str) -> Key:
    """The identity of a finding across builds: the offset inside the function is dropped."""
    return check, backend, function.split("+", 1)[0], op


def finding_key(f: Finding) -> Key:
    return key(f.check, f.backend, f.function, f.op)


def load_baseline(path: str, names: tuple[str, ...], vcpus: int,
                  cpu: Cpu = DEFAULT, checked: KernelKind | None = None) -> Baseline:
    """Read OLD as a report when it is JSON, else check it as an image (on the same CPU);
    either must be of ``checked``'s kind (architecture, series, flavour)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"cannot open the baseline: {e.strerror}", path) from None
    if head == ELF_MAGIC:
        return _from_image(path, names, vcpus, cpu, checked)
    return _from_report(path, checked)


def _same_kind(old: KernelKind, checked: KernelKind | None) -> None:
    what = None if checked is None else checked.differs(old)
    if what is not None:
        assert checked is not None
        raise InputError(f"baseline {old.path} is {old.described}, {checked.path} is "
                         f"{checked.described}: another {what}; --baseline takes an earlier "
                         "build of the same architecture, kernel series and flavour")


def _from_report(path: str, checked: KernelKind | None = None) -> Baseline:
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("schema") != REPORT_SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"baseline report has schema {_short(got)}, expected "
                         f"{REPORT_SCHEMA!r}", path)
    _same_kind(KernelKind(path, _text(doc.get("machine")), _text(doc.get("kernel"))), checked)
    keys = _finding_keys(doc.get("findings"), path)
    return Baseline(path, "report", frozenset(keys), len(keys))


def _read_json(path: str) -> object:
    """The parsed file. ValueError covers JSONDecodeError and a number of more than 4300
    digits (Python's int parser refuses it); RecursionError, arrays nested too deep."""
    data = read_bounded(path, REPORT_LIMIT, "a JSON report")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        why = "nested too deep" if isinstance(e, RecursionError) else str(e)[:160]
        raise InputError(f"baseline is neither an ELF image nor a JSON report ({why})",
                         path) from None


# the fields a finding is matched by (see key()); backend is null for image-wide checks
FINDING_KEYS = ("check", "backend", "function", "op")


def _finding_keys(findings: object, path: str) -> list[Key]:
    """The key of every finding, each field checked to be what check writes there."""
    if not isinstance(findings, list):
        raise InputError(f"baseline report: findings is {_kind(findings)}, expected a list",
                         path)
    keys = []
    for i, f in enumerate(findings):
        if not isinstance(f, dict):
            raise InputError(f"baseline report: finding {i} is {_kind(f)}, expected an object",
                             path)
        for name in FINDING_KEYS:
            if name not in f:
                raise InputError(f"baseline report: finding {i} lacks {name!r}", path)
            if not isinstance(f[name], str) and not (name == "backend" and f[name] is None):
                raise InputError(f"baseline report: finding {i} has {name} {_kind(f[name])}, "
                                 "expected a string", path)
        keys.append(key(f["check"], f["backend"], f["function"], f["op"]))
    return keys


def _kind(value: object) -> str:
    """A JSON value's type in words, for messages."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _from_image(path: str, names: tuple[str, ...], vcpus: int, cpu: Cpu,
                checked: KernelKind | None = None) -> Baseline:
    from pvpatch.checks.runner import run_checks
    from pvpatch.kernel.model import KernelModel

    with KernelModel.open(path) as model:
        _same_kind(KernelKind(path, model.image.machine, model.version.release), checked)
        old = run_checks(model, names, vcpus, explicit=False, cpu=cpu).findings
    return Baseline(path, "image", frozenset(map(finding_key, old)), len(old))


def mark_known(findings: list[Finding], baseline: Baseline | None) -> list[Finding]:
    """The findings with those the baseline already had turned into known ones."""
    if baseline is None:
        return findings
    return [f.known() if finding_key(f) in baseline.keys else f for f in findings]
