"""Would Xen load this image? The checks of Xen's domain builders, run on decoded notes.

Each check is one condition Xen tests before it builds a guest, with the function and file it
comes from. A check applies to some guest kinds — PV or PVH, unprivileged (domU, built by the
toolstack's libxenguest) or the initial domain (dom0, built by the hypervisor) — and the verdict
for a kind is "loads" when none of its checks fails.

Sources (Xen tree): ``xen/common/libelf/libelf-dominfo.c`` (``elf_xen_parse``,
``elf_xen_note_check``, ``elf_xen_addr_calc_check``, ``elf_xen_parse_features``),
``tools/libs/guest/xg_dom_elfloader.c`` (domU: dom0-only kernels, guest type),
``tools/libs/guest/xg_dom_boot.c`` (guest type against the host's capabilities),
``tools/libs/guest/xg_dom_core.c`` (domU feature check), ``xen/arch/x86/pv/dom0_build.c`` (PV
dom0), ``xen/arch/x86/hvm/dom0_build.c`` (PVH dom0), ``xen/arch/x86/include/asm/config.h``
(hypervisor address ranges).

Limits of an offline check: the initial PV mapping (initrd, P2M, start info, page tables) is laid
out after the kernel at boot, so range checks use the kernel's own end where Xen uses the end of
that mapping; host capabilities and command-line features are not known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pvpatch.kernel import xen_notes as X
from pvpatch.kernel.xen_notes import DomParms, XenNotes

PV_DOMU, PV_DOM0, PVH_DOMU, PVH_DOM0 = "pv-domu", "pv-dom0", "pvh-domu", "pvh-dom0"
KINDS = (PV_DOMU, PV_DOM0, PVH_DOMU, PVH_DOM0)
KIND_LABELS = {PV_DOMU: "PV domU", PV_DOM0: "PV dom0", PVH_DOMU: "PVH domU",
               PVH_DOM0: "PVH dom0"}
PV, PVH, DOMU = (PV_DOMU, PV_DOM0), (PVH_DOMU, PVH_DOM0), (PV_DOMU, PVH_DOMU)
PASS, FAIL, NA = "pass", "fail", "n/a"

# Hypervisor ranges a PV dom0 must not overlap (asm/config.h): PML4 slots 256-271 on x86-64;
# the compat (32-bit) area starts at 0xF5800000 unless HV_START_LOW moves it up.
HYPERVISOR_VIRT_START, HYPERVISOR_VIRT_END = 0xFFFF800000000000, 0xFFFF880000000000
HYPERVISOR_COMPAT_VIRT_START = 0xF5800000
L2_SUPERPAGE = 1 << 21  # dom0_build.c rounds HV_START_LOW up to L2_PAGETABLE_SHIFT (x86-64 Xen)
MASK64 = X.UNSET_ADDR

LIBELF = "xen/common/libelf/libelf-dominfo.c"
XG_ELF = "tools/libs/guest/xg_dom_elfloader.c"
XG_CORE = "tools/libs/guest/xg_dom_core.c"
XG_BOOT = "tools/libs/guest/xg_dom_boot.c"
PV_DOM0_BUILD = "xen/arch/x86/pv/dom0_build.c"
PVH_DOM0_BUILD = "xen/arch/x86/hvm/dom0_build.c"


@dataclass(frozen=True)
class CheckSpec:
    """One condition of Xen's builders: what must hold, what Xen does otherwise, where."""

    id: str
    title: str
    xen: str
    source: str
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class CheckResult:
    spec: CheckSpec
    status: str  # PASS, FAIL or NA
    detail: str


@dataclass(frozen=True)
class Verdict:
    kind: str
    loads: bool
    failed: tuple[CheckResult, ...]

    @property
    def label(self) -> str:
        return KIND_LABELS[self.kind]


