"""The KVM guest backend: ``kvm_guest_init``, ``kvm_spinlock_init`` and kvmclock, read from
the image's code; only which functions run, when, and under which test is stated here.

Read in Debian 5.10.223, 6.1.192, 6.12.118 and 7.3.4: ``arch/x86/kernel/kvm.c`` (the
hypervisor_x86 hooks ``init.init_platform = kvm_init_platform`` and ``init.guest_late_init =
kvm_guest_init``, both run by ``setup_arch()``; ``kvm_guest_init`` installs
``smp_ops.smp_prepare_boot_cpu = kvm_smp_prepare_boot_cpu``, which ``start_kernel()`` runs
before ``alternative_instructions()``) and ``arch/x86/kernel/kvmclock.c``.
"""

from __future__ import annotations

from pvpatch.backends import Backend, GuestOptions
from pvpatch.backends.guest import Condition, GuestRules, parse_names
from pvpatch.backends.guest import resolve as resolve_guest
from pvpatch.backends.guest import unsupported as guest_unsupported
from pvpatch.backends.xen_rules import Version, vr
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.startup import Guard, Step

# include/uapi/asm/kvm_para.h (the same bits in 5.10.223 … 7.3.4): CPUID 0x40000001 eax.
KVM_FEATURES = {
    "clocksource": 0, "nop_io_delay": 1, "mmu_op": 2, "clocksource2": 3, "async_pf": 4,
    "steal_time": 5, "pv_eoi": 6, "pv_unhalt": 7, "pv_tlb_flush": 9, "async_pf_vmexit": 10,
    "pv_send_ipi": 11, "poll_control": 12, "pv_sched_yield": 13, "async_pf_int": 14,
    "msi_ext_dest_id": 15, "hc_map_gpa_range": 16, "migration_control": 17,
    "clocksource_stable_bit": 24,
}
KVM_HINTS = {"realtime": 0}  # CPUID 0x40000001 edx

# What QEMU offers a guest with KVM acceleration and a named CPU model ("The following
# features are enabled by default for any CPU model when KVM acceleration is enabled":
# kvmclock, kvm-nopiodelay, kvm-asyncpf, kvm-steal-time, kvm-pv-eoi, kvmclock-stable-bit;
# QEMU's "kvmclock" flag is bits 0 and 3), docs/system/i386/kvm-pv.rst, read at
# qemu.org/docs/master/system/i386/kvm-pv.html. kvm-pv-unhalt and kvm-pv-tlb-flush are not
# on by default (-cpu host passes through everything the host KVM supports).
QEMU_DEFAULT = frozenset({"clocksource", "nop_io_delay", "clocksource2", "async_pf",
                          "steal_time", "pv_eoi", "clocksource_stable_bit"})
DEFAULT_SOURCE = "QEMU's defaults for a named CPU model (docs/system/i386/kvm-pv.rst)"

# pv_tlb_flush_supported() gained `!boot_cpu_has(X86_FEATURE_MWAIT) && num_possible_cpus() !=
# 1`: absent in 5.10.223, present in 6.1.192; the change lies between (taken as 5.16, when
# "x86/kvm: Don't use pv tlb/ipi/sched_yield if on 1 vCPU" went in; not pinned further).
TLB_FLUSH_EXTRA_TESTS = vr("5.16")


def _features(o: GuestOptions) -> tuple[frozenset[str], str]:
    if o.kvm_features is None:
        return QEMU_DEFAULT, f"default: {DEFAULT_SOURCE}"
    return o.kvm_features, "--kvm-features"


