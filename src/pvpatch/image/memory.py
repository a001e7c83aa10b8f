"""Memory images: what a running or crashed machine held, read only where asked.

Two kinds of file hold a kernel's memory:

- an **ELF core** (``ET_CORE``): ``/proc/kcore`` (virtual addresses in ``p_vaddr``), a kdump
  vmcore (both: the kernel text and the direct map in ``p_vaddr``, RAM in ``p_paddr``), or QEMU's
  and libvirt's ``dump-guest-memory`` (physical addresses only, ``p_vaddr`` 0, unless it was
  asked to walk the page tables). Its ``VMCOREINFO`` note, when there is one, says where the
  kernel sits (``KERNELOFFSET=``, ``NUMBER(phys_base)=``) and which build it is (``BUILD-ID=``).
- a **raw** image whose byte 0 holds a virtual address the caller names (``--raw-start``): what
  QEMU's ``pmemsave`` of the kernel's text writes.

Every PT_LOAD becomes a :class:`Range` of an :class:`AddressSpace`, one space per kind of
address; nothing is read until asked for, and then with ``pread`` at the range's offset (which
``/proc/kcore`` needs: it reports a size of 128 TiB and has no ``mmap``). A 16 GB vmcore
therefore costs what a 1 GB one costs. A search through the whole file maps it instead.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import stat
from dataclasses import dataclass, field

from pvpatch.errors import InputError, UsageError
from pvpatch.image import layouts as L

ET_EXEC, ET_CORE = 2, 4
NO_ADDRESS = {0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF}  # kcore's p_paddr of ranges with no frame
MAX_NOTE_AREA = 1 << 20  # a core's notes are a few KiB per CPU; more is not a core
VMCOREINFO = "VMCOREINFO"
NT_TASKSTRUCT = 4  # fs/proc/kcore.c: the reading task's task_struct, a note no vmcore has
# makedumpfile's default output, and the flattened form it writes to a pipe
KDUMP_MAGICS = (b"KDUMP   ", b"makedumpfile")


@dataclass(frozen=True)
class Range:
    """``size`` bytes of addresses from ``start``, held in the file from ``offset``."""

    start: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.start + self.size


class AddressSpace:
    """The ranges of one kind of address (virtual or physical), sorted by start."""

    def __init__(self, kind: str, ranges: list[Range]) -> None:
        self.kind = kind
        self.ranges = sorted(ranges, key=lambda r: r.start)
        self._starts = [r.start for r in self.ranges]

    def __bool__(self) -> bool:
        return bool(self.ranges)

    @property
    def total(self) -> int:
        return sum(r.size for r in self.ranges)

    def locate(self, addr: int, length: int = 1) -> int | None:
        """The file offset holding ``[addr, addr+length)`` in one range, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        while i >= 0:  # ranges may overlap (kcore's text inside its RAM): walk back
            r = self.ranges[i]
            if addr + length <= r.end:
                return r.offset + (addr - r.start)
            if addr - r.start > 1 << 40:
                break
            i -= 1
        return None


