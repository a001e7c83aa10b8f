"""What ``native_patch`` knew before 5.13, as data: every fact with the kernels it holds for.

Versions are ``(major, minor, sub)`` with ``sub`` used only for 2.6.x (see
``pvpatch.kernel.era.version_key``). Ops are matched by the *leaf* of the slot's member path
(``pv_irq_ops.save_fl`` and ``irq.save_fl`` are both ``save_fl``): the leaf names are unique
across the op structs of every era. Sources: the fact sheet §4.2–4.6, which read
``paravirt.c``, ``paravirt_patch_{32,64}.c`` (≤4.20) and ``paravirt_patch.c`` (5.3–5.12) of
each tree it names; ranges it could only bracket are marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass

Version = tuple[int, int, int]
ANY = 0  # an entry for both ELF classes


@dataclass(frozen=True)
class Span:
    first: Version
    last: Version  # inclusive

    def holds(self, v: Version) -> bool:
        return self.first <= v <= self.last


def span(first: str, last: str) -> Span:
    def parse(text: str) -> Version:
        parts = [int(x) for x in text.split(".")]
        return (parts[0], parts[1], parts[2] if len(parts) > 2 else 0)

    return Span(parse(first), parse(last))


@dataclass(frozen=True)
class Inline:
    """One DEF_NATIVE / PATCH_CASE entry: the op, its native bytes, where it holds."""

    op: str
    bits: int  # 32, 64, or ANY
    text: str  # the assembler text, for reports
    code: bytes | None  # None: known to exist, bytes not established (reported, not guessed)
    span: Span
    note: str = ""


def _i(op: str, bits: int, text: str, code: str | None, first: str, last: str,
       note: str = "") -> Inline:
    return Inline(op, bits, text, None if code is None else bytes.fromhex(code),
                  span(first, last), note)


INLINE = (
    # i386 (include/asm-i386/paravirt.h ≤2.6.23, arch/x86/kernel/paravirt_patch_32.c, 5.3+
    # paravirt_patch.c); 32-bit XXL went in 5.10/5.11, S5.9 is the last tree read.
    _i("irq_disable", 32, "cli", "fa", "2.6.20", "5.9"),
    _i("irq_enable", 32, "sti", "fb", "2.6.20", "5.9"),
    _i("restore_fl", 32, "push %eax; popf", "509d", "2.6.20", "5.9"),
    _i("save_fl", 32, "pushf; pop %eax", "9c58", "2.6.20", "5.9"),
    _i("iret", 32, "iret", "cf", "2.6.20", "5.9"),
    _i("irq_enable_sysexit", 32, "sti; sysexit", "fb0f35", "2.6.20", "4.4"),
    _i("irq_enable_syscall_ret", 32, "sti; sysexit", "fb0f35", "2.6.25", "2.6.26"),
    _i("read_cr2", 32, "mov %cr2,%eax", "0f20d0", "2.6.22", "5.9"),
    _i("write_cr3", 32, "mov %eax,%cr3", "0f22d8", "2.6.22", "5.9"),
    _i("read_cr3", 32, "mov %cr3,%eax", "0f20d8", "2.6.22", "5.9"),
    _i("clts", 32, "clts", "0f06", "2.6.22", "4.4"),
    _i("read_tsc", 32, "rdtsc", "0f31", "2.6.22", "4.2", "gone by S4.4; 4.3 not read"),
    _i("queued_spin_unlock", 32, "movb $0,(%eax)", "c60000", "4.2", "5.12"),
    _i("vcpu_is_preempted", 32, "xor %eax,%eax", "31c0", "4.2", "5.12"),
    # x86_64 (arch/x86/kernel/paravirt_patch_64.c ≤4.20, paravirt_patch.c 5.3–5.12)
    _i("irq_disable", 64, "cli", "fa", "2.6.25", "5.12"),
    _i("irq_enable", 64, "sti", "fb", "2.6.25", "5.12"),
    _i("restore_fl", 64, "pushq %rdi; popfq", "579d", "2.6.25", "5.11"),
    _i("save_fl", 64, "pushfq; popq %rax", "9c58", "2.6.25", "5.12"),
    _i("iret", 64, "iretq", "48cf", "2.6.25", "3.13", "gone by S3.19"),
    _i("read_cr2", 64, "movq %cr2,%rax", "0f20d0", "2.6.25", "5.12"),
    _i("read_cr3", 64, "movq %cr3,%rax", "0f20d8", "2.6.25", "5.12"),
    _i("write_cr3", 64, "movq %rdi,%cr3", "0f22df", "2.6.25", "5.12"),
    _i("flush_tlb_single", 64, "invlpg (%rdi)", "0f013f", "2.6.25", "4.10"),
    _i("clts", 64, "clts", "0f06", "2.6.25", "4.4"),
    _i("wbinvd", 64, "wbinvd", "0f09", "2.6.25", "5.12"),
    _i("irq_enable_syscall_ret", 64, "movq %gs:pda_oldrsp,%rsp; swapgs; sysretq", None,
       "2.6.25", "2.6.26", "the PDA offset was never computed (fact sheet §8.5)"),
    _i("irq_enable_sysexit", 64, "swapgs; sti; sysexit", "0f01f8fb0f35", "2.6.27", "4.1"),
    _i("usergs_sysret64", 64, "swapgs; sysretq", "0f01f8480f07", "2.6.27", "5.11"),
    _i("usergs_sysret32", 64, "swapgs; sysretl", "0f01f80f07", "2.6.27", "4.4"),
    _i("swapgs", 64, "swapgs", "0f01f8", "2.6.25", "5.11"),
    _i("queued_spin_unlock", 64, "movb $0,(%rdi)", "c60700", "4.2", "5.12"),
    _i("vcpu_is_preempted", 64, "xor %rax,%rax", "4831c0", "4.2", "4.19",
       "S4.14 has it; the change to xor %eax,%eax lies in 4.15–4.20, taken as 4.20"),
    _i("vcpu_is_preempted", 64, "xor %eax,%eax", "31c0", "4.20", "5.12"),
)

# 2.6.20–21: the type byte is an enum; type 4 (save then disable) has its own replacement.
G1_INLINE = {
    "save_fl+irq_disable": Inline("save_fl+irq_disable", 32, "pushf; pop %eax; cli",
                                  bytes.fromhex("9c58fa"), span("2.6.20", "2.6.21")),
}

# Inlined only while the slot still holds the native callee-save thunk
# (pv_is_native_spin_unlock() / pv_is_native_vcpu_is_preempted(), 4.2+); else the default path.
NATIVE_THUNK_GATED = {
    "queued_spin_unlock": "__raw_callee_save___native_queued_spin_unlock",
    "vcpu_is_preempted": "__raw_callee_save___native_vcpu_is_preempted",
}

# 2.6.22–23 native_patch: these return their argument in the same registers (regparm), so
# the site becomes 0 bytes. make_pmd/pmd_val exist only with PAE, hence only match then.
ZERO_BYTE_OPS = ("make_pgd", "make_pte", "pgd_val", "pte_val", "make_pmd", "pmd_val")
ZERO_BYTE_SPAN = span("2.6.22", "2.6.23")


@dataclass(frozen=True)
class JmpOps:
    """Ops ``paravirt_patch_default`` turns into ``jmp target`` (paravirt_patch_jmp)."""

    span: Span
    ops: frozenset[str]
    ops_32_only: frozenset[str] = frozenset()


JMP_OPS = (
    JmpOps(span("2.6.22", "2.6.26"),
           frozenset({"iret", "irq_enable_sysexit", "irq_enable_syscall_ret"})),
    JmpOps(span("2.6.27", "4.1"),
           frozenset({"iret", "irq_enable_sysexit", "usergs_sysret32", "usergs_sysret64"})),
    # S4.2: irq_enable_sysexit only under X86_32; 4.3–4.9 not read, taken to match S4.2
    JmpOps(span("4.2", "4.9"), frozenset({"iret", "usergs_sysret32", "usergs_sysret64"}),
           frozenset({"irq_enable_sysexit"})),
    JmpOps(span("4.10", "5.11"), frozenset({"iret", "usergs_sysret64"})),
    JmpOps(span("5.12", "5.12"), frozenset({"iret"})),
)


@dataclass(frozen=True)
class Ident:
    """``opfunc == _paravirt_ident_N`` → ``paravirt_patch_ident_N``: per class, its bytes."""

    symbol: str
    span: Span
    code: dict[int, bytes]  # ELF class → bytes (i386: none, the value is already in eax[:edx])


IDENTS = (
    Ident("_paravirt_ident_32", span("2.6.30", "4.19"), {32: b"", 64: bytes.fromhex("89f8")}),
    Ident("_paravirt_ident_64", span("2.6.30", "5.12"), {32: b"", 64: bytes.fromhex("4889f8")}),
)

UD2 = bytes.fromhex("0f0b")  # start_ud2a … end_ud2a: the NULL-op patch, 2.6.22–5.12
CALL_LEN = JMP_LEN = 5

# paravirt_patch_call: `if (tgt_clobbers & ~site_clobbers) return len;` with CLBR_ANY as the
# target's clobbers — mainline 2.6.22–4.18; b13b271933ee removed it in 4.19 and stable took
# that back to 4.18.1 and 4.14.x (e.g. 4.14.177), which the version alone cannot see.
CLOBBER_CHECK = span("2.6.22", "4.18")

# A replacement or call longer than the site: ≤5.2 the site is left as is (WARN_ONCE from
# 4.19); 5.3–5.12 paravirt_patch_insns / paravirt_patch_call BUG_ON it (2777cae2b19d).
LEAVE_IF_TOO_LONG = span("2.6.20", "5.2")


@dataclass(frozen=True)
class NopChoice:
    """Which table ``add_nops`` used, as a boot on a current Intel or AMD CPU picks it."""

    bits: int
    span: Span
    intel: str  # pvpatch.patch.nops table name
    amd: str
    why: str


# Before 5.13 the table was chosen per CPU at boot (find_nop_table / arch_init_ideal_nops).
# Reference CPUs: a current Intel (family 6, model > 0x2f, NOPL) and a current AMD (family
# > 0xf, NOPL). The Intel choice is the default.
NOP_CHOICES = (
    NopChoice(32, span("2.6.20", "2.6.23"), "intel", "k8",
              "K8 if X86_FEATURE_K8, K7 if K7, else the intel (GENERIC) table"),
    NopChoice(32, span("2.6.24", "2.6.35"), "p6", "k8",
              "K8, K7, then P6 on Intel P3/P4-class or NOPL CPUs, else intel"),
    NopChoice(32, span("2.6.36", "5.12"), "p6", "k8",
              "ideal_nops: Intel family 6 outside models 0x0f–0x2f with NOPL → P6; others K8"),
    NopChoice(64, span("2.6.25", "2.6.35"), "p6", "k8",
              "P6 on Intel family ≥ 6 (later: with NOPL), else K8"),
    NopChoice(64, span("2.6.36", "5.12"), "p6", "p6",
              "ideal_nops: Intel with NOPL → P6; AMD family > 0xf → P6 (S4.19)"),
)