@dataclass(frozen=True)
class Addresses:
    """``elf_xen_addr_calc_check``'s numbers after its defaults."""

    virt_base: int
    paddr_offset: int
    kstart: int
    kend: int
    entry: int
    entry_from: str


@dataclass
class CheckReport:
    results: list[CheckResult]
    verdicts: list[Verdict]

    @property
    def loads_any(self) -> bool:
        return any(v.loads for v in self.verdicts)

    def result(self, check_id: str) -> CheckResult:
        return next(r for r in self.results if r.spec.id == check_id)


@dataclass
class Context:
    """Everything a check reads: the notes, libelf's PV and PVH parameter blocks, addresses."""

    notes: XenNotes
    pv: DomParms
    pvh: DomParms
    pv_addr: Addresses
    pvh_addr: Addresses


Outcome = tuple[str, str]
CheckFn = Callable[[Context], Outcome]


# -- helpers -----------------------------------------------------------------------------------

def addresses(notes: XenNotes, p: DomParms) -> Addresses:
    """Apply libelf's defaults (PVH forces VIRT_BASE and PADDR_OFFSET to 0) and compute the
    kernel's virtual span from the loadable segments' p_paddr span, modulo 2**64 as in C."""
    base = 0 if p.hvm or p.virt_base is None else p.virt_base
    if p.hvm or p.elf_paddr_offset is None:
        offset = 0 if (p.note_area_seen or p.hvm) else base
    else:
        offset = p.elf_paddr_offset
    shift = (base - offset) & MASK64
    if p.hvm and p.phys_entry is not None:
        entry, src = p.phys_entry, "PHYS32_ENTRY"
    elif p.virt_entry is not None and not p.hvm:
        entry, src = p.virt_entry, "ENTRY" if not p.legacy_used else "VIRT_ENTRY"
    else:
        entry, src = notes.e_entry, "e_entry"
    return Addresses(base, offset, (notes.span.pstart + shift) & MASK64,
                     (notes.span.pend + shift) & MASK64, entry, src)


def _q(text: str) -> str:
    return f"'{text}'" if text else "unset"


def _x(value: int | None) -> str:
    return "unset" if value is None else f"{value:#x}"


def _from(p: DomParms) -> str:
    return "the __xen_guest string" if p.legacy_used else "the notes"


# -- libelf: parsing ---------------------------------------------------------------------------

def check_note_count(c: Context) -> Outcome:
    n = c.notes.total_notes
    if n >= X.MAX_TOTAL_NOTES:
        return FAIL, f"{n} notes: libelf stops reading and marks the image broken"
    return PASS, f"{n} note(s) walked"


def check_features(c: Context) -> Outcome:
    if c.pv.parse_error:
        return FAIL, f"FEATURES note: {c.pv.parse_error}; elf_xen_parse returns -1"
    if c.pv.ignored_error:
        return PASS, (f"__xen_guest FEATURES: {c.pv.ignored_error}; libelf stops reading the "
                      "string there, but elf_xen_parse ignores the error")
    if c.notes.first(X.FEATURES) is None and not c.pv.legacy_used:
        return PASS, "no FEATURES note"
    return PASS, "every '!required' name is one libelf knows"


# -- libelf: elf_xen_note_check ----------------------------------------------------------------

def _xen_elf(c: Context, p: DomParms) -> Outcome:
    if c.notes.notes:
        return PASS, f"{len(c.notes.notes)} Xen note(s) in {c.notes.source}"
    if p.legacy_used:
        return PASS, f"legacy {X.LEGACY_SECTION} string of {len(c.notes.legacy.text)} characters"
    if c.notes.note_area_seen:
        return FAIL, ("no Xen note in the note areas (" + ", ".join(c.notes.areas) + "); Xen "
                      "passes its own test here and refuses at the loader/guest-OS test instead")
    if c.notes.legacy is not None:
        return FAIL, f"no note area; the {X.LEGACY_SECTION} section is read for PV guests only"
    return FAIL, f"no note area and no {X.LEGACY_SECTION} section"


