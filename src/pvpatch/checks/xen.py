"""Xen checks: would Xen start this image as every kind of guest the image is built to be?

Two sources. Xen's own conditions (``pvpatch.kernel.xen_checks``: libelf, the toolstack, the
dom0 builders) are reported as ``xen.builder.<id>`` when they fail for a guest kind the image
supports: a kernel without PVH code is not faulted for lacking PHYS32_ENTRY. Then what the
kernel expects of its own notes: dom0 code must be declared (and only dom0 code), and the entry
notes must point at code.

Which kinds an image supports is read from symbols only a given config builds (6.1 names):
``xen_start_kernel`` (CONFIG_XEN_PV), ``pvh_start_xen`` / ``xen_prepare_pvh`` (CONFIG_PVH /
CONFIG_XEN_PVH), and for dom0 any of ``DOM0_EVIDENCE`` (CONFIG_XEN_DOM0).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.checks.model import XEN_BUILDER_PREFIX, Finding, finding
from pvpatch.image import layouts as L
from pvpatch.image.elf import ElfImage
from pvpatch.kernel import xen_checks as XC
from pvpatch.kernel import xen_notes as X

PV_EVIDENCE = ("xen_start_kernel",)
PVH_EVIDENCE = ("pvh_start_xen", "xen_prepare_pvh")
# Built only with CONFIG_XEN_DOM0: arch/x86/xen/vga.c, arch/x86/pci/xen.c, drivers/xen/pcpu.c,
# and the dom0 branch of arch/x86/xen/enlighten_pv.c.
DOM0_EVIDENCE = ("xen_init_vga", "pci_xen_initial_domain", "xen_pcpu_init",
                 "xen_dom0_set_legacy_features")
DOM0_FEATURE_CHECK = "pv-dom0.dom0-feature"


@dataclass(frozen=True)
class Support:
    """What the image is built to run as, with the symbol that proves each."""

    pv: str | None
    pvh: str | None
    dom0: str | None

    @property
    def any(self) -> bool:
        return bool(self.pv or self.pvh)

    def kinds(self) -> set[str]:
        out = set()
        if self.pv:
            out |= {XC.PV_DOMU} | ({XC.PV_DOM0} if self.dom0 else set())
        if self.pvh:
            out |= {XC.PVH_DOMU} | ({XC.PVH_DOM0} if self.dom0 else set())
        return out


def support(image: ElfImage) -> Support:
    def first(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if image.symbols.get(n) is not None), None)

    return Support(first(PV_EVIDENCE), first(PVH_EVIDENCE), first(DOM0_EVIDENCE))


def check_xen(image: ElfImage) -> tuple[list[Finding], int]:
    """All Xen findings, and how many builder conditions were evaluated."""
    sup = support(image)
    if not sup.any:
        return [], 0
    notes = X.read_xen_notes(image)
    report = XC.run_checks(notes)
    pv, pvh = X.dom_parms(notes, hvm=False), X.dom_parms(notes, hvm=True)
    own = _dom0(sup, pv) + _entries(image, sup, pv, pvh)
    skip = {DOM0_FEATURE_CHECK} if any(f.check == "xen.dom0-undeclared" for f in own) else set()
    return _builder(report, sup, skip) + own, len(report.results)


def _builder(report: XC.CheckReport, sup: Support, skip: set[str]) -> list[Finding]:
    out = []
    kinds = sup.kinds()
    for r in report.results:
        hit = [k for k in XC.KINDS if k in r.spec.kinds and k in kinds]
        if r.status != XC.FAIL or not hit or r.spec.id in skip:
            continue
        out.append(finding(XEN_BUILDER_PREFIX + r.spec.id, None, None, "", ",".join(hit),
                           f"{r.detail} (Xen: '{r.spec.xen}', {r.spec.source})"))
    return out


def _dom0(sup: Support, p: X.DomParms) -> list[Finding]:
    declared = bool(p.f_supported >> X.XENFEAT_DOM0 & 1)
    if sup.dom0 and not declared:
        why = ("Xen refuses to build it as dom0 ('Kernel does not support Dom0 operation')"
               if p.supported_features_note else "there is no SUPPORTED_FEATURES note at all, "
               "which Linux's xen-head.S always emits")
        return [finding("xen.dom0-undeclared", None, None, "", "XEN_ELFNOTE_SUPPORTED_FEATURES",
                        f"built with dom0 support ({sup.dom0}) but the supported features "
                        f"{_names(p.f_supported)} lack dom0: {why}")]
    if declared and not sup.dom0 and sup.pv:
        return [finding("xen.dom0-unbacked", None, None, "", "XEN_ELFNOTE_SUPPORTED_FEATURES",
                        f"supported features {_names(p.f_supported)} include dom0, but none "
                        f"of {', '.join(DOM0_EVIDENCE)} is in the image (no CONFIG_XEN_DOM0): "
                        "Xen would start it as dom0 and it would run as an unprivileged guest")]
    return []


def _names(bits: int) -> str:
    return "|".join(X.feature_names(bits)) or "none"


def _entries(image: ElfImage, sup: Support, pv: X.DomParms, pvh: X.DomParms
             ) -> list[Finding]:
    """ENTRY (virtual) and PHYS32_ENTRY (physical, through PT_LOAD) must land in code."""
    out = []
    todo = [("XEN_ELFNOTE_ENTRY", pv.virt_entry if sup.pv else None),
            ("XEN_ELFNOTE_PHYS32_ENTRY", _virtual(image, pvh.phys_entry) if sup.pvh else None)]
    for note, addr in todo:
        if addr is None:
            continue
        sec = image.section_at(addr)
        if sec is not None and sec.is_exec:
            continue
        where = f"in {sec.name}" if sec else "in no allocated section"
        out.append(finding("xen.entry", None, addr, image.symbols.name_at(addr) or "", note,
                           f"{note} leads to {addr:#x}, {where}, not executable code"))
    return out


def _virtual(image: ElfImage, phys: int | None) -> int | None:
    """The virtual address the loader's physical entry point runs (PT_LOAD p_paddr → p_vaddr)."""
    if phys is None:
        return None
    for seg in image.segments:
        if seg.type == L.PT_LOAD and seg.paddr <= phys < seg.paddr + seg.memsz:
            return seg.vaddr + (phys - seg.paddr)
    return phys  # outside every segment: reported as not in code
