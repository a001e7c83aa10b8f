"""What the commands that read an image share: progress messages and the input options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])

_KEPT: list[object] | None = None  # a list once main() promised to leave with os._exit


def keep_until_exit(obj: object) -> None:
    """Hold ``obj`` until the process ends, when ``pvpatch.cli.main`` runs the command.

    main() leaves with ``os._exit``, so a loaded model (hundreds of thousands of objects) need
    not be freed one by one when the command returns: ~25 ms of a ``check``. Elsewhere (click's
    test runner, a caller's own process) objects are freed as usual.
    """
    if _KEPT is not None:
        _KEPT.append(obj)


def exiting_without_teardown() -> None:
    """Called by main(): from now on :func:`keep_until_exit` holds what it is given."""
    global _KEPT
    _KEPT = []


def progress(message: str) -> None:
    """Say what a long step is doing, only when a person is watching stderr."""
    if sys.stderr.isatty():
        click.echo(f"pvpatch: {message}", err=True)


def say_progress() -> Callable[[str], None] | None:
    """:func:`progress` when stderr is a terminal, else None (the library then stays quiet)."""
    return progress if sys.stderr.isatty() else None


def image_options(types: bool = True) -> Callable[[F], F]:
    """``--system-map FILE`` and (where struct layouts matter) ``--btf FILE``."""

    def decorate(f: F) -> F:
        if types:
            f = click.option(
                "--btf", "btf", metavar="FILE", type=click.Path(dir_okay=False),
                help="Raw BTF of the same kernel (e.g. /sys/kernel/btf/vmlinux) for struct "
                     "layouts, instead of the image's .BTF or DWARF.")(f)
        return click.option(
            "--system-map", "system_map", metavar="FILE", type=click.Path(dir_okay=False),
            help="Take symbols from this System.map instead of the image's .symtab or, for "
                 "a stripped image or vmlinuz, its kallsyms tables.")(f)

    return decorate


def cpu_options() -> Callable[[F], F]:
    """``--cpu VENDOR[:FAMILY[:MODEL]]`` and ``--cpuinfo FILE``: the CPU the kernel boots on.

    Kernels up to 5.12 chose their padding NOPs from it (docs/apply.md); later ones ignore it.
    The values are parsed by :func:`pvpatch.cpu.resolve_cpu`, which also refuses both at once.
    """

    def decorate(f: F) -> F:
        f = click.option(
            "--cpuinfo", "cpuinfo", metavar="FILE", type=click.Path(dir_okay=False),
            help="Take the boot CPU from a /proc/cpuinfo (its first processor).")(f)
        return click.option(
            "--cpu", "cpu_spec", metavar="VENDOR[:FAMILY[:MODEL]]",
            help="The boot CPU, for kernels up to 5.12 whose padding NOPs depend on it: "
                 "intel, amd, hygon, centaur or zhaoxin, family and model decimal or 0x-hex "
                 "(amd:15:107 is QEMU's qemu64).  [default: a current x86 CPU: P6 NOPs "
                 "on x86-64 from 3.6]")(f)

    return decorate


GUEST_HELP = {
    "kvm_features": "KVM: the KVM_FEATURE_* bits the host offers, comma-separated (steal_time, "
                    "pv_unhalt, pv_tlb_flush, nop_io_delay, clocksource2, …, or none).  "
                    "[default: QEMU's for a named CPU model: clocksource, clocksource2, "
                    "nop_io_delay, async_pf, steal_time, pv_eoi, clocksource_stable_bit]",
    "kvm_hints": "KVM: the KVM_HINTS_* the host gives (realtime).  [default: none]",
    "hyperv_features": "Hyper-V: what the hypervisor recommends and offers (remote_tlb_flush, "
                       "cluster_ipi, guest_idle, reference_tsc, time_ref_count, "
                       "tsc_invariant, or none).  [default: assumed for Azure: all but "
                       "tsc_invariant]",
    "vmware_features": "VMware: the backdoor commands that answer (tsc_freq, steal_clock, or "
                       "none).  [default: both, assumed for a current ESXi]",
    "cmdline": "Guests: the kernel command-line words they test, space-separated: nopvspin "
               "(KVM), hv_nopvspin, no-kvmclock, no-vmw-sched-clock.  [default: none]",
}


def guest_options() -> Callable[[F], F]:
    """The run-time facts the KVM, Hyper-V and VMware guests test (docs/backends.md)."""

    def decorate(f: F) -> F:
        for name in reversed(GUEST_HELP):
            flag = "--" + name.replace("_", "-")
            f = click.option(flag, name, metavar="WORDS" if name == "cmdline" else "LIST",
                             help=GUEST_HELP[name])(f)
        return f

    return decorate


def make_guest_options(kvm_features: str | None = None, kvm_hints: str | None = None,
                       hyperv_features: str | None = None, vmware_features: str | None = None,
                       cmdline: str | None = None, cpu: object = None) -> object:
    """:class:`pvpatch.backends.GuestOptions` from the option values; a bad name is a usage
    error. The guest sees MWAIT when --cpuinfo's flags say ``monitor`` (else it does not:
    QEMU hides it by default)."""
    flags = getattr(cpu, "flags", None) or frozenset()
    if not (kvm_features or kvm_hints or hyperv_features or vmware_features or cmdline or
            "monitor" in flags):
        return None  # every backend's stated default; the guests' parsers stay unimported
    from pvpatch.backends import GuestOptions, hyperv, kvm, vmware
    from pvpatch.errors import UsageError

    try:
        return GuestOptions(kvm.parse_features(kvm_features), kvm.parse_hints(kvm_hints),
                            hyperv.parse_features(hyperv_features),
                            vmware.parse_features(vmware_features),
                            frozenset((cmdline or "").split()), "monitor" in flags)
    except ValueError as e:
        raise UsageError(str(e)) from None


# which backend each guest option speaks to (docs/backends.md): given without it, refused
GUEST_OPTION_BACKENDS = {"kvm_features": ("kvm",), "kvm_hints": ("kvm",),
                         "hyperv_features": ("hyperv",), "vmware_features": ("vmware",),
                         "cmdline": ("kvm", "hyperv", "vmware")}


def refuse_inapplicable_guest_options(guest: dict[str, str | None],
                                      backends: list[str] | tuple[str, ...]) -> None:
    """A guest option given without a backend it speaks to is a usage error, not ignored."""
    from pvpatch.errors import UsageError

    for name, value in guest.items():
        wanted = GUEST_OPTION_BACKENDS.get(name, ())
        if value is not None and not set(wanted) & set(backends):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} is for the {' or '.join(wanted)} backend: it needs "
                             f"--backend {wanted[0]}")


def given(name: str) -> bool:
    """Did the user type option ``name`` (its parameter name), rather than leave its default?

    For refusing options that do not apply: a default is never an objection."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
