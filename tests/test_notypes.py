"""Kernels without type information: the op table found from its call sites, the record
layout chosen by version, and the built-in slot-name tables (chosen or refused)."""

from __future__ import annotations

import pytest
from conftest import assemble

from pvpatch.kernel.model import KernelModel


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
