"""Recover the symbols of a stripped kernel from its own kallsyms tables.

scripts/kallsyms writes, into ``.rodata``, every symbol's address and its name compressed with
a 256-entry token table. A vmlinux taken out of a bzImage has no ``.symtab`` (and so no
``kallsyms_*`` symbols pointing at the tables), so the tables are found by their structure:

1. **token table and index**: 256 NUL-terminated strings followed (aligned) by 256 u16
   offsets into them, the first 0, each the previous plus that token's length + 1. Single
   characters that occur in symbol names keep their own byte value as token, so the digits
   sit at indexes 0x30–0x39: the string ``"0\\0" … "9\\0"`` is searched for, and the index
   found after it must describe exactly the strings around it.
2. **names and markers**: ``kallsyms_names`` holds per symbol a length (one byte; from 6.1
   one or two, ULEB128, for lengths ≥ 0x80) and that many token numbers, the first token's
   first character being the type letter (``T``, ``t``, ``D``…). ``kallsyms_markers`` gives the
   names offset of every 256th symbol; ``kallsyms_num_syms`` is the word just before the
   names. The markers end right before the token table, or, where ``kallsyms_seqs_of_names``
   (3 bytes per symbol) sits between them, 3 × num_syms bytes earlier; a candidate is
   accepted only if walking num_syms names from its start reproduces every marker.
3. **addresses**: one of the forms in ``ADDRESS_FORMS``: ``kallsyms_offsets`` +
   ``kallsyms_relative_base`` (KALLSYMS_BASE_RELATIVE, 4.6–6.x; with KALLSYMS_ABSOLUTE_PERCPU
   a non-negative offset is an absolute per-cpu address, a negative one counts down from
   relative_base - 1), ``kallsyms_addresses`` (absolute pointers, before 4.6 and where
   base-relative is off), or, from 7.0, ``kallsyms_offsets`` alone holding place-relative
   offsets (each entry's own address plus its signed value is the symbol's). They sit before
   num_syms, or after the token index; the candidate whose addresses come out sorted (scripts/
   kallsyms sorts by address) and pass the form's own check wins.

Every label is aligned to ALGN (8 bytes on 64-bit, 4 on 32-bit) up to 6.x and to 4 bytes on
every word size from 7.0 (``LABEL_ALIGNS``): on 64-bit the names' alignment tells the two apart.

Supported table orders (``Kallsyms.layout``):

=================  =========================================================================
``legacy``         addresses|offsets(+relative_base), num_syms, names, markers, token_table,
                   token_index — 2.6.10 – 6.1 (one-byte name lengths before 6.1)
``seqs``           as legacy with kallsyms_seqs_of_names between markers and token_table —
                   6.2 – 6.3 upstream, and 6.1.y stable kernels (Debian 12's 6.1)
``names-first``    num_syms, names, markers, token_table, token_index, offsets,
                   relative_base, seqs_of_names — 6.4 to 6.x (Debian's 6.12); from 7.0
                   without relative_base, the offsets place-relative and every label
                   4-aligned (Debian 13's 7.3)
=================  =========================================================================

Before 6.1 markers of 64-bit kernels may be 8 bytes wide; both widths are tried. Big-endian
and 2.6.9-and-older (stem compression) tables are not supported.
"""

from __future__ import annotations

import itertools
import struct
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, pairwise, repeat
from operator import add, itemgetter, lt, sub
from typing import NamedTuple

from pvpatch.image.elf import ElfImage, Section

DIGITS = b"".join(bytes([c]) + b"\0" for c in b"0123456789")
MAX_TOKEN_TABLE = 16384
MAX_RECORD = 0x3FFF + 2
TYPICAL_RECORD = 256  # bytes a name record takes at most, in practice, while searching
PROBE = 1024  # addresses checked for order before a whole candidate table is read
DECODE_NAMES = 512  # names expanded per step (see _decode)
ALGN = 0  # stands for the word-size alignment (8 on 64-bit, 4 on 32-bit) in the tables below

# How scripts/kallsyms aligns every label (kallsyms_num_syms, _names, _markers, …), tried in
# this order when looking for the names:
#   ALGN  2.6.10 – 6.x: `ALGN`, .balign 8 on 64-bit and 4 on 32-bit (5.10's output_label();
#         Debian's 6.12 still has a 4-byte gap between num_syms and the 8-aligned names)
#   4     7.0+: `.balign 4` on every word size (7.3's output_label())
LABEL_ALIGNS = (ALGN, 4)


