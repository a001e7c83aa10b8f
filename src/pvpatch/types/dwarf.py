"""Struct layouts from DWARF, for images without ``.BTF`` (older or non-BTF kernels).

A debug vmlinux carries ~160 MB of ``.debug_info`` in ~2000 compile units, and pyelftools
decodes DIEs in pure Python, so the whole thing is never walked. Instead:

* the DWARF sections are handed to pyelftools as windows onto the image's memory map, not
  copied (its own loader copies every debug section into memory: ~2 s and 300 MB);
* compile-unit names are read with a tiny reader of just the unit's first DIE (pyelftools would
  parse each unit's whole abbreviation table: ~10 ms × 2000 units);
* a struct is looked up in the units named by hints first (the source file that defines the
  kernel object using the struct, see :data:`pvpatch.types.loader.KNOWN_CU_HINTS`), and only
  then in a bounded number of other units.

Relocatable objects (``.o``) and compressed debug sections go through pyelftools' own loader,
which applies relocations and decompresses; those files are small.
"""

from __future__ import annotations

import inspect
import io
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elftools.common.exceptions import DWARFError, ELFError
from elftools.construct.core import ConstructError
from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DwarfConfig, DWARFInfo
from elftools.elf.elffile import ELFFile

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.types.model import Field, Kind, StructLayout

ET_REL = 1
SHF_COMPRESSED = 0x800
#: units searched after the hinted ones, when a struct is not where the hints say
MAX_FALLBACK_CUS = 48
#: a chain of typedefs/qualifiers longer than this is a cycle in a lying file
MAX_CHASE = 64
#: structs nested by value deeper than this are a cycle in a lying file
MAX_NESTING = 32
#: what pyelftools raises on malformed DWARF (besides the builtins below)
PARSE_ERRORS = (DWARFError, ELFError, ConstructError, KeyError, IndexError, ValueError,
                struct.error, UnicodeDecodeError, NotImplementedError, AssertionError,
                RecursionError)

#: tags that only qualify or rename another type: stripped to find a member's real type
QUALIFIERS = frozenset({"DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
                        "DW_TAG_restrict_type", "DW_TAG_atomic_type", "DW_TAG_immutable_type",
                        "DW_TAG_shared_type", "DW_TAG_packed_type"})
AGGREGATES = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union"}
KIND_OF: dict[str, Kind] = {
    "DW_TAG_base_type": "int", "DW_TAG_pointer_type": "ptr", "DW_TAG_reference_type": "ptr",
    "DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union",
    "DW_TAG_array_type": "array", "DW_TAG_enumeration_type": "enum",
    "DW_TAG_subroutine_type": "func",
}
#: tags whose own DW_AT_name is the type name "as written" (when no typedef was met first)
NAMED_TAGS = frozenset({"DW_TAG_base_type", "DW_TAG_structure_type", "DW_TAG_union_type",
                        "DW_TAG_enumeration_type"})
DW_ATE_FLOATS = {0x03, 0x04, 0x09}  # complex_float, float, decimal_float
DW_OP_PLUS_UCONST = 0x23

# -- the unit-name reader: DWARF constants (DWARF 5 spec, §7.5) -------------------------------

DW_AT_NAME = 0x03
DW_FORM_STRING, DW_FORM_STRP, DW_FORM_LINE_STRP, DW_FORM_IMPLICIT_CONST = 0x08, 0x0E, 0x1F, 0x21
#: DW_FORM_* → how to step over a value: a byte count, or the name of a variable encoding
FORM_SKIP: dict[int, int | str] = {
    0x01: "addr", 0x03: "block2", 0x04: "block4", 0x05: 2, 0x06: 4, 0x07: 8, 0x08: "string",
    0x09: "block", 0x0A: "block1", 0x0B: 1, 0x0C: 1, 0x0D: "leb", 0x0E: "offset", 0x0F: "leb",
    0x10: "ref_addr", 0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8, 0x15: "leb", 0x17: "offset",
    0x18: "block", 0x19: 0, 0x1A: "leb", 0x1B: "leb", 0x1C: 4, 0x1D: "offset", 0x1E: 16,
    0x1F: "offset", 0x20: 8, 0x21: 0, 0x22: "leb", 0x23: "leb", 0x24: 8, 0x25: 1, 0x26: 2,
    0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4,
    0x1F01: "leb", 0x1F02: "leb", 0x1F20: "offset", 0x1F21: "offset",  # GNU extensions
}
#: DWARF 5 unit types with 8 bytes (dwo id / type signature) in the header before the DIEs
UNIT_EXTRA = {2: 8, 4: 8, 5: 8, 6: 8}
# One abbreviation entry: code, tag, DW_CHILDREN byte, (attribute, form[, implicit const])…, 0, 0
_LEB = rb"[\x80-\xff]*[\x00-\x7f]"
_NONZERO_LEB = rb"(?:[\x01-\x7f]|[\x80-\xff]+[\x00-\x7f])"
_FORM = rb"(?:\x21" + _LEB + rb"|[\x01-\x20\x22-\x7f]|[\x80-\xff]+[\x00-\x7f])"
_ENTRY_RE = _NONZERO_LEB + _LEB + rb"[\x00\x01](?:" + _NONZERO_LEB + _FORM + rb")*\x00\x00"
_ENTRY = re.compile(_ENTRY_RE, re.DOTALL)
_ENTRIES_32 = re.compile(rb"(?:" + _ENTRY_RE + rb"){32}", re.DOTALL)


