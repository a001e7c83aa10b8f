"""`pvpatch apply --backend xen` on kernels before 5.13: the bytes a Xen PV guest patches in.

Fixture: fixtures/xen_legacy.S (ERA=2…4), built by tests/legacy_fixtures.py. Expected bytes
are worked out by hand from each era's source:
- 2.6.23 arch/i386/xen/enlighten.c: `paravirt_ops = xen_paravirt_ops`, then
  xen_setup_vcpu_info_placement (save_fl/restore_fl/irq_disable/irq_enable → the _direct asm,
  read_cr2 → xen_read_cr2_direct, iret → xen_iret_direct) and xen_pagetable_setup_done
  (alloc_pt, set_pte); xen_patch() copies xen_<op>_direct … _end when it fits and adds
  (template − site) to the native word at _reloc, else paravirt_patch_default (2.6.23
  arch/i386/kernel/paravirt.c: NULL → ud2a, paravirt_nop → 0, iret/sysexit → jmp, else a
  call refused unless the site mask holds CLBR_ANY); arch/i386/xen/xen-asm.S for templates;
- 4.9 arch/x86/xen/enlighten_pv.c (pv_*_ops = xen_*_ops struct copies, xen_patch),
  xen-asm.S templates (movb/testb on PER_CPU_VAR(xen_vcpu_info)); the clobber check (≤4.18);
- 4.19 arch/x86/xen/enlighten_pv.c: `pv_init_ops.patch = paravirt_patch_default`
  (edcb5cf84f05, 4.14), no clobber check (b13b271933ee);
- 5.10 enlighten_pv.c `pv_ops.init.patch = paravirt_patch_default`, pv_ops.cpu = xen_cpu_ops
  …; spinlock.c xen_init_spinlocks() skips the pv lock ops when num_possible_cpus() == 1.
NOPs (the default CPU, a current Intel core): the intel (GENERIC) table on i386, where
X86_FEATURE_NOPL is never set (detect_nopl), P6 on x86-64 (docs/apply.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import one_line_error
from legacy_fixtures import legacy_kernel, xen_legacy_kernel

from pvpatch.image.elf import ElfImage

INTEL = {0: "", 1: "90", 2: "89f6", 3: "8d7600", 4: "8d742600", 5: "908d742600",
         6: "8db600000000", 7: "8db42600000000", 8: "908db42600000000"}
P6 = {0: "", 1: "90", 2: "6690", 3: "0f1f00", 4: "0f1f4000", 5: "0f1f440000",
      6: "660f1f440000", 7: "0f1f8000000000", 8: "0f1f840000000000"}


def p6(n: int) -> str:
    return P6[8] * (n // 8) + P6[n % 8]


def generic(n: int) -> str:
    return INTEL[8] * (n // 8) + INTEL[n % 8]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


def planned(path: str, vcpus: int = 2) -> list[dict]:
    r = run("apply", path, "--dry-run", "--json", "--backend", "xen", "--vcpus", str(vcpus))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["sites"]


def addr(site: dict) -> int:
    return int(site["address"], 16)


def rel(path: str, at: int, target: str) -> str:
    """The rel32 of a 5-byte call/jmp at ``at`` to ``target``."""
    with ElfImage(path) as im:
        to = im.symbols.address(target) - (at + 5)
    return (to & 0xFFFFFFFF).to_bytes(4, "little").hex()


def call(path: str, site: dict, target: str) -> str:
    return "e8" + rel(path, addr(site), target)


def jmp(path: str, site: dict, target: str) -> str:
    return "e9" + rel(path, addr(site), target)


def inlined(path: str, site: dict, head: str) -> str:
    """A template ending in `call check_events`, copied to the site: xen_patch adds
    (template − site) to the rel32, so the call reaches check_events from its new place."""
    return head + call_at(path, addr(site) + len(head) // 2, "check_events")


def call_at(path: str, at: int, target: str) -> str:
    return "e8" + rel(path, at, target)


def test_2_6_23_xen_paravirt_ops_and_xen_patch():
    path = xen_legacy_kernel(2, 32, 22623)
    s = planned(path)
    disable = "64c605412a000001"  # movb $1, %fs:xen_vcpu_info+1 (xen_irq_disable_direct)
    expect = [
        disable + INTEL[2],  # C irq site, 10 bytes: the 8-byte template fits
        s[1]["before"],  # save_fl: 13-byte template > 10; the call is refused (mask CLBR_EAX)
        call(path, s[2], "xen_irq_enable_direct") + INTEL[8],  # 17 > 13, mask CLBR_ANY
        disable + INTEL[5],  # 13-byte asm DISABLE_INTERRUPTS
        # LONG site: andw $0xff, %fs:xen_vcpu_info+0; jz 1f; call check_events (re-based)
        inlined(path, s[4], "64668125402a0000ff00" + "7405") + INTEL[6],
        jmp(path, s[5], "xen_iret_direct") + INTEL[2],  # placement overrides the hypercall page
        call(path, s[6], "xen_read_cr2_direct") + INTEL[1],
        call(path, s[7], "xen_pte_val") + INTEL[1],  # xen_patch has no 0-byte pte_val case
        "0f0b" + INTEL[5],  # irq_enable_sysexit NULL: ud2a
        INTEL[6],  # load_tr_desc = paravirt_nop
        call(path, s[10], "xen_set_pte") + INTEL[1],  # NULL in the table, set before patching
    ]
    assert [x["after"] for x in s] == expect
    assert s[1]["outcome"] == "unpatched" and "does not fit" in s[1]["reason"]
    assert [x["outcome"] for x in s[:5]] == ["inline-xen", "unpatched", "direct-call",
                                             "inline-xen", "inline-xen"]
    assert "re-based" in s[4]["reason"]


def test_rebase_is_template_plus_delta_on_the_native_word():
    """The inlined rel32 equals the template's own rel32 + (template − site), mod 2**32."""
    for era, bits, ver, index in ((2, 32, 22623, 4), (3, 32, 40900, 6), (3, 64, 40900, 6),
                                  (3, 64, 40900, 7)):
        path = xen_legacy_kernel(era, bits, ver)
        site = planned(path)[index]
        op = site["op"].rsplit(".", 1)[-1]
        with ElfImage(path) as im:
            start = im.symbols.address(f"xen_{op}_direct")
            end = im.symbols.address(f"xen_{op}_direct_end")
            reloc = im.symbols.address(f"xen_{op}_direct_reloc")
            template = im.read(start, end - start)
        off = reloc - start
        got = bytes.fromhex(site["after"])
        old = int.from_bytes(template[off:off + 4], "little")
        assert got[:off] == template[:off]
        assert int.from_bytes(got[off:off + 4], "little") == (old + start - addr(site)) % 2**32


