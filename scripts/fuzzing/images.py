"""Structure-aware mutation of kernel images: the ELF, its pv tables, its code, its kallsyms.

The mutators know where the interesting fields are — ELF and section headers, program
headers, note headers, ``.parainstructions``, ``.altinstructions`` and ``.static_call_sites``
records, the .BTF header and type records — and write boundary values there
(:mod:`fuzzing.values`). Per seed (:mod:`fuzzing.seeds`) they also know the start-up
functions the store decoder reads (so their code can be replaced by garbage, loops,
self-branches, calls into themselves, or a function of a megabyte) and the kallsyms tables
of a stripped image. A bzImage seed is mutated inside: the ELF is changed, then compressed
and wrapped again, or the boot header itself is changed.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence

from fuzzing.elf import Elf
from fuzzing.values import flip_bytes, poke_field, poke_int, truncate
from pvpatch.image import layouts as L

Mutator = Callable[[bytearray, random.Random], str]


def elf_header(buf: bytearray, rng: random.Random) -> str:
    elf = Elf.parse(buf)
    if elf is None:
        return flip_bytes(buf, rng)
    return poke_field(buf, rng, 16, L.EHDR_TAIL[elf.bits], "ehdr")


def section_header(buf: bytearray, rng: random.Random) -> str:
    elf = Elf.parse(buf)
    secs = elf.sections(buf) if elf else []
    if not secs:
        return flip_bytes(buf, rng)
    at, _fields = rng.choice(secs)
    return poke_field(buf, rng, at, L.SHDR[elf.bits], f"shdr@{at:#x}")


def program_header(buf: bytearray, rng: random.Random) -> str:
    elf = Elf.parse(buf)
    layout = L.PHDR[elf.bits] if elf else None
    if elf is None or not elf.phnum or elf.phoff + layout.size > len(buf):
        return flip_bytes(buf, rng)
    at = elf.phoff + rng.randrange(min(elf.phnum, 64)) * max(elf.phentsize, 1)
    if at + layout.size > len(buf):
        return flip_bytes(buf, rng)
    return poke_field(buf, rng, at, layout, f"phdr@{at:#x}")


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
            poke_int(buf, rng, rec + field, width)

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
    return poke_field(buf, rng, rng.choice(heads), L.NOTE_HEADER, "note")


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
    return f".BTF+{field:#x}: " + poke_int(buf, rng, off + field, 2 if field == 0 else 4)


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


# -- the code of the start-up functions --------------------------------------------------------

def _rel32(at: int, target: int) -> bytes:
    return struct.pack("<i", (target - (at + 5) + 2**31) % 2**32 - 2**31)


def garbage_code(size: int, rng: random.Random, valid: bool = False) -> bytes:
    """Code a decoder must survive: random bytes, or instructions that loop, branch into
    themselves, jump into the middle of an instruction, store through every register, or
    repeat a string operation a billion times. ``valid``: no random bytes, so that capstone
    decodes all of it (a huge function is then decoded, and its blocks walked, to the end)."""
    out = bytearray()
    while len(out) < size:
        pick = rng.randrange(1 if valid else 0, 9)
        if pick == 0:
            out += rng.randbytes(rng.randrange(1, 16))
        elif pick == 1:
            out += b"\xeb\xfe"  # jmp . (a self-branch)
        elif pick == 2:
            out += b"\xeb" + bytes([rng.randrange(256)])  # a short jump anywhere near
        elif pick == 3:
            out += rng.choice((b"\x75", b"\x74", b"\x7c")) + bytes([rng.randrange(256)])
        elif pick == 4:  # mov %reg, rip-relative: a store to somewhere
            out += b"\x48\x89" + bytes([0x05 | rng.randrange(8) << 3]) + rng.randbytes(4)
        elif pick == 5:  # movq $imm32, disp32: a store of a constant to an absolute address
            out += b"\x48\xc7\x04\x25" + rng.randbytes(8)
        elif pick == 6:  # mov $count, %rcx; rep stosq / rep movsq
            out += b"\x48\xc7\xc1" + rng.randbytes(4)
            out += rng.choice((b"\xf3\x48\xab", b"\xf3\x48\xa5"))
        elif pick == 7:  # movabs $imm64, %reg
            out += bytes([0x48, 0xB8 + rng.randrange(8)]) + rng.randbytes(8)
        else:
            out += b"\x66" * rng.randrange(1, 15) + b"\x90"  # a long run of prefixes
    return bytes(out[:size])


def code_mutators(functions: dict[str, tuple[int, int]]) -> list[tuple[str, Mutator]]:
    """Mutators of the start-up functions at these (file offset, size)."""
    if not functions:
        return []
    names = sorted(functions)

    def pick(rng: random.Random) -> tuple[str, int, int]:
        name = rng.choice(names)
        return (name, *functions[name])

    def overwrite(buf: bytearray, rng: random.Random) -> str:
        name, off, size = pick(rng)
        start = off + rng.randrange(max(size, 1))
        n = min(rng.choice((1, 2, 5, 16, size)), off + size - start)
        if start + n > len(buf) or n <= 0:
            return flip_bytes(buf, rng)
        buf[start:start + n] = garbage_code(n, rng)
        return f"{name}+{start - off:#x}: {n} bytes of garbage code"

    def loop(buf: bytearray, rng: random.Random) -> str:
        """A branch back to the function's start, to itself, or a call of itself."""
        name, off, size = pick(rng)
        at = off + rng.randrange(max(size - 5, 1))
        if size < 5 or at + 5 > len(buf):
            return flip_bytes(buf, rng)
        kind = rng.choice(("jmp-start", "call-self", "self-branch", "jne-back"))
        if kind == "self-branch":
            buf[at:at + 2] = b"\xeb\xfe"
        elif kind == "jne-back":
            buf[at:at + 2] = b"\x75" + bytes([(off - (at + 2)) % 256 if at - off < 128 else 0xFE])
        else:
            buf[at:at + 5] = (b"\xe9" if kind == "jmp-start" else b"\xe8") + _rel32(at, off)
        return f"{name}+{at - off:#x}: {kind}"

    return [("startup-code", overwrite), ("startup-loop", loop)]


