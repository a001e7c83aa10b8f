"""Xen notes decoded and checked as Xen's libelf and domain builders do.

Fixtures: fixtures/xen_notes.S (every note type, variants via --defsym) and
fixtures/xen_guest_legacy.S (only a __xen_guest string), linked with fixtures/xen_notes.ld.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES, assemble, real_kernel

from pvpatch.image.elf import ElfImage
from pvpatch.kernel import xen_notes as X
from pvpatch.kernel.xen_checks import (
    FAIL,
    NA,
    PASS,
    PV_DOM0,
    PV_DOMU,
    PVH_DOM0,
    PVH_DOMU,
    CheckReport,
    run_checks,
)

KBASE = {64: 0xFFFFFFFF80000000, 32: 0xC0000000}
LD = ("-T", str(FIXTURES / "xen_notes.ld"))


def build(source: str = "xen_notes.S", bits: int = 64, **variants: int) -> Path:
    defs = dict(variants, **({"I386": 1} if bits == 32 else {}))
    return assemble(source, bits, ld_args=LD, defsyms=defs)


def read(path: Path) -> tuple[X.XenNotes, CheckReport, dict[str, int]]:
    """Decoded notes, check report and the addresses of the fixture's symbols."""
    with ElfImage(path) as image:
        xen = X.read_xen_notes(image)
        syms = {n: image.symbols.address(n) for n in
                ("startup_xen", "pvh_start_xen", "hypercall_page", "_start")}
    return xen, run_checks(xen), syms


def value(xen: X.XenNotes, number: int) -> object:
    note = xen.last(number)
    assert note is not None, f"no note of type {number}"
    return note.value


def statuses(report: CheckReport) -> dict[str, str]:
    return {r.spec.id: r.status for r in report.results}


def loads(report: CheckReport) -> dict[str, bool]:
    return {v.kind: v.loads for v in report.verdicts}


# -- every note type ----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [64, 32])
def test_every_type_decoded(bits):
    xen, _report, syms = read(build(bits=bits))
    assert xen.source == "PT_NOTE" and xen.areas == ["PT_NOTE[2]"]
    assert {n.type for n in xen.notes} == set(X.NOTE_TYPES)
    assert xen.problems == [] and xen.legacy is None
    base = KBASE[bits]
    assert value(xen, X.GUEST_OS) == "linux"
    assert value(xen, X.GUEST_VERSION) == "2.6"
    assert value(xen, X.XEN_VERSION) == "xen-3.0"
    assert value(xen, X.LOADER) == "generic"
    assert value(xen, X.BSD_SYMTAB) == "no"
    assert value(xen, 0) == "PVPATCH=fixture"
    assert value(xen, X.VIRT_BASE) == base
    assert value(xen, X.PADDR_OFFSET) == 0
    assert value(xen, X.ENTRY) == syms["startup_xen"] == base + 0x1000001
    assert value(xen, X.HYPERCALL_PAGE) == syms["hypercall_page"] == base + 0x1001000
    assert value(xen, X.PHYS32_ENTRY) == syms["pvh_start_xen"] - base == 0x1000003
    assert value(xen, X.HV_START_LOW) == (0xFFFF800000000000 if bits == 64 else 0xF5800000)
    assert value(xen, X.INIT_P2M) == (0x8000000000 if bits == 64 else 0x80000000)
    assert value(xen, X.SUSPEND_CANCEL) == 1 and value(xen, X.MOD_START_PFN) == 1
    assert xen.last(X.PHYS32_ENTRY).descsz == bits // 8


def test_strings_read_past_descsz_like_libelf():
    xen, _r, _s = read(build())
    feat = xen.last(X.FEATURES)
    assert feat.descsz == 41 and feat.raw[-1:] != b"\0"
    assert feat.value == "!writable_page_tables|pae_pgdir_above_4gb"
    assert feat.observations == ("no NUL inside descsz (41 bytes); libelf's string ends in the "
                                 "padding",)
    assert feat.detail == X.FeatureString(("writable_page_tables",), ("pae_pgdir_above_4gb",),
                                          (), (), 0x11, 0x1, None)


