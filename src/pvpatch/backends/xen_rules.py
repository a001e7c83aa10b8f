"""What a Xen PV guest's start-up code installs in its pv-op table before patching, per range.

Each rule set is read from the kernel source of its range: ``xen_start_kernel`` and what it
calls before ``alternative_instructions()`` (``arch/i386/xen/enlighten.c`` in 2.6.23;
``arch/x86/xen/enlighten*.c``, ``irq.c``, ``mmu*.c``, ``smp*.c``, ``spinlock.c`` later).
Only the final value at patch time matters, so a slot assigned twice (``set_pte``:
``xen_set_pte_init`` then ``xen_set_pte``) is listed with its last value.

From 4.20 on the values are read from the image's code instead (``XEN_STARTUP``): only which
start-up functions run, and when, is kept here; the table rules of 4.20–6.12 remain for an
image whose start-up code stores nothing into its tables (a hand-made fixture).

Slots are named by their 4.20+ path (``irq.save_fl``); :func:`slot_path` turns that into the
member path of the container an era has (``save_fl`` in ``paravirt_ops``,
``pv_irq_ops.save_fl`` in the 2.6.24–4.19 template). An op a build lacks is skipped.
Versions are ``(major, minor, sub)`` as in ``pvpatch.kernel.era.version_key``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.kernel.startup import Step

Version = tuple[int, int, int]
ONWARD: Version = (99, 0, 0)


@dataclass(frozen=True)
class Range:
    first: Version
    last: Version  # inclusive

    def holds(self, v: Version) -> bool:
        return self.first <= v <= self.last


def vr(first: str, last: str | None = None) -> Range:
    def parse(text: str) -> Version:
        p = [int(x) for x in text.split(".")]
        return (p[0], p[1], p[2] if len(p) > 2 else 0)

    return Range(parse(first), parse(last) if last else ONWARD)


ALWAYS = vr("2.6.0")


@dataclass(frozen=True)
class MemberCopy:
    """``pv_ops.<member> = <table>.<member>`` (or the whole struct when ``member`` is ""):
    every slot of the member, zeros included."""

    member: str  # 4.20+ member name ("cpu"), or "" for the whole op struct (2.6.23)
    table: str  # symbol of the Xen op table in the image
    by: str
    optional: bool = False  # the table exists only in some builds (xen_apic_ops, …)


@dataclass(frozen=True)
class Assign:
    slot: str  # 4.20+ path, e.g. "irq.save_fl"
    target: str  # symbol name
    by: str
    when: str = "always"  # "always" | "vcpus>1" | "placement" (vcpu_info placement worked)
    span: Range = ALWAYS  # sub-range of the rule set it holds in
    bits: tuple[int, ...] = (32, 64)


@dataclass(frozen=True)
class Unknown:
    """Slots Xen changes in a way not established here: left unresolved, never guessed."""

    group: str  # 4.20+ member ("lock"): every slot of it
    why: str
    when: str = "always"  # "always" | "vcpus>1" | "vcpus=1"
    span: Range = ALWAYS


@dataclass(frozen=True)
class XenRules:
    versions: str
    span: Range
    copies: tuple[MemberCopy, ...]
    assigns: tuple[Assign, ...]
    patcher: str  # what the dispatcher ends up as: xen_patch, paravirt_patch_default, …
    patcher_by: str
    unknown: tuple[Unknown, ...] = ()


# --- 5.13 onward: pv_ops member copies, patched by paravirt_patch() (plan.py / direct_calls.py)
_SPINLOCK = "xen_init_spinlocks (smp_pv.c: xen_pv_smp_prepare_boot_cpu), only with >1 possible vCPU"
_VCPU_INFO = "xen_setup_vcpu_info_placement (smp_pv.c: xen_pv_smp_prepare_boot_cpu)"
_POST_ALLOC = "xen_post_allocator_init (mmu_pv.c: xen_pagetable_init)"
_GDT = "xen_setup_gdt (enlighten_pv.c: xen_start_kernel)"

_QSPINLOCK = (
    Assign("lock.queued_spin_lock_slowpath", "__pv_queued_spin_lock_slowpath", _SPINLOCK,
           "vcpus>1"),
    Assign("lock.queued_spin_unlock", "__raw_callee_save___pv_queued_spin_unlock", _SPINLOCK,
           "vcpus>1"),
    Assign("lock.wait", "xen_qlock_wait", _SPINLOCK, "vcpus>1"),
    Assign("lock.kick", "xen_qlock_kick", _SPINLOCK, "vcpus>1"),
    Assign("lock.vcpu_is_preempted", "__raw_callee_save_xen_vcpu_stolen", _SPINLOCK, "vcpus>1"),
)

XEN_5_13_TO_6_12 = XenRules(
    versions="5.13–6.12 (read in Debian 6.1.192 and 6.12.117; 5.13–5.18 from the 5.14, 5.15 "
             "and 5.19 sources)",
    span=vr("5.13", "6.12"),
    copies=(
        MemberCopy("cpu", "xen_cpu_ops", "xen_start_kernel"),
        MemberCopy("irq", "xen_irq_ops", "xen_init_irq_ops (irq.c)"),
        MemberCopy("mmu", "xen_mmu_ops", "xen_init_mmu_ops (mmu_pv.c)"),
    ),
    assigns=(
        Assign("cpu.write_gdt_entry", "xen_write_gdt_entry", _GDT),
        Assign("cpu.load_gdt", "xen_load_gdt", _GDT),
        Assign("mmu.set_pte", "xen_set_pte", _POST_ALLOC),
        Assign("mmu.set_pmd", "xen_set_pmd", _POST_ALLOC),
        Assign("mmu.set_pud", "xen_set_pud", _POST_ALLOC),
        Assign("mmu.set_p4d", "xen_set_p4d", _POST_ALLOC),
        Assign("mmu.alloc_pte", "xen_alloc_pte", _POST_ALLOC),
        Assign("mmu.alloc_pmd", "xen_alloc_pmd", _POST_ALLOC),
        Assign("mmu.release_pte", "xen_release_pte", _POST_ALLOC),
        Assign("mmu.release_pmd", "xen_release_pmd", _POST_ALLOC),
        Assign("mmu.alloc_pud", "xen_alloc_pud", _POST_ALLOC),
        Assign("mmu.release_pud", "xen_release_pud", _POST_ALLOC),
        Assign("mmu.make_pte", "__raw_callee_save_xen_make_pte", _POST_ALLOC),
        Assign("mmu.write_cr3", "xen_write_cr3", _POST_ALLOC),
        Assign("irq.save_fl", "xen_save_fl_direct", _VCPU_INFO),
        Assign("irq.irq_disable", "xen_irq_disable_direct", _VCPU_INFO),
        Assign("irq.irq_enable", "xen_irq_enable_direct", _VCPU_INFO),
        Assign("mmu.read_cr2", "xen_read_cr2_direct", _VCPU_INFO),
        *_QSPINLOCK,
    ),
    patcher="paravirt_patch", patcher_by="apply_paravirt (5.13+: no backend patcher)",
)

# --- before 5.13: the era's own dispatcher, fed by whole-struct copies ---------------------
_PLACE = "xen_setup_vcpu_info_placement (enlighten.c), if the vcpu_info could be placed"
# the ops xen_setup_vcpu_info_placement points at the *_direct asm versions (2.6.23–5.12)
_PLACED = (
    Assign("irq.save_fl", "xen_save_fl_direct", _PLACE, "placement"),
    Assign("irq.restore_fl", "xen_restore_fl_direct", _PLACE, "placement"),
    Assign("irq.irq_disable", "xen_irq_disable_direct", _PLACE, "placement"),
    Assign("irq.irq_enable", "xen_irq_enable_direct", _PLACE, "placement"),
    Assign("mmu.read_cr2", "xen_read_cr2_direct", _PLACE, "placement"),
)
_POST_ALLOC_OLD = "xen_post_allocator_init / xen_pagetable_setup_done (mmu.c, enlighten.c)"
_LOCK_OLD = "xen_init_spinlocks (spinlock.c)"

XEN_2_6_23 = XenRules(
    versions="2.6.23 (i386; read in v2.6.23 arch/i386/xen/enlighten.c)",
    span=vr("2.6.23", "2.6.23"),
    copies=(MemberCopy("", "xen_paravirt_ops", "xen_start_kernel: paravirt_ops = "
                                               "xen_paravirt_ops"),),
    assigns=(
        *_PLACED,
        Assign("cpu.iret", "xen_iret_direct", _PLACE, "placement"),
        Assign("mmu.alloc_pt", "xen_alloc_pt", "xen_pagetable_setup_done (enlighten.c)"),
        Assign("mmu.set_pte", "xen_set_pte", "xen_pagetable_setup_done (enlighten.c)"),
    ),
    patcher="xen_patch", patcher_by="xen_paravirt_ops.patch",
)

# 2.6.24–5.12 share the piecemeal assignments; names a build lacks are skipped (alloc_pt is the
# 2.6.24 name of alloc_pte; set_pgd went to set_p4d in 4.12). Read in S4.10, S4.14, S4.19,
# S4.20, S5.12 and the 3.x trees of the fact sheet; 2.6.24–2.6.29 bracketed by 2.6.23 and 3.0.
_OLD_PIECEMEAL = (
    *_PLACED,
    Assign("mmu.alloc_pt", "xen_alloc_pt", _POST_ALLOC_OLD),
    Assign("mmu.set_pte", "xen_set_pte", _POST_ALLOC_OLD),
    Assign("mmu.set_pmd", "xen_set_pmd", _POST_ALLOC_OLD),
    Assign("mmu.set_pud", "xen_set_pud", _POST_ALLOC_OLD, bits=(64,)),
    Assign("mmu.set_pgd", "xen_set_pgd", _POST_ALLOC_OLD, span=vr("2.6.27", "4.11"),
           bits=(64,)),
    Assign("mmu.set_p4d", "xen_set_p4d", _POST_ALLOC_OLD, span=vr("4.12"), bits=(64,)),
    Assign("mmu.alloc_pte", "xen_alloc_pte", _POST_ALLOC_OLD),
    Assign("mmu.alloc_pmd", "xen_alloc_pmd", _POST_ALLOC_OLD),
    Assign("mmu.release_pte", "xen_release_pte", _POST_ALLOC_OLD),
    Assign("mmu.release_pmd", "xen_release_pmd", _POST_ALLOC_OLD),
    Assign("mmu.alloc_pud", "xen_alloc_pud", _POST_ALLOC_OLD, bits=(64,)),
    Assign("mmu.release_pud", "xen_release_pud", _POST_ALLOC_OLD, bits=(64,)),
    # the static table may hold xen_make_pte_init; thunks exist from 2.6.30
    Assign("mmu.make_pte", "__raw_callee_save_xen_make_pte", _POST_ALLOC_OLD,
           span=vr("2.6.30")),
    Assign("mmu.write_cr3", "xen_write_cr3", _POST_ALLOC_OLD, bits=(64,)),
    # qspinlock (4.2+); the ticket-lock ops before it are not modelled (see _OLD_UNKNOWN)
    *(Assign(a.slot, a.target, _LOCK_OLD, a.when, vr("4.2")) for a in _QSPINLOCK),
)
_OLD_UNKNOWN = (
    Unknown("lock", "Xen's pv ticket-lock ops (2.6.27–4.1) are not modelled",
            span=vr("2.6.27", "4.1")),
    Unknown("lock", "whether xen_init_spinlocks skipped the pv lock ops with one vCPU before "
                    "4.20 was not established (the num_possible_cpus() test is read in 4.20+)",
            when="vcpus=1", span=vr("4.2", "4.19")),
)

_G3_COPIES = (
    MemberCopy("init", "xen_init_ops", "xen_start_kernel: pv_init_ops = xen_init_ops"),
    MemberCopy("time", "xen_time_ops", "pv_time_ops = xen_time_ops", optional=True),
    MemberCopy("cpu", "xen_cpu_ops", "xen_start_kernel: pv_cpu_ops = xen_cpu_ops"),
    MemberCopy("irq", "xen_irq_ops", "pv_irq_ops = xen_irq_ops (xen_init_irq_ops)"),
    MemberCopy("apic", "xen_apic_ops", "pv_apic_ops = xen_apic_ops", optional=True),
    MemberCopy("mmu", "xen_mmu_ops", "pv_mmu_ops = xen_mmu_ops (xen_init_mmu_ops)"),
)

XEN_2_6_24_TO_4_13 = XenRules(
    versions="2.6.24–4.13 (struct copies; xen_patch until edcb5cf84f05, 4.14)",
    span=vr("2.6.24", "4.13"),
    copies=_G3_COPIES,
    assigns=_OLD_PIECEMEAL,
    patcher="xen_patch", patcher_by="xen_init_ops.patch",
    unknown=_OLD_UNKNOWN,
)

_DEFAULT_PATCH = Assign("init.patch", "paravirt_patch_default",
                        "xen_start_kernel: pv_init_ops.patch = paravirt_patch_default "
                        "(edcb5cf84f05, 4.14)")

XEN_4_14_TO_4_19 = XenRules(
    versions="4.14–4.19 (struct copies; xen_patch removed by edcb5cf84f05; read in 4.14, 4.19)",
    span=vr("4.14", "4.19"),
    copies=tuple(c for c in _G3_COPIES if c.member != "init"),
    assigns=(_DEFAULT_PATCH, *_OLD_PIECEMEAL),
    patcher="paravirt_patch_default", patcher_by=_DEFAULT_PATCH.by,
    unknown=_OLD_UNKNOWN,
)

XEN_4_20_TO_5_12 = XenRules(
    versions="4.20–5.12 (pv_ops.cpu = xen_cpu_ops …; read in 4.20, 5.12)",
    span=vr("4.20", "5.12"),
    copies=tuple(c for c in _G3_COPIES if c.member not in ("init", "apic")),
    assigns=(Assign("init.patch", "paravirt_patch_default",
                    "xen_start_kernel: pv_ops.init.patch = paravirt_patch_default"),
             *_OLD_PIECEMEAL),
    patcher="paravirt_patch_default", patcher_by="pv_ops.init.patch = paravirt_patch_default",
)

XEN_RULES = (XEN_2_6_23, XEN_2_6_24_TO_4_13, XEN_4_14_TO_4_19, XEN_4_20_TO_5_12,
             XEN_5_13_TO_6_12)

# have_vcpu_info_placement: assumed to work (the hypervisor accepted VCPUOP_register_vcpu_info,
# true of every Xen since 3.x) — except where the kernel itself turned it off: x86-64 before
# 2.6.30 cleared it in xen_start_kernel ("Disable until direct per-cpu data access", next to
# x86_64_init_pda, which went with the PDA in 2.6.30).
PLACEMENT = {32: vr("2.6.23"), 64: vr("2.6.30")}


@dataclass(frozen=True)
class NoXenPv:
    bits: int
    span: Range
    why: str


NO_XEN_PV = (
    NoXenPv(32, vr("2.6.20", "2.6.22"), "Xen PV guest support first appears in 2.6.23"),
    NoXenPv(64, vr("2.6.20", "2.6.26"), "x86-64 Xen PV guest support first appears in 2.6.27"),
    NoXenPv(32, vr("5.9"), "32-bit Xen PV guest support was removed in 5.9"),
)


def rules_for(version: Version | None) -> XenRules | None:
    if version is None:
        return None
    return next((r for r in XEN_RULES if r.span.holds(version)), None)


def no_xen_pv(bits: int, version: Version) -> str | None:
    return next((n.why for n in NO_XEN_PV if n.bits == bits and n.span.holds(version)), None)


def placement_works(bits: int, version: Version) -> bool:
    return PLACEMENT[bits].holds(version)


# The member paths of each container: 4.20+ "irq.save_fl" → the era's own path.
SPLIT_NAMES = {"init": "pv_init_ops", "time": "pv_time_ops", "cpu": "pv_cpu_ops",
               "irq": "pv_irq_ops", "apic": "pv_apic_ops", "mmu": "pv_mmu_ops",
               "lock": "pv_lock_ops"}


def member_path(container: str, member: str) -> str:
    """A 4.20+ member name ("cpu") as the container names it ("pv_cpu_ops", or "")."""
    if container == "paravirt_ops":
        return ""
    if container == "pv_*_ops":
        return SPLIT_NAMES.get(member, member)
    return member


def slot_path(container: str, slot: str) -> str:
    member, _, op = slot.partition(".")
    prefix = member_path(container, member)
    return f"{prefix}.{op}" if prefix else op


# --- 4.20 onward: the start-up functions; what they store is read from the image's code -----
@dataclass(frozen=True)
class StartupRules:
    versions: str
    span: Range
    last_read: Version  # the newest release these steps were read in
    steps: tuple[Step, ...]


_SMP = "smp_ops.smp_prepare_boot_cpu (start_kernel, before alternative patching)"
XEN_STARTUP = StartupRules(
    versions="4.20+ (read in Debian 5.10.223, 6.1.176, 6.12.118 and 7.3.4)",
    span=vr("4.20"),
    last_read=(7, 3, 0),
    steps=(
        Step("xen_start_kernel", "the Xen PV entry point (startup_xen, xen-head.S)"),
        Step("xen_init_irq_ops", "xen_start_kernel"),
        Step("xen_init_mmu_ops", "xen_start_kernel"),
        Step("xen_setup_gdt", "xen_start_kernel"),
        Step("xen_pv_init_platform", "x86_init.hyper.init_platform (setup_arch)"),
        Step("xen_init_time_ops", "xen_pv_init_platform"),
        Step("xen_pagetable_init", "x86_init.paging.pagetable_init (setup_arch)"),
        Step("xen_post_allocator_init", "xen_pagetable_init"),
        Step("xen_pv_smp_prepare_boot_cpu", _SMP),
        Step("xen_setup_vcpu_info_placement", "xen_pv_smp_prepare_boot_cpu"),
        # num_possible_cpus() == 1 (or nopvspin) returns before any store (4.20–7.3)
        Step("xen_init_spinlocks", "xen_pv_smp_prepare_boot_cpu", condition="vcpus>1",
             inlined_ok=False),
        Step("xen_time_setup_guest", "xen_time_init (x86_init.timers.timer_init), after "
             "patching: only its static-call updates count", before_patching=False),
    ),
)