def symbol_mutators(names: Sequence[str]) -> list[tuple[str, Mutator]]:
    """Mutators of the .symtab entries of these functions: a lying size, or a function
    moved into a new section of up to a megabyte of garbage code."""
    wanted = frozenset(names)

    def entries(buf: bytearray) -> tuple[Elf | None, list]:
        elf = Elf.parse(buf)
        return elf, [s for s in (elf.symbols(buf) if elf else []) if s.name in wanted]

    def size(buf: bytearray, rng: random.Random) -> str:
        elf, syms = entries(buf)
        if not syms:
            return flip_bytes(buf, rng)
        sym = rng.choice(syms)
        field = 8 if elf.bits == 32 else 16  # st_size
        width = 4 if elf.bits == 32 else 8
        return f"{sym.name}.st_size " + poke_int(buf, rng, sym.entry + field, width)

    def huge(buf: bytearray, rng: random.Random) -> str:
        elf, syms = entries(buf)
        if not syms:
            return flip_bytes(buf, rng)
        sym = rng.choice(syms)
        n = rng.choice((64 * 1024, 64 * 1024 + 1, 256 * 1024, 1 << 20))
        addr = (sym.value | 0xFFFFFF) + 1 + 0x1000000  # past everything the fixtures map
        if not elf.add_code_section(buf, addr, garbage_code(n, rng, rng.random() < 0.8)):
            return flip_bytes(buf, rng)
        value, sz, shndx = (4, 8, 14) if elf.bits == 32 else (8, 16, 6)
        width = 4 if elf.bits == 32 else 8
        # .symtab's bytes stay where they were: only the section header table moved
        buf[sym.entry + value:sym.entry + value + width] = (addr % 2**(8 * width)).to_bytes(
            width, "little")
        buf[sym.entry + sz:sym.entry + sz + width] = n.to_bytes(width, "little")
        buf[sym.entry + shndx:sym.entry + shndx + 2] = elf.shnum.to_bytes(2, "little")
        return f"{sym.name} moved to {addr:#x}: {n} bytes of garbage code"

    return [("symbol-size", size), ("huge-function", huge)] if names else []


# -- kallsyms ----------------------------------------------------------------------------------

def kallsyms_mutators(tables: dict[str, tuple[int, int]]) -> list[tuple[str, Mutator]]:
    """Mutators of the kallsyms arrays at these (file offset, size): a count, a name length,
    a marker, a token or its index, an address offset."""
    if not tables:
        return []
    names = sorted(tables)

    def mutate(buf: bytearray, rng: random.Random) -> str:
        label = rng.choice(names)
        off, size = tables[label]
        if label == "kallsyms_token_table" and rng.random() < 0.3:  # a NUL lost or gained
            at = off + rng.randrange(max(size, 1))
            if at < len(buf):
                buf[at] = 0 if buf[at] else 0x41
            return f"{label}+{at - off:#x}: NUL toggled"
        width = {"kallsyms_names": 1, "kallsyms_token_index": 2,
                 "kallsyms_seqs_of_names": 1}.get(label, 4)
        at = off + rng.randrange(max(size // width, 1)) * width
        return f"{label}+{at - off:#x}: " + poke_int(buf, rng, at, width)

    return [("kallsyms", mutate)]


# -- bzImage -----------------------------------------------------------------------------------

# the boot header fields pvpatch reads (pvpatch.image.bzimage), as (offset, width)
BOOT_FIELDS = ((0x1F1, 1), (0x1FE, 2), (0x202, 4), (0x206, 2), (0x248, 4), (0x24C, 4))


def boot_header(buf: bytearray, rng: random.Random) -> str:
    """One field of the setup header, or the 32-bit size appended to the payload."""
    if rng.random() < 0.2 and len(buf) > 0x250:  # the appended uncompressed size
        off, length = struct.unpack_from("<II", buf, 0x248)
        pm = ((buf[0x1F1] or 4) + 1) * 512
        end = pm + off + length
        if 4 <= end <= len(buf):
            return "payload size word " + poke_int(buf, rng, end - 4, 4)
    at, width = rng.choice(BOOT_FIELDS)
    return f"boot header@{at:#x} " + poke_int(buf, rng, at, width)


def mutate(seed_image: bytes, rng: random.Random, rounds: int = 0,
           extra: Sequence[tuple[str, Mutator]] = (), weight: float = 0.0
           ) -> tuple[bytes, list[str]]:
    """One mutant: 1–3 structure-aware mutations (truncation only ever last). ``extra`` are a
    seed's own mutators (its code, its kallsyms), chosen with probability ``weight`` each
    round."""
    buf = bytearray(seed_image)
    done = []
    names = [n for n in MUTATORS if n != "truncate"]
    for _ in range(rounds or rng.choice((1, 1, 2, 3))):
        if extra and rng.random() < weight:
            name, mutator = rng.choice(extra)
        else:
            name = rng.choice(names)
            mutator = MUTATORS[name]
        done.append(f"{name}: {mutator(buf, rng)}")
    if rng.random() < 0.05:
        done.append(f"truncate: {truncate(buf, rng)}")
    return bytes(buf), done