def test_string_without_padding_runs_into_the_next_note():
    """28 bytes of FEATURES leave no padding: libelf's string ends in the next note's header
    (namesz 4 = b"\\x04\\0\\0\\0"), so the last token gains a \\x04 and is ignored."""
    xen, report, _s = read(build(TIGHT_FEATURES=1))
    feat = xen.last(X.FEATURES)
    assert feat.descsz == 28 and feat.value == "!writable_page_tables|dom0|x\x04"
    assert feat.observations == ("no NUL inside descsz (28 bytes) or its padding; libelf reads 1 "
                                 "byte past the descriptor",)
    assert feat.detail.unknown_supported == ("x\x04",) and feat.detail.error is None
    assert report.loads_any


def test_special_descriptors():
    xen, _r, _s = read(build())
    sup = xen.last(X.SUPPORTED_FEATURES)
    assert sup.value == 0x8801
    assert sup.detail.names == ["writable_page_tables", "dom0", "linux_rsdp_unrestricted"]
    assert xen.last(X.L1_MFN_VALID).detail == X.MfnPairs(8, ((1, 1),))
    assert xen.last(X.L1_MFN_VALID).value is None
    reloc = xen.last(X.PHYS32_RELOC).detail
    assert (reloc.align, reloc.min, reloc.max) == (0x200000, 0x1000000, 0x3FFFFFFF)
    assert reloc.effective == (0x200000, 0x1000000, 0x3FFFFFFF)
    assert xen.last(X.PAE_MODE).detail == X.PaeMode(X.PAE_EXTCR3)
    for number in (0x1000001, 0x1000002, 0x2000000, 0x2000001, 0x2000002, 0x2000003):
        note = xen.last(number)
        assert note.spec.kind == X.IGNORED and note.value is None
    assert xen.last(0x2000000).descsz == 0
    assert xen.last(0x1000001).raw == bytes.fromhex("01000000020000000300000004000000")


def test_odd_sizes_read_as_zero():
    xen, report, _s = read(build(ODD_SIZE=1))
    pfn = xen.last(X.MOD_START_PFN)
    assert pfn.descsz == 3 and pfn.raw == b"\x01\0\0" and pfn.value == 0
    assert "descsz 3 is not 1, 2, 4 or 8: libelf reads 0" in pfn.observations
    sup = xen.last(X.SUPPORTED_FEATURES)
    assert sup.descsz == 6 and sup.value == 0 and sup.detail.used == 0
    # SUPPORTED_FEATURES is present but reads 0, and FEATURES does not name dom0
    assert statuses(report)["pv-dom0.dom0-feature"] == FAIL
    assert loads(report) == {PV_DOMU: True, PV_DOM0: False, PVH_DOMU: True, PVH_DOM0: True}


# -- checks and verdicts ------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [64, 32])
def test_good_fixture_loads_everywhere(bits):
    _x, report, _s = read(build(bits=bits))
    st = statuses(report)
    assert all(s != FAIL for s in st.values()), st
    assert st["pv-dom0.hypercall-page"] == PASS
    assert st["pv-dom0.hv-start-low"] == (NA if bits == 64 else PASS)
    assert all(loads(report).values()) and report.loads_any
    assert report.result("pv.bounds").detail.startswith(
        f"kernel {KBASE[bits] + 0x1000000:#x}-")


def test_supported_features_without_dom0():
    _x, report, _s = read(build(NO_DOM0=1))
    r = report.result("pv-dom0.dom0-feature")
    assert r.status == FAIL and "lacks dom0 (bit 11)" in r.detail
    assert loads(report) == {PV_DOMU: True, PV_DOM0: False, PVH_DOMU: True, PVH_DOM0: True}


def test_unknown_required_feature_refuses_everything():
    xen, report, _s = read(build(BOGUS_FEATURE=1))
    fs = xen.last(X.FEATURES).detail
    assert fs.required == ("writable_page_tables",) and fs.supported == ("dom0",)
    assert fs.unknown_required == ("bogus",)
    assert fs.error == "unknown required feature '!bogus'"
    assert statuses(report)["parse.features"] == FAIL
    assert not any(loads(report).values()) and not report.loads_any


