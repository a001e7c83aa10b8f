"""Kernels without type information: the op table found from its call sites, the record
layout chosen by version, and the built-in slot-name tables (chosen or refused)."""

from __future__ import annotations

import pytest
from conftest import assemble

from pvpatch.kernel import builtin_choice
from pvpatch.kernel.model import KernelModel
from pvpatch.types.builtin import BuiltinTable, BuiltinTypes


def model_of(bits: int = 64, **defsyms: int) -> KernelModel:
    if bits == 32:
        defsyms["I386"] = 1
    ld = ("-x",) if defsyms.get("NO_PVOPS_SYM") else ()
    return KernelModel.open(str(assemble("pv_sites.S", bits, defsyms=defsyms, ld_args=ld)))


# -- the table's address from the sites ------------------------------------------------------

@pytest.mark.parametrize("bits", [32, 64])
def test_base_derived_when_every_site_agrees(bits):
    with model_of(bits) as named, model_of(bits, NO_PVOPS_SYM=1) as m:
        assert m.image.symbols.get("pv_ops") is None
        pv = m.pvops
        assert pv.base == named.pvops.base
        assert pv.base_origin == "address derived from 8 call sites"
        assert "address derived from 8 call sites" in pv.described
        assert "slots up to the highest type a site uses" in pv.described
        assert len(pv.slots) == 6  # types 0..5
        sites = m.sites.sites
        assert not any(s.problems for s in sites)
        assert [s.native_name for s in sites] == [s.native_name for s in named.sites.sites]
        assert [s.op for s in sites[:2]] == ["pv_ops+0x0", f"pv_ops+{bits // 8:#x}"]


def test_base_derived_when_a_few_sites_disagree():
    with model_of(64, NO_PVOPS_SYM=1, BAD_TYPE=1) as m:
        assert m.pvops.base_origin == "address derived from 7 of 8 call sites"
        bad = [s for s in m.sites.sites if s.problems]
        assert [s.index for s in bad] == [2]
        assert "type 3 names pv_ops+0x18 but the call reads pv_ops+0x10" in bad[0].problems[0]


def test_no_base_when_the_sites_agree_on_none():
    with model_of(64, NO_PVOPS_SYM=1, SCRAMBLE=1) as m:
        assert m.pvops.container is None and m.pvops.base is None
        assert m.pvops.described.startswith("no pv-op table found (the call sites agree on no "
                                            "table address (the most common, 0x")
        assert "is named by 2 of 8)" in m.pvops.described
        assert all(s.problems for s in m.sites.sites)


def test_a_symbol_wins_over_derivation():
    with model_of(64) as m:
        assert m.table_base is None and m.pvops.base_origin == "symbol pv_ops"


def test_no_derivation_before_4_20():
    with model_of(32, NO_PVOPS_SYM=1, RELEASE=419) as m:
        assert m.pvops.container is None
        assert "separate globals before 4.20" in m.pvops.described


def test_apply_cli_runs_on_a_derived_table(tmp_path):
    from click.testing import CliRunner

    from pvpatch.cli import cli

    path = str(assemble("pv_sites.S", 64, defsyms={"NO_PVOPS_SYM": 1}, ld_args=("-x",)))
    r = CliRunner().invoke(cli, ["inspect", path])
    assert r.exit_code == 0 and "address derived from 8 call sites" in r.stdout
    bad = str(assemble("pv_sites.S", 64, defsyms={"NO_PVOPS_SYM": 1, "SCRAMBLE": 1},
                       ld_args=("-x",)))
    r = CliRunner().invoke(cli, ["apply", "--dry-run", bad])
    assert r.exit_code == 2
    assert "the call sites agree on no table address" in r.stderr


# -- the record layout by version ------------------------------------------------------------