def check_pv_xen_elf(c: Context) -> Outcome:
    return _xen_elf(c, c.pv)


def check_pvh_xen_elf(c: Context) -> Outcome:
    return _xen_elf(c, c.pvh)


def check_loader(c: Context) -> Outcome:
    p = c.pv
    ok = p.loader.startswith("generic") or p.guest_os.startswith("linux")
    text = f"LOADER {_q(p.loader)}, GUEST_OS {_q(p.guest_os)} (from {_from(p)})"
    return (PASS, text) if ok else (FAIL, text + ": neither 'generic…' nor 'linux…'")


def check_xen_version(c: Context) -> Outcome:
    p = c.pv
    text = f"XEN_VERSION {_q(p.xen_ver)} (from {_from(p)})"
    return (PASS, text) if p.xen_ver.startswith("xen-3.0") else \
        (FAIL, text + ": does not start with 'xen-3.0'")


def check_phys32_entry(c: Context) -> Outcome:
    if c.pvh.phys_entry is None:
        return FAIL, ("no PHYS32_ENTRY note: the toolstack says 'image not capable of booting "
                      "inside a HVM container', the PVH dom0 builder 'Unable to find "
                      "XEN_ELFNOTE_PHYS32_ENTRY address'")
    return PASS, f"PHYS32_ENTRY {c.pvh.phys_entry:#x}: libelf takes the PVH path"


# -- libelf: elf_xen_addr_calc_check -----------------------------------------------------------

def check_paddr_offset(c: Context) -> Outcome:
    p = c.pv
    if p.elf_paddr_offset is not None and p.virt_base is None:
        return FAIL, f"PADDR_OFFSET {p.elf_paddr_offset:#x} given without VIRT_BASE"
    return PASS, f"PADDR_OFFSET {_x(p.elf_paddr_offset)}, VIRT_BASE {_x(p.virt_base)}"


def _bounds(c: Context, a: Addresses, p: DomParms) -> Outcome:
    span = c.notes.span
    if not span.segments:
        return FAIL, "no loadable PT_LOAD segment: libelf's span is empty (start > end)"
    text = (f"kernel {a.kstart:#x}-{a.kend:#x} (p_paddr {span.pstart:#x}-{span.pend:#x} + "
            f"VIRT_BASE {a.virt_base:#x} - PADDR_OFFSET {a.paddr_offset:#x}), entry "
            f"{a.entry:#x} from {a.entry_from}")
    if p.bsd_symtab:
        text += "; BSD_SYMTAB makes Xen extend the end by the symbol table"
    bad = [why for cond, why in (
        (a.kstart > a.kend, "start above end"),
        (a.entry < a.kstart, "entry below the kernel"),
        (a.entry > a.kend, "entry above the kernel"),
        (a.virt_base > a.kstart, "VIRT_BASE above the kernel start")) if cond]
    return (FAIL, text + ": " + ", ".join(bad)) if bad else (PASS, text)


def check_pv_bounds(c: Context) -> Outcome:
    return _bounds(c, c.pv_addr, c.pv)


def check_pvh_bounds(c: Context) -> Outcome:
    return _bounds(c, c.pvh_addr, c.pvh)


def _p2m(a: Addresses, p: DomParms) -> Outcome:
    if p.p2m_base is None:
        return NA, "no INIT_P2M note"
    inside = a.kstart <= p.p2m_base < a.kend
    text = f"INIT_P2M {p.p2m_base:#x}, kernel {a.kstart:#x}-{a.kend:#x}"
    return (FAIL, text + ": inside the kernel") if inside else (PASS, text)


def check_pv_p2m(c: Context) -> Outcome:
    return _p2m(c.pv_addr, c.pv)


def check_pvh_p2m(c: Context) -> Outcome:
    return _p2m(c.pvh_addr, c.pvh)


# -- toolstack (domU) --------------------------------------------------------------------------