class AddressForm(NamedTuple):
    """One way scripts/kallsyms has stored the symbols' addresses, and where."""

    addressing: str  # "absolute", "base-relative" or "pc-relative" (see _read)
    after_index: bool  # right after kallsyms_token_index; else right before kallsyms_num_syms
    align: int  # of the labels around it: ALGN or 4 (LABEL_ALIGNS)
    bits: tuple[int, ...]  # word sizes it occurs on
    kernels: str
    read_in: str


# In the order tried. On 64-bit the names' alignment leaves either the ALGN forms or the 4-byte
# ones; on 32-bit ALGN is 4 and the forms after the token index share one place, so the
# order and each form's check decide: base-relative first (its base must be its first
# symbol), place-relative next (its addresses must lie in the image, which neither a
# base-relative nor an absolute table read this way does), absolute (only sorted) last.
ADDRESS_FORMS = (
    AddressForm("base-relative", False, ALGN, (32, 64), "4.6 – 6.3",
                "5.10 scripts/kallsyms.c write_src(): offsets, relative_base, num_syms"),
    AddressForm("absolute", False, ALGN, (32, 64), "2.6.10 – 4.5; 4.6 – 6.3 without "
                "KALLSYMS_BASE_RELATIVE", "5.10 write_src(): kallsyms_addresses, PTR each"),
    AddressForm("base-relative", True, ALGN, (32, 64), "6.4 – 6.x",
                "Debian 6.12's tables: token_index, offsets, relative_base, seqs_of_names"),
    AddressForm("pc-relative", True, 4, (32, 64), "7.0+ (vmlinux-to-elf issue #96: 7.0, "
                "commit a081b5789255)", "7.3 scripts/kallsyms.c write_src() with --pc-relative: "
                "each entry the distance from itself to the symbol; kernel/kallsyms.c "
                "kallsyms_sym_address() adds it to the entry's address"),
    AddressForm("absolute", True, ALGN, (32, 64), "6.4 – 6.x without KALLSYMS_BASE_RELATIVE",
                "as the 6.4 base-relative form, with kallsyms_addresses"),
    AddressForm("absolute", True, 4, (32,), "7.0+, 32-bit without RELOCATABLE",
                "7.3 kallsyms_sym_address(): the u32 value itself"),
)


@dataclass(frozen=True)
class Kallsyms:
    """The located tables (addresses are virtual) and the recovered symbols."""

    layout: str
    num_syms: int
    names: int
    markers: int
    marker_width: int
    token_table: int
    token_index: int
    addresses: int  # kallsyms_offsets or kallsyms_addresses
    relative_base: int | None  # None: absolute or place-relative addresses
    absolute_percpu: bool
    addressing: str  # AddressForm.addressing: absolute, base-relative or pc-relative
    label_align: int  # the tables' label alignment in bytes (LABEL_ALIGNS)
    # the symbols in table order (by address), as columns: strtab holds "\0Tname\0tname…"
    strtab: bytes
    name_offsets: list[int]  # of each name in strtab, past its type letter
    addrs: list[int]
    types: bytes  # nm type letters

    @property
    def symbols(self) -> list[tuple[str, int, str]]:
        """(name, address, type letter) for every symbol (slow: for tests and tools)."""
        out = []
        for off, addr, kind in zip(self.name_offsets, self.addrs, self.types, strict=True):
            end = self.strtab.index(b"\0", off)
            out.append((self.strtab[off:end].decode("latin-1"), addr, chr(kind)))
        return out

    def describe(self) -> str:
        how = {"absolute": "absolute addresses", "pc-relative": "place-relative offsets",
               "base-relative": "base-relative offsets"}[self.addressing]
        how += ", absolute per-cpu" if self.absolute_percpu else ""
        return (f"{self.num_syms} symbols, {self.layout} layout, {how}, names at "
                f"{self.names:#x}")


class _Tokens(NamedTuple):
    """A located kallsyms_token_table and kallsyms_token_index (section offsets)."""

    table: int
    index: int
    tokens: list[bytes]  # the 256 expansions


