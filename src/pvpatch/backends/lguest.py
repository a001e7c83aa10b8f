"""The lguest guest backend (i386, 2.6.23–4.13): ``lguest_init``'s assignments, read from the
image's code, and its patcher ``lguest_patch`` (pvpatch.patch.legacy).

lguest boots through ``lguest_entry`` (head_32.S sends a ``hardware_subarch == 1`` boot
there), which jumps to ``lguest_init`` (arch/i386/lguest/boot.c in 2.6.23,
arch/x86/lguest/boot.c 2.6.24–4.13): every assignment it makes — ``pv_init_ops.patch =
lguest_patch``, the irq ops, many cpu and mmu ops — is unconditional and made before
``start_kernel()``, so the whole backend is that one step. The source could not be read per
release here (no such tree at hand: the fact sheet's slot list is from a 2017 branch); what
lands where is read from the image, and the patcher's templates are the image's own
``lgstart_*``/``lgend_*`` ranges. lguest was removed in 4.14.
"""

from __future__ import annotations

from pvpatch.backends import Backend, GuestOptions
from pvpatch.backends.guest import GuestRules
from pvpatch.backends.guest import resolve as resolve_guest
from pvpatch.backends.guest import unsupported as guest_unsupported
from pvpatch.backends.xen_rules import vr
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.startup import Step

LGUEST_STARTUP = GuestRules(
    backend="lguest", title="lguest guest",
    versions="2.6.23–4.13 (i386; lguest_init's assignments read from the image)",
    span=vr("2.6.23", "4.13"), last_read=(4, 13, 0), entry="lguest_init",
    steps=(Step("lguest_init", "lguest_entry (head_32.S, hardware_subarch 1), before "
                "start_kernel"),),
    conditions=(), bits=(32,),
)


def unsupported(model: KernelModel) -> str | None:
    return guest_unsupported(model, LGUEST_STARTUP)


def resolve(model: KernelModel, vcpus: int, options: GuestOptions) -> Backend:
    be = resolve_guest(model, LGUEST_STARTUP, options, vcpus, "lguest guest (i386)")
    be.description += f"; patcher {be.patcher}"
    return be
