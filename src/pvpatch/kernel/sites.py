"""Paravirt call sites from ``.parainstructions``: read, detect the layout, validate.

Read → validate, in the manner of BOLT's ``readParaInstructions``: the record layout comes from
the image's type for ``struct paravirt_patch_site`` when it has one, otherwise each candidate
layout is tried and kept only if every record points at code of exactly ``len`` bytes that holds
an indirect call or jump — or, when none validates so, if most records point at what boot
patching leaves there (an already-patched image, :mod:`pvpatch.kernel.boot_patched`). Each site
is then cross-checked against the slot its call addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from pvpatch.disasm import Insn, decode, text_of
from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage, Section
from pvpatch.image.symbols import SymbolTable
from pvpatch.kernel.alternatives import AltTable
from pvpatch.kernel.boot_patched import BAD, INDIRECT, PATCHED, PatchedLook, looks_patched
from pvpatch.kernel.clobbers import ClobberBits
from pvpatch.kernel.era import G1_TYPES
from pvpatch.kernel.pvops import PvOps, Slot
from pvpatch.kernel.records import KNOWN_STRIDES, RecordLayout, layouts_for
from pvpatch.kernel.version import KernelVersion
from pvpatch.types.model import TypeSource

SECTION = ".parainstructions"
MAX_SITE_LEN = 32  # the kernel's MAX_PATCH_LEN is 32 (alternative.c); longer is corrupt


@dataclass(slots=True)
class Site:
    index: int
    address: int
    type: int
    length: int
    clobbers: int | None
    section: str | None = None
    symbols: SymbolTable | None = field(default=None, repr=False, compare=False)
    insns: list[Insn] = field(default_factory=list)
    call_target: int | None = None  # address of the slot the call/jmp reads
    slot: Slot | None = None  # slot named by the type byte
    native_target: int | None = None  # initial value of that slot
    native_name: str | None = None
    problems: list[str] = field(default_factory=list)
    kind: str | None = None  # 2.6.20–21: the op the enum type byte names
    code: bytes | None = field(default=None, repr=False)  # the bytes, as the file has them
    form: str = ""  # boot_patched: INDIRECT (as built), PATCHED (as boot patching leaves), BAD
    # problems that hold only if the image is not patched (a patched-form site's missing call)
    deferred: list[str] = field(default_factory=list, repr=False)
    _function: str | None = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        return text_of(self.insns)

    @property
    def function(self) -> str:
        """``function+0xoff`` of the site, looked up on first use (it needs the sorted
        symbol table, which a summary never does)."""
        if self._function is None:
            self._function = self.symbols.describe(self.address) if self.symbols else \
                f"{self.address:#x}"
        return self._function

    @property
    def op(self) -> str:
        if self.kind is not None:
            return self.kind
        return self.slot.name if self.slot else f"type {self.type}"


@dataclass
class SiteTable:
    layout: RecordLayout | None
    layout_reason: str
    sites: list[Site]
    section: Section | None
    origin: str = SECTION  # where the sites are recorded
    patched: PatchedLook | None = None  # most sites already hold what boot patching leaves


class Record(NamedTuple):
    """One ``.parainstructions`` record as stored (a tuple: a kernel has thousands)."""

    index: int
    address: int
    type: int
    length: int
    clobbers: int | None


@dataclass
class RecordSet:
    """The ``.parainstructions`` records as stored, before any slot is looked up."""

    layout: RecordLayout
    layout_reason: str
    records: list[Record]
    section: Section

    @property
    def highest_type(self) -> int | None:
        return max((r.type for r in self.records), default=None)


def read_records(image: ElfImage, types: TypeSource | None, layout_name: str | None = None,
                 version: KernelVersion | None = None) -> RecordSet | None:
    """The records and their layout (None: no ``.parainstructions``, e.g. 6.8+)."""
    sec = image.section(SECTION)
    if sec is None or not sec.size:
        return None
    raw = image.section_data(sec)
    layout, reason = choose_layout(image, raw, types, layout_name, version)
    return RecordSet(layout, reason, _records(raw, layout), sec)


def read_sites(image: ElfImage, records: RecordSet | None, pvops: PvOps,
               clobber_bits: ClobberBits, alternatives: AltTable | None = None,
               enum_types: bool = False) -> SiteTable:
    """All sites of the image, decoded and cross-checked.

    Up to 6.7 they are the ``.parainstructions`` records; from 6.8 that table is gone and
    every pv call is an ``.altinstructions`` entry flagged ALT_FLAG_DIRECT_CALL. With
    ``enum_types`` (2.6.20–21) the type byte names an op, not a slot: the call says the slot.
    """
    if records is None:
        if alternatives is not None and any(e.direct_call for e in alternatives.entries):
            return _direct_call_sites(image, pvops, alternatives)
        return SiteTable(None, f"no {SECTION} section and no ALT_FLAG_DIRECT_CALL "
                         "alternatives (built without CONFIG_PARAVIRT?)", [],
                         image.section(SECTION))
    sites = [_decode_site(image, Site(r.index, r.address, r.type, r.length, r.clobbers), pvops,
                          enum_types=enum_types) for r in records.records]
    for s in sites:
        if s.clobbers is not None:
            s.problems.extend(_check_clobber_bits(s.clobbers, clobber_bits))
    return SiteTable(records.layout, records.layout_reason, sites, records.section,
                     patched=_settle(sites))


def _settle(sites: list[Site]) -> PatchedLook | None:
    """Decide, from all sites at once, whether their patched forms are defects (a pristine
    image: each site keeps its problem) or the image's state (patched: said once)."""
    look = looks_patched([s.form for s in sites])
    if look is None:
        for s in sites:
            if s.deferred:
                s.problems[:0] = s.deferred
                s.deferred = []
    return look


