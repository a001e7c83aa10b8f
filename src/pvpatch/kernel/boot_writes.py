"""Where in ``.text`` the kernel may rewrite itself at boot, from its own patch tables.

Besides the pv sites, boot rewrites ftrace's mcount calls, return-thunk and retpoline sites,
jump labels, every static call, alternatives, SMP lock prefixes (a 1-vCPU guest drops them)
and sealed ENDBRs. Each table is read as the image declares it (start and end symbols, the
entry stride and how an entry names its site); a byte no table names should hold, in memory,
exactly what the vmlinux holds — so a memory image can be told apart from another build, and a
located page from a look-alike. Nothing here says *what* boot writes; ``patch`` does that.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from functools import cached_property

from pvpatch.image.elf import ElfImage, Section
from pvpatch.kernel.alternatives import AltTable
from pvpatch.kernel.sites import SiteTable
from pvpatch.kernel.static_calls import StaticCallTable

# (kind, start symbol, end symbol, stride, how an entry names its site, bytes patched); a
# stride of None is pointer-sized ("abs") or two s32 and a pointer (struct jump_entry)
TABLES = (
    ("jump_label", "__start___jump_table", "__stop___jump_table", None, "rel32", 5),
    ("ftrace", "__start_mcount_loc", "__stop_mcount_loc", None, "abs", 5),
    ("static_call", "__start_static_call_sites", "__stop_static_call_sites", 8, "rel32", 5),
    ("retpoline", "__retpoline_sites", "__retpoline_sites_end", 4, "rel32", 6),
    ("return_thunk", "__return_sites", "__return_sites_end", 4, "rel32", 5),
    ("smp_lock", "__smp_locks", "__smp_locks_end", 4, "rel32", 1),
    ("endbr_seal", "__ibt_endbr_seal", "__ibt_endbr_seal_end", 4, "rel32", 4),
)
# What a Xen PV guest's start-up writes into .text outside every table: the hypervisor fills
# hypercall_page with its stubs (xen-head.S; gone where the xen_hypercall static call replaced
# it: Debian 6.1.176+, 6.12), and xen_start_kernel() writes `jmp xen_iret` over
# early_xen_iret_patch (__text_gen_insn, 8b87d8cec1b3, 5.18+). (symbol, bytes if unsized)
XEN_START_WRITES = (("hypercall_page", 4096), ("early_xen_iret_patch", 5))
# runtime_const_ptr / _shift_right_32 / _mask_32: the immediate's width, per section prefix
RUNTIME_CONST_WIDTHS = {"ptr": 8, "shift": 1, "mask": 4}
# pv kinds first: a byte two tables name is counted for the first (boottest's accounting)
KINDS = ("pv", "pv_static_call", "alternative", *(t[0] for t in TABLES), "static_call_tramp",
         "runtime_const", "xen_start")
# arch_static_call_transform's check: a trampoline's 5-byte jmp/ret is followed by ud1 %esp,%ecx
TRAMP_SIGNATURE = b"\x0f\xb9\xcc"

Span = tuple[int, int]  # (address, length)


@dataclass
class BootWrites:
    """The spans of ``.text`` each patch table names, per kind, in table order."""

    start: int  # .text's link address
    size: int
    spans: dict[str, list[Span]]
    notes: list[str] = field(default_factory=list)

    def flat(self, kinds: tuple[str, ...] | None = None) -> bytearray:
        """One byte per .text byte: 1 where a span of ``kinds`` (default: all) lies.

        ~130,000 spans on a Debian kernel, so the loop is kept bare: a span running past the
        end grows the array there (slice assignment), and the excess is cut off at the end."""
        out = bytearray(self.size)
        start, size = self.start, self.size
        ones = [b"\1" * n for n in range(65)]
        for kind in kinds or self.spans:
            for addr, length in self.spans.get(kind, ()):
                off = addr - start
                if 0 <= off < size:
                    out[off:off + length] = ones[length] if length <= 64 else b"\1" * length
        del out[size:]
        return out

    @cached_property
    def mask(self) -> bytearray:
        """:meth:`flat` of every kind (cached: the locator and the comparison both ask)."""
        return self.flat()

    def pages(self, kind: str, page: int = 4096) -> set[int]:
        """The .text pages (offset // page) holding a span of ``kind``."""
        out: set[int] = set()
        for addr, length in self.spans.get(kind, ()):
            off = addr - self.start
            if 0 <= off < self.size:
                out.update(range(off // page, (off + length - 1) // page + 1))
        return out


def table_spans(image: ElfImage, text: Section, alternatives: AltTable | None
                ) -> tuple[dict[str, list[Span]], list[str]]:
    """The non-pv kinds: alternatives, the tables above, static-call trampolines."""
    spans: dict[str, list[Span]] = {}
    notes: list[str] = []
    if alternatives is not None:
        spans["alternative"] = [(e.instr, e.instrlen) for e in alternatives.entries]
    for kind, start_sym, end_sym, stride, how, length in TABLES:
        found = _table(image, start_sym, end_sym, stride, how, length)
        if isinstance(found, str):
            notes.append(found.replace("KIND", kind))
        else:
            spans[kind] = found
    spans["static_call_tramp"] = _trampolines(image, text)
    consts = _runtime_consts(image)
    if consts:
        spans["runtime_const"] = consts
    xen = [(sym.value, sym.size or length) for name, length in XEN_START_WRITES
           if (sym := image.symbols.get(name)) is not None]
    if xen:
        spans["xen_start"] = xen
    return spans, notes


def _table(image: ElfImage, start_sym: str, end_sym: str, stride: int | None, how: str,
           length: int) -> list[Span] | str:
    """The sites of one table, or why it cannot be read (with KIND for the caller to name)."""
    syms = image.symbols
    start, end = syms.address(start_sym), syms.address(end_sym)
    if start is None or end is None:
        return f"no {start_sym}: KIND sites not known"
    raw = image.try_read(start, end - start) if end > start else b""
    if raw is None:
        return f"{start_sym}..{end_sym} not in the file: KIND sites not known"
    ptr = image.ptr_size
    if how == "abs":
        words = array("Q" if ptr == 8 else "I")
        words.frombytes(raw[:len(raw) - len(raw) % ptr])
        return [(addr, length) for addr in words]
    rels = array("i")
    rels.frombytes(raw[:len(raw) - len(raw) % 4])
    step = (stride or 8 + ptr) // 4  # an entry's s32 fields; the first names the site
    return [(start + 4 * step * i + rel, length) for i, rel in enumerate(rels[::step])]


def _runtime_consts(image: ElfImage) -> list[Span]:
    """The operands runtime_const_init() fills at boot (6.11+: the dentry hash, USER_PTR_MAX;
    7.x: the futex hash): each entry of a ``runtime_<kind>_<symbol>`` section is an s32,
    relative to itself, naming the end of the operand (asm/runtime-const.h)."""
    out = []
    for sec in image.sections:
        kind = sec.name.split("_", 2)[1] if sec.name.startswith("runtime_") else ""
        width = RUNTIME_CONST_WIDTHS.get(kind)
        if width is None or not sec.has_file_data:
            continue
        rels = array("i")
        raw = image.section_data(sec)
        rels.frombytes(raw[:len(raw) - len(raw) % 4])
        out += [(sec.addr + 4 * i + rel, width) for i, rel in enumerate(rels)]
    return out


def _trampolines(image: ElfImage, text: Section) -> list[Span]:
    """Every static-call trampoline: 5 bytes before a ``ud1 %esp,%ecx`` signature."""
    code = bytes(image.section_data(text))
    out = []
    pos = code.find(TRAMP_SIGNATURE)
    while pos >= 0:
        if pos >= 5:
            out.append((text.addr + pos - 5, 5))
        pos = code.find(TRAMP_SIGNATURE, pos + 1)
    return out


def read_boot_writes(image: ElfImage, sites: SiteTable, static_calls: StaticCallTable,
                     alternatives: AltTable | None) -> BootWrites | None:
    """Every kind for this image (None: it has no .text)."""
    text = image.section(".text")
    if text is None:
        return None
    spans, notes = table_spans(image, text, alternatives)
    pv = [(s.address, s.length) for s in sites.sites]
    pv_static = [(s.address, s.length) for s in static_calls.sites]
    pv_static += [(k.tramp, 5) for k in static_calls.keys.values()
                  if k.tramp is not None and k.tramp_code]
    return BootWrites(text.addr, text.size, {"pv": pv, "pv_static_call": pv_static, **spans},
                      notes)