@dataclass
class MemoryImage:
    """An opened memory image. Use as a context manager or call :meth:`close`."""

    path: str
    format: str  # "ELF core" or "raw"
    kind: str  # what it looks like: "/proc/kcore", "vmcore", "QEMU dump-guest-memory", …
    bits: int
    virtual: AddressSpace
    physical: AddressSpace
    vmcoreinfo: dict[str, str] | None = None  # the note's KEY=VALUE lines
    note_names: list[str] = field(default_factory=list)
    file_size: int = 0
    _fd: int = -1
    _map: mmap.mmap | None = None
    _map_tried: bool = False

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> MemoryImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the file from ``offset`` (short at its end).

        Always pread, never the map: a placement search reads a few KiB at hundreds of
        offsets, and a mapped page fault maps its neighbours too (the process's RSS grew by
        320 MB searching a 1 GB core); pread copies just what is asked."""
        try:
            return os.pread(self._fd, length, offset)
        except OSError as e:
            raise InputError(f"cannot read {length} bytes at offset {offset:#x}: {e.strerror}",
                             self.path) from None

    def read(self, space: AddressSpace, addr: int, length: int) -> bytes | None:
        """The bytes at ``addr`` of ``space``, or None where the image does not hold them."""
        off = space.locate(addr, length)
        if off is None:
            return None
        data = self.read_at(off, length)
        return data if len(data) == length else None

    def mapped(self) -> mmap.mmap | None:
        """The whole file as a map, made on first use (None for a file that cannot be
        mapped): for searches over all of it (bytes.find), the page locator's."""
        if self._map is None and not self._map_tried:
            self._map_tried = True
            self._map = _map(self._fd, self.file_size)
        return self._map

    def describe(self) -> str:
        """``QEMU dump-guest-memory, ELF core: physical addresses (2 ranges, 1.0 GiB)``."""
        parts = []
        for space in (self.virtual, self.physical):
            if space:
                n = len(space.ranges)
                parts.append(f"{space.kind} addresses ({n} range{'s' if n != 1 else ''}, "
                             f"{_size(space.total)})")
        what = self.kind if self.kind == self.format else f"{self.kind}, {self.format}"
        return f"{what}: {'; '.join(parts) or 'no loadable ranges'}"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def open_memory(path: str, raw_start: int | None = None, bits: int = 64) -> MemoryImage:
    """The memory image at ``path``: an ELF core, or raw bytes from ``raw_start`` (virtual).

    ``bits`` is the kernel's class, for a raw image (an ELF core says its own)."""
    fd = _open(path)
    try:
        size = os.fstat(fd).st_size  # /proc/kcore: the span it serves, never read whole
        head = os.pread(fd, 64, 0)
        if head[:4] == b"\x7fELF":
            if raw_start is not None:
                raise UsageError(f"{path} is an ELF core: --raw-start is for raw images only")
            image = _open_core(path, fd, size, head)
        else:
            _refuse_other(path, head, raw_start)
            image = MemoryImage(path, "raw", "raw", bits,
                                AddressSpace("virtual", [Range(raw_start, size, 0)]),
                                AddressSpace("physical", []), file_size=size, _fd=fd)
        return image
    except BaseException:
        os.close(fd)
        raise


def _open(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        hint = " (reading /proc/kcore needs root)" if e.errno in (1, 13) else ""
        raise InputError(f"cannot open: {e.strerror}{hint}", path) from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError("is a directory, not a memory image", path)
    return fd


def _map(fd: int, size: int) -> mmap.mmap | None:
    """Map a regular file (reads then touch only their pages); None where that is refused."""
    if size == 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        return None
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, OverflowError):  # /proc/kcore: no mmap
        return None


def _refuse_other(path: str, head: bytes, raw_start: int | None) -> None:
    """Name the formats that are not memory images pvpatch reads, instead of misreading them."""
    if any(head.startswith(m) for m in KDUMP_MAGICS):
        raise InputError("a kdump-compressed (makedumpfile) dump: pvpatch reads ELF cores; "
                         "write one with makedumpfile -E (or crash's 'vtop'-free ELF output)",
                         path)
    if raw_start is None:
        raise InputError("not an ELF core (no \\x7fELF magic); a raw memory image needs "
                         "--raw-start ADDR, the virtual address of its first byte", path)


def _open_core(path: str, fd: int, size: int, head: bytes) -> MemoryImage:
    if head[4] not in (1, 2) or head[5] != 1:
        raise InputError("not a little-endian ELF32/ELF64 file", path)
    bits = 32 if head[4] == 1 else 64
    if len(head) < 16 + L.EHDR_TAIL[bits].size:
        raise InputError(f"truncated: {len(head)} bytes, an ELF{bits} header needs "
                         f"{16 + L.EHDR_TAIL[bits].size}", path)
    h = L.EHDR_TAIL[bits].unpack(head, 16)
    if h["e_machine"] not in L.MACHINES:
        raise InputError(f"ELF machine {h['e_machine']} is not x86", path)
    if h["e_type"] == ET_EXEC:
        raise InputError("an ELF executable (a vmlinux?), not a memory image: give the "
                         "vmlinux first, then the memory", path)
    if h["e_type"] != ET_CORE:
        raise InputError(f"ELF type {h['e_type']} is not a core file (ET_CORE = 4)", path)
    phdrs = _program_headers(path, fd, size, h, bits)
    virtual, physical, notes = [], [], []
    for p in phdrs:
        if p["p_type"] == L.PT_LOAD and p["p_filesz"]:
            # QEMU without paging writes p_vaddr 0, or the physical address again (its ROMs)
            if p["p_vaddr"] not in (0, p["p_paddr"]):
                virtual.append(Range(p["p_vaddr"], p["p_filesz"], p["p_offset"]))
            if p["p_paddr"] not in NO_ADDRESS and (p["p_paddr"] or not p["p_vaddr"]):
                physical.append(Range(p["p_paddr"], p["p_filesz"], p["p_offset"]))
        elif p["p_type"] == L.PT_NOTE and p["p_filesz"]:
            notes.append(p)
    found = [n for p in notes for n in _notes(path, fd, p)]
    info = next((parse_vmcoreinfo(desc) for name, _t, desc in found if name == VMCOREINFO), None)
    names = [name for name, _t, _d in found]
    kcore = any(name == "CORE" and t == NT_TASKSTRUCT for name, t, _d in found)
    kind = _kind(path, names, kcore, info, virtual, physical)
    image = MemoryImage(path, "ELF core", kind, bits,
                        AddressSpace("virtual", virtual), AddressSpace("physical", physical),
                        info, names, size, fd)
    if not image.virtual and not image.physical:
        raise InputError("an ELF core with no loadable memory (no PT_LOAD with file data)",
                         path)
    return image