class _Region:
    """A section's bytes with little-endian readers by section offset."""

    def __init__(self, image: ElfImage, sec: Section, span: tuple[int, int]) -> None:
        self.data = bytes(image.section_data(sec))
        self.addr = sec.addr
        self.size = len(self.data)
        self.ptr = image.ptr_size
        self.bits = image.bits
        self.mask = (1 << image.bits) - 1
        self.align = 8 if image.bits == 64 else 4  # ALGN
        self.label_aligns = tuple(dict.fromkeys(map(self.alignment, LABEL_ALIGNS)))
        self.span = span  # the lowest and highest address of the image's allocated sections

    def u16(self, off: int) -> int:
        return struct.unpack_from("<H", self.data, off)[0]

    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.data, off)[0]

    def word(self, off: int, width: int) -> int:
        return int.from_bytes(self.data[off:off + width], "little")

    def alignment(self, align: int) -> int:
        """Bytes of a LABEL_ALIGNS entry on this word size."""
        return align or self.align

    def up(self, off: int, align: int = ALGN) -> int:
        """``off`` rounded up to ``align`` (by default ALGN: 8 on 64-bit, 4 on 32-bit)."""
        a = self.alignment(align)
        return off + (-(self.addr + off) % a)


def find_kallsyms(image: ElfImage) -> Kallsyms | None:
    """The kallsyms tables of ``image``, or None when no consistent set is found."""
    secs = [s for s in image.sections if s.name == ".rodata" and s.has_file_data]
    secs += [s for s in image.sections if s not in secs and s.is_alloc and s.has_file_data
             and not s.is_exec and s.size > 4096]
    span = _span(image)
    for sec in secs:
        region = _Region(image, sec, span)
        for tt in _token_tables(region):
            found = _names(region, tt)
            if found is not None:
                return found
    return None


def _span(image: ElfImage) -> tuple[int, int]:
    """From the lowest allocated address to the end of the highest allocated section."""
    secs = [s for s in image.sections if s.is_alloc and s.size and s.addr]
    if not secs:
        return (0, -1)
    return min(s.addr for s in secs), max(s.addr + s.size for s in secs)


# -- 1. token table --------------------------------------------------------------------------

def _token_tables(r: _Region) -> list[_Tokens]:
    out = []
    pos = r.data.find(DIGITS)
    while pos >= 0:
        hit = _token_index_after(r, pos)
        if hit is not None:
            out.append(hit)
        pos = r.data.find(DIGITS, pos + 1)
    return out


def _token_index_after(r: _Region, digits: int) -> _Tokens | None:
    """The token table and index whose token 0x30 is the "0" at ``digits``."""
    data = r.data
    stop = min(r.size - 512, digits + MAX_TOKEN_TABLE)
    q = digits + len(DIGITS)
    q += q & 1
    while q <= stop:
        if data[q] | data[q + 1] or not 1 < r.u16(q + 2) < 256:
            q += 2
            continue
        idx = struct.unpack_from("<256H", data, q)
        table = digits - idx[0x30]
        if table >= 0 and _valid_index(data, table, idx, q):
            tokens = data[table:table + idx[255]].split(b"\0")[:255]
            last = data[table + idx[255]:data.index(b"\0", table + idx[255])]
            return _Tokens(table, q, [*tokens, last])
        q += 2
    return None


def _valid_index(data: bytes, table: int, idx: Sequence[int], q: int) -> bool:
    if idx[0] != 0 or any(b <= a for a, b in pairwise(idx)):
        return False
    if any(data[table + i - 1] != 0 for i in idx[1:]):  # each token NUL-terminated
        return False
    end = data.find(b"\0", table + idx[255])
    return 0 <= end < q and q - (end + 1) < 16 and data[table] != 0


# -- 2. names, markers, num_syms ---------------------------------------------------------------

def _names(r: _Region, tt: _Tokens) -> Kallsyms | None:
    widths = (4,) if r.ptr == 4 else (4, 8)
    for width in widths:  # markers right before the token table
        markers = _markers_ending_at(r, tt.table, width)
        if markers is not None:
            found = _with_markers(r, markers[0], markers[1], width, tt)
            if found is not None:
                return found
    return _with_seqs(r, tt)