def _direct_call_sites(image: ElfImage, pvops: PvOps, alts: AltTable) -> SiteTable:
    """6.8+: a site per DIRECT_CALL entry; its slot is read from the call's displacement."""
    sites = []
    for e in alts.entries:
        if not e.direct_call:
            continue
        site = Site(len(sites), e.instr, -1, e.instrlen, None)
        site = _decode_site(image, site, pvops, by_call=True)
        sites.append(site)
    reason = (f"no {SECTION} (6.8+): {len(sites)} .altinstructions entries flagged "
              f"ALT_FLAG_DIRECT_CALL; {alts.reason}")
    return SiteTable(None, reason, sites, image.section(".altinstructions"),
                     ".altinstructions (ALT_FLAG_DIRECT_CALL)", patched=_settle(sites))


def _records(raw: memoryview, layout: RecordLayout) -> list[Record]:
    """Every record, unpacked in C (``struct.iter_unpack`` over whole strides); a last record
    shorter than the stride (no padding after it before 6.1) is read on its own."""
    ptr = "Q" if layout.ptr_size == 8 else "I"
    clob = layout.clobbers_off
    fmt = f"<{ptr}{layout.type_off - layout.ptr_size}xBB" + (f"{clob - layout.len_off - 1}xH"
                                                          if clob is not None else "")
    used = struct.calcsize(fmt)
    whole = len(raw) // layout.stride
    rows = struct.iter_unpack(f"{fmt}{layout.stride - used}x", raw[:whole * layout.stride])
    out = [Record(i, *row) if clob is not None else Record(i, *row, None)
           for i, row in enumerate(rows)]
    tail = len(raw) - whole * layout.stride
    if tail >= layout.min_record:
        row = struct.unpack_from(fmt, bytes(raw[whole * layout.stride:]) + bytes(used), 0)
        out.append(Record(whole, *row) if clob is not None else Record(whole, *row, None))
    return out


# -- layout detection -------------------------------------------------------------------------

def _fits(size: int, layout: RecordLayout) -> bool:
    rem = size % layout.stride
    return rem == 0 or rem >= layout.min_record


def choose_layout(image: ElfImage, raw: memoryview, types: TypeSource | None,
                  forced: str | None = None, version: KernelVersion | None = None
                  ) -> tuple[RecordLayout, str]:
    candidates = layouts_for(image.bits)
    size = len(raw)
    if forced:
        chosen = [c for c in candidates if c.name == forced]
        if not chosen:
            names = ", ".join(c.name for c in candidates)
            raise InputError(f"layout {forced!r} does not exist for ELF{image.bits} "
                             f"(choose from {names})", image.path)
        return chosen[0], "forced on the command line"
    fitting = [c for c in candidates if _fits(size, c)]
    if not fitting:
        strides = ", ".join(str(s) for s in KNOWN_STRIDES)
        raise InputError(f"{SECTION} is {size} bytes, not a multiple of any known record size "
                         f"({strides})", image.path)
    struct = types.struct("paravirt_patch_site") if types else None
    if struct is not None:
        return _from_type(image, raw, struct, fitting, types.origin)
    return _by_validation(image, raw, fitting, version)


