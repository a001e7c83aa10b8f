"""The Hyper-V guest backend: the remote TLB flush, the pv spinlocks and the sched clock,
read from the image's code; only which functions run, when, and under which test is here.

Read in Debian 5.10.223, 6.1.192, 6.12.118 and 7.3.4: ``arch/x86/kernel/cpu/mshyperv.c``
(``init.init_platform = ms_hyperv_init_platform``, run by ``setup_arch()``; it calls
``hyperv_setup_mmu_ops()`` and ``hv_init_clocksource()`` and installs
``smp_ops.smp_prepare_boot_cpu = hv_smp_prepare_boot_cpu``, which calls
``hv_init_spinlocks()`` on x86-64), ``arch/x86/hyperv/mmu.c``, ``hv_spinlock.c`` and
``drivers/clocksource/hyperv_timer.c``.
"""

from __future__ import annotations

from pvpatch.backends import Backend, GuestOptions
from pvpatch.backends.guest import Condition, GuestRules, parse_names
from pvpatch.backends.guest import resolve as resolve_guest
from pvpatch.backends.guest import unsupported as guest_unsupported
from pvpatch.backends.xen_rules import Version, vr
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.startup import Guard, Step

# What the guest reads from Hyper-V's CPUID leaves (include/asm-generic/hyperv-tlfs.h,
# arch/x86/include/asm/hyperv-tlfs.h): the recommendations (HYPERV_CPUID_ENLIGHTMENT_INFO eax,
# ms_hyperv.hints) and the partition privileges (HYPERV_CPUID_FEATURES eax, ms_hyperv.features).
HYPERV_FEATURES = {
    "remote_tlb_flush": "HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED (hints bit 2)",
    "cluster_ipi": "HV_X64_CLUSTER_IPI_RECOMMENDED (hints bit 4)",
    "guest_idle": "HV_MSR_GUEST_IDLE_AVAILABLE (features bit 10)",
    "reference_tsc": "HV_MSR_REFERENCE_TSC_AVAILABLE (features bit 9)",
    "time_ref_count": "HV_MSR_TIME_REF_COUNT_AVAILABLE (features bit 1)",
    "tsc_invariant": "HV_ACCESS_TSC_INVARIANT (features bit 15)",
}
# Assumed for an Azure VM, not measured here (no Azure guest was at hand): Azure's Hyper-V
# recommends the hypercall TLB flush (the guest logs "Hyper-V: Using hypercall for remote TLB
# flush"), offers the reference TSC page and the time reference counter, and the cluster-IPI
# recommendation and guest-idle MSR that hv_init_spinlocks() wants (it logs "PV spinlocks
# enabled"); TSC_INVARIANT is left off. A guest's dmesg says which hold: pass
# --hyperv-features to match it.
AZURE_DEFAULT = frozenset({"remote_tlb_flush", "cluster_ipi", "guest_idle", "reference_tsc",
                           "time_ref_count"})
DEFAULT_SOURCE = "assumed for Azure, see docs/backends.md"

# hv_init_clocksource(): up to 6.1.192 the TSC page, else the reference-counter MSR, becomes
# the sched clock; in 6.12.118 and 7.3.4 only the TSC page does, and only without
# TSC_INVARIANT. The change lies between 6.1.192 and 6.12.118 (taken as 6.2; not pinned).
SCHED_CLOCK_TSC_ONLY = vr("6.2")


def _features(o: GuestOptions) -> tuple[frozenset[str], str]:
    if o.hyperv_features is None:
        return AZURE_DEFAULT, f"default: {DEFAULT_SOURCE}"
    return o.hyperv_features, "--hyperv-features"


def _all(tests: list[tuple[str, bool]], src: str, failed_word: str = "fails") -> tuple[bool, str]:
    failed = [t for t, ok in tests if not ok]
    return not failed, ("all of " + ", ".join(t for t, _ in tests) if not failed else
                        f"{failed_word}: " + ", ".join(failed)) + f" ({src})"


