"""`pvpatch apply` on kernels before 5.13: the bytes each era's native_patch writes.

Fixtures: fixtures/pv_legacy.S (ERA=1…4), built by tests/legacy_fixtures.py. Expected bytes
are worked out by hand from each era's source, as the fact sheet (kernel-pv §4) reads it:
- 2.6.20 arch/i386/kernel/paravirt.c native_patch(): the enum type's native_insns entry if it
  fits, else nothing; alternative.c apply_paravirt() pads with nop_out() (find_nop_table: the
  intel table on an Intel CPU without X86_FEATURE_K8/K7);
- 2.6.22 arch/i386/kernel/paravirt.c native_patch() (the pte_val/make_pgd … 0-byte case)
  and paravirt_patch_default(): NULL → ud2a, paravirt_nop → 0, iret/sysexit → jmp, else
  paravirt_patch_call() with CLBR_ANY, refused when the site mask lacks a bit of it;
- 4.18/4.19 arch/x86/kernel/paravirt_patch_{32,64}.c native_patch() + paravirt.c
  paravirt_patch_default() (ident_32/64, jmp for iret/usergs_sysret64); b13b271933ee (4.19)
  removed the clobber check; add_nops() with arch_init_ideal_nops()' choice for a current
  Intel CPU: P6 on x86-64, the intel (GENERIC) table on i386, which never has NOPL;
- 5.2/5.10 arch/x86/kernel/paravirt_patch.c (5.3+: BUG_ON when a replacement or call does
  not fit; ≤5.2 leaves the site) and paravirt.c paravirt_patch_default().
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import one_line_error
from legacy_fixtures import legacy_kernel

from pvpatch.image.elf import ElfImage
from pvpatch.kernel.model import KernelModel

INTEL = {0: "", 1: "90", 2: "89f6", 3: "8d7600", 4: "8d742600", 5: "908d742600",
         6: "8db600000000", 7: "8db42600000000", 8: "908db42600000000"}  # ≤5.12 GENERIC, nops.h
P6 = {0: "", 1: "90", 2: "6690", 3: "0f1f00", 4: "0f1f4000", 5: "0f1f440000",
      6: "660f1f440000", 7: "0f1f8000000000"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


def planned(path: str) -> list[dict]:
    r = run("apply", path, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["sites"]


def rel(path: str, site: dict, opcode: str, target: str) -> str:
    """e8/e9 rel32 to ``target`` from the site, as paravirt_patch_call/_jmp encode it."""
    with ElfImage(path) as im:
        to = im.symbols.address(target) - (int(site["address"], 16) + 5)
    return opcode + (to & 0xFFFFFFFF).to_bytes(4, "little").hex()


def test_2_6_20_inline_only_by_enum_type():
    path = legacy_kernel(1)
    sites = planned(path)
    got = {s["op"]: s["after"] for s in sites}
    assert got == {"irq_disable": "fa" + INTEL[8] + INTEL[1],
                   "save_fl": "9c58" + INTEL[8],
                   "save_fl+irq_disable": "9c58fa" + INTEL[8] + INTEL[7],  # 18-byte site
                   "iret": "cf" + INTEL[6],
                   "irq_enable_sysexit": "fb0f35" + INTEL[4],
                   "restore_fl": "509d" + INTEL[8]}


def test_2_6_22_native_patch_and_default():
    path = legacy_kernel(2)
    sites = planned(path)
    got = {s["op"]: s["after"] for s in sites}
    io = next(s for s in sites if s["op"] == "io_delay")
    assert got == {"io_delay": rel(path, io, "e8", "native_io_delay") + INTEL[1],
                   "irq_disable": "fa" + INTEL[8] + INTEL[1],
                   "save_fl": "9c58" + INTEL[8],
                   "iret": "cf" + INTEL[6],
                   "read_cr2": "0f20d0" + INTEL[3],
                   "read_tsc": "0f31" + INTEL[4],
                   "pte_val": INTEL[6],  # the 2.6.22–23 0-byte case
                   "alloc_pt": INTEL[6],  # _paravirt_nop
                   "set_iopl_mask": "0f0b" + INTEL[4],  # NULL: ud2a
                   "flush_tlb_user": next(s["before"] for s in sites
                                          if s["op"] == "flush_tlb_user"),
                   "irq_enable_sysexit": "fb0f35" + INTEL[4]}
    refused = next(s for s in sites if s["op"] == "flush_tlb_user")
    assert refused["outcome"] == "unpatched" and "clobber check" in refused["reason"]


def _split_expected(path: str, sites: list[dict], bits: int, version: int,
                    pv_unlock: bool) -> list[str]:
    """Eras 3 and 4, site by site in fixture order (see pv_legacy.S)."""
    pad = INTEL if bits == 32 else P6  # i386: no NOPL, so the GENERIC table
    call_pad, ins = (pad[1], 6) if bits == 32 else (pad[2], 7)
    s = sites
    out = [rel(path, s[0], "e8", "native_io_delay") + call_pad,
           "fa" + pad[ins - 1], "9c58" + pad[ins - 2], "0f20d0" + pad[ins - 3]]
    if bits == 32:  # i386: paravirt_patch_ident_32/64 return 0
        out += [pad[6], pad[6]]
    else:
        pmd = "89f8" if version < 42000 else "4889f8"  # ident_32 gone in 4.20
        out += ["4889f8" + pad[4], pmd + pad[7 - len(pmd) // 2]]
    out += [pad[ins], "0f0b" + pad[ins - 2]]
    if bits == 32:
        out.append("cf" + pad[5])  # iret inline on i386
    else:
        out += [rel(path, s[8], "e9", "native_iret") + pad[1], "0f01f8480f07"]
    unlock = s[len(out)]
    if not pv_unlock:
        out.append(("c60000" if bits == 32 else "c60700") + pad[ins - 3])
    elif version < 41900:
        out.append(unlock["before"])  # clobber check: mask RET_REG lacks CLBR_ANY
    else:
        out.append(rel(path, unlock, "e8", "__raw_callee_save___pv_queued_spin_unlock")
                   + call_pad)
    vcpu = "31c0" if bits == 32 or version >= 42000 else "4831c0"
    out.append(vcpu + pad[ins - len(vcpu) // 2])
    out += [s[-2]["before"], s[-1]["before"]]  # 2-byte sites: left (≤5.2) or BUG (5.3+)
    return out


@pytest.mark.parametrize("era,bits,version", [(3, 32, 41800), (3, 32, 41900),
                                              (3, 64, 41800), (3, 64, 41900),
                                              (4, 64, 50200), (4, 64, 51000)])
@pytest.mark.parametrize("pv_unlock", [False, True])
def test_split_and_single_pv_ops(era, bits, version, pv_unlock):
    extra = {"PV_UNLOCK": 1} if pv_unlock else {}
    path = legacy_kernel(era, bits, version, **extra)
    sites = planned(path)
    assert [s["after"] for s in sites] == _split_expected(path, sites, bits, version,
                                                          pv_unlock)
    unlock = next(s for s in sites if s["op"].endswith("queued_spin_unlock"))
    if pv_unlock and version < 41900:
        assert "refused" in unlock["reason"] and not unlock["problems"]
    bugs = [s for s in sites if s["problems"]]
    assert len(bugs) == (2 if version >= 50300 else 0)
    assert all("BUG_ON" in s["problems"][0] for s in bugs)


def test_era_detection_per_fixture():
    expect = {1: ("G1", "__start_parainstructions"), 2: ("G2", "__parainstructions"),
              3: ("G3", "split op globals"), 4: ("G4", "init member (btf)")}
    for era, (key, why) in expect.items():
        with KernelModel.open(legacy_kernel(era, 32 if era < 3 else 64)) as m:
            assert m.era.era.key == key and why in m.era.evidence and m.era.conflict is None


def test_without_types_slots_come_from_symbols():
    from conftest import assemble

    with KernelModel.open(str(assemble("pv_legacy.S", 64,
                                       defsyms={"ERA": 4, "VER": 51000}))) as m:
        assert m.era.era.key == "G4" and "native_patch" in m.era.evidence
    with KernelModel.open(str(assemble("pv_legacy.S", 64,
                                       defsyms={"ERA": 3, "VER": 41900}))) as m:
        assert [s.op for s in m.sites.sites[:2]] == ["pv_cpu_ops+0x0", "pv_irq_ops+0x8"]
        assert not any(s.problems for s in m.sites.sites)


@pytest.mark.parametrize("era,bits,version,status", [
    (1, 32, 22620, 0), (2, 32, 22622, 0), (3, 32, 41800, 0), (3, 64, 41900, 0),
    (4, 64, 50200, 0), (4, 64, 51000, 1)])
def test_cli_apply_and_check_per_era(tmp_path, era, bits, version, status):
    path = legacy_kernel(era, bits, version)
    r = run("apply", path, "--dry-run", "--check")
    assert r.returncode == status and "Traceback" not in r.stderr, r.stderr
    assert f"era G{era}" in r.stdout
    d = json.loads(run("apply", path, "--dry-run", "--json").stdout)
    assert d["era"] == f"G{era}" and d["sites"]
    out = tmp_path / "patched"
    assert run("apply", path, "-o", str(out)).returncode == 0
    with ElfImage(str(out)) as im:
        for s in d["sites"]:
            assert im.read(int(s["address"], 16), s["length"]).hex() == s["after"]
    c = run("check", path)
    assert c.returncode in (0, 1) and "Traceback" not in c.stderr, c.stderr
    assert (c.returncode == 1) == (status == 1)
    if status:
        assert "fit.call-too-long" in c.stdout
    i = json.loads(run("inspect", path, "--json").stdout)
    assert i["patch_era"]["era"] == f"G{era}"


@pytest.mark.parametrize("era", [1, 2, 3, 4])
def test_xen_on_old_eras_is_a_clear_refusal(era):
    r = run("apply", legacy_kernel(era, 32 if era < 3 else 64), "--dry-run",
            "--backend", "xen")
    one_line_error(r, "Xen PV")
