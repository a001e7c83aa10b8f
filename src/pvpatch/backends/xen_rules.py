"""What a Xen PV guest's start-up code installs in pv_ops before patching, per kernel range.

Each table is read from the kernel source of its range: ``xen_start_kernel`` and what it
calls (``arch/x86/xen/enlighten_pv.c``, ``irq.c``, ``mmu_pv.c``, ``smp_pv.c``, ``spinlock.c``).
Only the final value before ``alternative_instructions()`` matters, so a slot assigned twice
(``set_pte``: ``__xen_set_pte`` then ``xen_set_pte``) is listed with its last value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemberCopy:
    """``pv_ops.<member> = <table>.<member>``: every slot of the member, zeros included."""

    member: str
    table: str  # symbol of the Xen op table in the image
    by: str


@dataclass(frozen=True)
class Assign:
    slot: str
    target: str  # symbol name
    by: str
    when: str = "always"  # "always" | "vcpus>1"


@dataclass(frozen=True)
class XenRules:
    versions: str
    min_version: tuple[int, int]
    max_version: tuple[int, int]
    copies: tuple[MemberCopy, ...]
    assigns: tuple[Assign, ...]


_SPINLOCK = "xen_init_spinlocks (smp_pv.c: xen_pv_smp_prepare_boot_cpu), only with >1 possible vCPU"
_VCPU_INFO = "xen_setup_vcpu_info_placement (smp_pv.c: xen_pv_smp_prepare_boot_cpu)"
_POST_ALLOC = "xen_post_allocator_init (mmu_pv.c: xen_pagetable_init)"
_GDT = "xen_setup_gdt (enlighten_pv.c: xen_start_kernel)"

XEN_5_19_TO_6_12 = XenRules(
    versions="5.19–6.12 (read in Debian 6.1.192 and 6.12.117)",
    min_version=(5, 19), max_version=(6, 12),
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
        Assign("lock.queued_spin_lock_slowpath", "__pv_queued_spin_lock_slowpath", _SPINLOCK,
               "vcpus>1"),
        Assign("lock.queued_spin_unlock", "__raw_callee_save___pv_queued_spin_unlock",
               _SPINLOCK, "vcpus>1"),
        Assign("lock.wait", "xen_qlock_wait", _SPINLOCK, "vcpus>1"),
        Assign("lock.kick", "xen_qlock_kick", _SPINLOCK, "vcpus>1"),
        Assign("lock.vcpu_is_preempted", "__raw_callee_save_xen_vcpu_stolen", _SPINLOCK,
               "vcpus>1"),
    ),
)

XEN_RULES = (XEN_5_19_TO_6_12,)


def rules_for(version: tuple[int, int] | None) -> XenRules | None:
    if version is None:
        return None
    for r in XEN_RULES:
        if r.min_version <= version <= r.max_version:
            return r
    return None
