"""Structure-aware mutation of kernel images, and a runner that holds every command to its
contract on each mutant: exit status 0, 1 or 2, never a traceback, bounded time and memory.

The mutators know where the interesting fields are — ELF and section headers, program
headers, note headers, ``.parainstructions`` and ``.altinstructions`` records, the BTF header
and type records — and write boundary values there (0, all-ones, sizes just past the end,
small off-by-ones), which is where readers go wrong. Used by the short run in ``make test``
(``tests/test_fuzz.py``) and the long run ``make fuzz`` (``scripts/fuzz.py``).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pvpatch.image import layouts as L

Mutator = Callable[[bytearray, random.Random], str]

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 15, 16, 24, 63, 64, 255, 256, 0x7FFF, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@dataclass(frozen=True)
class Elf:
    """Just enough of the header of a (possibly already broken) image to aim mutations."""

    bits: int
    shoff: int
    shentsize: int
    shnum: int
    phoff: int
    phentsize: int
    phnum: int

    @classmethod
    def parse(cls, buf: bytes | bytearray) -> Elf | None:
        if len(buf) < 64 or buf[:4] != b"\x7fELF" or buf[4] not in (1, 2):
            return None
        bits = 32 if buf[4] == 1 else 64
        h = L.EHDR_TAIL[bits].unpack(buf, 16)
        return cls(bits, h["e_shoff"], h["e_shentsize"], h["e_shnum"], h["e_phoff"],
                   h["e_phentsize"], h["e_phnum"])

    def sections(self, buf: bytes | bytearray) -> list[tuple[int, dict[str, int]]]:
        """(header offset, fields) of each section header that lies inside the buffer."""
        out = []
        layout = L.SHDR[self.bits]
        for i in range(min(self.shnum, 512)):
            at = self.shoff + i * self.shentsize
            if self.shentsize >= layout.size and at > 0 and at + layout.size <= len(buf):
                out.append((at, layout.unpack(buf, at)))
        return out

    def named(self, buf: bytes | bytearray, name: bytes) -> tuple[int, int] | None:
        """(file offset, size) of the section called ``name``, found via .shstrtab."""
        secs = self.sections(buf)
        h = L.EHDR_TAIL[self.bits].unpack(buf, 16)
        if not 0 < h["e_shstrndx"] < len(secs):
            return None
        strtab = secs[h["e_shstrndx"]][1]
        for _at, s in secs:
            off = strtab["sh_offset"] + s["sh_name"]
            if buf[off:off + len(name) + 1] == name + b"\0":
                return s["sh_offset"], s["sh_size"]
        return None


def _value(rng: random.Random, old: int, limit: int) -> int:
    choice = rng.randrange(4)
    if choice == 0:
        return rng.choice(INTERESTING) % (limit + 1)
    if choice == 1:
        return (old + rng.choice((-8, -4, -1, 1, 4, 8, 16))) % (limit + 1)
    if choice == 2:
        return old ^ (1 << rng.randrange(limit.bit_length()))
    return rng.randrange(limit + 1)


def _poke_int(buf: bytearray, rng: random.Random, at: int, width: int) -> str:
    """Write a boundary-ish value into the little-endian integer at ``at``."""
    if at + width > len(buf):
        return "field out of range"
    old = int.from_bytes(buf[at:at + width], "little")
    new = _value(rng, old, (1 << (8 * width)) - 1)
    buf[at:at + width] = new.to_bytes(width, "little")
    return f"{old:#x}→{new:#x}"


def _poke_field(buf: bytearray, rng: random.Random, at: int, layout: L.Layout, what: str) -> str:
    name = rng.choice(layout.fields)
    off = at + struct.calcsize("<" + layout.fmt.format[1:][:layout.fields.index(name)])
    fmt = "<" + layout.fmt.format[1:][layout.fields.index(name)]
    size = struct.calcsize(fmt)
    if off + size > len(buf):
        return "field out of range"
    old = struct.unpack_from(fmt, buf, off)[0]
    new = _value(rng, old, (1 << (8 * size)) - 1)
    struct.pack_into(fmt, buf, off, new)
    return f"{what}.{name} {old:#x}→{new:#x}"


def elf_header(buf: bytearray, rng: random.Random) -> str:
    elf = Elf.parse(buf)
    if elf is None:
        return flip_bytes(buf, rng)
    return _poke_field(buf, rng, 16, L.EHDR_TAIL[elf.bits], "ehdr")


def section_header(buf: bytearray, rng: random.Random) -> str:
    elf = Elf.parse(buf)
    secs = elf.sections(buf) if elf else []
    if not secs:
        return flip_bytes(buf, rng)
    at, _fields = rng.choice(secs)
    return _poke_field(buf, rng, at, L.SHDR[elf.bits], f"shdr@{at:#x}")


def program_header(buf: bytearray, rng: random.Random) -> str:
    elf = Elf.parse(buf)
    layout = L.PHDR[elf.bits] if elf else None
    if elf is None or not elf.phnum or elf.phoff + layout.size > len(buf):
        return flip_bytes(buf, rng)
    at = elf.phoff + rng.randrange(min(elf.phnum, 64)) * max(elf.phentsize, 1)
    if at + layout.size > len(buf):
        return flip_bytes(buf, rng)
    return _poke_field(buf, rng, at, layout, f"phdr@{at:#x}")


def _in_section(name: bytes, stride: int, fields: tuple[int, ...]) -> Mutator:
    """A mutator that rewrites one field of one record of section ``name``."""

    def mutate(buf: bytearray, rng: random.Random) -> str:
        elf = Elf.parse(buf)
        where = elf.named(buf, name) if elf else None
        if where is None or where[1] < stride or where[0] + where[1] > len(buf):
            return flip_bytes(buf, rng)
        off, size = where
        rec = off + rng.randrange(size // stride) * stride
        field = rng.choice(fields)
        width = rng.choice((1, 2, 4))
        return f"{name.decode()} record@{rec:#x}+{field}: " + \
            _poke_int(buf, rng, rec + field, width)

    return mutate


def note_header(buf: bytearray, rng: random.Random) -> str:
    elf = Elf.parse(buf)
    notes = [s for _a, s in (elf.sections(buf) if elf else []) if s["sh_type"] == L.SHT_NOTE]
    if not notes:
        return flip_bytes(buf, rng)
    sec = rng.choice(notes)
    pos, end = sec["sh_offset"], min(sec["sh_offset"] + sec["sh_size"], len(buf))
    heads = []
    while pos + 12 <= end and len(heads) < 256:  # walk the (unmutated) notes
        namesz, descsz, _t = struct.unpack_from("<III", buf, pos)
        heads.append(pos)
        pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    if not heads:
        return flip_bytes(buf, rng)
    return _poke_field(buf, rng, rng.choice(heads), L.NOTE_HEADER, "note")


def btf(buf: bytearray, rng: random.Random) -> str:
    elf = Elf.parse(buf)
    where = elf.named(buf, b".BTF") if elf else None
    if where is None or where[1] < 24:
        return flip_bytes(buf, rng)
    off, size = where
    if rng.random() < 0.5:  # header: magic version flags hdr_len type_off type_len str_off len
        field = rng.choice((0, 2, 4, 8, 12, 16, 20))
    else:  # somewhere in the type records or strings
        field = 24 + rng.randrange(max(size - 24, 1)) // 4 * 4
    return f".BTF+{field:#x}: " + _poke_int(buf, rng, off + field, 2 if field == 0 else 4)


def flip_bytes(buf: bytearray, rng: random.Random) -> str:
    at = rng.randrange(len(buf)) if buf else 0
    n = rng.choice((1, 2, 4, 8))
    for i in range(at, min(at + n, len(buf))):
        buf[i] = rng.randrange(256)
    return f"bytes@{at:#x}+{n}"


def truncate(buf: bytearray, rng: random.Random) -> str:
    keep = rng.choice((0, 3, 16, 52, 64, rng.randrange(len(buf) + 1)))
    del buf[keep:]
    return f"truncated to {keep}"


MUTATORS: dict[str, Mutator] = {
    "elf-header": elf_header,
    "section-header": section_header,
    "program-header": program_header,
    "note-header": note_header,
    "parainstructions": _in_section(b".parainstructions", 8, (0, 4, 5, 6, 8, 9, 10)),
    "altinstructions": _in_section(b".altinstructions", 12, (0, 4, 8, 10, 11)),
    "static_call_sites": _in_section(b".static_call_sites", 8, (0, 4)),
    "btf": btf,
    "bytes": flip_bytes,
    "truncate": truncate,
}


def mutate(seed_image: bytes, rng: random.Random, rounds: int = 0) -> tuple[bytes, list[str]]:
    """One mutant: 1–3 structure-aware mutations (truncation only ever last)."""
    buf = bytearray(seed_image)
    done = []
    names = [n for n in MUTATORS if n != "truncate"]
    for _ in range(rounds or rng.choice((1, 1, 2, 3))):
        name = rng.choice(names)
        done.append(f"{name}: {MUTATORS[name](buf, rng)}")
    if rng.random() < 0.05:
        done.append(f"truncate: {truncate(buf, rng)}")
    return bytes(buf), done


# The commands each mutant is run through; {in}/{out}/{other} are file paths.
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("inspect", "{in}"),
    ("inspect", "{in}", "--json", "--sites"),
    ("inspect", "{in}", "--backend", "xen", "--json"),
    ("notes", "{in}", "--check"),
    ("notes", "{in}", "--json"),
    ("apply", "{in}", "--dry-run", "--json"),
    ("apply", "{in}", "--backend", "xen", "--vcpus", "1", "-o", "{out}"),
    ("diff", "{other}", "{in}"),
    ("check", "{in}", "--format", "json"),
    ("check", "{in}", "--baseline", "{other}", "--format", "junit", "-o", "{out}"),
    ("extract", "{in}", "-o", "{out}"),
)
