"""Which boot-patching era an image belongs to, and the evidence that says so.

The way Linux rewrites its pv call sites changed five times (fact sheet §1, §4.1). The era is
read from the image itself — which op table exists, what its type says, which patcher symbols
were linked — and only when those are silent from the ``linux_banner`` version. The banner is
a weak witness: vendors backport, and a fixture or a stripped image may carry none.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.image.elf import ElfImage
from pvpatch.kernel.pvops import PvOps
from pvpatch.kernel.version import KernelVersion

Version = tuple[int, int, int]


@dataclass(frozen=True)
class PatchEra:
    """One kernel range with one boot-patching algorithm."""

    key: str  # G1 … G6, the fact sheet's generation names
    first: Version
    last: Version  # inclusive; (99, 0, 0) for "onward"
    dispatcher: str  # the function apply_paravirt calls per site
    type_byte: str  # what the .parainstructions type byte means

    @property
    def versions(self) -> str:
        if self.last[0] == 99:
            return f"{_short(self.first)}+"
        return f"{_short(self.first)}–{_short(self.last)}"

    @property
    def type_is_slot(self) -> bool:
        """False only for 2.6.20–21, where the type is an enum of patchable ops."""
        return self.key != "G1"

    def holds(self, v: Version) -> bool:
        return self.first <= v <= self.last


def _short(v: Version) -> str:
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[0] == 2 else "")


ERAS = (
    PatchEra("G1", (2, 6, 20), (2, 6, 21), "paravirt_ops.patch (native_patch, inline only)",
             "enum of patchable irq/iret ops"),
    PatchEra("G2", (2, 6, 22), (2, 6, 23), "paravirt_ops.patch (native_patch)",
             "word index into struct paravirt_ops"),
    PatchEra("G3", (2, 6, 24), (4, 19, 0), "pv_init_ops.patch (native_patch)",
             "pointer index into struct paravirt_patch_template"),
    PatchEra("G4", (4, 20, 0), (5, 12, 0), "pv_ops.init.patch (native_patch)",
             "pointer index into pv_ops"),
    PatchEra("G5", (5, 13, 0), (6, 7, 0), "paravirt_patch()", "pointer index into pv_ops"),
    PatchEra("G6", (6, 8, 0), (99, 0, 0), "apply_alternatives() ALT_FLAG_DIRECT_CALL",
             "none: the slot is read from the call"),
)
BY_KEY = {e.key: e for e in ERAS}
# The newest release whose boot patching (alternative.c, paravirt.c, static_call.c) pvpatch
# was read against: a newer image is planned by the same algorithm, with a warning.
NEWEST_READ: Version = (7, 3, 0)


def newer_than_read(v: KernelVersion) -> str | None:
    """A warning when the banner names a release newer than :data:`NEWEST_READ`."""
    if v.major is None or (v.major, v.minor or 0) <= NEWEST_READ[:2]:
        return None
    return (f"warning: kernel {v.short} is newer than {NEWEST_READ[0]}.{NEWEST_READ[1]}, the "
            "last release whose boot patching pvpatch was checked against: planned with "
            f"{NEWEST_READ[0]}.{NEWEST_READ[1]}'s algorithm")
# The eras before 5.13: planned by patch.legacy, and with Xen rules of their own.
LEGACY_ERAS = ("G1", "G2", "G3", "G4")

# G1's type byte: PARAVIRT_IRQ_DISABLE … PARAVIRT_STI_SYSEXIT (include/asm-i386/paravirt.h,
# 2.6.20 and 2.6.21), named here after the paravirt_ops members the sites call.
G1_TYPES = {0: "irq_disable", 1: "irq_enable", 2: "restore_fl", 3: "save_fl",
            4: "save_fl+irq_disable", 5: "iret", 6: "irq_enable_sysexit"}


@dataclass(frozen=True)
class EraDetection:
    era: PatchEra
    evidence: str  # what decided it, for inspect
    conflict: str | None = None  # the banner disagrees with the image's own evidence


def era_for_version(v: KernelVersion) -> PatchEra | None:
    if v.major is None or v.minor is None:
        return None
    key = version_key(v)
    return next((e for e in ERAS if e.holds(key)), None)


def version_key(v: KernelVersion) -> Version:
    """(major, minor, sub): 2.6.x kernels compare by x; later ones by major.minor only."""
    return v.key or (v.major or 0, v.minor or 0, 0)


def era_version(v: KernelVersion, era: PatchEra) -> tuple[Version, str]:
    """The version an era's tables are read at: the banner's when it lies in the era, else
    the era's last release (what the image's own evidence allows at most)."""
    if era_for_version(v) is era:
        return version_key(v), f"tables for {v.release} (linux_banner)"
    last = era.last
    why = "no linux_banner version" if v.major is None else f"banner {v.short} is outside it"
    return last, f"tables for {last[0]}.{last[1]}, the era's last ({why})"


def detect_era(image: ElfImage, pvops: PvOps, version: KernelVersion) -> EraDetection | None:
    """The era from the image's own evidence, else from the banner (None: no pv at all)."""
    found = _from_image(image, pvops)
    by_version = era_for_version(version)
    if found is None:
        if by_version is None or pvops.container is None:
            return None
        return EraDetection(by_version, f"linux_banner version {version.short}")
    era, evidence = found
    conflict = None
    if by_version is not None and by_version is not era:
        conflict = (f"the banner says {version.release}, which is era {by_version.key} "
                    f"({by_version.versions}); the image's evidence wins")
    return EraDetection(era, evidence, conflict)


def _from_image(image: ElfImage, pvops: PvOps) -> tuple[PatchEra, str] | None:
    c = pvops.container
    if c is None:
        return None
    has = image.symbols.get
    if image.section(".parainstructions") is None and c.name == "pv_ops":
        return BY_KEY["G6"], "pv_ops and no .parainstructions section"
    if c.name == "pv_*_ops":
        return BY_KEY["G3"], "the split op globals (pv_cpu_ops …)"
    if c.name == "paravirt_ops":
        return _paravirt_ops_era(image, pvops)
    lay = pvops.layout
    if lay is not None and pvops.type_origin != "builtin":  # a built-in table proves nothing
        if lay.field("init") is not None:
            return BY_KEY["G4"], f"pv_ops has an init member ({pvops.type_label})"
        return BY_KEY["G5"], f"pv_ops has no init member ({pvops.type_label})"
    if has("paravirt_BUG") is not None:
        return BY_KEY["G5"], "pv_ops and the paravirt_BUG symbol"
    if has("native_patch") is not None or has("paravirt_patch_default") is not None:
        return BY_KEY["G4"], "pv_ops and the native_patch/paravirt_patch_default symbols"
    return None


def _paravirt_ops_era(image: ElfImage, pvops: PvOps) -> tuple[PatchEra, str] | None:
    """2.6.20–21 (enum types) or 2.6.22–23 (word index): the table bounds were renamed."""
    has = image.symbols.get
    if has("__start_parainstructions") is not None:
        return BY_KEY["G1"], "paravirt_ops and __start_parainstructions (2.6.20–21 name)"
    if has("__parainstructions") is not None:
        return BY_KEY["G2"], "paravirt_ops and __parainstructions (2.6.22+ name)"
    if has("_paravirt_nop") is not None:
        return BY_KEY["G2"], "paravirt_ops and _paravirt_nop (global from 2.6.22)"
    return None