@pytest.mark.parametrize(("defsyms", "layout", "why"), [
    ({}, "i386+stale-clobbers", "kernel 6.1 names the variant"),
    ({"NO_PVOPS_SYM": 1}, "i386+stale-clobbers", "kernel 6.1 names the variant"),
    ({"RELEASE": 419, "NO_PVOPS_SYM": 1}, "i386+clobbers", "kernel 4.19 names the variant"),
    ({"RELEASE": 65, "CLOBBERS": 0}, "i386", "kernel 6.5 names the variant"),
    ({"CLOBBERS": 0}, "i386", "kernel 6.1 would mean i386+stale-clobbers, but the clobber "
                              "words are all zero"),
    ({"NO_BANNER": 1}, "i386+stale-clobbers", "validated against the code"),  # pv_ops: 4.20+
    ({"NO_BANNER": 1, "NO_PVOPS_SYM": 1}, "i386+clobbers", "validated against the code"),
], ids=["6.1", "6.1-nosym", "4.19", "6.5-bare", "6.1-bare", "nover", "nover-nosym"])
def test_layout_follows_the_version_when_there_are_no_types(defsyms, layout, why):
    with model_of(32, **defsyms) as m:
        assert m.sites.layout.name == layout
        assert m.sites.layout_reason.endswith(why)


# -- built-in slot tables --------------------------------------------------------------------

FIXTURE_SLOTS = (("cpu.io_delay", "native_io_delay"), ("irq.save_fl", "native_save_fl"),
                 ("irq.irq_disable", "native_irq_disable"), ("mmu.pte_val", "_paravirt_ident_64"),
                 ("mmu.flush", "_paravirt_nop"), ("lock.kick", "NULL"))


def table(name="6.1 x86_64 fixture", series=(6, 1), bits=64, slots=FIXTURE_SLOTS):
    return BuiltinTable(name, series, bits, "fixture config", "pv_sites.S", slots)


@pytest.fixture
def tables(monkeypatch):
    """Replace the built-in tables with the given ones for the test."""
    def use(*ts: BuiltinTable) -> None:
        monkeypatch.setattr(builtin_choice, "tables", lambda: ts)
    return use


@pytest.mark.parametrize("nosym", [0, 1], ids=["pv_ops", "derived"])
def test_a_fitting_table_names_the_slots(tables, nosym):
    tables(table(bits=32, name="6.1 i386 other"), table())
    with model_of(64, NO_PVOPS_SYM=nosym) as m:
        assert m.types is None
        b = m.builtin
        assert b.table.name == "6.1 x86_64 fixture" and b.matched == 6
        assert b.refusals == ["6.1 i386 other: for 32-bit kernels, the image is 64-bit"]
        assert m.pvops.type_origin == "builtin"
        assert [s.op for s in m.sites.sites[:3]] == ["cpu.io_delay", "irq.save_fl",
                                                    "irq.irq_disable"]
        assert 'layout from built-in table "6.1 x86_64 fixture"' in m.pvops.described
        assert not any(s.problems for s in m.sites.sites)


@pytest.mark.parametrize(("defsyms", "slots", "why"), [
    ({"RELEASE": 65}, FIXTURE_SLOTS, "for 6.1, the image is 6.5"),
    ({"NO_BANNER": 1}, FIXTURE_SLOTS, "the kernel version is unknown"),
    ({"I386": 1}, FIXTURE_SLOTS, "for 64-bit kernels, the image is 32-bit"),
    ({}, FIXTURE_SLOTS[:4], "4 slots, but a site uses type 5"),
    ({}, tuple((n, "native_" + n.split(".")[1]) for n, _t in FIXTURE_SLOTS),
     "only 3 of 6 slot values are the functions it names (e.g. mmu.pte_val holds "
     "_paravirt_ident_64, not native_pte_val)"),
], ids=["version", "no-version", "bits", "too-short", "implausible"])
def test_a_table_that_does_not_fit_leaves_offsets(tables, defsyms, slots, why):
    tables(table(slots=slots))
    bits = 32 if defsyms.pop("I386", 0) else 64
    with model_of(bits, **defsyms) as m:
        assert m.builtin.table is None
        assert m.builtin.refusals[0].startswith(f"6.1 x86_64 fixture: {why}")
        assert m.pvops.type_origin is None
        assert m.sites.sites[0].op == "pv_ops+0x0"


def test_implausible_names_the_first_disagreeing_slot(tables):
    wrong = (FIXTURE_SLOTS[0], *((n, "xen_" + n) for n, _ in FIXTURE_SLOTS[1:]))
    tables(table(slots=wrong))
    with model_of(64) as m:
        assert m.builtin.refusals == [
            "6.1 x86_64 fixture: only 1 of 6 slot values are the functions it names "
            "(e.g. irq.save_fl holds native_save_fl, not xen_irq.save_fl)"]