def _from_type(image: ElfImage, raw: memoryview, struct, fitting: list[RecordLayout],
               origin: str) -> tuple[RecordLayout, str]:
    def member(*names: str) -> int | None:
        for n in names:
            f = struct.field(n)
            if f is not None:
                return f.offset
        return None

    offsets = (member("instr"), member("type", "instrtype"), member("len"))
    clob = member("clobbers")
    matches = [c for c in fitting if c.stride == struct.size and
               (0, c.type_off, c.len_off) == offsets and
               ((clob is not None) == c.clobbers_used) and
               (clob is None or clob == c.clobbers_off)]
    if not matches:
        raise InputError(f"{origin.upper()} says struct paravirt_patch_site is {struct.size} bytes "
                         f"with instr/type/len at {offsets}, which matches no known "
                         f"{SECTION} layout for a {len(raw)}-byte section", image.path)
    why = f"struct paravirt_patch_site from {origin} ({struct.size} bytes)"
    if len(matches) == 1:
        return matches[0], why
    stale = [m for m in matches if m.clobbers_off is not None]
    bare = [m for m in matches if m.clobbers_off is None]
    if stale and bare:
        written = _clobber_words_written(raw, stale[0])
        chosen = stale[0] if written else bare[0]
        return chosen, why + (", clobber words still written by the compiled sites" if written
                              else ", no clobber words in the records")
    return matches[0], why


def _clobber_words_written(raw: memoryview, layout: RecordLayout) -> bool:
    off = layout.clobbers_off
    assert off is not None
    return any(raw[i + off] or raw[i + off + 1]
               for i in range(0, len(raw) - layout.min_record + 1, layout.stride))


def _by_validation(image: ElfImage, raw: memoryview, fitting: list[RecordLayout],
                   version: KernelVersion | None = None) -> tuple[RecordLayout, str]:
    """Without types: the first layout whose records all point at pv call code; then the
    variant of that record size (they differ only in the clobber word) that the bytes allow
    and the kernel version names."""
    failures = []
    for cand in fitting:
        bad = _first_invalid(image, _records(raw, cand))
        if bad is None:
            same = [c for c in fitting if c.stride == cand.stride]
            return _variant(image, raw, same, version)
        failures.append(f"{cand.name}: {bad}")
    for cand in fitting:  # none as built: is it an image boot patching already rewrote?
        forms = [_code_shape(image, r.address, r.length)[0] for r in _records(raw, cand)]
        if BAD not in forms and looks_patched(forms):
            same = [c for c in fitting if c.stride == cand.stride]
            return _variant(image, raw, same, version, "no type information: every record "
                            "points at what boot patching leaves (already patched)")
    raise InputError(f"{SECTION}: no record layout validates ({'; '.join(failures)})",
                     image.path)


def _variant(image: ElfImage, raw: memoryview, same: list[RecordLayout],
             version: KernelVersion | None,
             why: str = "no type information: every record validated against the code"
             ) -> tuple[RecordLayout, str]:
    """Bytes first: all-zero clobber words mean there are none (6.2+). Then the version: the
    kernel reads the words up to 4.19 and ignores them 4.20–6.1, which no byte shows. With
    no version, a pv_ops symbol (4.20+) says they are stale."""
    worded = [c for c in same if c.clobbers_off is not None]
    written = bool(worded) and _clobber_words_written(raw, worded[0])
    allowed = [c for c in same if (c.clobbers_off is not None) == written] or same
    key = version.key if version is not None else None
    if key is not None:
        named = [c for c in allowed if c.holds(key)]
        if named:
            return named[0], f"{why}; kernel {version.short} names the variant"
        said = next((c.name for c in same if c.holds(key)), None)
        if said is not None:
            why += (f"; kernel {version.short} would mean {said}, but the clobber words are "
                    + ("written" if written else "all zero"))
        stale = key >= (4, 20, 0)
    else:
        stale = image.symbols.get("pv_ops") is not None
    pick = [c for c in allowed if c.clobbers_off is None or c.clobbers_used != stale] or allowed
    return pick[0], why


def _first_invalid(image: ElfImage, records: list[Record]) -> str | None:
    """The first record that is not a pv call site as built."""
    for r in records:
        problem = _code_shape(image, r.address, r.length)[1]
        if problem:
            return f"record {r.index}: {problem}"
    return None


def _code_shape(image: ElfImage, addr: int, length: int, insns: list[Insn] | None = None,
                sec: Section | None = None) -> tuple[str, str | None]:
    """The site's form (boot_patched: INDIRECT, PATCHED, BAD) and why it is not a pv call
    site of ``length`` bytes as built (None: it is)."""
    if not 0 < length <= MAX_SITE_LEN:
        return BAD, f"length {length} is outside 1..{MAX_SITE_LEN}"
    sec = sec or image.section_at(addr, length)
    if sec is None or not sec.is_exec:
        return BAD, f"{addr:#x} is not in an executable section"
    if insns is None:
        code = image.try_read(addr, length)
        if code is None:
            return BAD, f"{addr:#x} has no bytes in the file"
        insns = decode(code, addr, image.bits)
    if sum(i.size for i in insns) != length:
        return BAD, f"the {length} bytes at {addr:#x} do not decode to whole instructions"
    if not any(i.is_indirect_branch for i in insns):
        return PATCHED, f"no indirect call or jump in the {length} bytes at {addr:#x}"
    return INDIRECT, None


