"""A memory-mapped, validated view of an x86 ELF kernel image.

Only headers are parsed eagerly; section contents are memoryview slices of the mapping, so a
600 MB debug ``vmlinux`` costs a few page faults, not a read of the whole file. Every offset and
size read from the file is checked against the file length before it is used.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from pvpatch.errors import InputError
from pvpatch.image import layouts as L

if TYPE_CHECKING:
    from collections.abc import Callable

    from pvpatch.image.symbols import SymbolTable


def is_elf(path: str) -> bool:
    """Does ``path`` start with the ELF magic? (Unreadable: no; opening it says why.)"""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def is_exec(self) -> bool:
        return bool(self.flags & L.SHF_EXECINSTR)

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & L.SHF_ALLOC)

    @property
    def has_file_data(self) -> bool:
        return self.type not in (L.SHT_NOBITS, L.SHT_NULL)

    def contains_addr(self, addr: int, length: int = 1) -> bool:
        return self.is_alloc and self.addr <= addr and addr + length <= self.addr + self.size


@dataclass(frozen=True)
class Segment:
    index: int
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


class ElfImage:
    """An opened ELF file. Use as a context manager or call :meth:`close`.

    ``ElfImage(path)`` maps a file; :meth:`from_bytes` wraps an ELF already in memory (the
    vmlinux decompressed out of a bzImage). ``path`` names the input in messages either way;
    ``origin`` says how the ELF was obtained (None: the file itself).
    """

    origin: object | None = None  # a pvpatch.image.bzimage.BootImage for a vmlinuz
    progress: Callable[[str], None] | None = None  # told about long steps (kallsyms)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = open(self.path, "rb")  # noqa: SIM115 - lifetime is the object's
        except OSError as e:
            raise InputError(f"cannot open: {e.strerror}", self.path) from None
        size = os.fstat(self._fd.fileno()).st_size
        if size < 16:
            self._fd.close()
            raise InputError(f"not an ELF file ({size} bytes, too short for an ELF header)",
                             self.path)
        self._map = mmap.mmap(self._fd.fileno(), 0, access=mmap.ACCESS_READ)
        self._setup(memoryview(self._map))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, label: str,
                   origin: object | None = None) -> ElfImage:
        """An image over ``data`` (kept, not copied); ``label`` names it in messages."""
        self = cls.__new__(cls)
        self.path, self._fd, self._map, self.origin = label, None, None, origin
        view = memoryview(data).cast("B")
        if len(view) < 16:
            raise InputError(f"not an ELF file ({len(view)} bytes, too short for an ELF "
                             "header)", label)
        self._setup(view)
        return self

    def _setup(self, view: memoryview) -> None:
        self.data = view
        self.size = len(view)
        self._open = True
        try:
            self._parse_header()
            self.sections = self._parse_sections()
            self.segments = self._parse_segments()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if not getattr(self, "_open", False):
            return
        self._open = False
        self.__dict__.pop("symbols", None)
        self.data.release()
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a caller still holds a slice; freed at exit
                self._map.close()
            self._map = None
        if self._fd is not None:
            self._fd.close()

    def __enter__(self) -> ElfImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elf_size(self) -> int:
        """Where the ELF ends: the furthest header table, section or segment in the file."""
        h = self.header
        ends = [16 + L.EHDR_TAIL[self.bits].size, h["e_phoff"] + h["e_phnum"] * h["e_phentsize"],
                h["e_shoff"] + h["e_shnum"] * h["e_shentsize"]]
        ends += [s.offset + s.size for s in self.sections if s.has_file_data]
        ends += [p.offset + p.filesz for p in self.segments]
        return min(max(ends), self.size)

    # -- header ----------------------------------------------------------------------------

    def error(self, message: str) -> InputError:
        return InputError(message, self.path)

    def _parse_header(self) -> None:
        ident = bytes(self.data[:16])
        if ident[:4] != b"\x7fELF":
            raise self.error("not an ELF file (no \\x7fELF magic)")
        if ident[4] not in (1, 2):
            raise self.error(f"unknown ELF class {ident[4]} (expected 1 or 2)")
        if ident[5] != 1:
            raise self.error("big-endian ELF; pvpatch reads little-endian x86 kernels only")
        self.bits = 32 if ident[4] == 1 else 64
        tail = L.EHDR_TAIL[self.bits]
        if self.size < 16 + tail.size:
            raise self.error(f"truncated: {self.size} bytes, the ELF header needs "
                             f"{16 + tail.size}")
        h = tail.unpack(self.data, 16)
        if h["e_machine"] not in L.MACHINES:
            raise self.error(f"ELF machine {h['e_machine']} is not x86 "
                             f"(expected EM_386=3 or EM_X86_64=62)")
        expected = L.EM_386 if self.bits == 32 else L.EM_X86_64
        if h["e_machine"] != expected:
            raise self.error(f"ELF{self.bits} with machine {L.MACHINES[h['e_machine']]}: "
                             "class and machine disagree")
        self.header = h
        self.machine = L.MACHINES[h["e_machine"]]
        self.ptr_size = self.bits // 8
        self.entry = h["e_entry"]

    def _table(self, what: str, off: int, num: int, entsize: int, layout: L.Layout) -> list[dict]:
        if num == 0:
            return []
        if entsize < layout.size:
            raise self.error(f"{what} entry size {entsize} is smaller than {layout.size}")
        end = off + num * entsize
        if off <= 0 or end > self.size:
            raise self.error(f"{what} table at offset {off:#x} ({num} × {entsize} bytes) "
                             f"lies outside the file ({self.size} bytes)")
        return [layout.unpack(self.data, off + i * entsize) for i in range(num)]

    def _parse_sections(self) -> list[Section]:
        h = self.header
        raw = self._table("section header", h["e_shoff"], h["e_shnum"], h["e_shentsize"],
                          L.SHDR[self.bits])
        if not raw:
            return []
        for i, s in enumerate(raw):
            if s["sh_type"] not in (L.SHT_NOBITS, L.SHT_NULL) and \
                    s["sh_offset"] + s["sh_size"] > self.size:
                raise self.error(f"section {i} data ({s['sh_offset']:#x}+{s['sh_size']:#x}) "
                                 f"lies outside the file ({self.size:#x} bytes)")
        strndx = h["e_shstrndx"]
        names = b""
        if 0 < strndx < len(raw):
            s = raw[strndx]
            names = bytes(self.data[s["sh_offset"]:s["sh_offset"] + s["sh_size"]])
        sections = []
        for i, s in enumerate(raw):
            name_off = s["sh_name"]
            end = names.find(b"\0", name_off) if name_off < len(names) else -1
            name = names[name_off:end].decode("latin-1") if end >= 0 else ""
            sections.append(Section(i, name, s["sh_type"], s["sh_flags"], s["sh_addr"],
                                    s["sh_offset"], s["sh_size"], s["sh_link"], s["sh_info"],
                                    s["sh_addralign"], s["sh_entsize"]))
        return sections

    def _parse_segments(self) -> list[Segment]:
        h = self.header
        raw = self._table("program header", h["e_phoff"], h["e_phnum"], h["e_phentsize"],
                          L.PHDR[self.bits])
        segs = []
        for i, p in enumerate(raw):
            if p["p_type"] in (L.PT_LOAD, L.PT_NOTE) and p["p_offset"] + p["p_filesz"] > self.size:
                raise self.error(f"segment {i} ({p['p_offset']:#x}+{p['p_filesz']:#x}) lies "
                                 f"outside the file ({self.size:#x} bytes)")
            segs.append(Segment(i, p["p_type"], p["p_flags"], p["p_offset"], p["p_vaddr"],
                                p["p_paddr"], p["p_filesz"], p["p_memsz"], p["p_align"]))
        return segs

    # -- sections --------------------------------------------------------------------------

    def section(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def section_data(self, sec: Section) -> memoryview:
        if not sec.has_file_data:
            return memoryview(b"")
        return self.data[sec.offset:sec.offset + sec.size]

    @cached_property
    def _alloc_sections(self) -> tuple[list[int], list[Section]]:
        """Allocated sections with a size, sorted by address (data-backed first at a tie)."""
        secs = sorted((sec for sec in self.sections if sec.is_alloc and sec.size),
                      key=lambda sec: (sec.addr, not sec.has_file_data))
        return [sec.addr for sec in secs], secs

    def section_at(self, addr: int, length: int = 1) -> Section | None:
        """The allocated section holding ``[addr, addr+length)``, preferring ones with data.

        The last answer is tried first: callers walk thousands of sites in address order."""
        last = self._last_section
        if last is not None and last.contains_addr(addr, length):
            return last
        found = self._section_at(addr, length)
        if found is not None and found.has_file_data:
            self._last_section = found
        return found

    _last_section: Section | None = None
    _last_segment: Segment | None = None

    def _section_at(self, addr: int, length: int) -> Section | None:
        starts, secs = self._alloc_sections
        pos = bisect.bisect_right(starts, addr) - 1
        best = None
        while pos >= 0:  # walk back over sections that start at or before addr
            sec = secs[pos]
            if sec.contains_addr(addr, length):
                if sec.has_file_data:
                    return sec
                best = best or sec
            if addr - sec.addr > 1 << 32:  # far behind: nothing earlier can reach addr
                break
            pos -= 1
        return best

    # -- addresses -------------------------------------------------------------------------

    @cached_property
    def _load_segments(self) -> list[Segment]:
        return [p for p in self.segments if p.type == L.PT_LOAD and p.filesz]

    def offset_of(self, addr: int, length: int = 1) -> int | None:
        """File offset of virtual address ``addr`` if ``length`` bytes there are in the file.

        The segment of the last answer is tried first: sites are read in address order."""
        p = self._last_segment
        if p is not None and p.vaddr <= addr and addr + length <= p.vaddr + p.filesz:
            return p.offset + (addr - p.vaddr)
        for p in self._load_segments:
            if p.vaddr <= addr and addr + length <= p.vaddr + p.filesz:
                self._last_segment = p
                return p.offset + (addr - p.vaddr)
        if not self._load_segments:  # no program headers: fall back to allocated sections
            for s in self.sections:
                if s.has_file_data and s.contains_addr(addr, length):
                    return s.offset + (addr - s.addr)
        return None

    def read(self, addr: int, length: int) -> bytes:
        """``length`` bytes at virtual address ``addr``; InputError if not backed by the file."""
        off = self.offset_of(addr, length)
        if off is None:
            raise self.error(f"address {addr:#x} (+{length}) is not in any loaded part of the file")
        return bytes(self.data[off:off + length])

    def try_read(self, addr: int, length: int) -> bytes | None:
        off = self.offset_of(addr, length)
        return None if off is None else bytes(self.data[off:off + length])

    # -- symbols ---------------------------------------------------------------------------

    @cached_property
    def symbols(self) -> SymbolTable:
        from pvpatch.image.symbols import SymbolTable

        return SymbolTable.from_image(self)

    @cached_property
    def build_id(self) -> str | None:
        """The GNU build-id in hex (None: the image has none); see :mod:`.buildid`."""
        from pvpatch.image.buildid import read_build_id

        return read_build_id(self)

    def use_symbols(self, table: SymbolTable) -> None:
        """Name addresses with ``table`` (e.g. from a System.map) instead of the image's own."""
        self.__dict__["symbols"] = table