class DwarfTypes:
    """A :class:`~pvpatch.types.model.TypeSource` over an image's DWARF."""

    origin = "dwarf"

    def __init__(self, image: ElfImage, *, cu_hints: Mapping[str, Sequence[str]] | None = None,
                 max_fallback_cus: int = MAX_FALLBACK_CUS) -> None:
        """``cu_hints`` maps struct names to unit-name substrings to search first."""
        self.label = image.path
        self.ptr_size = image.ptr_size
        self.cu_hints = dict(cu_hints or {})
        self.max_fallback_cus = max_fallback_cus
        self._buffers: dict[str, memoryview] = {}
        self._dwarf = self._open(image)
        self._units: list[tuple[int, str]] | None = None
        self._indexes: dict[int, _UnitIndex] = {}
        self._cache: dict[str, StructLayout | None] = {}

    @classmethod
    def from_image(cls, image: ElfImage, *,
                   cu_hints: Mapping[str, Sequence[str]] | None = None) -> DwarfTypes | None:
        """The image's DWARF, or None when it has no ``.debug_info``."""
        sec = image.section(".debug_info")
        if sec is None or not sec.has_file_data or not sec.size:
            return None
        return cls(image, cu_hints=cu_hints)

    def error(self, message: str) -> InputError:
        return InputError(message, self.label)

    # -- opening ---------------------------------------------------------------------------

    def _open(self, image: ElfImage) -> DWARFInfo:
        debug = [s for s in image.sections if s.name.startswith((".debug_", ".zdebug_"))]
        needs_help = image.header["e_type"] == ET_REL or any(
            s.flags & SHF_COMPRESSED or s.name.startswith(".zdebug_") for s in debug)
        try:
            return self._open_copying(image) if needs_help else self._open_mapped(image)
        except (*PARSE_ERRORS, OSError) as e:
            raise self.error(f"unreadable DWARF: {e}") from None

    def _open_mapped(self, image: ElfImage) -> DWARFInfo:
        """pyelftools over windows of the image's mapping: no copies, no relocation."""
        params = inspect.signature(DWARFInfo.__init__).parameters
        sections: dict[str, DebugSectionDescriptor | None] = {}
        for param in params:
            if not param.endswith("_sec"):
                continue
            sec = None if param == "eh_frame_sec" else image.section("." + param[:-4])
            if sec is not None and sec.has_file_data:
                self._buffers[sec.name] = image.section_data(sec)
                stream = io.BufferedReader(_Window(self._buffers[sec.name]), 1 << 16)
                sections[param] = DebugSectionDescriptor(stream, sec.name, sec.offset,
                                                         sec.size, sec.addr)
            else:
                sections[param] = None
        config = DwarfConfig(little_endian=True, default_address_size=image.ptr_size,
                             machine_arch="x64" if image.bits == 64 else "x86")
        return DWARFInfo(config=config, **sections)

    def _open_copying(self, image: ElfImage) -> DWARFInfo:
        """pyelftools' own loader: applies ``.rela.debug_*`` and decompresses (small files)."""
        with open(image.path, "rb") as f:
            dwarf = ELFFile(f).get_dwarf_info(relocate_dwarf_sections=True, follow_links=False)
        for param, desc in vars(dwarf).items():
            if param.endswith("_sec") and desc is not None and hasattr(desc.stream, "getbuffer"):
                self._buffers[desc.name.replace(".zdebug_", ".debug_")] = \
                    desc.stream.getbuffer()
        return dwarf

    # -- compile units ---------------------------------------------------------------------

    def units(self) -> list[tuple[int, str]]:
        """``(offset, DW_AT_name)`` of every unit in ``.debug_info`` ("" if unnamed)."""
        if self._units is None:
            info = self._buffers.get(".debug_info")
            if info is None:  # pyelftools kept a stream we cannot view: let it walk the units
                self._units = [(cu.cu_offset, self._slow_name(cu.cu_offset))
                               for cu in self._dwarf.iter_CUs()]
            else:
                self._units = [(u.offset, self._unit_name(u)) for u in self._walk(info)]
        return self._units

    def _walk(self, info: memoryview) -> list[_UnitHeader]:
        try:
            return _unit_headers(info)
        except _BadUnit as e:
            raise self.error(f"DWARF unit at .debug_info+{e.args[0]:#x}: {e.args[1]}") from None
        except IndexError:
            raise self.error("DWARF .debug_info ends inside a unit header") from None

    def _unit_name(self, unit: _UnitHeader) -> str:
        name = _fast_unit_name(unit, self._buffers)
        # None: a form the fast reader does not decode; pyelftools knows them all.
        return self._slow_name(unit.offset) if name is None else name

    def _slow_name(self, offset: int) -> str:
        try:
            attr = self._dwarf.get_CU_at(offset).get_top_DIE().attributes.get("DW_AT_name")
        except PARSE_ERRORS as e:
            raise self.error(f"DWARF unit at .debug_info+{offset:#x} is unreadable: "
                             f"{e}") from None
        return _text(attr.value) if attr is not None else ""

    def _search_order(self, hints: Sequence[str]) -> Iterator[int]:
        """Units matching a hint (in hint order), then at most ``max_fallback_cus`` others."""
        units = self.units()
        hinted = dict.fromkeys(off for h in hints for off, name in units if h in name)
        yield from hinted
        others = (off for off, _name in units if off not in hinted)
        for n, off in enumerate(others):
            if n >= self.max_fallback_cus:
                return
            yield off

    def _index(self, offset: int) -> _UnitIndex:
        if offset not in self._indexes:
            self._indexes[offset] = _UnitIndex.build(self._dwarf.get_CU_at(offset), self)
        return self._indexes[offset]

    # -- public ----------------------------------------------------------------------------

    def struct(self, name: str, hint_cus: Sequence[str] | None = None) -> StructLayout | None:
        """The expanded layout of struct/union ``name`` (or of a typedef naming one).

        ``hint_cus`` (default: ``cu_hints[name]``) are substrings of unit names to search
        first; other units are searched only if those lack the type, and at most
        ``max_fallback_cus`` of them.
        """
        if name not in self._cache:
            hints = self.cu_hints.get(name, ()) if hint_cus is None else hint_cus
            try:
                self._cache[name] = self._search(name, hints)
            except PARSE_ERRORS as e:
                raise self.error(f"DWARF is unreadable while looking up {name}: "
                                 f"{type(e).__name__}: {e}") from None
        return self._cache[name]

    def _search(self, name: str, hints: Sequence[str]) -> StructLayout | None:
        for offset in self._search_order(hints):
            die = self._index(offset).find(name, self)
            if die is not None:
                layout = self._layout(die, 0)
                return layout if layout.name else StructLayout(name, layout.size, layout.kind,
                                                                layout.fields)
        return None

    # -- decoding --------------------------------------------------------------------------

    def strip(self, die: Any | None, user: str) -> tuple[Any | None, str | None]:
        """Follow typedefs and qualifiers to the real type; also the name "as written".

        The name is the first typedef met, else the real type's own name (None if anonymous).
        """
        written: str | None = None
        for _ in range(MAX_CHASE):
            if die is None:
                return None, written
            if die.tag not in QUALIFIERS:
                if written is None and die.tag in NAMED_TAGS:
                    written = _name(die) or None
                return die, written
            if die.tag == "DW_TAG_typedef" and written is None:
                written = _name(die) or None
            die = _type_of(die)
        raise self.error(f"DWARF {user}: typedef/qualifier chain longer than {MAX_CHASE} "
                         f"links (a reference cycle)")

    def children(self, die: Any) -> Iterator[Any]:
        """The DIE's children, refusing to go backwards: pyelftools follows DW_AT_sibling
        blindly, so a lying link would make it loop forever."""
        last = die.offset
        for child in die.iter_children():
            if child.offset <= last:
                raise self.error(f"DWARF DIE at .debug_info+{child.offset:#x} follows "
                                 f"{last:#x} (a backwards sibling link)")
            last = child.offset
            yield child

    def _layout(self, die: Any, depth: int) -> StructLayout:
        """Decode the struct/union ``die`` and everything embedded in it by value."""
        owner = _name(die) or None
        if depth > MAX_NESTING:
            raise self.error(f"DWARF struct {owner or hex(die.offset)}: structs nested deeper "
                             f"than {MAX_NESTING} (a struct containing itself?)")
        fields = tuple(self._member(m, owner or f"<anonymous at {die.offset:#x}>", depth)
                       for m in self.children(die) if m.tag == "DW_TAG_member")
        return StructLayout(owner, _int_attr(die, "DW_AT_byte_size"), AGGREGATES[die.tag],
                            fields)

    def _member(self, m: Any, owner: str, depth: int) -> Field:
        name = _name(m)
        user = f"member {name or '(anonymous)'} of {owner}"
        real, written = self.strip(_type_of(m), user)
        size = self._size(real, user)
        offset, bit_size = _member_offset(m, size)
        if real is None:
            return Field(name, offset, 0, "void", written, bit_size)
        kind = self._kind(real)
        layout = self._layout(real, depth + 1) \
            if kind in ("struct", "union") and "DW_AT_declaration" not in real.attributes \
            else None
        return Field(name, offset, size, kind, written, bit_size, layout)

    def _kind(self, die: Any) -> Kind:
        if die.tag == "DW_TAG_base_type" and _int_attr(die, "DW_AT_encoding") in DW_ATE_FLOATS:
            return "float"
        return KIND_OF.get(die.tag, "other")

    def _size(self, die: Any | None, user: str, depth: int = 0) -> int:
        """Byte size of an already-stripped type."""
        if die is None:
            return 0
        if "DW_AT_byte_size" in die.attributes:
            return _int_attr(die, "DW_AT_byte_size")
        if die.tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            return self.ptr_size
        if die.tag != "DW_TAG_array_type":
            return 0
        if depth > MAX_NESTING:
            raise self.error(f"DWARF {user}: arrays nested deeper than {MAX_NESTING}")
        elem, _ = self.strip(_type_of(die), user)
        count = 1
        for sub in self.children(die):
            if sub.tag == "DW_TAG_subrange_type":
                count *= _subrange_count(sub)
        return count * self._size(elem, user, depth + 1)


