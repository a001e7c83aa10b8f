"""`pvpatch apply` on a 6.1-shaped fixture: the exact bytes the kernel's boot patching writes.

Expected bytes are worked out by hand from Linux 6.1 (Debian 6.1.192 source):
- apply_paravirt() (arch/x86/kernel/alternative.c) calls paravirt_patch()
  (arch/x86/kernel/paravirt.c): NULL slot → `call paravirt_BUG`, `_paravirt_nop` → nothing,
  else `call <slot value>`; then add_nops() pads with x86_nops (P6 on 64-bit, nops.h);
- apply_alternatives() then copies each ALT_NOT replacement whose feature is absent, pads it
  with 0x90, and optimize_nops() turns the 0x90 run into one table NOP;
- paravirt_set_cap() (paravirt-spinlocks.c) forces PVUNLOCK / VCPUPREEMPT when the lock ops
  are not the native thunks; Xen sets XENPV and installs its ops (arch/x86/xen/*.c).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assemble

from pvpatch.image.elf import ElfImage

NOP = {1: "90", 3: "0f1f00", 4: "0f1f4000", 5: "0f1f440000", 6: "660f1f440000"}  # P6, 6.1


@pytest.fixture(scope="module")
def kernel() -> str:
    return str(assemble("pv_kernel61.S", 64))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


def call(image: ElfImage, site: int, target: str) -> str:
    rel = (image.symbols.address(target) - (site + 5)) & 0xFFFFFFFF
    return "e8" + rel.to_bytes(4, "little").hex() + NOP[1]


def expected(path: str, backend: str, vcpus: int = 2, bug: str = "paravirt_BUG") -> dict[str, str]:
    """op → bytes after boot patching, from the rules in the module docstring.

    6.8+ (6.12) reaches the same bytes by another road: the DIRECT_CALL alternative makes the
    call (alt_replace_call), the nested NOT-feature one the native code, optimize_nops() the
    padding — except that a NULL slot calls BUG_func.
    """
    with ElfImage(path) as im:
        start = im.symbols.address("_start")
        site = {op: start + 6 * i for i, op in enumerate((
            "cpu.io_delay", "cpu.cpuid", "irq.save_fl", "irq.irq_disable", "irq.irq_enable",
            "mmu.read_cr2", "mmu.pte_val", "mmu.write_cr3", "mmu.set_pte", "mmu.alloc_p4d",
            "lock.queued_spin_unlock", "lock.vcpu_is_preempted", "lock.kick"))}
        c = {op: (lambda t, op=op: call(im, site[op], t)) for op in site}
        native_lock = {"lock.queued_spin_unlock": "c60700" + NOP[3],
                       "lock.vcpu_is_preempted": "4831c0" + NOP[3], "lock.kick": NOP[6]}
        if backend == "native":
            return {"cpu.io_delay": c["cpu.io_delay"]("native_io_delay"),
                    "cpu.cpuid": c["cpu.cpuid"]("native_cpuid"),
                    "irq.save_fl": "9c58" + NOP[4], "irq.irq_disable": "fa" + NOP[5],
                    "irq.irq_enable": "fb" + NOP[5], "mmu.read_cr2": "0f20d0" + NOP[3],
                    "mmu.pte_val": "4889f8" + NOP[3], "mmu.write_cr3": "0f22df" + NOP[3],
                    "mmu.set_pte": c["mmu.set_pte"]("native_set_pte"),
                    "mmu.alloc_p4d": NOP[6], **native_lock}
        out = {"cpu.io_delay": c["cpu.io_delay"]("xen_io_delay"),
               "cpu.cpuid": c["cpu.cpuid"]("xen_cpuid"),
               "irq.save_fl": c["irq.save_fl"]("xen_save_fl_direct"),
               "irq.irq_disable": c["irq.irq_disable"]("xen_irq_disable_direct"),
               "irq.irq_enable": c["irq.irq_enable"]("xen_irq_enable_direct"),
               "mmu.read_cr2": c["mmu.read_cr2"]("xen_read_cr2_direct"),
               "mmu.pte_val": c["mmu.pte_val"]("__raw_callee_save_xen_pte_val"),
               "mmu.write_cr3": c["mmu.write_cr3"]("xen_write_cr3"),
               "mmu.set_pte": c["mmu.set_pte"]("xen_set_pte"),
               "mmu.alloc_p4d": c["mmu.alloc_p4d"](bug), **native_lock}
        if vcpus > 1:
            out.update({
                "lock.queued_spin_unlock": c["lock.queued_spin_unlock"](
                    "__raw_callee_save___pv_queued_spin_unlock"),
                "lock.vcpu_is_preempted": c["lock.vcpu_is_preempted"](
                    "__raw_callee_save_xen_vcpu_stolen"),
                "lock.kick": c["lock.kick"]("xen_qlock_kick")})
        return out


@pytest.mark.parametrize("era", ["6.1", "6.12"])
@pytest.mark.parametrize("backend,vcpus", [("native", 2), ("xen", 2), ("xen", 1)])
def test_patched_bytes_match_the_kernel_algorithm(kernel, tmp_path, backend, vcpus, era):
    if era == "6.12":  # no .parainstructions: DIRECT_CALL alternatives, 14-byte alt_instr
        kernel = str(assemble("pv_kernel61.S", 64, defsyms={"ERA612": 1}))
    out = tmp_path / "patched"
    vcpu_args = ("--vcpus", str(vcpus)) if backend == "xen" else ()  # native refuses it
    r = run("apply", kernel, "-o", str(out), "--backend", backend, *vcpu_args,
            "--report", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    got = {s["op"]: s["after"] for s in report["sites"]}
    assert got == expected(kernel, backend, vcpus,
                           bug="BUG_func" if era == "6.12" else "paravirt_BUG")
    with ElfImage(str(out)) as im:  # the file really holds them
        for s in report["sites"]:
            assert im.read(int(s["address"], 16), s["length"]).hex() == s["after"]


def test_only_site_bytes_change_and_input_is_untouched(kernel, tmp_path):
    before = Path(kernel).read_bytes()
    out = tmp_path / "patched"
    assert run("apply", kernel, "-o", str(out), "--backend", "xen").returncode == 0
    after = out.read_bytes()
    assert Path(kernel).read_bytes() == before
    report = json.loads(run("apply", kernel, "--dry-run", "--json").stdout)
    with ElfImage(kernel) as im:
        allowed = set()
        for s in report["sites"]:
            off = im.offset_of(int(s["address"], 16))
            allowed.update(range(off, off + s["length"]))
    changed = {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    assert changed and changed <= allowed


def test_unrelated_alternatives_are_left_alone_and_counted(kernel):
    d = json.loads(run("apply", kernel, "--dry-run", "--json").stdout)
    assert d["alternatives"]["applied_to_pv_sites"] == 8
    assert d["alternatives"]["left_alone"] == 1
    assert d["counts"] == {"direct-call": 3, "inline-native": 8, "nop": 2}


def test_features_decided_per_backend(kernel):
    xen2 = json.loads(run("apply", kernel, "--dry-run", "--json", "--backend", "xen").stdout)
    xen1 = json.loads(run("apply", kernel, "--dry-run", "--json", "--backend", "xen",
                          "--vcpus", "1").stdout)
    assert "forced" in xen2["backend"]["features"]["X86_FEATURE_PVUNLOCK"]
    assert "not set" in xen1["backend"]["features"]["X86_FEATURE_PVUNLOCK"]
    assert xen1["backend"]["features"]["X86_FEATURE_XENPV"] == "forced by xen_start_kernel"


def test_dry_run_writes_nothing_and_output_must_differ(kernel, tmp_path):
    r = run("apply", kernel, "--dry-run")
    assert r.returncode == 0 and "dry run: nothing written" in r.stdout
    r = run("apply", kernel, "-o", kernel)
    assert r.returncode == 2 and "use --in-place" in r.stderr
    r = run("apply", kernel)
    assert r.returncode == 2 and "-o OUT" in r.stderr


def test_in_place_replaces_atomically(kernel, tmp_path):
    copy = tmp_path / "vmlinux"
    copy.write_bytes(Path(kernel).read_bytes())
    assert run("apply", str(copy), "--in-place").returncode == 0
    assert copy.read_bytes() != Path(kernel).read_bytes()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".pvpatch-")]


def test_a_missing_target_folder_is_a_one_line_error(kernel, tmp_path):
    r = run("apply", kernel, "-o", str(tmp_path / "missing" / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no such directory" in r.stderr
    assert not (tmp_path / "missing").exists()


def test_clobber_violation_is_reported_with_site_op_target_and_registers(tmp_path):
    bad = str(assemble("pv_kernel61.S", 64, defsyms={"BAD_CLOBBER": 1}))
    d = json.loads(run("apply", bad, "--dry-run", "--json", "--backend", "xen").stdout)
    flagged = [s for s in d["sites"] if s["problems"]]
    assert [(s["op"], s["target"]) for s in flagged] == [("irq.save_fl", "xen_save_fl_direct")]
    assert flagged[0]["clobber_violations"] == ["rcx"]
    assert "outside the site's mask 0x1 (rax)" in flagged[0]["problems"][0]
    r = run("apply", bad, "--dry-run", "--backend", "xen", "--check")
    assert r.returncode == 1 and "problems  1" in r.stdout


def test_callee_save_thunk_is_verified_from_its_code(kernel):
    d = json.loads(run("apply", kernel, "--dry-run", "--json", "--backend", "xen").stdout)
    site = next(s for s in d["sites"] if s["op"] == "lock.vcpu_is_preempted")
    assert site["target"] == "__raw_callee_save_xen_vcpu_stolen"
    assert site["clobbers"] == [] and site["clobber_source"].startswith("code of")
    assert not site["problems"]
    r = run("apply", kernel, "--dry-run", "--backend", "xen", "--check")
    assert r.returncode == 0


@pytest.mark.parametrize("backend", ["native", "xen"])
def test_diff_classifies_what_apply_wrote(kernel, tmp_path, backend):
    out = tmp_path / "patched"
    assert run("apply", kernel, "-o", str(out), "--backend", backend).returncode == 0
    planned = json.loads(run("apply", kernel, "--dry-run", "--json", "--backend",
                             backend).stdout)
    seen = json.loads(run("diff", kernel, str(out), "--json").stdout)
    assert seen["counts"] == planned["counts"]
    assert [s["after"] for s in seen["sites"]] == [s["after"] for s in planned["sites"]]
    text = run("diff", kernel, str(out), "--sites", "--changed").stdout
    assert "→" in text and "sites     13, 13 differ" in text


def test_inspect_backend_explains_every_target(kernel):
    d = json.loads(run("inspect", kernel, "--json", "--backend", "xen", "--vcpus", "1").stdout)
    ops = {o["op"]: o for o in d["backend"]["ops"]}
    assert ops["irq.save_fl"]["target"] == "xen_save_fl_direct"
    assert "xen_setup_vcpu_info_placement" in ops["irq.save_fl"]["reason"]
    assert ops["mmu.alloc_p4d"]["target"] == "NULL"
    assert ops["lock.kick"]["target"] == "_paravirt_nop"  # 1 vCPU: pv spinlocks stay off
    text = run("inspect", kernel, "--backend", "xen").stdout
    assert "xen_qlock_kick" in text and "xen_init_spinlocks" in text