def _has(name: str) -> Condition:
    def test(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
        feats, src = _features(o)
        said = "offered" if name in feats else "not offered"
        return name in feats, f"KVM_FEATURE_{name.upper()} {said} ({src})"
    return Condition(name, f"kvm_para_has_feature(KVM_FEATURE_{name.upper()})", test)


def _tlb(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    feats, src = _features(o)
    tests = [("KVM_FEATURE_PV_TLB_FLUSH", "pv_tlb_flush" in feats),
             ("no KVM_HINTS_REALTIME", "realtime" not in o.kvm_hints),
             ("KVM_FEATURE_STEAL_TIME", "steal_time" in feats)]
    if TLB_FLUSH_EXTRA_TESTS.holds(v):
        tests += [("no X86_FEATURE_MWAIT", not o.mwait), ("more than one vCPU", vcpus > 1)]
    failed = [t for t, ok in tests if not ok]
    return not failed, ("all of " + ", ".join(t for t, _ in tests) if not failed else
                        "fails: " + ", ".join(failed)) + f" ({src})"


def _spinlocks(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    feats, src = _features(o)
    tests = [("no KVM_HINTS_REALTIME", "realtime" not in o.kvm_hints),
             ("more than one vCPU", vcpus > 1), ("no nopvspin", "nopvspin" not in o.cmdline),
             ("KVM_FEATURE_PV_UNHALT", "pv_unhalt" in feats)]
    failed = [t for t, ok in tests if not ok]
    return not failed, ("all of " + ", ".join(t for t, _ in tests) if not failed else
                        "returns early: " + ", ".join(failed)) + f" ({src})"


def _kvmclock(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    feats, src = _features(o)
    if "no-kvmclock" in o.cmdline:
        return False, "no-kvmclock on the command line"
    ok = bool(feats & {"clocksource", "clocksource2"})
    return ok, ("KVM_FEATURE_CLOCKSOURCE2 or _CLOCKSOURCE offered" if ok else
                "neither KVM_FEATURE_CLOCKSOURCE2 nor _CLOCKSOURCE offered") + f" ({src})"


def _sev(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    return False, "planned for a guest without memory encryption (CC_ATTR_GUEST_MEM_ENCRYPT)"


KVM_STARTUP = GuestRules(
    backend="kvm", title="KVM guest",
    versions="4.20+ (read in Debian 5.10.223, 6.1.192, 6.12.118 and 7.3.4: arch/x86/kernel/"
             "kvm.c, kvmclock.c)",
    span=vr("4.20"), last_read=(7, 3, 0), entry="kvm_guest_init",
    steps=(
        Step("kvm_init_platform", "x86_init.hyper.init_platform (setup_arch)"),
        Step("kvmclock_init", "kvm_init_platform", condition="kvmclock"),
        Step("kvm_guest_init", "x86_init.hyper.guest_late_init (setup_arch)",
             guards=(Guard("kvm_steal_clock", "steal_time"),
                     Guard("__raw_callee_save___kvm_vcpu_is_preempted", "steal_time"),
                     Guard("kvm_flush_tlb_multi", "pv_tlb_flush"),
                     Guard("kvm_flush_tlb_others", "pv_tlb_flush"),
                     Guard("tlb_remove_table", "pv_tlb_flush"),
                     Guard("kvm_sev_hc_page_enc_status", "sev_migration"))),
        Step("paravirt_ops_setup", "kvm_guest_init",
             guards=(Guard("kvm_io_delay", "nop_io_delay"),)),
        Step("kvm_smp_prepare_boot_cpu", "smp_ops.smp_prepare_boot_cpu (start_kernel), "
             "installed by kvm_guest_init"),
        # every store follows its early returns (REALTIME, one CPU, nopvspin, no PV_UNHALT)
        Step("kvm_spinlock_init", "kvm_smp_prepare_boot_cpu", condition="pv_spinlocks",
             inlined_ok=False),
    ),
    conditions=(
        _has("nop_io_delay"), _has("steal_time"),
        Condition("pv_tlb_flush", "pv_tlb_flush_supported() (kvm.c)", _tlb),
        Condition("pv_spinlocks", "the early returns of kvm_spinlock_init() (kvm.c)",
                  _spinlocks),
        Condition("kvmclock", "kvmclock_init(): kvmclock and KVM_FEATURE_CLOCKSOURCE2/"
                  "CLOCKSOURCE (kvmclock.c)", _kvmclock),
        Condition("sev_migration", "cc_platform_has(CC_ATTR_GUEST_MEM_ENCRYPT) && "
                  "KVM_FEATURE_MIGRATION_CONTROL (kvm_init_platform)", _sev),
    ),
)


def unsupported(model: KernelModel) -> str | None:
    return guest_unsupported(model, KVM_STARTUP)


def resolve(model: KernelModel, vcpus: int, options: GuestOptions) -> Backend:
    feats, src = _features(options)
    hints = ",".join(sorted(options.kvm_hints)) or "none"
    desc = (f"KVM guest with {vcpus} vCPU(s); features {','.join(sorted(feats)) or 'none'} "
            f"({src}); hints {hints}" +
            (f"; command line {' '.join(sorted(options.cmdline))}" if options.cmdline else ""))
    return resolve_guest(model, KVM_STARTUP, options, vcpus, desc)


def parse_features(text: str | None) -> frozenset[str] | None:
    return parse_names(text, KVM_FEATURES, "--kvm-features")


def parse_hints(text: str | None) -> frozenset[str]:
    return parse_names(text, KVM_HINTS, "--kvm-hints") or frozenset()