class _UnitIndex:
    """The named structs, unions and typedefs at the top level of one compile unit."""

    def __init__(self) -> None:
        self.aggregates: dict[str, Any] = {}
        self.typedefs: dict[str, Any] = {}

    @classmethod
    def build(cls, cu: Any, owner: DwarfTypes) -> _UnitIndex:
        index = cls()
        for die in owner.children(cu.get_top_DIE()):
            index.add(die)
        return index

    def add(self, die: Any) -> None:
        if die.tag in AGGREGATES and "DW_AT_declaration" not in die.attributes:
            name = _name(die)
            if name:
                self.aggregates.setdefault(name, die)
        elif die.tag == "DW_TAG_typedef":
            name = _name(die)
            if name:
                self.typedefs.setdefault(name, die)

    def find(self, name: str, owner: DwarfTypes) -> Any | None:
        """The complete struct/union called ``name``, directly or through a typedef."""
        if name in self.aggregates:
            return self.aggregates[name]
        if name in self.typedefs:
            real, _ = owner.strip(self.typedefs[name], f"typedef {name}")
            if real is not None and real.tag in AGGREGATES and \
                    "DW_AT_declaration" not in real.attributes:
                return real
        return None


class _Window(io.RawIOBase):
    """A seekable read-only file over a memoryview, so pyelftools reads the mapping in place."""

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), len(self._data) - self._pos))
        buffer[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


# -- DIE attribute helpers -----------------------------------------------------------------

def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _name(die: Any) -> str:
    attr = die.attributes.get("DW_AT_name")
    return _text(attr.value) if attr is not None else ""


def _int_attr(die: Any, name: str, default: int = 0) -> int:
    attr = die.attributes.get(name)
    return attr.value if attr is not None and isinstance(attr.value, int) else default


def _type_of(die: Any) -> Any | None:
    """The DIE named by DW_AT_type, or None for ``void``."""
    attr = die.attributes.get("DW_AT_type")
    if attr is None:
        return None
    if not attr.form.startswith(("DW_FORM_ref", "DW_FORM_GNU_ref")):
        raise ValueError(f"DIE at {die.offset:#x}: DW_AT_type has form {attr.form}")
    return die.get_DIE_from_attribute("DW_AT_type")


def _member_offset(m: Any, type_size: int) -> tuple[int, int]:
    """``(byte offset, bit size)`` of a member; bitfields give the byte of their first bit."""
    loc = m.attributes.get("DW_AT_data_member_location")
    byte_off = 0 if loc is None else _location(loc.value)
    bit_size = _int_attr(m, "DW_AT_bit_size")
    if not bit_size:
        return byte_off, 0
    if "DW_AT_data_bit_offset" in m.attributes:  # DWARF 4+
        return _int_attr(m, "DW_AT_data_bit_offset") // 8, bit_size
    # DWARF 2/3: DW_AT_bit_offset counts from the most significant bit of the storage unit.
    unit = _int_attr(m, "DW_AT_byte_size", type_size)
    first_bit = byte_off * 8 + unit * 8 - _int_attr(m, "DW_AT_bit_offset") - bit_size
    return max(first_bit, 0) // 8, bit_size


def _location(value: Any) -> int:
    """DW_AT_data_member_location: a constant, or (DWARF 2/3) ``DW_OP_plus_uconst n``."""
    if isinstance(value, int):
        return value
    ops = list(value)
    if ops and ops[0] == DW_OP_PLUS_UCONST:
        return _uleb(bytes(ops), 1)[0]
    raise ValueError(f"member location expression {bytes(ops).hex()} is not a constant")


def _subrange_count(sub: Any) -> int:
    """Elements in one array dimension; 0 for flexible or variable-length arrays."""
    if "DW_AT_count" in sub.attributes:
        return _int_attr(sub, "DW_AT_count")
    attr = sub.attributes.get("DW_AT_upper_bound")
    if attr is None or not isinstance(attr.value, int):
        return 0
    return attr.value - _int_attr(sub, "DW_AT_lower_bound") + 1


# -- the unit-name reader ------------------------------------------------------------------

def _uleb(data: Any, pos: int) -> tuple[int, int]:
    """Decode a ULEB128 at ``pos``; IndexError if it runs off the end."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


class _BadUnit(Exception):
    """A unit header that does not fit the section: (offset, what is wrong)."""


@dataclass(frozen=True)
class _UnitHeader:
    offset: int
    version: int
    abbrev_offset: int
    address_size: int
    offset_size: int
    die_offset: int  # where the unit's first DIE starts


def _unit_headers(info: memoryview) -> list[_UnitHeader]:
    """Walk the unit headers of ``.debug_info`` (DWARF 2–5, 32- and 64-bit formats)."""
    units, off, end = [], 0, len(info)
    while off + 4 <= end:
        length, pos, osize = _u(info, off, 4), off + 4, 4
        if length == 0xFFFFFFFF:
            length, pos, osize = _u(info, pos, 8), pos + 8, 8
        if pos + length > end or length < 7:
            raise _BadUnit(off, f"length {length:#x} does not fit the {end:#x}-byte section")
        version = _u(info, pos, 2)
        if version >= 5:
            unit_type, asize = info[pos + 2], info[pos + 3]
            abbrev, die = _u(info, pos + 4, osize), pos + 4 + osize
            die += UNIT_EXTRA.get(unit_type, 0) + (osize if unit_type in (2, 6) else 0)
        else:
            abbrev, asize, die = _u(info, pos + 2, osize), info[pos + 2 + osize], pos + 3 + osize
        if not 2 <= version <= 5:
            raise _BadUnit(off, f"unknown DWARF version {version}")
        if asize not in (4, 8):
            raise _BadUnit(off, f"address size {asize} (x86 uses 4 or 8)")
        units.append(_UnitHeader(off, version, abbrev, asize, osize, die))
        off = pos + length
    return units


def _u(data: memoryview, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise IndexError(pos)
    return int.from_bytes(data[pos:pos + size], "little")


def _fast_unit_name(unit: _UnitHeader, buffers: Mapping[str, memoryview]) -> str | None:
    """DW_AT_name of the unit's first DIE, or None if a form here needs pyelftools.

    Reads one abbreviation and the attributes before the name, nothing else.
    """
    info, abbrev = buffers.get(".debug_info"), buffers.get(".debug_abbrev")
    if info is None or abbrev is None:
        return None
    try:
        code, pos = _uleb(info, unit.die_offset)
        spec = _abbrev_attrs(abbrev, unit.abbrev_offset, code)
        if spec is None:
            return None
        sizes = {"addr": unit.address_size, "offset": unit.offset_size,
                 "ref_addr": unit.address_size if unit.version == 2 else unit.offset_size}
        for attr, form in spec:
            if attr == DW_AT_NAME:
                return _read_name(info, pos, form, unit.offset_size, buffers)
            pos = _skip(info, pos, form, sizes)
            if pos is None:
                return None
    except (IndexError, ValueError):
        return None
    return ""


def _abbrev_attrs(abbrev: memoryview, offset: int, code: int) -> list[tuple[int, int]] | None:
    """The (attribute, form) list of abbreviation ``code`` in the table at ``offset``.

    GCC and clang number a table's entries 1, 2, 3… in order, and the unit's own entry is
    often near the end, so entries before it are skipped with a regex (C speed) and the landing
    is checked; tables numbered otherwise are walked one entry at a time.
    """
    pos = _skip_entries(abbrev, offset, code - 1)
    if pos is not None:
        found = _abbrev_entry(abbrev, pos)
        if found is not None and found[0] == code:
            return found[1]
    pos = offset
    while (entry := _abbrev_entry(abbrev, pos)) is not None:
        if entry[0] == code:
            return entry[1]
        pos = entry[2]
    return None


def _skip_entries(abbrev: memoryview, pos: int, count: int) -> int | None:
    """Position after ``count`` well-formed abbreviation entries from ``pos``, or None."""
    for step, pattern in ((32, _ENTRIES_32), (1, _ENTRY)):
        while count >= step:
            m = pattern.match(abbrev, pos)
            if m is None:
                return None
            pos, count = m.end(), count - step
    return pos


def _abbrev_entry(abbrev: memoryview, pos: int) -> tuple[int, list[tuple[int, int]], int] | None:
    """``(code, [(attribute, form)…], next position)`` of the entry at ``pos``; None at the end."""
    if pos >= len(abbrev):
        return None
    code, pos = _uleb(abbrev, pos)
    if code == 0:
        return None
    _tag, pos = _uleb(abbrev, pos)
    pos += 1  # DW_CHILDREN_*
    attrs = []
    while True:
        attr, pos = _uleb(abbrev, pos)
        form, pos = _uleb(abbrev, pos)
        if attr == 0 and form == 0:
            return code, attrs, pos
        if form == DW_FORM_IMPLICIT_CONST:
            _value, pos = _uleb(abbrev, pos)  # an SLEB128; same length rule
        attrs.append((attr, form))


def _skip(info: memoryview, pos: int, form: int, sizes: Mapping[str, int]) -> int | None:
    """Position after a value of ``form`` at ``pos``; None for forms it cannot step over."""
    how = FORM_SKIP.get(form)
    if how is None:
        return None
    if isinstance(how, int):
        return pos + how
    if how in sizes:
        return pos + sizes[how]
    if how == "leb":
        return _uleb(info, pos)[1]
    if how == "string":
        end = bytes(info[pos:pos + 4096]).find(b"\0")
        return None if end < 0 else pos + end + 1
    if how == "block":
        length, pos = _uleb(info, pos)
        return pos + length
    width = {"block1": 1, "block2": 2, "block4": 4}[how]
    return pos + width + int.from_bytes(info[pos:pos + width], "little")


def _read_name(info: memoryview, pos: int, form: int, offset_size: int,
               buffers: Mapping[str, memoryview]) -> str | None:
    if form == DW_FORM_STRING:
        data, start = info, pos
    elif form in (DW_FORM_STRP, DW_FORM_LINE_STRP):
        table = ".debug_str" if form == DW_FORM_STRP else ".debug_line_str"
        data, start = buffers.get(table), int.from_bytes(info[pos:pos + offset_size], "little")
        if data is None:
            return None
    else:
        return None
    raw = bytes(data[start:start + 4096])
    end = raw.find(b"\0")
    return None if end < 0 else raw[:end].decode("utf-8", "replace")

