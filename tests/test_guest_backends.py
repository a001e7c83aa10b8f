"""KVM, Hyper-V and VMware guests read from their start-up code, on a fixture.

Fixture: fixtures/pv_kernel61.S with GUEST_CODE=1 and STATIC_CALLS=1
(fixtures/guest_startup_code.S: the guests' __init functions, each store under the test the
source puts it under). Expected bytes, worked out from Debian 6.1.192's source:
- a slot the guest sets is patched by paravirt_patch() as `call target` (e8 rel32) + one NOP
  (arch/x86/kernel/paravirt.c), and its ALT_NOT(X86_FEATURE_VCPUPREEMPT/PVUNLOCK) native
  alternative is skipped because paravirt_set_cap() (paravirt-spinlocks.c) forces the feature
  once the lock op is not the native thunk;
- a slot left alone keeps the native inline code (`movb $0,(%rdi)` for queued_spin_unlock,
  `xor %rax,%rax` for vcpu_is_preempted) padded with P6 NOPs, or a 6-byte NOP for
  _paravirt_nop;
- a pv static-call site of a key the guest updates calls its new function (static_call_init()
  in kernel/static_call_inline.c with __static_call_transform(), arch/x86/kernel/
  static_call.c); a key left alone calls its initialiser.
The conditions are those of kvm.c, kvmclock.c, hv_spinlock.c, hyperv_timer.c and vmware.c
(see the fixture's header).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import assemble, one_line_error

from pvpatch.image.elf import ElfImage

NOP1, NOP3, NOP6 = "90", "0f1f00", "660f1f440000"


@pytest.fixture(scope="module")
def kernel() -> str:
    return str(assemble("pv_kernel61.S", 64, defsyms={"GUEST_CODE": 1, "STATIC_CALLS": 1}))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


def plan(path: str, backend: str, *options: str) -> dict:
    r = run("apply", path, "--dry-run", "--json", "--backend", backend, *options)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def after(doc: dict, op: str) -> str:
    return next(s["after"] for s in doc["sites"] if s["op"] == op)


def call(path: str, doc: dict, op: str, target: str) -> str:
    """`call target` at the (first) site of ``op``, and one NOP."""
    at = int(next(s["address"] for s in doc["sites"] if s["op"] == op), 16)
    with ElfImage(path) as im:
        rel = (im.symbols.address(target) - (at + 5)) & 0xFFFFFFFF
    return "e8" + rel.to_bytes(4, "little").hex() + NOP1


def static_target(doc: dict, key: str) -> str:
    sc = doc["static_calls"]
    return next(s["target"] for s in sc["sites"] if s["key"] == key)


def test_kvm_with_qemus_defaults(kernel):
    """steal_time and nop_io_delay are offered, pv_unhalt is not: kvm_spinlock_init returns
    before its stores, kvm_guest_init installs io_delay, vcpu_is_preempted, pv_steal_clock."""
    d = plan(kernel, "kvm")
    assert after(d, "cpu.io_delay") == call(kernel, d, "cpu.io_delay", "kvm_io_delay")
    assert after(d, "lock.vcpu_is_preempted") == call(
        kernel, d, "lock.vcpu_is_preempted", "__raw_callee_save___kvm_vcpu_is_preempted")
    assert after(d, "lock.queued_spin_unlock") == "c60700" + NOP3  # native, inline
    assert after(d, "lock.kick") == NOP6  # _paravirt_nop, untouched
    assert static_target(d, "pv_steal_clock") == "kvm_steal_clock"
    assert static_target(d, "pv_sched_clock") == "kvm_sched_clock_read"
    unlock = [x for x in d["static_calls"]["sites"] if x["key"] == "queued_spin_unlock"]
    assert [x["outcome"] for x in unlock] == ["inline"]  # the native unlock, untouched
    assert "VCPUPREEMPT" in json.dumps(d["backend"]["features"])


def test_kvm_pv_spinlocks_need_pv_unhalt_and_two_vcpus(kernel):
    on = plan(kernel, "kvm", "--kvm-features", "steal_time,pv_unhalt")
    assert after(on, "lock.queued_spin_unlock") == call(
        kernel, on, "lock.queued_spin_unlock", "__raw_callee_save___pv_queued_spin_unlock")
    assert after(on, "lock.kick") == call(kernel, on, "lock.kick", "kvm_kick_cpu")
    assert after(on, "cpu.io_delay") == call(kernel, on, "cpu.io_delay", "native_io_delay")
    for extra in (("--vcpus", "1"), ("--cmdline", "nopvspin"), ("--kvm-hints", "realtime")):
        off = plan(kernel, "kvm", "--kvm-features", "steal_time,pv_unhalt", *extra)
        assert after(off, "lock.queued_spin_unlock") == "c60700" + NOP3, extra
        assert after(off, "lock.kick") == NOP6, extra


def test_kvm_without_features_is_native(kernel):
    d = plan(kernel, "kvm", "--kvm-features", "none")
    native = plan(kernel, "native")
    assert [s["after"] for s in d["sites"]] == [s["after"] for s in native["sites"]]
    assert static_target(d, "pv_steal_clock") == "native_steal_clock"
    assert static_target(d, "pv_sched_clock") == "native_sched_clock"  # no kvmclock
    assert any("kvm_steal_clock, only when steal_time (false)" in n for n in d["notes"])


def test_kvm_report_says_what_set_each_slot_and_when(kernel):
    r = run("inspect", kernel, "--backend", "kvm", "--json")
    ops = {o["op"]: o for o in json.loads(r.stdout)["backend"]["ops"]}
    assert ops["cpu.io_delay"]["target"] == "kvm_io_delay"
    assert "kvm_guest_init+" in ops["cpu.io_delay"]["reason"]
    assert ops["cpu.io_delay"]["reason"].endswith("when nop_io_delay")
    assert "untouched by the KVM guest" in ops["lock.kick"]["reason"]
    text = run("inspect", kernel, "--backend", "kvm").stdout
    assert "steal_time: yes: KVM_FEATURE_STEAL_TIME offered (default: QEMU" in text


def test_hyperv_azure_default(kernel):
    """hv_init_spinlocks (its stores in the .cold part) and the TSC-page sched clock."""
    d = plan(kernel, "hyperv")
    assert after(d, "lock.queued_spin_unlock") == call(
        kernel, d, "lock.queued_spin_unlock", "__raw_callee_save___pv_queued_spin_unlock")
    assert after(d, "lock.kick") == call(kernel, d, "lock.kick", "hv_qlock_kick")
    assert after(d, "lock.vcpu_is_preempted") == call(
        kernel, d, "lock.vcpu_is_preempted", "__raw_callee_save_hv_vcpu_is_preempted")
    assert static_target(d, "pv_sched_clock") == "read_hv_sched_clock_tsc"
    assert static_target(d, "pv_steal_clock") == "native_steal_clock"


def test_hyperv_conditions(kernel):
    off = plan(kernel, "hyperv", "--cmdline", "hv_nopvspin")
    assert after(off, "lock.queued_spin_unlock") == "c60700" + NOP3
    msr = plan(kernel, "hyperv", "--hyperv-features", "time_ref_count")  # no TSC page (6.1)
    assert static_target(msr, "pv_sched_clock") == "read_hv_sched_clock_msr"
    assert after(msr, "lock.kick") == NOP6  # no cluster-IPI recommendation
    none = plan(kernel, "hyperv", "--hyperv-features", "none")
    assert static_target(none, "pv_sched_clock") == "native_sched_clock"


def test_vmware(kernel):
    d = plan(kernel, "vmware")
    assert after(d, "cpu.io_delay") == NOP6  # paravirt_nop, always
    assert static_target(d, "pv_sched_clock") == "vmware_sched_clock"
    assert static_target(d, "pv_steal_clock") == "vmware_steal_clock"
    no_clock = plan(kernel, "vmware", "--cmdline", "no-vmw-sched-clock")
    assert static_target(no_clock, "pv_sched_clock") == "native_sched_clock"
    assert static_target(no_clock, "pv_steal_clock") == "vmware_steal_clock"
    no_tsc = plan(kernel, "vmware", "--vmware-features", "steal_clock")
    assert static_target(no_tsc, "pv_steal_clock") == "native_steal_clock"
    assert after(no_tsc, "cpu.io_delay") == NOP6


def test_bad_option_values_are_one_line(kernel):
    r = run("apply", kernel, "--dry-run", "--backend", "kvm", "--kvm-features", "stealtime")
    one_line_error(r, "--kvm-features", "stealtime")


def test_a_kernel_without_the_guest_is_refused_or_skipped():
    path = str(assemble("pv_kernel61.S", 64))
    one_line_error(run("apply", path, "--dry-run", "--backend", "kvm"), "kvm_guest_init")
    r = run("check", path, "--backend", "native,kvm")
    assert r.returncode == 2 and "kvm_guest_init" in r.stderr


def test_check_and_diff_take_the_guest_backends(kernel, tmp_path):
    r = run("check", kernel, "--backend", "kvm,hyperv,vmware", "--json")
    assert r.returncode in (0, 1), r.stderr
    names = [b["name"] for b in json.loads(r.stdout)["backends"]]
    assert names == ["kvm", "hyperv", "vmware"]
    out = tmp_path / "vmlinux.kvm"
    assert run("apply", kernel, "-o", str(out), "--backend", "kvm").returncode == 0
    d = json.loads(run("diff", kernel, str(out), "--json").stdout)
    assert d["counts"].get("direct-call", 0) >= 2
