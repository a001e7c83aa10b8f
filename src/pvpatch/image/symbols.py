"""The ELF symbol table: name → symbols and address → ``function+0xoff``.

Symbols come from the image's ``.symtab``; a stripped image (the vmlinux inside a bzImage)
falls back to the kernel's own kallsyms tables, and ``--system-map`` replaces both. Those
other sources are turned into ``.symtab``-shaped records (:meth:`SymbolTable.from_entries`),
so every lookup below works the same on all three; ``source`` tells which one it was.

Kernels carry 100k–300k symbols, and a full Python pass over them costs more than everything
else pvpatch does. So records are unpacked in bulk with ``struct.iter_unpack``, a name lookup
searches the raw string and symbol tables with ``bytes.find`` (C speed), and only code symbols
are sorted, once, for address lookups.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate, compress
from operator import sub
from typing import TYPE_CHECKING

from pvpatch.image import layouts as L
from pvpatch.image.bytesearch import find_all

if TYPE_CHECKING:
    from pvpatch.image.elf import ElfImage


SHN_ABS = 0xFFF1
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SOURCES = (".symtab", "System.map", "kallsyms", "none")



def _info_table(kind_of: dict[str, int]) -> bytes:
    """nm type letter → st_info (bind from the case, ``w``/``v`` weak), for bytes.translate."""
    out = bytearray(256)
    for c in range(256):
        letter = chr(c)
        low = letter.lower()
        bind = STB_WEAK if low in "wv" else STB_GLOBAL if letter.isupper() else STB_LOCAL
        out[c] = bind << 4 | kind_of.get(low, kind_of["*"])
    return bytes(out)


_INFO_EXEC = _info_table({"t": L.STT_FUNC, "w": L.STT_FUNC, "a": L.STT_NOTYPE,
                          "*": L.STT_OBJECT})
_INFO_DATA = _info_table({"a": L.STT_NOTYPE, "*": L.STT_OBJECT})
_INFO_ABS = _info_table({"*": L.STT_NOTYPE})

# st_info byte → 1 when its type (low nibble) can name code: STT_FUNC or STT_NOTYPE
_CODE_TYPES = bytes(1 if (b & 0xF) in (L.STT_FUNC, L.STT_NOTYPE) else 0 for b in range(256))
# st_info → rank bits of a code symbol at a shared address: function 4, non-local 2
# (a sized symbol adds 1, see _code_index)
_RANK = bytes(((b & 0xF) == L.STT_FUNC) << 2 | (b >> 4 != 0) << 1 for b in range(256))


def _and(*masks: bytes) -> bytes:
    """Element-wise AND of equal-length 0/1 byte strings (as big integers: C speed)."""
    out = int.from_bytes(masks[0], "little")
    for m in masks[1:]:
        out &= int.from_bytes(m, "little")
    return out.to_bytes(len(masks[0]), "little")


def _or(a: bytes, b: bytes) -> bytes:
    """Element-wise OR of two equal-length byte strings whose set bits do not carry."""
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(len(a), "little")


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

    def __init__(self, raw: bytes, bits: int, strtab: bytes, source: str,
                 exec_sections: frozenset[int]) -> None:
        self._layout = L.SYM[bits]
        self._entsize = self._layout.size
        self._raw = raw[:len(raw) - len(raw) % self._entsize]
        # column positions inside a row tuple, per ELF class
        (self._NAME, self._VALUE, self._SIZE, self._INFO, self._SHNDX) = \
            (0, 4, 5, 1, 3) if bits == 64 else (0, 1, 2, 3, 5)
        self._strtab = strtab
        self.source = source
        self._exec = exec_sections
        self._lookups: dict[str, list[Symbol]] = {}
        self._at_cache: dict[int, Symbol | None] = {}
        self._named: dict[int, str | None] = {}  # names_at results, misses included
        self.kallsyms: object | None = None  # the located tables when source is "kallsyms"

    @classmethod
    def from_image(cls, image: ElfImage) -> SymbolTable:
        symtab = next((s for s in image.sections if s.type == L.SHT_SYMTAB), None)
        exec_idx = frozenset(s.index for s in image.sections if s.is_exec and s.is_alloc)
        if symtab is None or not 0 < symtab.link < len(image.sections):
            return cls.from_kallsyms(image)
        layout = L.SYM[image.bits]
        if symtab.entsize and symtab.entsize != layout.size:
            raise image.error(f".symtab entry size is {symtab.entsize}, expected {layout.size}")
        strtab = bytes(image.section_data(image.sections[symtab.link]))
        return cls(bytes(image.section_data(symtab)), image.bits, strtab, ".symtab", exec_idx)

    @classmethod
    def from_kallsyms(cls, image: ElfImage) -> SymbolTable:
        """The symbols of the kernel's own kallsyms tables; empty (source "none") if absent."""
        from pvpatch.image.kallsyms import find_kallsyms

        if image.progress is not None:
            image.progress("no .symtab: recovering symbols from the kernel's kallsyms tables")
        found = find_kallsyms(image)
        if found is None:
            exec_idx = frozenset(s.index for s in image.sections if s.is_exec and s.is_alloc)
            return cls(b"", image.bits, b"", "none", exec_idx)
        table = cls.from_columns(image, found.strtab, found.name_offsets, found.addrs,
                                 found.types, "kallsyms")
        table.kallsyms = found
        return table

    @classmethod
    def from_entries(cls, image: ElfImage, entries: Iterable[tuple[str, int, str]],
                     source: str) -> SymbolTable:
        """A table from (name, address, nm type letter) triples (System.map)."""
        rows = sorted(entries, key=lambda e: e[1])
        names = [e[0].encode("latin-1") for e in rows]
        strtab = b"\0" + b"\0".join(names) + b"\0"
        offsets = list(accumulate((len(x) + 1 for x in names), initial=1))[:-1]
        letters = "".join(e[2] for e in rows).encode("latin-1")
        return cls.from_columns(image, strtab, offsets, [e[1] for e in rows], letters, source)

    @classmethod
    def from_columns(cls, image: ElfImage, strtab: bytes, name_offsets: Sequence[int],
                     addrs: Sequence[int], letters: bytes, source: str) -> SymbolTable:
        """A table from columns sorted by address: names (offsets into ``strtab``),
        addresses and nm type letters.

        Each symbol becomes an ELF symbol: ``t``/``T``/``w``/``W`` in an executable section a
        function (``W`` weak, capitals global), ``a``/``A`` or outside every section
        absolute, the rest objects. Sizes are not recorded by System.map or kallsyms, so each
        symbol reaches the next higher address in its section (as kallsyms itself reports
        sizes), or the section's end.
        """
        n = len(addrs)
        shndx = array("H", [SHN_ABS]) * n
        sizes = array("Q", bytes(8 * n))
        info = bytearray(letters.translate(_INFO_ABS))  # outside every section; sections below
        exec_idx = set()
        for sec in sorted((s for s in image.sections if s.is_alloc and s.size),
                          key=lambda s: (s.addr, not s.has_file_data)):
            if sec.is_exec:
                exec_idx.add(sec.index)
            lo = bisect.bisect_left(addrs, sec.addr)
            hi = bisect.bisect_left(addrs, sec.addr + sec.size)
            if lo == hi or shndx[lo] != SHN_ABS:  # empty, or a section with data won
                continue
            shndx[lo:hi] = array("H", [sec.index]) * (hi - lo)
            info[lo:hi] = letters[lo:hi].translate(_INFO_EXEC if sec.is_exec else _INFO_DATA)
            sizes[lo:hi] = _sizes_to_next(addrs[lo:hi], sec.addr + sec.size)
        raw = bytearray(n * L.SYM[image.bits].size)
        mv = memoryview(raw)
        if image.bits == 64:  # Elf64_Sym: name@0 info@4 other@5 shndx@6 value@8 size@16
            mv.cast("I")[0::6] = array("I", name_offsets)
            mv[4::24] = info
            mv.cast("H")[3::12] = shndx
            mv.cast("Q")[1::3] = array("Q", addrs)
            mv.cast("Q")[2::3] = sizes
        else:  # Elf32_Sym: name@0 value@4 size@8 info@12 other@13 shndx@14
            mv.cast("I")[0::4] = array("I", name_offsets)
            mv.cast("I")[1::4] = array("I", addrs)
            mv.cast("I")[2::4] = array("I", sizes)
            mv[12::16] = info
            mv.cast("H")[7::8] = shndx
        return cls(bytes(raw), image.bits, strtab, source, frozenset(exec_idx))

    def __len__(self) -> int:
        return len(self._raw) // self._entsize

    def record(self, i: int) -> Symbol:
        """The ``i``-th record as stored (index 0 is ELF's null symbol): for readers that
        walk the table, such as the tests that hold it to an independent ELF reader."""
        return self._symbol(i)

    def _row(self, i: int) -> tuple[int, ...]:
        return self._layout.fmt.unpack_from(self._raw, i * self._entsize)

    def _name(self, off: int) -> str:
        end = self._strtab.find(b"\0", off)
        return self._strtab[off:end if end >= 0 else len(self._strtab)].decode("latin-1")

    def _symbol(self, i: int) -> Symbol:
        r = self._row(i)
        info = r[self._INFO]
        return Symbol(self._name(r[self._NAME]), r[self._VALUE], r[self._SIZE], info & 0xF,
                      info >> 4, r[self._SHNDX])

    def _defined(self, i: int) -> bool:
        r = self._row(i)
        return r[self._SHNDX] != L.SHN_UNDEF and (r[self._INFO] & 0xF) not in (L.STT_SECTION,
                                                                               L.STT_FILE)

    def _indexes(self, name: str) -> list[int]:
        """Defined records named ``name``: find the string, then records pointing at it.

        A name stored as the tail of a longer string is found too: only its offset matters.
        """
        try:
            needle = name.encode("latin-1") + b"\0"
        except UnicodeEncodeError:  # e.g. a member name from damaged BTF: no symbol has it
            return []
        found: list[int] = []
        for pos in find_all(self._strtab, needle):
            found.extend(self._records_named(pos))
        return sorted(i for i in found if self._defined(i))

    def _records_named(self, name_off: int) -> list[int]:
        """Record indexes whose st_name is ``name_off``: a search of the packed st_name
        column (4 bytes a record, ~0.5 MB for a debug kernel; hits off a word boundary are
        other names' bytes). ~0.5 ms a name and no set-up to speak of, where sorting the
        records by name cost ~40 ms before the first lookup."""
        needle = name_off.to_bytes(4, "little")
        return [pos // 4 for pos in find_all(self._name_column, needle) if pos % 4 == 0]

    @cached_property
    def _name_column(self) -> bytes:
        """Every record's st_name (the first word of an ELF symbol), packed, in C."""
        return memoryview(self._raw).cast("I")[0::self._entsize // 4].tobytes()

    @cached_property
    def _columns(self) -> dict[str, array]:
        """The symbol table as typed columns, sliced out of the raw bytes in C.

        Arrays, not lists: ``tolist()`` made an int object per row and column, ~22 ms over a
        debug kernel's 117k symbols, where copying the strided bytes takes ~2 ms; a lookup
        or a pass makes its ints as it goes."""
        mv = memoryview(self._raw)
        if self._entsize == 24:  # Elf64_Sym: name@0 info@4 shndx@6 value@8 size@16
            cols = {"name": ("I", mv.cast("I")[0::6]), "info": ("B", mv[4::24]),
                    "shndx": ("H", mv.cast("H")[3::12]), "value": ("Q", mv.cast("Q")[1::3]),
                    "size": ("Q", mv.cast("Q")[2::3])}
        else:  # Elf32_Sym: name@0 value@4 size@8 info@12 shndx@14
            cols = {"name": ("I", mv.cast("I")[0::4]), "value": ("I", mv.cast("I")[1::4]),
                    "size": ("I", mv.cast("I")[2::4]), "info": ("B", mv[12::16]),
                    "shndx": ("H", mv.cast("H")[7::8])}
        return {k: array(code, view.tobytes()) for k, (code, view) in cols.items()}

    def lookup(self, name: str) -> list[Symbol]:
        """All defined symbols called ``name`` (locals may repeat across compile units)."""
        if name not in self._lookups:
            self._lookups[name] = [self._symbol(i) for i in self._indexes(name)]
        return self._lookups[name]

    def get(self, name: str) -> Symbol | None:
        """The symbol called ``name``, preferring a global definition."""
        found = self.lookup(name)
        if not found:
            return None
        return next((s for s in found if s.bind != 0), found[0])

    def named_prefix(self, prefix: str) -> list[Symbol]:
        """Defined symbols whose whole name starts with ``prefix`` (a search of the string
        table for a name that begins there: C speed, no pass over the records)."""
        needle = b"\0" + prefix.encode("latin-1")
        names: set[str] = set()
        for pos in find_all(self._strtab, needle):
            end = self._strtab.find(b"\0", pos + 1)
            names.add(self._strtab[pos + 1:end if end >= 0 else None].decode("latin-1"))
        return [sym for name in sorted(names) for sym in self.lookup(name)]

    def names_ending(self, suffix: str) -> set[str]:
        """Every name in the string table that ends with ``suffix`` (C-speed searches)."""
        needle = suffix.encode("latin-1") + b"\0"
        out: set[str] = set()
        for pos in find_all(self._strtab, needle):
            start = self._strtab.rfind(b"\0", 0, pos) + 1
            out.add(self._strtab[start:pos + len(needle) - 1].decode("latin-1"))
        return out

    def address(self, name: str) -> int | None:
        sym = self.get(name)
        return None if sym is None else sym.value

    @cached_property
    def _code_index(self) -> tuple[list[int], list[int]]:
        """(addresses, record indexes) of the symbols that name code, sorted by address.

        Function and untyped symbols defined in executable sections. Several may share an
        address; they stay, ordered so that the *last* of each group is the one to name it:
        a function beats a label, a global a local, a sized symbol an unsized one, and then
        the first defined. Filtering and ranking use byte masks and the sorts C-level keys
        (two stable sorts instead of one on composite keys): over the ~130k rows of a debug
        kernel, any per-row Python code here cost more than the rest of ``check``'s symbol work.
        """
        c = self._columns
        values, n, exe = c["value"], len(c["value"]), self._exec
        info = bytes(c["info"])
        code = _and(info.translate(_CODE_TYPES), bytes(map(bool, c["name"])),
                    bytes(map(exe.__contains__, c["shndx"])))
        rank = _or(info.translate(_RANK), bytes(map(bool, c["size"])))
        rows = list(compress(range(n - 1, -1, -1), code[::-1]))  # first defined sorts last
        rows.sort(key=rank.__getitem__)
        rows.sort(key=values.__getitem__)
        return list(map(values.__getitem__, rows)), rows

    def _rank(self, i: int) -> tuple[bool, bool, bool]:
        r = self._row(i)
        return (r[self._INFO] & 0xF) == L.STT_FUNC, r[self._INFO] >> 4 != 0, r[self._SIZE] != 0

    def containing(self, addr: int) -> tuple[Symbol, int] | None:
        """The code symbol at or before ``addr`` and the offset into it (as kallsyms does)."""
        addrs, idx = self._code_index
        pos = bisect.bisect_right(addrs, addr) - 1
        if pos < 0:
            return None
        sym = self._symbol(idx[pos])
        return sym, addr - sym.value

    def describe(self, addr: int) -> str:
        """``function+0xoff`` (or ``function`` at offset 0); hex address when unknown."""
        hit = self.containing(addr)
        if hit is None:
            return f"{addr:#x}"
        sym, off = hit
        return sym.name if off == 0 else f"{sym.name}+{off:#x}"

    def index_code(self) -> None:
        """Sort the code symbols now: before forking workers, so that they share the index."""
        _ = self._code_index

    def at(self, addr: int) -> Symbol | None:
        """The code symbol whose value is exactly ``addr``.

        Uses the sorted code index once something built it; before that, a scan of the
        value column (C speed, ~2 ms) per address is cheaper for the first few asked about.
        """
        if "_code_index" in self.__dict__ or len(self._at_cache) >= 8:  # many: sort once
            addrs, idx = self._code_index
            pos = bisect.bisect_right(addrs, addr) - 1  # the last at an address is the best
            return self._symbol(idx[pos]) if pos >= 0 and addrs[pos] == addr else None
        if addr not in self._at_cache:
            self._at_cache[addr] = self._scan_code_at(addr)
        return self._at_cache[addr]

    def _scan_code_at(self, addr: int) -> Symbol | None:
        c, best = self._columns, None
        for pos in self._rows_between(addr, addr):
            code_type = (c["info"][pos] & 0xF) in (L.STT_FUNC, L.STT_NOTYPE)
            if code_type and c["name"][pos] and c["shndx"][pos] in self._exec and \
                    (best is None or self._rank(pos) > self._rank(best)):
                best = pos
        return None if best is None else self._symbol(best)

    def names_at(self, addrs: set[int]) -> dict[int, str]:
        """Names of symbols defined exactly at each of ``addrs``, in one pass over the table.

        Cheaper than the sorted code index when only a few addresses need a name (the ~80
        pv_ops slot values of a summary): functions win over labels, globals over locals.
        """
        hits: dict[int, str] = {}
        if "_code_index" in self.__dict__:  # sorted already: bisect, scan only for the rest
            hits = {a: sym.name for a in addrs if (sym := self.at(a)) is not None}
        rest = addrs - hits.keys() - self._named.keys()
        if rest:
            found = self._scan_names(rest)
            self._named.update({a: found.get(a) for a in rest})  # misses too: scan once
        return hits | {a: n for a in addrs - hits.keys() if (n := self._named[a]) is not None}

    def named_with_prefix(self, addrs: set[int], prefix: str) -> set[int]:
        """The addresses among ``addrs`` where some defined symbol's name starts with
        ``prefix`` (aliases included), in one pass: for tables whose entries must be told
        apart by name, e.g. static-call keys (``__SCK__``)."""
        c, needle, out = self._columns, prefix.encode("latin-1"), set()
        for i in compress(range(len(c["value"])), map(addrs.__contains__, c["value"])):
            if c["name"][i] and self._strtab.startswith(needle, c["name"][i]) and \
                    self._defined(i):
                out.add(c["value"][i])
        return out

    def _scan_names(self, addrs: set[int]) -> dict[int, str]:
        c = self._columns
        best: dict[int, tuple[tuple[bool, bool, bool], int]] = {}
        rows = compress(range(len(c["value"])), map(addrs.__contains__, c["value"]))
        for i in rows:  # the filter runs in C; few rows get here
            if not c["name"][i] or not self._defined(i):
                continue
            rank = self._rank(i)
            v = c["value"][i]
            if v not in best or rank > best[v][0]:
                best[v] = (rank, i)
        return {v: self._symbol(i).name for v, (_rank, i) in best.items()}

    def describe_data(self, addr: int) -> str:
        """``object+0xoff`` for an address in data (the code index knows only code): the
        sized symbol of a data section that holds it — of those, the one starting last, and
        of several starting there the first defined; an address in code is described as
        code."""
        exact = self.name_at(addr)
        if exact is not None:
            return exact
        best = self._holder(addr)
        if best is None:
            return self.describe(addr)
        sym = self._symbol(best)
        return f"{sym.name}+{addr - sym.value:#x}"

    HOLDER_WINDOW = 1 << 16  # how far below an address a holder is looked for first

    def _holder(self, addr: int) -> int | None:
        """The record of the sized data symbol that holds ``addr`` (the last start; at a tie
        the first defined), among those starting within HOLDER_WINDOW below it, found in
        one C-level pass: a sorted index of every data symbol cost ~30 ms to build, and a
        scan of all of them as much, for the one or two descriptions a Xen plan asks for. An
        object larger than the window is not named (the address is described as it is)."""
        return self._best_holder(addr, self._rows_between(max(0, addr - self.HOLDER_WINDOW),
                                                          addr))

    def _rows_between(self, lo: int, hi: int) -> list[int]:
        """Records whose value is in ``lo..hi`` (a span of a few 64 KiB blocks), in table
        order: a C-speed search of a packed column of the values' bits 16–31 for each
        block's, each hit then compared in full (comparing ~130k big integers in Python
        took ~12 ms an address)."""
        col, values, found = self._value_bits_16_31, self._columns["value"], set()
        for block in range(lo >> 16, (hi >> 16) + 1):
            needle = (block & 0xFFFF).to_bytes(2, "little")
            pos = col.find(needle)
            while pos >= 0:
                if pos % 2 == 0 and lo <= values[pos // 2] <= hi:
                    found.add(pos // 2)
                pos = col.find(needle, pos + 1)
        return sorted(found)

    @cached_property
    def _value_bits_16_31(self) -> bytes:
        """Bits 16–31 of every record's st_value, as packed little-endian halfwords."""
        halves = memoryview(self._raw).cast("H")
        return (halves[5::12] if self._entsize == 24 else halves[3::8]).tobytes()

    def _best_holder(self, addr: int, rows: Iterable[int]) -> int | None:
        c, best = self._columns, None
        values, sizes = c["value"], c["size"]
        for i in rows:
            v = values[i]
            if v + sizes[i] > addr and c["name"][i] and c["shndx"][i] not in self._exec and \
                    (best is None or v > values[best]):
                best = i
        return best

    def name_at(self, addr: int) -> str | None:
        """Name of any symbol defined exactly at ``addr``: code first, then data (a scan)."""
        sym = self.at(addr)
        if sym is not None:
            return sym.name
        names = self._columns["name"]
        return next((self._symbol(i).name for i in self._rows_between(addr, addr)
                     if names[i] and self._defined(i)), None)


def _sizes_to_next(addrs: Sequence[int], end: int) -> array:
    """For sorted ``addrs``, each one's distance to the next higher one, the last's to ``end``.

    Neighbour differences are taken in C; a run of equal addresses (aliases, a fraction of a
    percent of a kernel's symbols) then gets the size of its last member, back to front.
    """
    sizes = array("Q", map(sub, [*addrs[1:], end], addrs))
    zeros, pos = [], 0
    for _ in range(sizes[:-1].count(0)):  # found by array.index, a C scan
        pos = sizes.index(0, pos) + 1
        zeros.append(pos - 1)
    for i in reversed(zeros):
        sizes[i] = sizes[i + 1]
    return sizes