def _markers_ending_at(r: _Region, end: int, width: int) -> tuple[int, list[int]] | None:
    """The strictly increasing words from a 0 up to ``end`` (past alignment padding)."""
    pos = end
    while pos - width >= 0 and end - pos < r.align and r.word(pos - width, width) == 0 \
            and pos - 2 * width >= 0 and r.word(pos - 2 * width, width) != 0:
        pos -= width
    values: list[int] = []
    while pos - width >= 0:
        v = r.word(pos - width, width)
        if values and v >= values[-1]:
            return None
        values.append(v)
        pos -= width
        if v == 0:
            return pos, values[::-1]
    return None


def _with_markers(r: _Region, start: int, markers: list[int], width: int,
                  tt: _Tokens) -> Kallsyms | None:
    """Find num_syms and the names that end at the markers at ``start``, with the labels at
    each alignment of LABEL_ALIGNS in turn."""
    for align in r.label_aligns:
        found = _names_aligned(r, align, start, markers, width, tt)
        if found is not None:
            return found
    return None


def _names_aligned(r: _Region, align: int, start: int, markers: list[int], width: int,
                   tt: _Tokens) -> Kallsyms | None:
    """:func:`_with_markers` for labels aligned to ``align`` bytes.

    The names start ``markers[-1]`` bytes before the last 256-symbol block, which holds 1–256
    records of at least 2 bytes; num_syms is the 4-byte word one alignment before the names
    (ALGN 8 leaves 4 bytes of padding after it).
    """
    count = len(markers)
    lo_n, hi_n = 256 * (count - 1) + 1, 256 * count
    s = start - markers[-1] - 2
    s -= (r.addr + s) % align
    floor = max(align, start - markers[-1] - TYPICAL_RECORD * 256)
    while s >= floor:
        n = r.u32(s - align)
        if lo_n <= n <= hi_n:
            found = _try_names(r, "legacy", n, s, start, markers, width, tt, align)
            if found is not None:
                return found
        s -= align
    return None


def _try_names(r: _Region, layout: str, n: int, s: int, start: int, markers: list[int],
               width: int, tt: _Tokens, align: int) -> Kallsyms | None:
    """The tables if ``n`` names from ``s`` reproduce ``markers`` and end where the markers'
    label (aligned to ``align``) starts."""
    walk = _walk(r.data, s, n, start, markers)
    if walk is None or walk.markers != markers or not start - align < walk.end <= start:
        return None
    return _finish(r, layout, n, s - align, s, start, width, tt, walk, align)


class _Records(NamedTuple):
    """Where a walk over the name records went."""

    end: int  # past the last record
    markers: list[int]  # the offset of every 256th record, as kallsyms_markers holds them
    starts: list[int]  # of every record
    big: list[int]  # starts of the records whose length takes two bytes (6.1+, rare)


def _walk(data: bytes, s: int, n: int, limit: int, markers: list[int]) -> _Records | None:
    """Walk ``n`` name records from ``s``; None if they overrun ``limit`` or a 256-record
    block does not start where ``markers`` says.

    The markers are checked as the walk reaches them, so a wrong start gives up after a block
    instead of a whole table's walk (on 64-bit 7.0+, names 4 bytes past an 8-aligned word
    would otherwise be walked in full by the ALGN pass first).
    """
    if n <= 0 or len(markers) != (n + 255) // 256:
        return None
    starts: list[int] = []
    big: list[int] = []
    append = starts.append
    pos = s
    try:
        for block in range(0, n, 256):
            if pos - s != markers[block >> 8]:
                return None
            for _ in range(min(256, n - block)):
                append(pos)
                length = data[pos]
                if length & 0x80:
                    big.append(pos)
                    length = (length & 0x7F) | (data[pos + 1] << 7)
                    pos += 1
                if not length or pos >= limit:
                    return None
                pos += 1 + length
    except IndexError:
        return None
    if pos > limit:
        return None
    return _Records(pos, [x - s for x in starts[::256]], starts, big)


