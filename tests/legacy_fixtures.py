"""Build ``fixtures/pv_legacy.S`` for one era, with the .BTF its op tables need.

Real kernels of these eras carry DWARF, not BTF; pvpatch reads either through the same
:class:`~pvpatch.types.model.StructLayout`, so a small BTF section stands in for the types.
The member lists below are the slot order of the fixture's tables (see its comments).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from btfwriter import BtfWriter
from conftest import BUILD, assemble

# eras 3 and 4: (template member, struct type, [(op, is callee-save wrapper)])
TEMPLATE = (
    ("init", "pv_init_ops", [("patch", False)]),
    ("time", "pv_time_ops", [("sched_clock", False)]),
    ("cpu", "pv_cpu_ops", [("io_delay", False), ("iret", False), ("usergs_sysret64", False)]),
    ("irq", "pv_irq_ops", [("save_fl", True), ("irq_disable", True)]),
    ("mmu", "pv_mmu_ops", [("read_cr2", True), ("pte_val", True), ("pmd_val", True),
                           ("flush_tlb_user", False), ("alloc_p4d", False)]),
    ("lock", "pv_lock_ops", [("queued_spin_unlock", True), ("vcpu_is_preempted", True)]),
)
# era 2: struct paravirt_ops, four non-function words first
PARAVIRT_OPS = ("kernel_rpl", "shared_kernel_pmd", "paravirt_enabled", "name", "patch",
                "io_delay", "save_fl", "irq_disable", "iret", "read_cr2", "read_tsc", "pte_val",
                "alloc_pt", "irq_enable_sysexit", "set_iopl_mask", "flush_tlb_user")

BANNER = {1: 22620, 2: 22622, 3: 41900, 4: 51000}  # defaults per era

# fixtures/xen_legacy.S: the same shapes with the ops its Xen sites need
XEN_TEMPLATE = (
    ("init", "pv_init_ops", [("patch", False)]),
    ("time", "pv_time_ops", [("sched_clock", False)]),
    ("cpu", "pv_cpu_ops", [("io_delay", False), ("iret", False), ("load_tr_desc", False)]),
    ("irq", "pv_irq_ops", [("save_fl", True), ("restore_fl", True), ("irq_disable", True),
                           ("irq_enable", True)]),
    ("mmu", "pv_mmu_ops", [("read_cr2", False), ("set_pte", False), ("alloc_pte", False),
                           ("make_pte", True), ("alloc_p4d", False)]),
    ("lock", "pv_lock_ops", [("queued_spin_unlock", True), ("wait", False)]),
)
XEN_PARAVIRT_OPS = ("kernel_rpl", "shared_kernel_pmd", "paravirt_enabled", "name", "patch",
                    "io_delay", "save_fl", "restore_fl", "irq_disable", "irq_enable", "iret",
                    "read_cr2", "set_pte", "alloc_pt", "irq_enable_sysexit", "pte_val",
                    "flush_tlb_user", "load_tr_desc")


def btf_blob(era: int, ptr: int, template: tuple = TEMPLATE,
             paravirt_ops: tuple[str, ...] = PARAVIRT_OPS) -> bytes:
    w = BtfWriter()
    u32 = w.int_("unsigned int", 4)
    proto = w.func_proto(0, [])
    fptr = w.ptr(proto)
    if era == 2:
        members = [(n, u32 if i < 3 else fptr, 32 * i, 0) for i, n in enumerate(paravirt_ops)]
        w.struct("paravirt_ops", 4 * len(paravirt_ops), members)
        return w.blob()
    wrapper = w.struct("paravirt_callee_save", ptr, [("func", fptr, 0, 0)])
    subs, offset = [], 0
    for member, type_name, ops in template:
        size = ptr * len(ops)
        sid = w.struct(type_name, size, [(op, wrapper if callee else fptr, 8 * ptr * i, 0)
                                         for i, (op, callee) in enumerate(ops)])
        subs.append((type_name if era == 3 else member, sid, 8 * offset, 0))
        offset += size
    w.struct("paravirt_patch_template", offset, subs)
    return w.blob()


def legacy_kernel(era: int, bits: int = 32, version: int | None = None,
                  ld_args: tuple[str, ...] = (), **defsyms: int) -> str:
    """The fixture for ``era`` (1–4), linked (with ``ld_args``), with .BTF added for eras
    2–4."""
    syms = {"ERA": era, "VER": version or BANNER[era], **defsyms}
    if bits == 32:
        syms["I386"] = 1
    elf = assemble("pv_legacy.S", bits, defsyms=syms, ld_args=ld_args)
    if era == 1:
        return str(elf)  # 2.6.20–21 needs no types: the enum names the op
    return _with_btf(elf, btf_blob(era, bits // 8))


def xen_legacy_kernel(era: int, bits: int, version: int, **defsyms: int) -> str:
    """``fixtures/xen_legacy.S`` for ``era`` (2–4) at banner ``version``, with its .BTF
    (``LGUEST=1``: with lguest_init and lguest_patch's templates too)."""
    syms = {"ERA": era, "VER": version, **defsyms}
    if bits == 32:
        syms["I386"] = 1
    elf = assemble("xen_legacy.S", bits, defsyms=syms)
    return _with_btf(elf, btf_blob(era, bits // 8, XEN_TEMPLATE, XEN_PARAVIRT_OPS))


def _with_btf(elf: Path, data: bytes) -> str:
    """A copy of ``elf`` with a .BTF section holding ``data`` (cached next to it)."""
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy not installed: cannot add .BTF to the fixture")
    out = BUILD / f"{elf.name}-btf"
    if not out.exists():
        blob = Path(f"{out}.btf")
        blob.write_bytes(data)
        subprocess.run(["objcopy", "--add-section", f".BTF={blob}",
                        "--set-section-flags", ".BTF=readonly", str(elf), f"{out}.tmp"],
                       check=True)
        Path(f"{out}.tmp").rename(out)
    return str(out)
