"""The inline templates backend patchers copy into pv sites, as the source writes them.

``xen_patch()`` (2.6.23–4.13) and ``lguest_patch()`` (2.6.23–4.13) copy a template from the
image (``xen_<op>_direct`` … ``_end``, ``lgstart_<name>`` … ``lgend_<name>``); the planner
reads the bytes there. This module keeps each template's assembly text as the kernel source
writes it, with its bytes for a fixed example layout, so that an assembler can check them
(tests/test_assembled.py, keystone) and so that tests can build fixtures whose templates
are the source's.

The example layout: the per-CPU ``xen_vcpu_info`` at 0x2a40 (evtchn_upcall_pending at +0,
evtchn_upcall_mask at +1), ``lguest_data`` at 0xc0500000 with ``irq_enabled`` at +0 (its first
member, LGUEST_DATA_irq_enabled in asm-offsets), a template at 0x1000 and ``check_events`` at
0x2000.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.patch.native_tables import Span, span

VCPU_INFO = 0x2A40  # the example address of xen_vcpu_info
LGUEST_DATA = 0xC0500000  # the example address of lguest_data (irq_enabled at offset 0)
AT, CHECK_EVENTS = 0x1000, 0x2000


@dataclass(frozen=True)
class Template:
    """One template: where it lives, its text (AT&T, the example layout) and bytes."""

    patcher: str  # xen_patch, lguest_patch
    op: str  # the pv op it replaces (leaf name)
    symbol: str  # its start label in the image
    bits: int
    span: Span
    text: str  # as the source writes it (symbols, local labels)
    code: bytes  # in the example layout
    source: str
    asm: str  # the text in the example layout, as an assembler takes it (on x86-64 an
    #           absolute operand is spelled (,%riz,1): keystone would make it RIP-relative)


def _t(patcher: str, op: str, symbol: str, bits: int, first: str, last: str, text: str,
       code: str, source: str, asm: str) -> Template:
    return Template(patcher, op, symbol, bits, span(first, last), text, bytes.fromhex(code),
                    source, asm)


_XEN_2623 = "v2.6.23 arch/i386/xen/xen-asm.S"
_XEN_4 = "4.x arch/x86/xen/xen-asm.S (4.9, 4.10: PER_CPU_VAR(xen_vcpu_info))"
_LGUEST = ("v2.6.23 arch/i386/lguest/i386_head.S … 4.13 arch/x86/lguest/head_32.S: "
           "LGUEST_PATCH(cli, …), LGUEST_PATCH(pushf, …)")

TEMPLATES = (
    # Xen, 2.6.23 (i386): %fs-relative per-CPU vcpu_info
    _t("xen_patch", "irq_disable", "xen_irq_disable_direct", 32, "2.6.23", "2.6.23",
       "movb $1, %fs:per_cpu__xen_vcpu_info+XEN_vcpu_info_mask", "64c605412a000001",
       _XEN_2623, "movb $1, %fs:0x2a41"),
    _t("xen_patch", "save_fl", "xen_save_fl_direct", 32, "2.6.23", "2.6.23",
       "testb $0xff, %fs:per_cpu__xen_vcpu_info+XEN_vcpu_info_mask; setz %ah; addb %ah,%ah",
       "64f605412a0000ff0f94c400e4", _XEN_2623,
       "testb $0xff, %fs:0x2a41; setz %ah; addb %ah, %ah"),
    _t("xen_patch", "irq_enable", "xen_irq_enable_direct", 32, "2.6.23", "2.6.23",
       "andw $0x00ff, %fs:per_cpu__xen_vcpu_info+XEN_vcpu_info_pending; jz 1f; "
       "2: call check_events; 1:", "64668125402a0000ff007405e8ef0f0000", _XEN_2623,
       "andw $0x00ff, %fs:0x2a40; jz done; call 0x2000; done:"),
    # Xen, 4.x: i386 %fs, x86-64 %gs
    _t("xen_patch", "irq_disable", "xen_irq_disable_direct", 32, "2.6.30", "4.13",
       "movb $1, PER_CPU_VAR(xen_vcpu_info)+XEN_vcpu_info_mask", "64c605412a000001",
       _XEN_4, "movb $1, %fs:0x2a41"),
    _t("xen_patch", "irq_enable", "xen_irq_enable_direct", 32, "2.6.30", "4.13",
       "movb $0, PER_CPU_VAR(xen_vcpu_info)+XEN_vcpu_info_mask; testb $0xff, "
       "PER_CPU_VAR(xen_vcpu_info)+XEN_vcpu_info_pending; jz 1f; 2: call check_events; 1:",
       "64c605412a00000064f605402a0000ff7405e8e90f0000", _XEN_4,
       "movb $0, %fs:0x2a41; testb $0xff, %fs:0x2a40; jz done; call 0x2000; done:"),
    _t("xen_patch", "irq_disable", "xen_irq_disable_direct", 64, "2.6.30", "4.13",
       "movb $1, PER_CPU_VAR(xen_vcpu_info)+XEN_vcpu_info_mask", "65c60425412a000001",
       _XEN_4,
       "movb $1, %gs:0x2a41(,%riz,1)"),
    _t("xen_patch", "save_fl", "xen_save_fl_direct", 64, "2.6.30", "4.13",
       "testb $0xff, PER_CPU_VAR(xen_vcpu_info)+XEN_vcpu_info_mask; setz %ah; addb %ah,%ah",
       "65f60425412a0000ff0f94c400e4", _XEN_4,
       "testb $0xff, %gs:0x2a41(,%riz,1); setz %ah; addb %ah, %ah"),
    _t("xen_patch", "irq_enable", "xen_irq_enable_direct", 64, "2.6.30", "4.13",
       "movb $0, PER_CPU_VAR(xen_vcpu_info)+XEN_vcpu_info_mask; testb $0xff, "
       "PER_CPU_VAR(xen_vcpu_info)+XEN_vcpu_info_pending; jz 1f; 2: call check_events; 1:",
       "65c60425412a00000065f60425402a0000ff7405e8e70f0000", _XEN_4,
       "movb $0, %gs:0x2a41(,%riz,1); testb $0xff, %gs:0x2a40(,%riz,1); jz done; "
       "call 0x2000; done:"),
    # lguest (i386): the only two templates lguest_patch() has
    _t("lguest_patch", "irq_disable", "lgstart_cli", 32, "2.6.23", "4.13",
       "movl $0, lguest_data+LGUEST_DATA_irq_enabled", "c705000050c000000000", _LGUEST,
       "movl $0, 0xc0500000"),
    _t("lguest_patch", "save_fl", "lgstart_pushf", 32, "2.6.23", "4.13",
       "movl lguest_data+LGUEST_DATA_irq_enabled, %eax", "a1000050c0", _LGUEST,
       "movl 0xc0500000, %eax"),
)
