"""The VMware guest backend: io_delay and the sched/steal clock static calls, read from the
image's code; only which functions run, when, and under which test is stated here.

Read in Debian 5.10.223, 6.1.192, 6.12.118 and 7.3.4: ``arch/x86/kernel/cpu/vmware.c``
(``init.init_platform = vmware_platform_setup``, run by ``setup_arch()``; it calls
``vmware_paravirt_ops_setup()``, which sets ``cpu.io_delay = paravirt_nop`` (to 7.0; 7.1+
``pv_info.io_delay = false``, no slot) and, once the hypervisor told the TSC frequency,
the sched clock (unless ``no-vmw-sched-clock``) and the steal clock (when the STEALCLOCK
command answers)). Before 5.12 both clocks are ``pv_ops.time`` slots.
"""

from __future__ import annotations

from pvpatch.backends import Backend, GuestOptions
from pvpatch.backends.guest import Condition, GuestRules, parse_names
from pvpatch.backends.guest import resolve as resolve_guest
from pvpatch.backends.guest import unsupported as guest_unsupported
from pvpatch.backends.xen_rules import Version, vr
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.startup import Guard, Step

VMWARE_FEATURES = {
    "tsc_freq": "the backdoor command GETHZ (45) answers: vmware_tsc_khz is known",
    "steal_clock": "the backdoor command STEALCLOCK (91) is available",
}
# Assumed for a current ESXi or Workstation host, not measured here (no VMware guest was at
# hand): both commands answer. The guest's dmesg says which hold ("TSC freq read from
# hypervisor", "vmware: using clock offset", "vmware: using paravirtualized steal clock" is
# not logged; /proc/stat steal time moving is the sign): pass --vmware-features to match it.
VMWARE_DEFAULT = frozenset(VMWARE_FEATURES)
DEFAULT_SOURCE = "assumed for a current ESXi host, see docs/backends.md"


def _features(o: GuestOptions) -> tuple[frozenset[str], str]:
    if o.vmware_features is None:
        return VMWARE_DEFAULT, f"default: {DEFAULT_SOURCE}"
    return o.vmware_features, "--vmware-features"


def _all(tests: list[tuple[str, bool]], src: str) -> tuple[bool, str]:
    failed = [t for t, ok in tests if not ok]
    return not failed, ("all of " + ", ".join(t for t, _ in tests) if not failed else
                        "fails: " + ", ".join(failed)) + f" ({src})"


def _sched(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    f, src = _features(o)
    return _all([("vmware_tsc_khz != 0", "tsc_freq" in f),
                 ("no no-vmw-sched-clock", "no-vmw-sched-clock" not in o.cmdline)], src)


def _steal(o: GuestOptions, vcpus: int, v: Version) -> tuple[bool, str]:
    f, src = _features(o)
    return _all([("vmware_tsc_khz != 0", "tsc_freq" in f),
                 ("vmware_is_stealclock_available()", "steal_clock" in f)], src)


VMWARE_STARTUP = GuestRules(
    backend="vmware", title="VMware guest",
    versions="4.20+ (read in Debian 5.10.223, 6.1.192, 6.12.118 and 7.3.4: arch/x86/kernel/"
             "cpu/vmware.c)",
    span=vr("4.20"), last_read=(7, 3, 0), entry="vmware_platform_setup",
    steps=(
        Step("vmware_platform_setup", "x86_init.hyper.init_platform (setup_arch)",
             guards=(Guard("vmware_sched_clock", "sched_clock"),
                     Guard("vmware_steal_clock", "steal_clock"))),
        Step("vmware_paravirt_ops_setup", "vmware_platform_setup",
             guards=(Guard("vmware_sched_clock", "sched_clock"),
                     Guard("vmware_steal_clock", "steal_clock"))),
    ),
    conditions=(
        Condition("sched_clock", "vmware_tsc_khz && vmw_sched_clock "
                  "(vmware_paravirt_ops_setup)", _sched),
        Condition("steal_clock", "vmware_tsc_khz && vmware_is_stealclock_available() "
                  "(vmware_paravirt_ops_setup)", _steal),
    ),
)


def unsupported(model: KernelModel) -> str | None:
    return guest_unsupported(model, VMWARE_STARTUP)


def resolve(model: KernelModel, vcpus: int, options: GuestOptions) -> Backend:
    f, src = _features(options)
    desc = (f"VMware guest with {vcpus} vCPU(s); host answers {','.join(sorted(f)) or 'none'} "
            f"({src})" +
            (f"; command line {' '.join(sorted(options.cmdline))}" if options.cmdline else ""))
    return resolve_guest(model, VMWARE_STARTUP, options, vcpus, desc)


def parse_features(text: str | None) -> frozenset[str] | None:
    return parse_names(text, VMWARE_FEATURES, "--vmware-features")
