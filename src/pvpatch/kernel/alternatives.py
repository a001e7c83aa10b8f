"""``.altinstructions``: the kernel's table of CPU-feature alternatives.

Only the entries that touch paravirt sites matter to pvpatch: from 5.13 the inline-able pv ops
are ``ALTERNATIVE(pv call, native code, ALT_NOT(feature))`` and from 6.8 every pv call is an
entry flagged DIRECT_CALL. The record layout is taken from the image's ``struct alt_instr``
size, else from the section size and a validation of every record.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.types.model import TypeSource

SECTION = ".altinstructions"


@dataclass(frozen=True)
class AltLayout:
    """One era's ``struct alt_instr`` (all fields self-relative s32 offsets, then metadata)."""

    name: str
    versions: str
    size: int
    feature_fmt: str  # struct format of the feature word at offset 8
    len_off: int  # instrlen; replacementlen follows
    not_flag: int  # bit of the feature word meaning "patch if the feature is ABSENT"
    direct_call_flag: int  # bit meaning "the replacement is a call to the slot's function"


ALT_LAYOUTS = (
    # 5.13–6.2: u16 cpuid, ALTINSTR_FLAG_INV = bit 15 (arch/x86/include/asm/alternative.h)
    AltLayout("alt_instr/12", "5.13–6.2", 12, "<H", 10, 0x8000, 0),
    # 6.3+: u32 ft_flags = cpuid | flags << 16; ALT_FLAG_NOT bit 0, ALT_FLAG_DIRECT_CALL bit 1
    AltLayout("alt_instr/14", "6.3+", 14, "<I", 12, 0x1_0000, 0x2_0000),
    # 4.1–5.12: u16 cpuid, instrlen, replacementlen, padlen; no NOT flag
    AltLayout("alt_instr/13", "4.1–5.12", 13, "<H", 10, 0, 0),
)


class AltEntry(NamedTuple):
    """One ``struct alt_instr``, addresses resolved (a tuple: ~10,000 per image are made)."""

    index: int
    instr: int  # address of the original instruction
    replacement: int
    feature: int  # word*32 + bit
    inverted: bool  # ALT_NOT: patch when the feature is absent
    direct_call: bool
    instrlen: int
    replacementlen: int

    def applies(self, has_feature: bool) -> bool:
        """apply_alternatives' test: patch iff present XOR inverted."""
        return has_feature != self.inverted

    def overlaps(self, addr: int, length: int) -> bool:
        return self.instr < addr + length and addr < self.instr + self.instrlen


@dataclass
class AltTable:
    layout: AltLayout | None
    reason: str
    entries: list[AltEntry]


def read_alternatives(image: ElfImage, types: TypeSource | None) -> AltTable:
    sec = image.section(SECTION)
    if sec is None or not sec.size:
        return AltTable(None, f"no {SECTION} section", [])
    raw = image.section_data(sec)
    struct_ = types.struct("alt_instr") if types else None
    if struct_ is not None:
        layouts = [lay for lay in ALT_LAYOUTS if lay.size == struct_.size]
        if not layouts:
            raise InputError(f"{types.origin.upper()} says struct alt_instr is {struct_.size} "
                             f"bytes; no known {SECTION} layout has that size", image.path)
        layout, reason = layouts[0], f"struct alt_instr from {types.origin} ({struct_.size} bytes)"
    else:
        layout, reason = _by_validation(image, sec.addr, raw)
    if len(raw) % layout.size:
        raise InputError(f"{SECTION} is {len(raw)} bytes, not a multiple of the "
                         f"{layout.size}-byte {layout.name} record", image.path)
    return AltTable(layout, reason, _entries(sec.addr, raw, layout))


def _entries(base: int, raw: memoryview, layout: AltLayout) -> list[AltEntry]:
    """Every record, unpacked in one pass of a struct made for the layout."""
    feature_size = struct.calcsize(layout.feature_fmt)
    record = struct.Struct(f"<ii{layout.feature_fmt[1:]}{'x' * (layout.len_off - 8 - feature_size)}"
                           f"BB{'x' * (layout.size - layout.len_off - 2)}")
    assert record.size == layout.size, layout
    keep, inverted, direct = ~layout.not_flag & 0xFFFF, layout.not_flag, layout.direct_call_flag
    size = layout.size
    return [AltEntry(i, at + instr_off, at + 4 + repl_off, word & keep, bool(word & inverted),
                     bool(word & direct), instrlen, repllen)
            for i, (instr_off, repl_off, word, instrlen, repllen)
            in enumerate(record.iter_unpack(raw[:len(raw) - len(raw) % size]))
            for at in [base + i * size]]


def _by_validation(image: ElfImage, base: int, raw: memoryview) -> tuple[AltLayout, str]:
    """Without types: keep the layout whose every record points at code of its length."""
    for layout in ALT_LAYOUTS:
        if len(raw) % layout.size:
            continue
        if all(_plausible(image, e) for e in _entries(base, raw, layout)):
            return layout, "no type information: every record validated"
    raise InputError(f"{SECTION}: {len(raw)} bytes fit no known alt_instr layout "
                     f"({', '.join(str(lay.size) for lay in ALT_LAYOUTS)} bytes)", image.path)


def _plausible(image: ElfImage, e: AltEntry) -> bool:
    sec = image.section_at(e.instr, max(e.instrlen, 1))
    if sec is None or not sec.is_exec:
        return False
    return e.replacementlen == 0 or image.section_at(e.replacement, e.replacementlen) is not None