def test_the_best_of_two_fitting_tables_wins(tables):
    five = (*FIXTURE_SLOTS[:5], ("lock.kick", "native_kick"))
    tables(table(name="5 of 6", slots=five), table(name="6 of 6"))
    with model_of(64) as m:
        assert m.builtin.table.name == "6 of 6" and m.builtin.refusals == []


def test_no_table_without_an_address(tables):
    tables(table())
    with model_of(64, NO_PVOPS_SYM=1, SCRAMBLE=1) as m:
        assert m.builtin.table is None
        assert m.builtin.refusals == ["the pv-op table's address is unknown"]


def test_image_types_come_before_any_builtin_table(tables):
    tables(table())
    with KernelModel.open(str(assemble("pv_kernel61.S", 64))) as m:
        assert m.types is not None and m.builtin is None


def test_builtin_table_is_labelled_in_inspect_and_apply(tables, tmp_path):
    import json

    from click.testing import CliRunner

    from pvpatch.cli import cli

    tables(table())
    path = str(assemble("pv_sites.S", 64, defsyms={"NO_PVOPS_SYM": 1, "PATCHER": 1},
                        ld_args=("-x",)))
    r = CliRunner().invoke(cli, ["inspect", path])
    assert r.exit_code == 0, r.stderr
    assert ('  types     built-in table "6.1 x86_64 fixture" (no BTF/DWARF in the image): '
            "fixture config; read from pv_sites.S; 6 of 6 slot values agree") in r.stdout
    doc = json.loads(CliRunner().invoke(cli, ["inspect", "--json", path]).stdout)
    assert doc["pv_table"]["types"] == "builtin"
    assert doc["pv_table"]["builtin_table"] == "6.1 x86_64 fixture"
    assert doc["pv_table"]["address_from"] == "address derived from 8 call sites"
    r = CliRunner().invoke(cli, ["apply", "--dry-run", path])
    assert r.exit_code == 0, r.stderr
    assert 'note      op names from built-in table "6.1 x86_64 fixture"' in r.stdout
    assert "lock.kick" in r.stdout and "bug-call" in r.stdout


def test_inspect_says_why_no_table_fits():
    from click.testing import CliRunner

    from pvpatch.cli import cli

    path = str(assemble("pv_sites.S", 64, defsyms={"NO_PVOPS_SYM": 1}, ld_args=("-x",)))
    r = CliRunner().invoke(cli, ["inspect", path])
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("  types"))
    assert "no built-in table fits (" in line and "pv ops are named by offset" in line
    assert "6.1 x86_64 XXL: 84 slots" not in line  # the real table: refused by plausibility
    assert "6.1 x86_64 XXL: no section holds" in line or "6.1 x86_64 XXL: only" in line


# -- the real built-in data ------------------------------------------------------------------

def test_builtin_data_is_well_formed():
    from pvpatch.types.builtin import tables as real

    names = [t.name for t in real()]
    assert len(names) == len(set(names)) and "6.1 i386 !XXL" in names
    for t in real():
        assert t.bits in (32, 64) and t.source and t.config
        assert len({s for s, _ in t.slots}) == len(t.slots)
        assert ("cpu.cpuid" in dict(t.slots)) == t.name.endswith(" XXL")
        assert t.slots[0] == ("cpu.io_delay", "native_io_delay")


def test_builtin_layout_nests_members_for_the_xen_copies():
    from pvpatch.types.builtin import tables as real

    t = next(t for t in real() if t.name == "6.1 x86_64 XXL")
    lay = BuiltinTypes(t).struct("paravirt_patch_template")
    assert lay.size == len(t.slots) * 8
    assert [f.name for f in lay.fields] == ["cpu", "irq", "mmu", "lock"]
    mmu = lay.field("mmu")
    leaves = {p: off for p, off, _f in lay.leaves()}
    first_mmu = min(off for p, off in leaves.items() if p.startswith("mmu."))
    assert mmu.offset == first_mmu and mmu.size == 8 * sum(p.startswith("mmu.") for p in leaves)
    assert leaves == {name: 8 * i for i, (name, _t) in enumerate(t.slots)}
