"""The operands of one section that a KASLR move rewrites, from the relocations the image
keeps (``ld --emit-relocs``).

A randomised kernel is moved by its decompressor, which adds the slide to every absolute
address the code holds; the linker's own relocation sections say where those are. Debian
links its kernels with ``--emit-relocs``, so a debug vmlinux carries ``.rela.text`` (x86-64)
or ``.rel.text`` (i386). Which entries the kernel turns into boot-time fix-ups is
``arch/x86/tools/relocs.c`` (read in 6.1): on x86-64 every ``R_X86_64_64``/``_32``/``_32S``
except those against per-CPU symbols (linked at 0, they do not move; ``__init_begin``,
``__per_cpu_load`` and ``init_per_cpu_*`` are not counted as such), plus the *inverse*
ones — ``R_X86_64_PC32`` against a per-CPU symbol, which gets the slide subtracted (a
``%gs:sym(%rip)`` operand: the code moves, the symbol does not). On i386 every ``R_386_32``.
A PC-relative reference between two addresses of the image does not change.

Read in bulk: a kernel's ``.rela.text`` has ~400,000 entries; the columns are sliced as arrays
and only the few kinds that matter are looked at one by one.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from itertools import pairwise

from pvpatch.image import layouts as L
from pvpatch.image.elf import ElfImage, Section

# (ELF class) → {relocation type: bytes it writes}; x86-64: R_X86_64_64, _32, _32S;
# i386: R_386_32
ABSOLUTE = {64: {1: 8, 10: 4, 11: 4}, 32: {1: 4}}
R_X86_64_PC32 = 2
PERCPU = ".data..percpu"  # where x86-64 links its zero-based per-CPU variables


@dataclass(frozen=True)
class Relocations:
    """The operands the slide moves: ``addresses`` (ascending) get it added, each
    ``widths[i]`` bytes wide; ``inverse`` (ascending, 4 bytes each) get it subtracted."""

    section: str  # the relocation section read, e.g. ".rela.text"
    addresses: array  # 'Q'
    widths: bytes
    inverse: array  # 'Q': x86-64 PC32 operands of per-CPU symbols

    def __len__(self) -> int:
        return len(self.addresses) + len(self.inverse)


def slid_operands(image: ElfImage, target: Section) -> Relocations | None:
    """The operands of ``target`` a KASLR move rewrites (None: the image keeps no
    relocations for it)."""
    sec = next((s for s in image.sections if s.type in (L.SHT_RELA, L.SHT_REL)
                and s.info == target.index and s.size), None)
    if sec is None:
        return None
    bits = image.bits
    word = bits // 8
    entsize = (3 if sec.type == L.SHT_RELA else 2) * word  # offset, info[, addend]
    raw = image.section_data(sec)
    raw = raw[:len(raw) - len(raw) % entsize]
    offsets = raw.cast("Q" if bits == 64 else "I")[::entsize // word]  # a strided view
    # the type is the low byte of r_info (every x86 type is below 256); the symbol index is
    # r_info >> 32 (x86-64) or >> 8 (i386)
    types = bytes(raw[word::entsize])
    percpu = _percpu_symbols(image, sec) if bits == 64 else frozenset()
    kinds = ABSOLUTE[bits]
    wanted = bytearray(256)
    for kind in kinds:
        wanted[kind] = 1
    if percpu:
        wanted[R_X86_64_PC32] = 2
    marks = types.translate(wanted)
    symbols = _symbol_column(raw, bits, entsize)
    moved = [i for i in _positions(marks, 1) if symbols[i] not in percpu]
    inverse = [i for i in _positions(marks, 2) if symbols[i] in percpu]
    width_of = bytearray(256)
    for kind, width in kinds.items():
        width_of[kind] = width
    addresses = array("Q", map(offsets.__getitem__, moved))
    widths = bytes(map(types.__getitem__, moved)).translate(width_of)
    if any(a > b for a, b in pairwise(addresses)):  # ld keeps them in order
        pairs = sorted(zip(addresses, widths, strict=True))
        addresses, widths = array("Q", (a for a, _ in pairs)), bytes(w for _, w in pairs)
    return Relocations(sec.name, addresses, widths,
                       array("Q", sorted(map(offsets.__getitem__, inverse))))


def _positions(marks: bytes, value: int) -> list[int]:
    return [m.start() for m in re.finditer(re.escape(bytes([value])), marks)]


def _symbol_column(raw: memoryview, bits: int, entsize: int) -> memoryview | array:
    """Each entry's symbol index (the high half of a 64-bit r_info; the top 24 bits of a
    32-bit one)."""
    words = raw.cast("I")
    if bits == 64:
        return words[3::entsize // 4]  # a strided view
    return array("I", (info >> 8 for info in words[1::entsize // 4]))


def _percpu_symbols(image: ElfImage, rel: Section) -> frozenset[int]:
    """Indexes, in the relocations' symbol table, of the symbols in the per-CPU section."""
    pcpu = image.section(PERCPU)
    if pcpu is None or not 0 < rel.link < len(image.sections):
        return frozenset()
    symtab = image.sections[rel.link]
    layout = L.SYM[image.bits]
    raw = image.section_data(symtab)
    raw = raw[:len(raw) - len(raw) % layout.size]
    halves = array("H")
    halves.frombytes(raw)
    column = 3 if image.bits == 64 else 7  # st_shndx: byte 6 of Elf64_Sym, 14 of Elf32_Sym
    shndx = halves[column::layout.size // 2].tobytes()
    needle = re.escape(pcpu.index.to_bytes(2, "little"))
    inside = [m.start() // 2 for m in re.finditer(needle, shndx) if m.start() % 2 == 0]
    strtab = image.sections[symtab.link] if 0 < symtab.link < len(image.sections) else None
    names = bytes(image.section_data(strtab)) if strtab is not None else b""
    return frozenset(i for i in inside if not _moves_anyway(names, raw, i, layout.size))


# Symbols of the per-CPU section that relocs.c's is_percpu_sym() still treats as moving.
MOVING_PERCPU = (b"__init_begin\0", b"__per_cpu_load\0")
MOVING_PERCPU_PREFIX = b"init_per_cpu_"


def _moves_anyway(names: bytes, raw: memoryview, index: int, entsize: int) -> bool:
    name_at = int.from_bytes(raw[index * entsize:index * entsize + 4], "little")
    return names.startswith(MOVING_PERCPU, name_at) or \
        names.startswith(MOVING_PERCPU_PREFIX, name_at)