def _tlb(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    f, src = _features(o)
    return _all([("HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED", "remote_tlb_flush" in f)], src,
                "returns early")


def _spinlocks(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    f, src = _features(o)
    return _all([("no hv_nopvspin", "hv_nopvspin" not in o.cmdline),
                 ("HV_X64_CLUSTER_IPI_RECOMMENDED", "cluster_ipi" in f),
                 ("HV_MSR_GUEST_IDLE_AVAILABLE", "guest_idle" in f),
                 ("an APIC (taken as present)", True)], src, "returns early")


def _tsc_clock(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    f, src = _features(o)
    tests = [("HV_MSR_REFERENCE_TSC_AVAILABLE", "reference_tsc" in f),
             ("a guest, not the root partition", True)]
    if SCHED_CLOCK_TSC_ONLY.holds(v):
        tests.append(("no HV_ACCESS_TSC_INVARIANT", "tsc_invariant" not in f))
    return _all(tests, src)


def _msr_clock(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    f, src = _features(o)
    if SCHED_CLOCK_TSC_ONLY.holds(v):
        return False, "from 6.2 the MSR clocksource is never the sched clock"
    tsc, _ = _tsc_clock(o, vcpus, v)
    return _all([("no TSC page clock", not tsc),
                 ("HV_MSR_TIME_REF_COUNT_AVAILABLE", "time_ref_count" in f)], src)


HYPERV_STARTUP = GuestRules(
    backend="hyperv", title="Hyper-V guest",
    versions="4.20+ (read in Debian 5.10.223, 6.1.192, 6.12.118 and 7.3.4: arch/x86/kernel/"
             "cpu/mshyperv.c, arch/x86/hyperv/mmu.c, hv_spinlock.c, drivers/clocksource/"
             "hyperv_timer.c)",
    span=vr("4.20"), last_read=(7, 3, 0), entry="ms_hyperv_init_platform",
    steps=(
        Step("ms_hyperv_init_platform", "x86_init.hyper.init_platform (setup_arch)"),
        Step("hyperv_setup_mmu_ops", "ms_hyperv_init_platform", condition="remote_tlb_flush"),
        Step("hv_init_clocksource", "ms_hyperv_init_platform",
             guards=(Guard("read_hv_sched_clock_tsc", "tsc_sched_clock"),
                     Guard("read_hv_sched_clock_msr", "msr_sched_clock"))),
        Step("hv_init_tsc_clocksource", "hv_init_clocksource"),
        Step("hv_smp_prepare_boot_cpu", "smp_ops.smp_prepare_boot_cpu (start_kernel), "
             "installed by ms_hyperv_init_platform"),
        Step("hv_init_spinlocks", "hv_smp_prepare_boot_cpu (x86-64)", condition="pv_spinlocks",
             inlined_ok=False),
    ),
    conditions=(
        Condition("remote_tlb_flush", "ms_hyperv.hints & HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED "
                  "(hyperv_setup_mmu_ops, mmu.c)", _tlb),
        Condition("pv_spinlocks", "the early return of hv_init_spinlocks() (hv_spinlock.c)",
                  _spinlocks),
        Condition("tsc_sched_clock", "hv_init_tsc_clocksource() (hyperv_timer.c)", _tsc_clock),
        Condition("msr_sched_clock", "hv_init_clocksource()'s MSR fallback (hyperv_timer.c)",
                  _msr_clock),
    ),
)


def unsupported(model: KernelModel) -> str | None:
    return guest_unsupported(model, HYPERV_STARTUP)


def resolve(model: KernelModel, vcpus: int, options: GuestOptions) -> Backend:
    f, src = _features(options)
    desc = (f"Hyper-V guest with {vcpus} vCPU(s); offers {','.join(sorted(f)) or 'none'} "
            f"({src})" +
            (f"; command line {' '.join(sorted(options.cmdline))}" if options.cmdline else ""))
    return resolve_guest(model, HYPERV_STARTUP, options, vcpus, desc)


def parse_features(text: str | None) -> frozenset[str] | None:
    return parse_names(text, HYPERV_FEATURES, "--hyperv-features")
