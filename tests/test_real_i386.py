"""Real-kernel tier: Debian's 32-bit 686-pae debug vmlinux (ELF32, DWARF, no BTF).

Invariants of a 6.1 i386 kernel built with CONFIG_PARAVIRT but without PARAVIRT_XXL, not this
image's numbers. Skips loudly when the kernel is not cached (`make fetch`).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import real_kernel

from pvpatch.cli import cli
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
    assert "32-bit Xen PV guests were dropped in Linux 5.9" in r.stderr
    assert "Traceback" not in r.stderr
