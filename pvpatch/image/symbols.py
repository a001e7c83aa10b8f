"""The ELF symbol table: name → symbols and address → ``function+0xoff``.

Kernels carry 100k–300k symbols. They are unpacked in bulk with ``struct.iter_unpack`` and
names are decoded lazily, so a lookup-by-address costs a bisect, not a table walk.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from pvpatch.image import layouts as L

if TYPE_CHECKING:
    from pvpatch.image.elf import ElfImage


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    type: int  # STT_*
    bind: int  # STB_*
    shndx: int

    @property
    def is_func(self) -> bool:
        return self.type == L.STT_FUNC


class SymbolTable:
    """Symbols of one image. ``source`` says where they came from (for reports)."""

    def __init__(self, records: list[tuple[int, int, int, int, int]], strtab: bytes,
                 source: str, exec_sections: list[tuple[int, int]]) -> None:
        # records: (name_off, value, size, info, shndx)
        self._records = records
        self._strtab = strtab
        self.source = source
        self._exec = exec_sections

    @classmethod
    def from_image(cls, image: ElfImage) -> SymbolTable:
        symtab = next((s for s in image.sections if s.type == L.SHT_SYMTAB), None)
        if symtab is None or not 0 < symtab.link < len(image.sections):
            return cls([], b"", "none", [])
        layout = L.SYM[image.bits]
        if symtab.entsize and symtab.entsize != layout.size:
            raise image.error(f".symtab entry size is {symtab.entsize}, expected {layout.size}")
        data = image.section_data(symtab)
        usable = len(data) - len(data) % layout.size
        rows = layout.fmt.iter_unpack(data[:usable])
        if image.bits == 64:  # name info other shndx value size
            records = [(r[0], r[4], r[5], r[1], r[3]) for r in rows]
        else:  # name value size info other shndx
            records = [(r[0], r[1], r[2], r[3], r[5]) for r in rows]
        strtab = bytes(image.section_data(image.sections[symtab.link]))
        exec_sections = [(s.addr, s.addr + s.size) for s in image.sections
                         if s.is_exec and s.is_alloc and s.size]
        return cls(records, strtab, ".symtab", exec_sections)

    def __len__(self) -> int:
        return len(self._records)

    def _name(self, off: int) -> str:
        end = self._strtab.find(b"\0", off)
        return self._strtab[off:end if end >= 0 else len(self._strtab)].decode("latin-1")

    def _symbol(self, i: int) -> Symbol:
        name_off, value, size, info, shndx = self._records[i]
        return Symbol(self._name(name_off), value, size, info & 0xF, info >> 4, shndx)

    @cached_property
    def _by_name_off(self) -> dict[int, list[int]]:
        index: dict[int, list[int]] = {}
        for i, (name_off, _v, _s, info, shndx) in enumerate(self._records):
            if name_off and shndx != L.SHN_UNDEF and (info & 0xF) not in (L.STT_SECTION,
                                                                            L.STT_FILE):
                index.setdefault(name_off, []).append(i)
        return index

    def _indexes(self, name: str) -> list[int]:
        """Records named ``name``: every place the string occurs in .strtab, then by offset.

        Searching the string table (C speed) avoids decoding 100k+ names; a name stored as the
        tail of a longer string is still found, since only its start offset matters.
        """
        needle = name.encode("latin-1") + b"\0"
        found: list[int] = []
        pos = self._strtab.find(needle)
        while pos >= 0:
            found.extend(self._by_name_off.get(pos, ()))
            pos = self._strtab.find(needle, pos + 1)
        return sorted(found)

    def lookup(self, name: str) -> list[Symbol]:
        """All defined symbols called ``name`` (locals may repeat across compile units)."""
        return [self._symbol(i) for i in self._indexes(name)]

    def get(self, name: str) -> Symbol | None:
        """The symbol called ``name``, preferring a global definition."""
        found = self.lookup(name)
        if not found:
            return None
        return next((s for s in found if s.bind != 0), found[0])

    def address(self, name: str) -> int | None:
        sym = self.get(name)
        return None if sym is None else sym.value

    def _in_exec(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self._exec)

    @cached_property
    def _code_index(self) -> tuple[list[int], list[int]]:
        """Sorted (addresses, record indexes) of symbols that can name code locations.

        Functions win over other symbols at the same address; data objects and section or
        file symbols never name code.
        """
        best: dict[int, tuple[tuple[int, int, int], int]] = {}
        for i, (name_off, value, size, info, shndx) in enumerate(self._records):
            typ = info & 0xF
            if not name_off or shndx == L.SHN_UNDEF or shndx >= L.SHN_LORESERVE:
                continue
            if typ not in (L.STT_FUNC, L.STT_NOTYPE) or not self._in_exec(value):
                continue
            rank = (typ == L.STT_FUNC, info >> 4 != 0, size)  # function, global, sized
            old = best.get(value)
            if old is None or rank > old[0]:
                best[value] = (rank, i)
        addrs = sorted(best)
        return addrs, [best[a][1] for a in addrs]

    def containing(self, addr: int) -> tuple[Symbol, int] | None:
        """The code symbol at or before ``addr`` and the offset into it."""
        addrs, idx = self._code_index
        pos = bisect.bisect_right(addrs, addr) - 1
        if pos < 0:
            return None
        sym = self._symbol(idx[pos])  # like kallsyms: the nearest preceding label names it
        return sym, addr - sym.value

    def describe(self, addr: int) -> str:
        """``function+0xoff`` (or ``function`` at offset 0); hex address when unknown."""
        hit = self.containing(addr)
        if hit is None:
            return f"{addr:#x}"
        sym, off = hit
        return sym.name if off == 0 else f"{sym.name}+{off:#x}"

    def at(self, addr: int) -> Symbol | None:
        """A symbol whose value is exactly ``addr`` (functions first, then any other)."""
        addrs, idx = self._code_index
        pos = bisect.bisect_left(addrs, addr)
        if pos < len(addrs) and addrs[pos] == addr:
            return self._symbol(idx[pos])
        return None

    @cached_property
    def _any_index(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for i, (name_off, value, _size, info, shndx) in enumerate(self._records):
            typ = info & 0xF
            if name_off and shndx != L.SHN_UNDEF and typ not in (L.STT_SECTION, L.STT_FILE):
                prev = out.get(value)
                if prev is None or (self._records[prev][3] & 0xF) != L.STT_FUNC:
                    out[value] = i
        return out

    def name_at(self, addr: int) -> str | None:
        """Name of any symbol defined exactly at ``addr`` (code or data), functions first."""
        sym = self.at(addr)
        if sym is not None:
            return sym.name
        i = self._any_index.get(addr)
        return None if i is None else self._symbol(i).name