def _xen_patch_4_9(path: str, s: list[dict], bits: int) -> list[str]:
    call_pad, asm_pad = (1, 2) if bits == 32 else (2, 1)  # 6/7-byte calls, 7/6-byte asm sites
    pad = generic if bits == 32 else p6  # arch_init_ideal_nops: i386 Intel has no NOPL
    out = [call(path, s[0], "xen_io_delay") + pad(call_pad),
           s[1]["before"], s[2]["before"],  # C callee-save sites: template too long, refused
           call(path, s[3], "xen_irq_disable_direct") + pad(asm_pad)]
    if bits == 32:
        out += ["64c605412a000001" + pad(5),  # 13-byte DISABLE_INTERRUPTS(CLBR_NONE) fits
                s[5]["before"],  # ENABLE_INTERRUPTS(CLBR_NONE): 23 > 13, call refused
                # movb $0,%fs:mask; testb $0xff,%fs:pending; jz; call check_events: 23 bytes
                inlined(path, s[6], "64c605412a000000" + "64f605402a0000ff" + "7405"),
                call(path, s[7], "xen_restore_fl_direct") + pad(18)]  # 27 > 23: a call
    else:
        out += [s[4]["before"], s[5]["before"],  # 8-byte sites: 9-byte templates, refused
                inlined(path, s[6], "65c60425412a000000" + "65f60425402a0000ff" + "7405")
                + pad(7),
                # testw $0x200,%di; setz %gs:mask; cmpw $1,%gs:pending; jnz; call: 31 bytes
                inlined(path, s[7], "66f7c70002" + "650f940425412a0000" +
                        "6566833c25402a000001" + "7505") + pad(1)]
    out += [jmp(path, s[8], "xen_iret") + pad(asm_pad),
            call(path, s[9], "xen_read_cr2_direct") + pad(call_pad),
            s[10]["before"],  # make_pte: callee-save site, refused
            "0f0b" + pad(call_pad + 3),  # alloc_p4d NULL in xen_mmu_ops
            pad(call_pad + 5),  # load_tr_desc = paravirt_nop
            s[13]["before"],  # queued_spin_unlock → pv thunk, refused (RET_REG)
            call(path, s[14], "xen_qlock_wait") + pad(call_pad),
            call(path, s[15], "xen_sched_clock") + pad(call_pad)]
    return out


@pytest.mark.parametrize("bits", [32, 64])
def test_4_9_struct_copies_and_xen_patch(bits):
    path = xen_legacy_kernel(3, bits, 40900)
    s = planned(path)
    assert [x["after"] for x in s] == _xen_patch_4_9(path, s, bits)
    refused = [x for x in s if x["outcome"] == "unpatched"]
    assert all("refused" in x["reason"] for x in refused) and not any(x["problems"] for x in s)