def check_domu_dom0_required(c: Context) -> Outcome:
    if c.pv.f_required >> X.XENFEAT_DOM0 & 1:
        return FAIL, "FEATURES requires '!dom0': the kernel cannot run unprivileged"
    return PASS, "dom0 is not a required feature"


def check_domu_features(c: Context) -> Outcome:
    req = X.feature_names(c.pv.f_required) or ["none"]
    return PASS, ("required " + "|".join(req) + " are all supported (libelf marks a required "
                  "feature supported too); fails only for features asked for on the command "
                  "line")


def check_pv_guest_type(c: Context) -> Outcome:
    if c.notes.bits == 64:
        return PASS, "EM_X86_64: guest type xen-3.0-x86_64"
    pae = c.pv.pae
    if pae == X.PAE_NO:
        return FAIL, ("EM_386 without PAE: guest type xen-3.0-x86_32, which 64-bit Xen (the "
                      "only x86 hypervisor in current releases) does not offer")
    return PASS, (f"EM_386, PAE {X.PAE_NAMES[pae]}: guest type xen-3.0-x86_32p (needs a Xen "
                  "built with 32-bit PV support)")


# -- hypervisor PV dom0 (xen/arch/x86/pv/dom0_build.c) -----------------------------------------

def check_dom0_compat(c: Context) -> Outcome:
    if c.notes.bits == 64:
        return PASS, "64-bit EM_X86_64 kernel"
    if c.pv.pae == X.PAE_NO:
        return FAIL, "32-bit kernel without PAE: 'Mismatch between Xen and DOM0 kernel'"
    return PASS, f"32-bit EM_386 kernel with PAE {X.PAE_NAMES[c.pv.pae]} (compat32 dom0)"


def check_dom0_feature(c: Context) -> Outcome:
    p = c.pv
    names = "|".join(X.feature_names(p.f_supported)) or "none"
    if not p.supported_features_note:
        return PASS, "no SUPPORTED_FEATURES note, so Xen does not test for dom0"
    if p.f_supported >> X.XENFEAT_DOM0 & 1:
        return PASS, f"supported features {names} include dom0"
    return FAIL, (f"SUPPORTED_FEATURES present but the supported set ({names}) lacks dom0 "
                  "(bit 11): 'Kernel does not support Dom0 operation'")


def check_dom0_supervisor(c: Context) -> Outcome:
    if c.pv.f_required >> X.XENFEAT_SUPERVISOR_MODE_KERNEL & 1:
        return FAIL, "FEATURES requires '!supervisor_mode_kernel': Xen panics"
    req = "|".join(X.feature_names(c.pv.f_required)) or "none"
    return PASS, f"required features: {req}"


def check_dom0_hv_start_low(c: Context) -> Outcome:
    p = c.pv
    if c.notes.bits == 64 or p.virt_hv_start_low is None:
        return NA, "64-bit kernel" if c.notes.bits == 64 else "no HV_START_LOW note"
    rounded = (p.virt_hv_start_low + L2_SUPERPAGE - 1) & ~(L2_SUPERPAGE - 1) & MASK64
    text = f"HV_START_LOW {p.virt_hv_start_low:#x} rounds up to {rounded:#x}"
    if rounded > HYPERVISOR_COMPAT_VIRT_START:
        return FAIL, text + f", above {HYPERVISOR_COMPAT_VIRT_START:#x}: Xen panics"
    return PASS, text


def check_dom0_xen_area(c: Context) -> Outcome:
    a, p = c.pv_addr, c.pv
    if c.notes.bits == 64:
        lo, hi = HYPERVISOR_VIRT_START, HYPERVISOR_VIRT_END
        overlap = a.virt_base < hi and a.kend > lo
        text = (f"initial mapping from {a.virt_base:#x} past the kernel end {a.kend:#x} vs "
                f"Xen's {lo:#x}-{hi:#x}")
    else:
        start = HYPERVISOR_COMPAT_VIRT_START
        if p.virt_hv_start_low is not None:
            start = max(start, (p.virt_hv_start_low + L2_SUPERPAGE - 1) & ~(L2_SUPERPAGE - 1))
        overlap = a.kend > start
        text = f"kernel end {a.kend:#x} vs the compat area at {start:#x} (at least)"
    return (FAIL, text + ": overlaps") if overlap else (PASS, text)