def test_entry_outside_the_loaded_span():
    _x, report, _s = read(build(BAD_ENTRY=1))
    r = report.result("pv.bounds")
    assert r.status == FAIL and r.detail.endswith("entry below the kernel")
    assert loads(report) == {PV_DOMU: False, PV_DOM0: False, PVH_DOMU: True, PVH_DOM0: True}
    _x, report, _s = read(build(BAD_ENTRY=1, NO_PVH=1))
    assert statuses(report)["pvh.phys32-entry"] == FAIL
    assert not report.loads_any


def test_descsz_past_its_area_is_still_read():
    xen, report, _s = read(build(OVERRUN=1))
    last = xen.notes[-1]
    assert last.type == 0 and last.overruns and last.descsz == 0x40
    assert len(xen.problems) == 1 and "runs past the end of its area" in xen.problems[0]
    assert report.loads_any


def test_no_xen_notes():
    xen, report, _s = read(build(NO_XEN=1))
    assert xen.source is None and xen.notes == [] and xen.legacy is None
    assert xen.other_notes == [("GNU", 1, "PT_NOTE[2]"), ("GNU", 1, "section .notes")]
    r = report.result("pv.xen-elf")
    assert r.status == FAIL and "refuses at the loader/guest-OS test" in r.detail
    assert statuses(report)["pv.loader"] == FAIL
    assert not report.loads_any


def test_no_note_area_at_all():
    """An ELF without any note (the pv_sites fixture): Xen's own 'Not a Xen-ELF image'."""
    with ElfImage(assemble("pv_sites.S", 64)) as image:
        xen = X.read_xen_notes(image)
    report = run_checks(xen)
    assert not xen.note_area_seen and xen.areas == []
    assert report.result("pv.xen-elf").detail == "no note area and no __xen_guest section"
    assert not report.loads_any


def test_sht_note_fallback():
    xen, report, _s = read(build(SECTIONS_ONLY=1))
    assert xen.source == "SHT_NOTE"
    assert xen.areas == ["section .xennotes"]  # the empty PT_NOTE was dropped by ld
    assert len(xen.notes) == len(X.NOTE_TYPES) and report.loads_any


# -- legacy __xen_guest ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [64, 32])
def test_legacy_guest_string(bits):
    xen, report, syms = read(build("xen_guest_legacy.S", bits))
    assert xen.source == "__xen_guest" and xen.notes == []
    items = dict(xen.legacy.items)
    assert items["HYPERCALL_PAGE"] == "0x1001" and items["LOADER"] == "generic"
    pv = X.dom_parms(xen, hvm=False)
    assert pv.legacy_used and pv.virt_base == KBASE[bits]
    assert pv.virt_hypercall == syms["hypercall_page"]  # page 0x1001 << 12, + VIRT_BASE
    assert pv.virt_entry == syms["_start"]
    assert pv.pae == X.PAE_EXTCR3 and pv.f_required == 0
    assert pv.elf_paddr_offset is None  # defaults to VIRT_BASE: p_paddr holds virtual addresses
    assert report.result("pv.bounds").status == PASS
    assert report.result("pv-dom0.hypercall-page").status == PASS
    assert loads(report) == {PV_DOMU: True, PV_DOM0: True, PVH_DOMU: False, PVH_DOM0: False}
    assert X.dom_parms(xen, hvm=True).loader == ""  # PVH never reads __xen_guest


def test_legacy_feature_error_stops_the_string_but_is_ignored():
    xen, report, _s = read(build("xen_guest_legacy.S", 32, LEGACY_BOGUS=1))
    pv = X.dom_parms(xen, hvm=False)
    assert pv.ignored_error == "unknown required feature '!bogus'" and pv.parse_error is None
    assert pv.pae == X.PAE_NO and pv.loader == ""  # PAE and LOADER come after FEATURES
    st = statuses(report)
    assert st["parse.features"] == PASS and st["pv.loader"] == PASS  # GUEST_OS=linux suffices
    assert st["pv-domu.guest-type"] == FAIL and st["pv-dom0.compat"] == FAIL
    assert not report.loads_any