def _default_patch(path: str, s: list[dict], vcpus: int, version: int) -> list[str]:
    """4.19 / 5.10 x86-64: paravirt_patch_default for everything, no clobber check."""
    out = [call(path, s[0], "xen_io_delay") + p6(2),
           call(path, s[1], "xen_irq_disable_direct") + p6(2),
           call(path, s[2], "xen_save_fl_direct") + p6(2),
           call(path, s[3], "xen_irq_disable_direct") + p6(1),
           call(path, s[4], "xen_irq_disable_direct") + p6(3),
           call(path, s[5], "xen_irq_enable_direct") + p6(3),
           call(path, s[6], "xen_irq_enable_direct") + p6(27),
           call(path, s[7], "xen_restore_fl_direct") + p6(27),
           jmp(path, s[8], "xen_iret") + p6(1),
           call(path, s[9], "xen_read_cr2_direct") + p6(2),
           call(path, s[10], "__raw_callee_save_xen_make_pte") + p6(2),
           "0f0b" + p6(5), p6(7)]
    if vcpus > 1:
        out += [call(path, s[13], "__raw_callee_save___pv_queued_spin_unlock") + p6(2),
                call(path, s[14], "xen_qlock_wait") + p6(2)]
    elif version >= 42000:  # the native thunk stays, called (Xen installs no native_patch)
        out += [call(path, s[13], "__raw_callee_save___native_queued_spin_unlock") + p6(2),
                p6(7)]
    else:  # 4.19 with one vCPU: not established, left unresolved
        out += [s[13]["before"], s[14]["before"]]
    out.append(call(path, s[15], "xen_sched_clock") + p6(2))
    return out


@pytest.mark.parametrize("era,version", [(3, 41900), (4, 51000)])
@pytest.mark.parametrize("vcpus", [1, 2])
def test_paravirt_patch_default_from_4_14(era, version, vcpus):
    path = xen_legacy_kernel(era, 64, version)
    s = planned(path, vcpus)
    assert [x["after"] for x in s] == _default_patch(path, s, vcpus, version)
    unknown = [x for x in s if x["problems"]]
    if vcpus == 1 and version < 42000:
        assert len(unknown) == 2 and all("not established" in x["problems"][0]
                                         for x in unknown)
    else:
        assert not unknown


def test_vcpus_decide_the_lock_slots():
    path = xen_legacy_kernel(4, 64, 51000)
    one, two = planned(path, 1), planned(path, 2)
    diff = [(a["op"], a["after"] != b["after"]) for a, b in zip(one, two, strict=True)]
    assert [op for op, changed in diff if changed] == ["lock.queued_spin_unlock", "lock.wait"]


@pytest.mark.parametrize("path_of,needle", [
    (lambda: legacy_kernel(1, 32), "has no Xen PV guest"),
    (lambda: legacy_kernel(2, 32, 22622), "first appears in 2.6.23"),
    (lambda: xen_legacy_kernel(4, 32, 51000), "removed in 5.9"),
    (lambda: legacy_kernel(3, 64, 41900), "built without Xen PV support"),
])
def test_no_xen_pv_is_one_line(path_of, needle):
    path = path_of()
    one_line_error(run("apply", path, "--dry-run", "--backend", "xen"), needle)
    one_line_error(run("check", path, "--backend", "xen"), needle)
    c = run("check", path, "--json")
    assert c.returncode in (0, 1) and "Traceback" not in c.stderr, c.stderr
    d = json.loads(c.stdout)
    assert [b["name"] for b in d["backends"]] == ["native"]
    assert any(n.startswith("xen backend skipped:") and needle in n for n in d["notes"])


@pytest.mark.parametrize("era,bits,version", [(2, 32, 22623), (3, 32, 40900), (3, 64, 40900),
                                              (3, 64, 41900), (4, 64, 51000)])
def test_cli_per_era(era, bits, version):
    path = xen_legacy_kernel(era, bits, version)
    r = run("apply", path, "--backend", "xen", "--dry-run", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    d = json.loads(r.stdout)
    assert d["era"] == f"G{era}" and d["sites"]
    c = run("check", path, "--json")
    assert c.returncode in (0, 1) and "Traceback" not in c.stderr, c.stderr
    assert [b["name"] for b in json.loads(c.stdout)["backends"]] == ["native", "xen"]
    i = run("inspect", path, "--backend", "xen", "--json")
    assert i.returncode == 0 and "Traceback" not in i.stderr, i.stderr
