"""What ``pvpatch check`` reports: one :class:`Finding` per defect, and the registry of checks.

Every check has a stable identifier (``family.name``), a severity and a one-line description,
kept here as a data table so that the CLI, the renderers and docs/check.md agree. The Xen
domain-builder checks are not repeated: their ids come from ``pvpatch.kernel.xen_checks``,
imported when the registry is first read (``CHECKS``, ``BY_ID``), not with this module: a
check worker that never meets Xen does not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

ERROR, WARNING = "error", "warning"
SEVERITIES = (ERROR, WARNING)
RANK = {WARNING: 1, ERROR: 2}
NEW, KNOWN = "new", "known"


@dataclass(frozen=True)
class CheckInfo:
    """One check: its id, the family it is grouped under, how bad a finding is, what it means."""

    id: str
    family: str
    severity: str
    title: str
    per_backend: bool  # run once per backend (True) or once per image (False)


@dataclass(frozen=True)
class Finding:
    """One defect at one place. ``backend`` is None for facts of the image itself."""

    check: str
    severity: str
    backend: str | None
    address: int | None
    function: str
    op: str
    message: str
    status: str = NEW

    @property
    def family(self) -> str:
        return self.check.split(".", 1)[0]

    def known(self) -> Finding:
        return replace(self, status=KNOWN)


FAMILIES = ("image", "site", "slot", "fit", "clobber", "alt", "static_call", "xen")
XEN_BUILDER_PREFIX = "xen.builder."

_TABLE: tuple[tuple[str, str, bool, str], ...] = (
    # id, severity, per backend, one-line description
    ("image.already-patched", ERROR, False,
     "most sites already hold what boot patching leaves: the image was patched (by pvpatch "
     "apply or a boot), so its sites cannot be checked; check the unpatched vmlinux"),
    ("site.length", ERROR, False,
     "the record's length is outside 1..32 bytes: apply_paravirt BUG()s on len > MAX_PATCH_LEN"),
    ("site.not-code", ERROR, False,
     "the record points outside every executable section (or at bytes not in the file)"),
    ("site.not-indirect-call", ERROR, False,
     "the site's bytes are not the indirect call or jump its record promises"),
    ("site.unknown-type", ERROR, False,
     "the record's type byte indexes no slot of the pv-op table"),
    ("site.wrong-slot", ERROR, False,
     "the call reads a different slot from the one the record's type byte names"),
    ("site.overlap", ERROR, False,
     "the site overlaps another site: one patch would overwrite the other"),
    ("site.clobber-mask", WARNING, False,
     "the record's clobber mask has bits no register is assigned to"),
    ("slot.null", WARNING, True,
     "the site's slot is NULL for this backend: the kernel patches in a call to its BUG "
     "function, which panics if the op is ever called"),
    ("slot.unresolved", WARNING, True,
     "pvpatch cannot tell what the slot holds for this backend, so the site is not modelled"),
    ("slot.not-function", ERROR, True,
     "the slot's target is not the start of a function symbol in an executable section"),
    ("fit.call-too-long", ERROR, True,
     "the 5-byte call the kernel writes does not fit the site: apply_paravirt BUG()s"),
    ("fit.alt-too-long", ERROR, True,
     "an alternative that applies to the site has a replacement longer than its original"),
    ("clobber.violation", ERROR, True,
     "the replacement (inline code, or the called function's code) writes a register the "
     "site's clobber mask does not allow"),
    ("alt.misaligned", ERROR, False,
     "an alternative overlaps the site with a different start or length"),
    ("alt.undecidable", WARNING, True,
     "an alternative on the site tests a CPU feature the backend does not decide, so the "
     "site's final bytes depend on the CPU"),
    ("static_call.bad-site", ERROR, False,
     "a pv static-call record points at bytes that are not a call (or, for a tail call, a "
     "jmp/Jcc) of its key's trampoline: __static_call_validate() BUG()s at boot"),
    ("static_call.unknown-key", ERROR, False,
     "a .static_call_sites record names a key that is no __SCK__ static_call_key symbol"),
    ("static_call.trampoline", ERROR, False,
     "a pv static call's key or trampoline is missing, unreadable, or not a jmp.d32/ret "
     "trampoline (with the ud1 signature 6.1+ checks)"),
    ("static_call.unresolved", WARNING, True,
     "pvpatch cannot tell what a pv static-call key holds for this backend, so its sites "
     "and trampoline are not modelled"),
    ("xen.dom0-undeclared", ERROR, False,
     "the image has dom0 support code but its notes do not declare dom0 in "
     "SUPPORTED_FEATURES: Xen refuses to start it as dom0"),
    ("xen.dom0-unbacked", WARNING, False,
     "the notes declare dom0 in SUPPORTED_FEATURES but the image has no dom0 support code"),
    ("xen.entry", ERROR, False,
     "a Xen entry note (ENTRY, PHYS32_ENTRY) does not point at code in an executable section"),
)


def _builder_checks() -> tuple[CheckInfo, ...]:
    """One error-severity check per condition of Xen's domain builders (xen_checks.CHECKS)."""
    from pvpatch.kernel.xen_checks import CHECK_SPECS

    return tuple(CheckInfo(XEN_BUILDER_PREFIX + s.id, "xen", ERROR,
                           f"Xen's builder: {s.title} (else: {s.xen})", False)
                 for s in CHECK_SPECS)


_OWN = {cid: CheckInfo(cid, cid.split(".", 1)[0], sev, title, per)
        for cid, sev, per, title in _TABLE}


@cache
def _registry() -> tuple[tuple[CheckInfo, ...], dict[str, CheckInfo]]:
    checks = tuple(_OWN.values()) + _builder_checks()
    return checks, {c.id: c for c in checks}


def __getattr__(name: str) -> object:
    """``CHECKS`` (every check, in report order) and ``BY_ID``, built on first use."""
    if name == "CHECKS":
        return _registry()[0]
    if name == "BY_ID":
        return _registry()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_registry() -> None:
    """Build the registry now (a process with time to spare before it renders)."""
    _registry()


def finding(check: str, backend: str | None, address: int | None, function: str, op: str,
            message: str) -> Finding:
    """A finding with the registry's severity, so a check can never misstate its own."""
    info = _OWN.get(check) or _registry()[1][check]
    return Finding(check, info.severity, backend, address, function, op, message)


def in_family(family: str) -> list[CheckInfo]:
    return [c for c in _registry()[0] if c.family == family]


def reaches(severity: str, threshold: str) -> bool:
    """Whether a finding of ``severity`` counts toward ``--fail-on threshold``."""
    return RANK[severity] >= RANK[threshold]
