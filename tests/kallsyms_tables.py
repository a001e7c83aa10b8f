"""Synthesise kernel kallsyms tables (per layout era) and a stripped ELF that holds them.

Written from the table formats described in pvpatch/image/kallsyms.py: a token table whose
single-character tokens sit at their own byte value, names encoded greedily with it, the
arrays laid out in the order of each era with every label aligned (ALGN up to 6.x, 4 bytes
from 7.0).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

TEXT64, TEXT32 = 0xFFFFFFFF81000000, 0xC1000000


class Era(NamedTuple):
    order: str  # legacy, seqs or names-first (Kallsyms.layout)
    addressing: str  # absolute, base-relative or pc-relative (Kallsyms.addressing)
    percpu: bool  # KALLSYMS_ABSOLUTE_PERCPU (x86-64 only)
    big: bool  # 2-byte name lengths
    mwidth: int | str  # markers width: 4 or "ptr"
    align: int | str  # label alignment: "ALGN" (8 on 64-bit, 4 on 32-bit) or 4


ERAS = {
    "absolute": Era("legacy", "absolute", False, False, "ptr", "ALGN"),  # 2.6.10–4.5
    "relative": Era("legacy", "base-relative", False, False, 4, "ALGN"),  # 4.6–6.0
    "big-names": Era("legacy", "base-relative", True, True, 4, "ALGN"),  # 6.1
    "seqs": Era("seqs", "base-relative", True, True, 4, "ALGN"),  # 6.1.y stable, 6.2–6.3
    "names-first": Era("names-first", "base-relative", True, True, 4, "ALGN"),  # 6.4–6.x
    "pc-relative": Era("names-first", "pc-relative", False, True, 4, 4),  # 7.0+
    "absolute-7.0": Era("names-first", "absolute", False, True, 4, 4),  # 7.0+ 32-bit !RELOCATABLE
}
ONLY_32 = {"absolute-7.0"}  # eras that exist on 32-bit kernels only


@dataclass
class Sym:
    name: str
    addr: int
    type: str


def symbols(bits: int, count: int = 700, long_name: bool = False) -> list[Sym]:
    """Functions in .text, objects in .rodata/.data and a few absolute per-cpu ones."""
    text = TEXT64 if bits == 64 else TEXT32
    out = [Sym(f"percpu_var{i}", 0x1000 * i, "A") for i in range(3)] if bits == 64 else []
    for i in range(count):
        kind = "Tt"[i % 2]
        out.append(Sym(f"func_{i}_native_{i % 10}", text + 0x40 * i, kind))
    out.append(Sym("_paravirt_nop", text + 0x40 * count, "T"))
    out.append(Sym("linux_banner", text + 0x100000 + 0x20, "R"))
    out.append(Sym("pv_ops", text + 0x200000, "D"))
    out.append(Sym("xen_cpu_ops", text + 0x200400, "d"))
    if long_name:  # "big" symbols: > 127 tokens need a 2-byte length (6.1+)
        out.append(Sym("x" * 40 + "".join(f"q{i % 10}z" for i in range(70)), text + 0x200800,
                       "d"))
    return sorted(out, key=lambda s: s.addr)


def token_table(names: list[bytes]) -> list[bytes]:
    """Single characters at their own index, the free indexes filled with frequent pairs."""
    used = sorted({c for n in names for c in n})
    tokens: list[bytes] = [b""] * 256
    for c in used:
        tokens[c] = bytes([c])
    free = [i for i in range(256) if not tokens[i]]
    pairs = Counter(n[i:i + k] for n in names for k in (2, 3, 5) for i in range(len(n) - k + 1))
    for i, (tok, _n) in zip(free, pairs.most_common(len(free)), strict=False):
        tokens[i] = tok
    for i in free:  # no more useful tokens: still something non-empty
        tokens[i] = tokens[i] or b"zz"
    return tokens


def encode(name: bytes, tokens: list[bytes]) -> bytes:
    by_len = sorted(range(256), key=lambda i: -len(tokens[i]))
    out, pos = bytearray(), 0
    while pos < len(name):
        i = next(i for i in by_len if tokens[i] and name.startswith(tokens[i], pos)
                 and (len(tokens[i]) == 1 or pos > 0))  # keep the type letter its own token
        out.append(i)
        pos += len(tokens[i])
    return bytes(out)


class _Out:
    def __init__(self, base: int, align: int) -> None:
        self.buf = bytearray()
        self.base = base
        self.align = align
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        while (self.base + len(self.buf)) % self.align:
            self.buf.append(0)
        self.labels[name] = self.base + len(self.buf)


def tables(syms: list[Sym], bits: int, era: str, base: int) -> tuple[bytes, dict[str, int]]:
    """The kallsyms blob as scripts/kallsyms of ``era`` lays it out at address ``base``."""
    order, addressing, percpu, big, mwidth, align = ERAS[era]
    relative = addressing == "base-relative"
    percpu = percpu and bits == 64  # KALLSYMS_ABSOLUTE_PERCPU: x86-64 SMP only
    ptr = bits // 8
    pfmt = "<Q" if ptr == 8 else "<I"
    mfmt = pfmt if mwidth == "ptr" else "<I"
    n = len(syms)
    full = [(s.type + s.name).encode() for s in syms]
    tokens = token_table(full)
    encoded = [encode(x, tokens) for x in full]
    rel_base = min(s.addr for s in syms if s.type != "A") if relative else 0

    def offsets(at: int) -> bytes:
        vals = []
        for i, s in enumerate(syms):
            if addressing == "pc-relative":  # 7.0+: minus the entry's own address
                vals.append(struct.pack("<i", s.addr - (at + 4 * i)))
            elif not relative:
                vals.append(struct.pack(pfmt, s.addr))
            elif percpu and s.type == "A":
                vals.append(struct.pack("<i", s.addr))
            elif percpu:
                vals.append(struct.pack("<i", rel_base - s.addr - 1))
            else:
                vals.append(struct.pack("<I", s.addr - rel_base))
        return b"".join(vals)

    names, markers = bytearray(), []
    for i, e in enumerate(encoded):
        if i % 256 == 0:
            markers.append(len(names))
        if len(e) > 0x7F:
            assert big, "a long name needs the 2-byte lengths of 6.1+"
            names += bytes([(len(e) & 0x7F) | 0x80, len(e) >> 7])
        else:
            names.append(len(e))
        names += e
    seqs = b"".join(i.to_bytes(3, "big") for i, _s in sorted(enumerate(full),
                                                               key=lambda t: t[1][1:]))
    table = b"".join(t + b"\0" for t in tokens)
    index, off = [], 0
    for t in tokens:
        index.append(off)
        off += len(t) + 1

    out = _Out(base, 8 if bits == 64 and align == "ALGN" else 4)

    def put(label: str, data: bytes) -> None:
        out.label(label)
        out.buf += data

    def addresses() -> None:
        label = "kallsyms_addresses" if addressing == "absolute" else "kallsyms_offsets"
        out.label(label)
        out.buf += offsets(out.labels[label])
        if relative:
            put("kallsyms_relative_base", struct.pack(pfmt, rel_base))

    num = struct.pack(pfmt, n) if addressing == "absolute" else struct.pack("<I", n)
    if order != "names-first":
        addresses()
    put("kallsyms_num_syms", num)
    put("kallsyms_names", bytes(names))
    put("kallsyms_markers", b"".join(struct.pack(mfmt, m) for m in markers))
    if order == "seqs":
        put("kallsyms_seqs_of_names", seqs)
    put("kallsyms_token_table", table)
    put("kallsyms_token_index", struct.pack("<256H", *index))
    if order == "names-first":
        addresses()
        put("kallsyms_seqs_of_names", seqs)
    return bytes(out.buf), out.labels


def write_elf(path: str, bits: int, sections: list[tuple[str, int, int, bytes]]) -> None:
    """A minimal static x86 ELF: (name, flags, address, bytes) sections, one PT_LOAD each."""
    is64 = bits == 64
    ehsize, phsize, shsize = (64, 56, 64) if is64 else (52, 32, 40)
    names = b"\0" + b"".join(n.encode() + b"\0" for n, *_ in sections) + b".shstrtab\0"
    off = ehsize + phsize * len(sections)
    body = bytearray()
    placed = []
    for name, flags, addr, data in sections:
        pad = (-(off + len(body)) + addr) % 4096
        body += b"\0" * pad
        placed.append((name, flags, addr, data, off + len(body)))
        body += data
    strtab_off = off + len(body)
    body += names
    shoff = off + len(body)
    shoff += -shoff % 8
    body += b"\0" * (shoff - off - len(body))
    phdrs, shdrs = bytearray(), bytearray(b"\0" * shsize)
    name_off = 1
    for name, flags, addr, data, foff in placed:
        pflags = 5 if flags & 4 else 4
        if is64:
            phdrs += struct.pack("<IIQQQQQQ", 1, pflags, foff, addr, addr - 0xFFFFFFFF80000000,
                                 len(data), len(data), 4096)
            shdrs += struct.pack("<IIQQQQIIQQ", name_off, 1, flags, addr, foff, len(data), 0, 0,
                                 16, 0)
        else:
            phdrs += struct.pack("<IIIIIIII", 1, foff, addr, addr - 0xC0000000, len(data),
                                 len(data), pflags, 4096)
            shdrs += struct.pack("<IIIIIIIIII", name_off, 1, flags, addr, foff, len(data), 0, 0,
                                 16, 0)
        name_off += len(name) + 1
    if is64:
        shdrs += struct.pack("<IIQQQQIIQQ", name_off, 3, 0, 0, strtab_off, len(names), 0, 0, 1, 0)
    else:
        shdrs += struct.pack("<IIIIIIIIII", name_off, 3, 0, 0, strtab_off, len(names), 0, 0, 1, 0)
    nsec = len(sections) + 2
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + b"\0" * 9
    if is64:
        eh = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, sections[0][2], ehsize, shoff, 0,
                                 ehsize, phsize, len(sections), shsize, nsec, nsec - 1)
    else:
        eh = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, sections[0][2], ehsize, shoff, 0,
                                 ehsize, phsize, len(sections), shsize, nsec, nsec - 1)
    with open(path, "wb") as f:
        f.write(eh + phdrs + body + shdrs)


def kernel_with_kallsyms(path: str, bits: int, era: str, syms: list[Sym] | None = None,
                         shift: int = 0) -> tuple[list[Sym], dict[str, int]]:
    """Write a stripped kernel-like ELF whose .rodata holds ``era``'s tables for ``syms``.

    The tables start 8-aligned, plus ``shift`` bytes (4: a 4-aligned 7.0 table whose names
    are 8-aligned, which ALGN would not put there)."""
    text = TEXT64 if bits == 64 else TEXT32
    e = ERAS[era]
    syms = syms if syms is not None else symbols(bits, long_name=e.big)
    if e.addressing != "absolute" and not e.percpu:  # no absolute per-cpu symbols
        syms = [s for s in syms if s.type != "A"]
    rodata = text + 0x100000
    lead = bytes(range(1, 200)) * 4  # other read-only data before the tables
    lead += b"\0" * (-len(lead) % 8 + shift)
    blob, labels = tables(syms, bits, era, rodata + len(lead))
    ro = lead + blob + b"tail of .rodata\0" * 4
    write_elf(path, bits, [(".text", 6, text, b"\xcc" * 0x10000),
                           (".rodata", 2, rodata, ro),
                           (".data", 3, text + 0x200000, b"\x11" * 0x1000)])
    return syms, labels