def _with_seqs(r: _Region, tt: _Tokens) -> Kallsyms | None:
    """Markers, then kallsyms_seqs_of_names (3 bytes per symbol), then the token table.

    Walks the aligned words down from the token table; where one is 0 it may be markers[0]:
    then the markers count ``c`` and num_syms ``n`` must satisfy the sizes of both arrays
    (4c bytes of markers, 3n of seqs, each padded to the alignment), which leaves at most a
    few candidates to check.
    """
    a, table = r.align, tt.table
    first = (-r.addr) % a  # the first aligned offset
    top = table - (table - first) % 4
    words = memoryview(r.data)[first:top].cast("I")
    step = a // 4
    for i in range(len(words) - step, -1, -step):
        if words[i]:
            continue
        start = first + 4 * i
        approx = (table - start) // (3 * 256 + 4)
        for count in range(max(1, approx - 1), approx + 3):
            seqs = r.up(start + 4 * count)
            hi = (table - seqs) // 3  # table - a < seqs + 3n <= table
            for n in range(max(256 * (count - 1) + 1, (table - seqs - a) // 3 + 1),
                           min(256 * count, hi) + 1):
                seqs_n = table - 3 * n
                if seqs_n - (r.addr + seqs_n) % a != seqs:
                    continue
                if count > 1 and not 0 < words[i + 1] <= MAX_RECORD * 256:
                    continue
                markers = words[i:i + count].tolist()
                if any(y <= x for x, y in pairwise(markers)):
                    continue
                found = _names_of_count(r, start, markers, n, tt)
                if found is not None:
                    return found
    return None


def _names_of_count(r: _Region, start: int, markers: list[int], n: int,
                    tt: _Tokens) -> Kallsyms | None:
    """Like :func:`_with_markers` when num_syms is known: search for its word."""
    needle = struct.pack("<I", n) + (b"\0" * (r.align - 4))
    hi = start - markers[-1]
    lo = max(0, hi - TYPICAL_RECORD * 256)
    pos = r.data.rfind(needle, lo, hi)
    while pos >= 0:
        if (r.addr + pos) % r.align == 0:
            found = _try_names(r, "seqs", n, pos + r.align, start, markers, 4, tt, r.align)
            if found is not None:
                return found
        pos = r.data.rfind(needle, lo, pos)
    return None


# -- 3. addresses and names ----------------------------------------------------------------

def _finish(r: _Region, layout: str, n: int, n_at: int, names: int, markers: int, width: int,
            tt: _Tokens, records: _Records, align: int) -> Kallsyms | None:
    found = _addresses(r, n, n_at, tt.index, align)
    if found is None:
        return None
    if found.form.after_index and layout == "legacy":
        layout = "names-first"
    decoded = _decode(r.data, records, tt.tokens)
    if decoded is None:
        return None
    strtab, offsets, types = decoded
    return Kallsyms(layout, n, r.addr + names, r.addr + markers, width, r.addr + tt.table,
                    r.addr + tt.index, r.addr + found.where, found.base, found.percpu,
                    found.form.addressing, align, strtab, offsets, found.addrs, types)


class _Addresses(NamedTuple):
    """The address table found, and how it was read."""

    form: AddressForm
    where: int  # section offset of kallsyms_offsets / kallsyms_addresses
    base: int | None  # kallsyms_relative_base
    percpu: bool  # KALLSYMS_ABSOLUTE_PERCPU
    addrs: list[int]


def _addresses(r: _Region, n: int, n_at: int, index: int, align: int) -> _Addresses | None:
    """The first of ADDRESS_FORMS whose labels are aligned like the names (``align``) and
    whose table, where that form puts it, reads as sorted addresses that pass its check."""
    tried = set()
    for form in ADDRESS_FORMS:
        if r.alignment(form.align) != align or r.bits not in form.bits:
            continue
        where, base_at = _table_at(r, form, n, n_at, index)
        if (form.addressing, where) in tried or where < 0:
            continue  # on 32-bit ALGN is 4: a 6.x and a 7.0 form may coincide
        tried.add((form.addressing, where))
        found = _read(r, form, where, base_at, n)
        if found is not None:
            return found
    return None


def _table_at(r: _Region, form: AddressForm, n: int, n_at: int,
              index: int) -> tuple[int, int | None]:
    """(the address table, kallsyms_relative_base or None) where ``form`` puts them."""
    if form.after_index:
        where = r.up(index + 512, form.align)
        relative = form.addressing == "base-relative"
        return where, r.up(where + 4 * n, form.align) if relative else None
    if form.addressing == "base-relative":
        base_at = n_at - r.ptr
        where = base_at - 4 * n
        return where - (r.addr + where) % r.alignment(form.align), base_at
    return n_at - r.ptr * n, None


def _read(r: _Region, form: AddressForm, where: int, base_at: int | None,
          n: int) -> _Addresses | None:
    """The ``n`` addresses of the table at ``where`` read as ``form``, if they pass."""
    if form.addressing == "absolute":
        addrs = _absolute(r, where, n)
        return None if addrs is None else _Addresses(form, where, None, False, addrs)
    if form.addressing == "pc-relative":
        addrs = _pc_relative(r, where, n)
        return None if addrs is None else _Addresses(form, where, None, False, addrs)
    assert base_at is not None
    if base_at + r.ptr > r.size or where + 4 * n > r.size:
        return None
    base = r.word(base_at, r.ptr)
    found = _relative(r.data, where, n, base, r.mask)
    return None if found is None else _Addresses(form, where, base, found[0], found[1])


def _absolute(r: _Region, where: int, n: int) -> list[int] | None:
    """kallsyms_addresses: a pointer per symbol (a u32 on 7.0+ 32-bit non-relocatable)."""
    if where + r.ptr * n > r.size:
        return None
    fmt = "Q" if r.ptr == 8 else "I"
    if not _sorted(list(struct.unpack_from(f"<{min(n, PROBE)}{fmt}", r.data, where))):
        return None  # not sorted from the start: no need to read all n
    addrs = list(struct.unpack_from(f"<{n}{fmt}", r.data, where))
    return addrs if _sorted(addrs) and addrs[-1] else None


def _pc_relative(r: _Region, where: int, n: int) -> list[int] | None:
    """7.0+ kallsyms_offsets: each entry's own address plus its signed value.

    No base word to check here, so the addresses must also all lie in the image's allocated
    sections (7.0+ keeps no absolute symbols): a base-relative or absolute table read this
    way is shifted by the table's own address, out of the image or past its end.
    """
    if where + 4 * n > r.size:
        return None
    place = r.addr + where
    head = struct.unpack_from(f"<{min(n, PROBE)}i", r.data, where)
    if not _sorted(_from_places(head, place)):
        return None
    addrs = _from_places(struct.unpack_from(f"<{n}i", r.data, where), place)
    lo, hi = r.span
    if not _sorted(addrs) or addrs[0] < lo or addrs[-1] > hi:
        return None
    return addrs


def _from_places(raw: Sequence[int], place: int) -> list[int]:
    """``raw[i]`` plus its own address ``place + 4i``, added in C.

    Nothing to wrap: the kernel's image spans less than 2 GiB, so an address and the entry
    naming it are less than 2 GiB apart and the signed 32-bit difference is exact (what falls
    outside the address space fails the image-span check)."""
    return list(map(add, raw, range(place, place + 4 * len(raw), 4)))


def _relative(data: bytes, where: int, n: int, base: int,
              mask: int) -> tuple[bool, list[int]] | None:
    """(absolute per-cpu, addresses) of the ``n`` kallsyms_offsets at ``where``, if they
    come out sorted and the base is a symbol's (:func:`_base_is_first`).

    All offsets non-negative: each is relative to the base. Otherwise KALLSYMS_ABSOLUTE_PERCPU
    (negative ones count down from base - 1), else offsets of 2 GiB and more. Most candidate
    places are not the table: the readings are tried on the first ``PROBE`` offsets before
    the table is read whole, and a prefix out of order means the whole is.
    """
    head = struct.unpack_from(f"<{min(n, PROBE)}i", data, where)
    fits = [(percpu, read) for percpu, read in READINGS if _sorted(read(head, base, mask))]
    if not fits:
        return None
    raw = struct.unpack_from(f"<{n}i", data, where)
    allowed = (_plus_base,) if min(raw) >= 0 else (_percpu, _plus_base_unsigned)
    for percpu, read in fits:
        if read in allowed:
            values = read(raw, base, mask)
            if _sorted(values) and _base_is_first(raw, percpu):
                return percpu, values
    return None


def _base_is_first(raw: Sequence[int], percpu: bool) -> bool:
    """Whether kallsyms_relative_base is where scripts/kallsyms puts it: the address of the
    first symbol that is not absolute (5.10's record_relative_base(); 4.6 – 6.x), whose
    offset is then 0, or -1 with absolute per-cpu. A 7.0 place-relative table whose symbols
    happen to be 4+ bytes apart also reads sorted with any word taken for a base; this
    tells it apart."""
    if not percpu:
        return raw[0] == 0
    first_negative = next(compress(raw, map(lt, raw, repeat(0))), None)
    return first_negative == -1


def _plus_base(raw: Sequence[int], base: int, mask: int) -> list[int]:
    if base + min(raw) >= 0 and base + max(raw) <= mask:  # nothing wraps: add in C
        return list(map(add, repeat(base), raw))
    return [(base + o) & mask for o in raw]


def _percpu(raw: Sequence[int], base: int, mask: int) -> list[int]:
    """Per-cpu symbols sort first (the lowest addresses), so a table that will pass the order
    check is non-negative offsets, then negative ones only: that shape is converted in C."""
    k = next(compress(itertools.count(), map(lt, raw, repeat(0))), len(raw))  # the first negative
    tail = raw[k:]
    if not tail or (max(tail) < 0 and base - 1 - min(tail) <= mask):
        return [*raw[:k], *map(sub, repeat(base - 1), tail)]
    return [o if o >= 0 else (base - 1 - o) & mask for o in raw]


def _plus_base_unsigned(raw: Sequence[int], base: int, mask: int) -> list[int]:
    return [(base + (o & 0xFFFFFFFF)) & mask for o in raw]


# (absolute per-cpu, reader) in the order they are tried (see _relative)
READINGS = ((False, _plus_base), (True, _percpu), (False, _plus_base_unsigned))


def _sorted(values: list[int]) -> bool:
    return values == sorted(values)  # in C; timsort is linear on sorted input


def _decode(data: bytes, records: _Records,
            tokens: list[bytes]) -> tuple[bytes, list[int], bytes] | None:
    """Expand every name: each byte becomes its token (in C), length bytes a NUL.

    Returns the string table ``"\0Tname\0tname2\0…"``, each name's offset in it past its
    type letter (the names are looked up as NUL-terminated tails, like ELF names) and the
    type letters. Names are expanded ``DECODE_NAMES`` at a time: the lists of tokens then
    stay small and in cache instead of one per byte of the table (~2M on 6.12).
    """
    if any(b"\0" in t for t in tokens):
        return None
    starts, n = records.starts, len(records.starts)
    texts, lengths, types = [], [], []
    for i in range(0, n, DECODE_NAMES):
        stop = starts[i + DECODE_NAMES] if i + DECODE_NAMES < n else records.end
        big = records.big[bisect_left(records.big, starts[i]):bisect_left(records.big, stop)]
        found = _decode_names(data, starts[i:i + DECODE_NAMES], stop, big, tokens)
        if found is None:
            return None
        texts.append(found[0])
        lengths += found[1]
        types.append(found[2])
    texts.append(b"\0")
    offsets = list(accumulate(map((1).__add__, lengths), initial=2))
    offsets.pop()
    return b"".join(texts), offsets, b"".join(types)


def _decode_names(data: bytes, starts: list[int], stop: int, big: list[int],
                  tokens: list[bytes]) -> tuple[bytes, list[int], bytes] | None:
    """The records at ``starts`` (ending at ``stop``; those at ``big`` with two length bytes)
    as ``"\0Tname\0tname2…"``, with the length and type letter of each name; None if one
    expands to less than a letter and a character."""
    first = starts[0]
    blob = data[first:stop]  # 2+ bytes: a length and a token at least
    parts = list(itemgetter(*blob)(tokens))  # in C, and faster than map() per item
    list(map(parts.__setitem__, map(sub, starts, repeat(first)), repeat(b"\0")))
    for pos in big:  # the second length byte
        parts[pos - first + 1] = b""
    text = b"".join(parts)
    pieces = text.split(b"\0")  # "", then type letter + name per record
    del pieces[0]
    lengths = list(map(len, pieces))
    if len(lengths) != len(starts) or min(lengths) < 2:
        return None
    return text, lengths, bytes(map(itemgetter(0), pieces))