def _program_headers(path: str, fd: int, size: int, h: dict[str, int], bits: int
                     ) -> list[dict[str, int]]:
    layout = L.PHDR[bits]
    num, ent, off = h["e_phnum"], h["e_phentsize"], h["e_phoff"]
    if num == 0 or ent < layout.size or off <= 0 or (size and off + num * ent > size):
        raise InputError(f"program header table ({num} × {ent} bytes at {off:#x}) is not "
                         "usable", path)
    raw = os.pread(fd, num * ent, off)
    if len(raw) < num * ent:
        raise InputError("truncated: the program header table runs past the end", path)
    out = [layout.unpack(raw, i * ent) for i in range(num)]
    for i, p in enumerate(out):
        if size and p["p_type"] in (L.PT_LOAD, L.PT_NOTE) and \
                p["p_offset"] + p["p_filesz"] > size:
            raise InputError(f"segment {i} ({p['p_offset']:#x}+{p['p_filesz']:#x}) lies "
                             f"outside the file ({size:#x} bytes): truncated?", path)
    return out


def _notes(path: str, fd: int, p: dict[str, int]) -> list[tuple[str, int, bytes]]:
    """(name, type, descriptor) of every note in one PT_NOTE segment."""
    if p["p_filesz"] > MAX_NOTE_AREA:
        raise InputError(f"a {p['p_filesz']}-byte note segment: not a core file's", path)
    data = os.pread(fd, p["p_filesz"], p["p_offset"])
    out, pos = [], 0
    while pos + L.NOTE_HEADER.size <= len(data):
        n = L.NOTE_HEADER.unpack(data, pos)
        name_at = pos + L.NOTE_HEADER.size
        desc_at = name_at + _round4(n["n_namesz"])
        nxt = desc_at + _round4(n["n_descsz"])
        if nxt > len(data) or nxt <= pos:
            break
        name = data[name_at:name_at + n["n_namesz"]].split(b"\0", 1)[0].decode("latin-1")
        out.append((name, n["n_type"], data[desc_at:desc_at + n["n_descsz"]]))
        pos = nxt
    return out


def _round4(n: int) -> int:
    return (n + 3) & ~3


def parse_vmcoreinfo(text: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines (``OSRELEASE``, ``BUILD-ID``, ``KERNELOFFSET``, ``SYMBOL(x)``, …)."""
    out: dict[str, str] = {}
    for line in text.split(b"\0", 1)[0].decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            out.setdefault(key.strip(), value.strip())
    return out


def _kind(path: str, names: list[str], kcore: bool, info: dict[str, str] | None,
          virtual: list[Range], physical: list[Range]) -> str:
    """What produced the core, as far as its notes and ranges tell (``kcore``: it has the
    reading task's task_struct as a note, which only /proc/kcore writes)."""
    if os.path.realpath(path) == "/proc/kcore":
        return "/proc/kcore"
    if kcore:
        return "a copy of /proc/kcore"
    if "QEMU" in names:
        return "QEMU dump-guest-memory"
    if info is not None and virtual and physical:
        return "vmcore"
    if virtual and not physical:
        return "kcore-like core (virtual addresses)"
    return "ELF core"
