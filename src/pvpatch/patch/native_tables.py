"""What ``native_patch`` knew before 5.13, as data: every fact with the kernels it holds for.

Versions are ``(major, minor, sub)`` with ``sub`` used only for 2.6.x (see
``pvpatch.kernel.era.version_key``). Ops are matched by the *leaf* of the slot's member path
(``pv_irq_ops.save_fl`` and ``irq.save_fl`` are both ``save_fl``): the leaf names are unique
across the op structs of every era. Sources: the fact sheet §4.2–4.5, which read
``paravirt.c``, ``paravirt_patch_{32,64}.c`` (≤4.20) and ``paravirt_patch.c`` (5.3–5.12) of
each tree it names; ranges it could only bracket are marked as such. The boot CPU's NOP
rules at the end were read in the kernel trees each rule names.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.cpu import MAX_FAMILY, MAX_MODEL

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
    text: dict[int, str]  # ELF class → the source's instruction (DEF_NATIVE … "mov %edi,%eax")


IDENTS = (
    Ident("_paravirt_ident_32", span("2.6.30", "4.19"), {32: b"", 64: bytes.fromhex("89f8")},
          {32: "", 64: "mov %edi,%eax"}),
    Ident("_paravirt_ident_64", span("2.6.30", "5.12"), {32: b"", 64: bytes.fromhex("4889f8")},
          {32: "", 64: "mov %rdi,%rax"}),
)

UD2 = bytes.fromhex("0f0b")  # start_ud2a … end_ud2a: the NULL-op patch, 2.6.22–5.12
UD2_TEXT = "ud2"  # the source writes ud2a, which assemblers spell ud2
CALL_LEN = JMP_LEN = 5

# paravirt_patch_call: `if (tgt_clobbers & ~site_clobbers) return len;` with CLBR_ANY as the
# target's clobbers — mainline 2.6.22–4.18; b13b271933ee removed it in 4.19 and stable took
# that back to 4.18.1 and 4.14.x (e.g. 4.14.177), which the version alone cannot see.
CLOBBER_CHECK = span("2.6.22", "4.18")

# A replacement or call longer than the site: ≤5.2 the site is left as is (WARN_ONCE from
# 4.19); 5.3–5.12 paravirt_patch_insns / paravirt_patch_call BUG_ON it (2777cae2b19d).
LEAVE_IF_TOO_LONG = span("2.6.20", "5.2")



# -- the boot CPU's padding NOPs, 2.6.20–5.12 ---------------------------------------------------
#
# add_nops() pads with one of the tables in patch.nops, chosen from the boot CPU: per call by
# find_nop_table() up to 2.6.39, once in setup_arch() by arch_init_ideal_nops() from 3.0 (the
# first tree holding it is 3.0.8; 2.6.39.3 still has find_nop_table). From 5.13 the table is
# fixed at build time (FIXED_NOPS). Each rule lists the kernel's tests in order, the first
# that holds wins. Read in the trees named in each `source`: "2.6 history" is the mainline
# history v2.6.12–v2.6.34-rc7 (comio/linux-2.6.25-cf547x, read at its tags); the others are
# snapshots of one release each (x.y.z), see docs/apply.md.

ALL_FAMILIES = (0, MAX_FAMILY)


@dataclass(frozen=True)
class CpuTest:
    """One test of find_nop_table()/arch_init_ideal_nops(): when it holds, ``table`` is used."""

    table: str  # a pvpatch.patch.nops table name
    text: str  # the test, as a report says it
    vendor: str | None = None  # a pvpatch.cpu vendor name; None: any CPU
    families: tuple[int, int] = ALL_FAMILIES  # inclusive
    models: tuple[int, int] = (0, MAX_MODEL)
    not_models: frozenset[int] = frozenset()
    feature: str | None = None  # a bit of CPU_FEATURES that must be set


@dataclass(frozen=True)
class NopRule:
    bits: int
    span: Span
    function: str
    tests: tuple[CpuTest, ...]
    source: str


# The tests the rules share. The Intel model list is the "decoder implementation quirk"
# comment's: family 6, models 0x0f–0x2f except 0x1c, 0x26, 0x27 run the K8 NOPs faster.
_INTEL_QUIRK = CpuTest("k8", "the decoder-quirk models (Intel family 6, 0x0f–0x2f bar "
                       "0x1c/0x26/0x27)", "intel", (6, 6), (0x0F, 0x2F),
                       frozenset({0x1C, 0x26, 0x27}))
_INTEL_NOPL = CpuTest("p6", "Intel with X86_FEATURE_NOPL", "intel", feature="NOPL")
_HYGON = CpuTest("p6", "Hygon", "hygon")
_AMD_NEW = CpuTest("p6", "AMD family > 0xf", "amd", (0x10, MAX_FAMILY))
_K8 = CpuTest("k8", "X86_FEATURE_K8 set", feature="K8")
_K7 = CpuTest("k7", "X86_FEATURE_K7 set", feature="K7")
_NOPL = CpuTest("p6", "X86_FEATURE_NOPL set", feature="NOPL")
_INTEL_TABLE = CpuTest("intel", "the fallback (GENERIC NOPs)")
_K8_64 = CpuTest("k8", "the default branch (x86-64)")
_IDEAL_64 = (_INTEL_QUIRK, _INTEL_NOPL, CpuTest("k8", "Intel without NOPL (x86-64)", "intel"))
_IDEAL_32 = (_INTEL_QUIRK, _INTEL_NOPL, CpuTest("intel", "Intel without NOPL (i386)", "intel"))
_DEFAULT_32 = (_K8, _K7, _INTEL_TABLE)

_R24 = "32c464f5d97 'x86: multi-byte single instruction NOPs' (2.6.24-rc1); 2.6 history v2.6.24–26"
_R27 = ("f31d731e446 'x86: use X86_FEATURE_NOPL in alternatives' (2.6.27-rc6); 2.6 history "
        "v2.6.27, v2.6.33; 2.6.35.6, 2.6.36, 2.6.37, 2.6.39.3")
_R30 = ("arch_init_ideal_nops() without a break after the Intel case, so every CPU ends in the "
        "default: 3.0.8, 3.1.10, 3.2.7, 3.4.4, 3.5.0 (two trees); 3.6.0 has the break. Stable "
        "3.4.y/3.5.y took the fix later (3.4.113 has it), which the version cannot show")
_R36 = "3.6.0, 3.6.5, 3.8.13, 3.13.10, 3.19.12, 4.0.5, 4.1.15"
_R42 = ("AMD family > 0xf added between 4.1.15 and 4.2.8; read in 4.2.8, 4.4.0, 4.10.0, "
        "4.14.177, 4.15.18, 4.16.13, 4.17.0, 4.18.0, 4.19.304")
_R420 = "X86_VENDOR_HYGON added in 4.20 (Hygon support); read in 4.20.0, Debian 5.10.223, 5.12.9"

NOP_RULES = (
    NopRule(32, span("2.6.20", "2.6.23"), "find_nop_table", _DEFAULT_32,
            "arch/i386/kernel/alternative.c noptypes[]; 2.6 history v2.6.20–23"),
    NopRule(32, span("2.6.24", "2.6.26"), "find_nop_table",
            (_K8, _K7, CpuTest("p6", "X86_FEATURE_P4 set", feature="P4"),
             CpuTest("p6", "X86_FEATURE_P3 set", feature="P3"), _INTEL_TABLE), _R24),
    NopRule(32, span("2.6.27", "2.6.39"), "find_nop_table", (_K8, _K7, _NOPL, _INTEL_TABLE),
            _R27),
    NopRule(32, span("3.0", "3.5"), "arch_init_ideal_nops", _DEFAULT_32, _R30),
    NopRule(32, span("3.6", "4.1"), "arch_init_ideal_nops", _IDEAL_32 + _DEFAULT_32, _R36),
    NopRule(32, span("4.2", "4.19"), "arch_init_ideal_nops",
            (*_IDEAL_32, _AMD_NEW, *_DEFAULT_32), _R42),
    NopRule(32, span("4.20", "5.12"), "arch_init_ideal_nops",
            (*_IDEAL_32, _HYGON, _AMD_NEW, *_DEFAULT_32), _R420),
    NopRule(64, span("2.6.25", "2.6.26"), "find_nop_table",
            (CpuTest("p6", "Intel family ≥ 6", "intel", (6, MAX_FAMILY)),
             CpuTest("k8", "any other CPU")), _R24),
    NopRule(64, span("2.6.27", "2.6.39"), "find_nop_table",
            (_INTEL_NOPL, CpuTest("k8", "any other CPU")), _R27),
    NopRule(64, span("3.0", "3.5"), "arch_init_ideal_nops", (_K8_64,), _R30),
    NopRule(64, span("3.6", "4.1"), "arch_init_ideal_nops", (*_IDEAL_64, _K8_64), _R36),
    NopRule(64, span("4.2", "4.19"), "arch_init_ideal_nops",
            (*_IDEAL_64, _AMD_NEW, _K8_64), _R42),
    NopRule(64, span("4.20", "5.12"), "arch_init_ideal_nops",
            (*_IDEAL_64, _HYGON, _AMD_NEW, _K8_64), _R420),
)

# From here on x86_nops[] is fixed at build time: P6 on x86-64, GENERIC (with ds-prefixed
# 5/8-byte forms) on i386 — patch.nops.default_nops.
FIXED_NOPS = span("5.13", "99.0")
FIXED_NOPS_SOURCE = ("a89dfde3dc3c 'x86: Remove dynamic NOP selection', in the x86/core pull "
                     "for v5.13; 5.12.9 still chooses, the 5.14-rc5 tree has x86_nops[]")


@dataclass(frozen=True)
class CpuFeature:
    """A feature bit the kernel sets itself, not read from CPUID, as the NOP choice sees it.

    None of these is a /proc/cpuinfo flag (K7/K8/P3/P4 have no name there; "nopl" shows what
    the kernel that wrote the file decided), so they are derived, as the kernel derives them.
    """

    name: str  # X86_FEATURE_<name>
    bits: int
    span: Span
    why: str
    value: bool | None = None  # fixed for every CPU; None: by vendor and family
    vendor: str | None = None
    families: tuple[int, int] = ALL_FAMILIES


_LATE = "only after setup_arch() has run arch_init_ideal_nops(): not set when it is read"
CPU_FEATURES = (
    CpuFeature("NOPL", 64, span("2.6.27", "5.12"), "a required feature on x86-64 "
               "(required-features.h NEED_NOPL), so boot_cpu_has() is constant", value=True),
    CpuFeature("NOPL", 32, span("2.6.27", "5.12"), "detect_nopl() clears it on i386 "
               "(ba0593bf553, 2.6.27-rc7) and X86_P6_NOP is x86-64 only", value=False),
    CpuFeature("K8", 32, span("2.6.20", "2.6.22"), "init_amd(): AMD family 15",
               vendor="amd", families=(0xF, 0xF)),
    CpuFeature("K8", 32, span("2.6.23", "2.6.35"), "init_amd(): AMD family 0xf–0x11 "
               "(398cf2abdb5 tunes Fam10h/11h like K8)", vendor="amd", families=(0xF, 0x11)),
    CpuFeature("K8", 32, span("2.6.36", "2.6.39"), "init_amd(): AMD family ≥ 0xf",
               vendor="amd", families=(0xF, MAX_FAMILY)),
    CpuFeature("K8", 32, span("3.0", "4.17"), f"init_amd() sets it (AMD family ≥ 0xf) {_LATE}",
               value=False),
    CpuFeature("K8", 32, span("4.18", "5.12"), "early_init_amd(): AMD family ≥ 0xf, before "
               "arch_init_ideal_nops()", vendor="amd", families=(0xF, MAX_FAMILY)),
    CpuFeature("K7", 32, span("2.6.20", "2.6.39"), "init_amd(): AMD family 6", vendor="amd",
               families=(6, 6)),
    CpuFeature("K7", 32, span("3.0", "4.17"), f"init_amd_k7() sets it (AMD family 6) {_LATE}",
               value=False),
    CpuFeature("K7", 32, span("4.18", "5.12"), "early_init_amd(): AMD family 6, before "
               "arch_init_ideal_nops()", vendor="amd", families=(6, 6)),
    CpuFeature("P4", 32, span("2.6.24", "2.6.26"), "init_intel(): Intel family 15",
               vendor="intel", families=(0xF, 0xF)),
    CpuFeature("P3", 32, span("2.6.24", "2.6.26"), "init_intel(): Intel family 6",
               vendor="intel", families=(6, 6)),
)
