"""The KASLR slide applied to what a plan expects at a site.

The decompressor adds the slide to every absolute operand of the image before the kernel runs;
boot patching then writes its sites at their runtime addresses. A ``call rel32`` between two
addresses of the image comes out exactly as at link time (both moved by the same slide), so
bytes a plan writes need nothing. Bytes a plan leaves *as built* do: an unpatched ``call
*pv_ops+N`` of 2.6.30–5.17 (``ff 14 25 abs32``; i386 ``ff 15 abs32``) holds link + slide in
memory. So, for each operand the slide moves inside a site — named by the image's relocations
(``image.relocations``) when it keeps them, else recognised in the known site forms — whose
bytes the expected code still holds as built, the slide is applied to the expected bytes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from pvpatch.disasm import Insn
from pvpatch.image.relocations import Relocations

# Absolute memory operands of the indirect call/jmp forms pv sites are built with (ModRM, and
# on x86-64 the SIB byte 0x25: no base, no index), with any prefixes before the ff opcode:
# x86-64 ff 14 25 / ff 24 25 d32 (2.6.30–5.17); i386 ff 15 / ff 25 a32, 2e ff 25 (≤2.6.23).
ABSOLUTE_FORMS = {64: ((0x14, 0x25), (0x24, 0x25)), 32: ((0x15,), (0x25,))}
PREFIXES = {0x2E, 0x3E}  # cs/ds overrides an asm site may carry


@dataclass(frozen=True)
class Move:
    """One operand of a site the slide moves: ``width`` bytes at ``offset`` into the site."""

    offset: int
    width: int
    inverse: bool = False  # the slide is subtracted (an x86-64 per-CPU PC32 operand)


def moves_from_relocations(relocs: Relocations, address: int, length: int) -> list[Move]:
    """The operands inside ``[address, address + length)`` the relocations name."""
    out = []
    lo = bisect.bisect_left(relocs.addresses, address)
    hi = bisect.bisect_left(relocs.addresses, address + length)
    for i in range(lo, hi):
        off, width = relocs.addresses[i] - address, relocs.widths[i]
        if off + width <= length:
            out.append(Move(off, width))
    lo = bisect.bisect_left(relocs.inverse, address)
    hi = bisect.bisect_left(relocs.inverse, address + length)
    out += [Move(relocs.inverse[i] - address, 4, True) for i in range(lo, hi)
            if relocs.inverse[i] - address + 4 <= length]
    return out


def moves_from_forms(insns: list[Insn], address: int, bits: int) -> list[Move]:
    """Without relocations: the absolute operand of each call/jmp of a known site form."""
    out = []
    for insn in insns:
        raw = insn.raw
        k = 0
        while k < len(raw) and raw[k] in PREFIXES:
            k += 1
        if raw[k:k + 1] != b"\xff":
            continue
        for form in ABSOLUTE_FORMS[bits]:
            if raw[k + 1:k + 1 + len(form)] == bytes(form) and \
                    len(raw) == k + 1 + len(form) + 4:
                out.append(Move(insn.address - address + len(raw) - 4, 4))
    return out


def relocate(expected: bytes, before: bytes, moves: list[Move], slide: int) -> bytes:
    """``expected`` with the slide applied to each moved operand it still holds as built."""
    if not slide or not moves:
        return expected
    out = bytearray(expected)
    for m in moves:
        end = m.offset + m.width
        if expected[m.offset:end] != before[m.offset:end]:
            continue  # the plan wrote these bytes at the runtime address: nothing to move
        value = int.from_bytes(before[m.offset:end], "little")
        value = (value - slide if m.inverse else value + slide) % (1 << (8 * m.width))
        out[m.offset:end] = value.to_bytes(m.width, "little")
    return bytes(out)
