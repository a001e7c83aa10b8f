"""Real-kernel tier: Debian's 32-bit 686-pae kernel, debug vmlinux and bootable vmlinuz.

The vmlinux has DWARF but no BTF; the vmlinuz has neither, no .symtab, and kallsyms without
data symbols (no pv_ops), so its table is found from the call sites and named from the
built-in "6.1 i386 !XXL" table: both must give the same sites, ops and bytes. Invariants of a
6.1 i386 kernel without PARAVIRT_XXL, not this image's numbers. Skips loudly when the kernel is
not cached (`make fetch`).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import real_kernel

from pvpatch.cli import cli
from pvpatch.image.elf import ElfImage
from pvpatch.kernel.model import KernelModel

pytestmark = pytest.mark.realkernel


@pytest.fixture(scope="module")
def path() -> str:
    return str(real_kernel("686-pae", "6.1", "vmlinux"))


@pytest.fixture(scope="module")
def model(path):
    with KernelModel.open(path) as m:
        yield m


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_elf32_with_dwarf_types_and_no_btf(model):
    assert model.image.bits == 32 and model.image.ptr_size == 4
    assert model.image.section(".BTF") is None
    assert model.types is not None and model.types.origin == "dwarf"
    assert (model.version.major, model.version.minor) == (6, 1)


def test_pv_ops_without_xxl_and_era_5_13_to_6_7(model):
    names = {s.name for s in model.pvops.slots.values()}
    assert "cpu.io_delay" in names and "lock.queued_spin_unlock" in names
    assert not any(n.startswith("irq.") for n in names)  # pv_irq_ops is PARAVIRT_XXL only
    assert "cpu.cpuid" not in names
    assert model.era is not None and model.era.era.key == "G5"


def test_layout_is_i386_with_stale_clobber_words(model):
    t = model.sites
    assert t.layout.name == "i386+stale-clobbers" and t.layout.stride == 8
    assert "from dwarf" in t.layout_reason
    assert {s.clobbers for s in t.sites} <= {0x1, 0x5, 0xf}


def test_every_site_is_an_indirect_call_through_its_slot(model):
    sites = model.sites.sites
    assert len(sites) > 100
    for s in sites:
        assert not s.problems, (hex(s.address), s.problems)
        assert s.insns and s.insns[0].is_indirect_branch and s.insns[0].raw[:2] == b"\xff\x15"
        assert sum(i.size for i in s.insns) == s.length
        assert s.slot is not None and s.call_target == s.slot.address
        assert s.native_name is not None


def test_native_targets(model):
    by_op = {s.op: s.native_name for s in model.sites.sites}
    assert by_op["cpu.io_delay"] == "native_io_delay"
    assert by_op["lock.queued_spin_unlock"] == "__raw_callee_save___native_queued_spin_unlock"


def test_apply_native_check_exit_0(path, tmp_path):
    r = run("apply", "--json", "--backend", "native", "--check", path, "-o", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["era"] == "G5" and doc["nop_table"] == "generic32"
    assert doc["changed_sites"] > 100 and doc["counts"]["direct-call"] > 0


def test_check_passes(path):
    r = run("check", path)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output


def test_xen_is_not_applicable_to_a_32_bit_kernel(path, tmp_path):
    r = run("apply", "--backend", "xen", path, "-o", str(tmp_path / "x"))
    assert r.exit_code == 2
    assert "32-bit Xen PV guest support was removed in 5.9" in r.stderr
    assert "Traceback" not in r.stderr


# -- the bootable vmlinuz: no .symtab, no DWARF, no BTF, kallsyms without data symbols ---------

@pytest.fixture(scope="module")
def vmlinuz() -> str:
    return str(real_kernel("686-pae", "6.1", "vmlinuz"))


def run_json(*args: str) -> dict:
    r = run(*args)
    assert r.exit_code in (0, 1), r.stderr
    return json.loads(r.stdout)


def test_vmlinuz_has_no_types_and_no_pv_ops_symbol(vmlinuz):
    with KernelModel.open(vmlinuz) as m:
        assert m.types is None and m.image.symbols.source == "kallsyms"
        assert m.image.symbols.get("pv_ops") is None
        assert m.pvops.base_origin.startswith("address derived from")
        assert m.builtin.table is not None and m.builtin.table.name == "6.1 i386 !XXL"


def test_vmlinuz_inspect_matches_the_debug_vmlinux(path, vmlinuz):
    a = run_json("inspect", "--json", "--sites", "--backend", "native", path)
    b = run_json("inspect", "--json", "--sites", "--backend", "native", vmlinuz)
    assert b["pv_table"]["types"] == "builtin" and b["pv_table"]["builtin_table"]
    assert b["input"]["types"].startswith('built-in table "6.1 i386 !XXL" (no BTF/DWARF')
    assert a["pv_table"]["address"] == b["pv_table"]["address"]
    assert a["pv_table"]["slots"] == b["pv_table"]["slots"]
    assert a["patch_era"]["era"] == b["patch_era"]["era"] == "G5"
    assert {k: v for k, v in a["layout"].items() if k != "detected_from"} == \
        {k: v for k, v in b["layout"].items() if k != "detected_from"}
    assert a["ops"] == b["ops"] and a["backend"]["ops"] == b["backend"]["ops"]
    assert len(a["sites"]) == len(b["sites"]) > 100
    for x, y in zip(a["sites"], b["sites"], strict=True):
        assert x == y, (x["address"], {k: (x[k], y[k]) for k in x if x[k] != y[k]})


def test_vmlinuz_apply_writes_the_same_bytes(path, vmlinuz, tmp_path):
    a = run_json("apply", "--json", "--backend", "native", path, "-o", str(tmp_path / "a"))
    b = run_json("apply", "--json", "--backend", "native", vmlinuz, "-o", str(tmp_path / "b"))
    assert b["notes"][0].startswith('op names from built-in table "6.1 i386 !XXL"')
    for k in ("era", "counts", "changed_sites", "ops", "alternatives", "nop_table"):
        assert a[k] == b[k], k
    with KernelModel.open(path) as model, ElfImage(tmp_path / "a") as pa, \
            ElfImage(tmp_path / "b") as pb:
        for s in model.sites.sites:
            assert pa.read(s.address, s.length) == pb.read(s.address, s.length), hex(s.address)
        for name in (".text", ".init.text", ".altinstr_replacement"):
            sa, sb = pa.section(name), pb.section(name)
            assert bytes(pa.section_data(sa)) == bytes(pb.section_data(sb)), name


def test_vmlinuz_check_passes(vmlinuz):
    r = run("check", vmlinuz)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and 'op names from built-in table "6.1 i386 !XXL"' in r.output
    r = run("apply", "--backend", "xen", vmlinuz, "--dry-run")
    assert r.exit_code == 2 and "32-bit Xen PV guest support was removed in 5.9" in r.stderr