def check_dom0_hypercall_page(c: Context) -> Outcome:
    p, a = c.pv, c.pv_addr
    if p.virt_hypercall is None:
        return NA, "no HYPERCALL_PAGE note (Linux dropped it with the XSA-466 fix)"
    text = f"HYPERCALL_PAGE {p.virt_hypercall:#x}, mapping starts at VIRT_BASE {a.virt_base:#x}"
    if p.virt_hypercall < a.virt_base:
        return FAIL, text + ": below the initial mapping"
    if p.virt_hypercall >= a.kend:
        return FAIL, (text + f": beyond the kernel's end {a.kend:#x}, in the area Xen fills "
                      "with initrd, P2M and page tables (or past it)")
    return PASS, text + f", kernel ends at {a.kend:#x}"


# -- the table ---------------------------------------------------------------------------------

CHECKS: tuple[tuple[CheckSpec, CheckFn], ...] = (
    (CheckSpec("parse.note-count", "at most 65536 notes in all note areas",
               "marks the image broken, stops reading notes", f"{LIBELF} elf_xen_parse_notes",
               KINDS), check_note_count),
    (CheckSpec("parse.features", "FEATURES names no unknown '!required' feature",
               "elf_xen_parse fails (the notes path; a __xen_guest error is ignored)",
               f"{LIBELF} elf_xen_parse_features", KINDS), check_features),
    (CheckSpec("pv.xen-elf", "Xen notes or a __xen_guest string exist",
               "Not a Xen-ELF image: No ELF notes or '__xen_guest' section found",
               f"{LIBELF} elf_xen_note_check", PV), check_pv_xen_elf),
    (CheckSpec("pv.loader", "LOADER starts 'generic' or GUEST_OS starts 'linux'",
               "Will only load images built for the generic loader or Linux images",
               f"{LIBELF} elf_xen_note_check", PV), check_loader),
    (CheckSpec("pv.xen-version", "XEN_VERSION starts 'xen-3.0'",
               "Xen will only load images built for Xen v3.0",
               f"{LIBELF} elf_xen_note_check", PV), check_xen_version),
    (CheckSpec("pv.paddr-offset", "PADDR_OFFSET is only given with VIRT_BASE",
               "ELF_PADDR_OFFSET set, VIRT_BASE unset", f"{LIBELF} elf_xen_addr_calc_check",
               PV), check_paddr_offset),
    (CheckSpec("pv.bounds", "kernel span ordered, entry inside it, VIRT_BASE at or below it",
               "ELF start or entries are out of bounds", f"{LIBELF} elf_xen_addr_calc_check",
               PV), check_pv_bounds),
    (CheckSpec("pv.p2m", "INIT_P2M lies outside the kernel", "P->M table base is out of bounds",
               f"{LIBELF} elf_xen_addr_calc_check", PV), check_pv_p2m),
    (CheckSpec("pvh.xen-elf", "Xen notes exist (PVH never reads __xen_guest)",
               "Not a Xen-ELF image: No ELF notes or '__xen_guest' section found",
               f"{LIBELF} elf_xen_note_check", PVH), check_pvh_xen_elf),
    (CheckSpec("pvh.phys32-entry", "PHYS32_ENTRY is given",
               "image not capable of booting inside a HVM container / Unable to find "
               "XEN_ELFNOTE_PHYS32_ENTRY address",
               f"{LIBELF} elf_xen_note_check; {XG_ELF} xc_dom_guest_type; "
               f"{PVH_DOM0_BUILD} pvh_load_kernel",
               PVH), check_phys32_entry),
    (CheckSpec("pvh.bounds", "kernel span ordered, PHYS32_ENTRY inside it (VIRT_BASE and "
               "PADDR_OFFSET forced to 0)", "ELF start or entries are out of bounds",
               f"{LIBELF} elf_xen_addr_calc_check", PVH), check_pvh_bounds),
    (CheckSpec("pvh.p2m", "INIT_P2M lies outside the kernel", "P->M table base is out of bounds",
               f"{LIBELF} elf_xen_addr_calc_check", PVH), check_pvh_p2m),
    (CheckSpec("domu.dom0-required", "FEATURES does not require dom0",
               "Kernel does not support unprivileged (DomU) operation",
               f"{XG_ELF} xc_dom_parse_elf_kernel", DOMU), check_domu_dom0_required),
    (CheckSpec("domu.features", "required (and requested) features are supported",
               "unsupported feature requested", f"{XG_CORE} xc_dom_parse_image", DOMU),
     check_domu_features),
    (CheckSpec("pv-domu.guest-type", "the image maps to a PV guest type 64-bit Xen offers",
               "guest type … not supported by xen kernel, sorry",
               f"{XG_ELF} xc_dom_guest_type; {XG_BOOT} xc_dom_compat_check",
               (PV_DOMU,)), check_pv_guest_type),
    (CheckSpec("pv-dom0.compat", "64-bit kernel, or 32-bit with PAE",
               "Mismatch between Xen and DOM0 kernel", f"{PV_DOM0_BUILD} dom0_construct_pv",
               (PV_DOM0,)), check_dom0_compat),
    (CheckSpec("pv-dom0.dom0-feature", "if SUPPORTED_FEATURES is present, dom0 is supported",
               "Kernel does not support Dom0 operation", f"{PV_DOM0_BUILD} dom0_construct_pv",
               (PV_DOM0,)), check_dom0_feature),
    (CheckSpec("pv-dom0.supervisor-mode", "supervisor_mode_kernel is not required",
               "Dom0 requires supervisor-mode execution (panic)",
               f"{PV_DOM0_BUILD} dom0_construct_pv", (PV_DOM0,)), check_dom0_supervisor),
    (CheckSpec("pv-dom0.hv-start-low", "32-bit: HV_START_LOW, rounded up, is at most "
               "0xf5800000", "Domain 0 expects too high a hypervisor start address (panic)",
               f"{PV_DOM0_BUILD} dom0_construct_pv", (PV_DOM0,)), check_dom0_hv_start_low),
    (CheckSpec("pv-dom0.xen-area", "the initial mapping stays clear of Xen's area",
               "DOM0 image overlaps with Xen private area.",
               f"{PV_DOM0_BUILD} dom0_construct_pv", (PV_DOM0,)), check_dom0_xen_area),
    (CheckSpec("pv-dom0.hypercall-page", "HYPERCALL_PAGE lies in the initial mapping",
               "Invalid HYPERCALL_PAGE field in ELF notes.",
               f"{PV_DOM0_BUILD} dom0_construct_pv", (PV_DOM0,)), check_dom0_hypercall_page),
)
CHECK_SPECS = tuple(spec for spec, _fn in CHECKS)


def run_checks(notes: XenNotes) -> CheckReport:
    """Run every check and derive one verdict per guest kind."""
    pv, pvh = X.dom_parms(notes, hvm=False), X.dom_parms(notes, hvm=True)
    ctx = Context(notes, pv, pvh, addresses(notes, pv), addresses(notes, pvh))
    results = [CheckResult(spec, *fn(ctx)) for spec, fn in CHECKS]
    verdicts = [Verdict(kind, not failed, failed) for kind in KINDS
                for failed in [tuple(r for r in results
                                     if kind in r.spec.kinds and r.status == FAIL)]]
    return CheckReport(results, verdicts)