# -- per-site decoding ------------------------------------------------------------------------

def _decode_site(image: ElfImage, site: Site, pvops: PvOps, by_call: bool = False,
                 enum_types: bool = False) -> Site:
    sec = image.section_at(site.address, max(site.length, 1))
    site.section = sec.name if sec else None
    site.symbols = image.symbols
    code = image.try_read(site.address, site.length) if 0 < site.length <= MAX_SITE_LEN else None
    site.code = code
    if code:
        site.insns = insns = decode(code, site.address, image.bits)
        one = insns[0] if len(insns) == 1 else None
        if one is not None and one.is_indirect_branch and one.size == site.length and \
                sec is not None and sec.is_exec:  # nearly every site: the call as built
            site.call_target, site.form, problem = one.mem_target, INDIRECT, None
        else:
            site.call_target = next((i.mem_target for i in insns if i.is_indirect_branch),
                                    None)
            site.form, problem = _code_shape(image, site.address, site.length, insns, sec)
    else:
        site.form, problem = _code_shape(image, site.address, site.length, None, sec)
    if problem:  # a patched form is a problem only if the image turns out not to be patched
        (site.deferred if site.form == PATCHED else site.problems).append(problem)
    if by_call:  # no type byte: the slot is what the call reads
        via = pvops.slot_by_address(site.call_target) if site.call_target is not None else None
        site.type = via.index if via else -1
    if enum_types:
        return _decode_enum_site(site, pvops)
    site.slot = pvops.slot(site.type)
    if site.slot is None:
        unread = by_call and site.form == PATCHED  # 6.8+: the slot went with the call
        (site.deferred if unread else site.problems).append(
            f"type {site.type} names no slot of {pvops.described}")
    else:
        _cross_check(site, pvops)
        site.native_target, site.native_name = pvops.initial_target(site.slot)
    return site


def _decode_enum_site(site: Site, pvops: PvOps) -> Site:
    """2.6.20–21: the type is PARAVIRT_IRQ_DISABLE … (G1_TYPES); the first call names the slot."""
    site.kind = G1_TYPES.get(site.type)
    if site.kind is None:
        site.problems.append(f"type {site.type} is not one of the 2.6.20–21 patch types")
    site.slot = pvops.slot_by_address(site.call_target) if site.call_target is not None else None
    if site.slot is not None:
        site.native_target, site.native_name = pvops.initial_target(site.slot)
    return site


def _cross_check(site: Site, pvops: PvOps) -> None:
    """The slot the type byte names must be the slot the instruction reads."""
    if site.call_target is None or site.slot is None or site.slot.address is None:
        return
    if site.call_target != site.slot.address:
        via = pvops.slot_by_address(site.call_target)
        got = via.name if via else f"{site.call_target:#x}"
        site.problems.append(f"type {site.type} names {site.slot.name} but the call reads {got}")


def _check_clobber_bits(mask: int, bits: ClobberBits) -> list[str]:
    extra = mask & ~bits.any
    return [f"clobber mask {mask:#x} has bits {extra:#x} no register is assigned to"] if extra \
        else []


def give_slot(site: Site, index: int, pvops: PvOps) -> None:
    """A patched 6.8+ site's slot, recovered from what its bytes now call (its indirect
    call, which named the slot, is gone): see ``pvpatch.patch.recognise``."""
    site.type, site.slot = index, pvops.slot(index)
    if site.slot is not None:
        site.native_target, site.native_name = pvops.initial_target(site.slot)


def site_bytes(image: ElfImage, site: Site) -> bytes:
    """The site's bytes as the file has them: the ones it was decoded from, else read now
    (an InputError where the file has none)."""
    return site.code if site.code is not None else image.read(site.address, site.length)


def describe_targets(image: ElfImage, values: list[int | None]) -> list[str | None]:
    """``describe_target`` for many values, naming exact hits in one symbol-table pass."""
    exact = image.symbols.names_at({v for v in values if v})
    return [exact[v] if v in exact else describe_target(image, v) for v in values]


def describe_target(image: ElfImage, value: int | None) -> str | None:
    """Name a slot value: ``NULL``, a symbol, or ``func+0xoff`` / hex when not at a symbol."""
    if value is None:
        return None
    if value == 0:
        return "NULL"
    name = image.symbols.name_at(value)
    return name if name else image.symbols.describe(value)