# -- grammar units ------------------------------------------------------------------------------

def test_feature_grammar():
    fs = X.parse_features("|writable_page_tables||!dom0|nonsense|")
    assert fs.supported == ("writable_page_tables",) and fs.required == ("dom0",)
    assert fs.unknown_supported == ("nonsense",) and fs.error is None
    assert fs.supported_bits == 0x801 and fs.required_bits == 0x800
    assert X.parse_features("!").error == "unknown required feature '!'"
    long = "x" * 63 + "dom0"
    assert X.feature_tokens(long) == ["x" * 63, "dom0"]  # cut at 63, the rest is a new token
    assert X.parse_features(long).supported == ("dom0",)
    # libelf stops at the first error: bits after it are never set
    assert X.parse_features("!bogus|dom0").supported_bits == 0


def test_guest_info_split_and_numbers():
    assert X.split_guest_info("A=1,B,C=x=y,") == [("A", "1"), ("B", ""), ("C", "x=y")]
    name = "N" * 31
    assert X.split_guest_info(name + "X=1") == [(name, ""), ("X", "1")]
    assert X.split_guest_info("V=" + "v" * 130)[0] == ("V", "v" * 127)
    assert X.strtoull("0x1001") == 0x1001 and X.strtoull("010") == 8
    assert X.strtoull(" 12abc") == 12 and X.strtoull("0xzz") == 0 and X.strtoull("") == 0
    assert X.strtoull("-1") == X.UNSET_ADDR and X.strtoull("9" * 30) == X.UNSET_ADDR


def test_pae_values():
    assert X.pae_from_note("yes") == X.PAE_EXTCR3
    assert X.pae_from_note("yes,bimodal") == X.PAE_BIMODAL
    assert X.pae_from_note("no") == X.pae_from_note("yes ") == X.PAE_NO
    assert X.pae_from_legacy("yes[extended-cr3]") == X.PAE_EXTCR3
    assert X.pae_from_legacy("yes") == X.PAE_YES and X.pae_from_legacy("bimodal") == X.PAE_NO


def test_tables_are_consistent():
    assert all(t.full_name.startswith("XEN_ELFNOTE_") for t in X.NOTE_TYPES.values())
    assert set(range(20)) <= set(X.NOTE_TYPES)
    assert {t.kind for t in X.NOTE_TYPES.values()} == {X.STR, X.INT, X.SPECIAL, X.IGNORED}
    assert sorted(X.STRING_FEATURE_BITS.values()) == [0, 1, 2, 3, 4, 8, 11]
    assert X.feature_names(0x8801) == ["writable_page_tables", "dom0", "linux_rsdp_unrestricted"]
    assert X.feature_names(1 << 30) == ["bit 30"]


# -- real kernels -------------------------------------------------------------------------------

@pytest.mark.realkernel
@pytest.mark.parametrize("flavour", ["cloud-amd64", "amd64"])
def test_real_kernel_invariants(flavour):
    path = real_kernel(flavour)
    with ElfImage(path) as image:
        xen = X.read_xen_notes(image)
        entry = xen.last(X.ENTRY)
        assert entry is not None and image.symbols.name_at(entry.value) == "startup_xen"
        phys = xen.last(X.PHYS32_ENTRY)
        assert phys is not None
        assert image.symbols.name_at(phys.value + value(xen, X.VIRT_BASE)) == "pvh_start_xen"
    assert xen.source == "PT_NOTE" and xen.problems == []
    assert value(xen, X.GUEST_OS) == "linux" and value(xen, X.XEN_VERSION) == "xen-3.0"
    assert value(xen, X.LOADER) == "generic"
    assert "writable_page_tables" in xen.last(X.FEATURES).detail.required
    report = run_checks(xen)
    assert all(r.status != FAIL for r in report.results)
    assert all(v.loads for v in report.verdicts)
    if flavour == "amd64":
        assert "dom0" in xen.last(X.SUPPORTED_FEATURES).detail.names
