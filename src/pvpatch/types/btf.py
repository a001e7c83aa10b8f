"""Struct layouts from a kernel's ``.BTF`` section.

A distribution vmlinux carries ~130k BTF types in ~4 MB, and pvpatch needs three or four of
them. So the reader makes one sequential pass that only records where each type record starts
and which string names it (needed because records are variable-length and type ids are
implicit), and decodes members only for the types actually asked for. Every offset, length and
type id comes from the file and is checked before use; a broken section is an
:class:`InputError`, never an IndexError or a hang.

Format: ``Documentation/bpf/btf.rst`` in the kernel tree (header, then type and string sections).
"""

from __future__ import annotations

import contextlib
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.types.model import Field, Kind, StructLayout

BTF_MAGIC = 0xEB9F
#: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
HEADER = struct.Struct("<HBBIIIII")
# The type section is read as little-endian 32-bit words; every record is a whole number of them:
#   header   name_off, info (vlen | kind << 24 | kind_flag << 31), size-or-type
#   member   name_off, type, offset (bits; with kind_flag: bitfield_size << 24 | bit offset)
#   array    elem_type, index_type, nelems
#   int      encoding (nr_bits | bit offset << 16 | flags << 24)

#: a chain of typedefs/qualifiers longer than this is a cycle in a lying file
MAX_CHASE = 64
#: structs nested by value deeper than this are a cycle in a lying file
MAX_NESTING = 32


@dataclass(frozen=True)
class BtfKind:
    """What the reader needs to know about one BTF kind."""

    name: str
    extra: int  # payload bytes after the 12-byte common header
    per_vlen: int  # payload bytes per vlen entry (members, params, enumerators, ...)
    model: Kind  # how the kind shows up in a Field (qualifiers are stripped before this)
    qualifier: bool = False  # "size/type" is another type id to follow for the real type


#: All kinds up to ENUM64 (kernel 6.0). Unknown kinds cannot be skipped, so they are errors.
KINDS: dict[int, BtfKind] = {
    1: BtfKind("INT", 4, 0, "int"),
    2: BtfKind("PTR", 0, 0, "ptr"),
    3: BtfKind("ARRAY", 12, 0, "array"),
    4: BtfKind("STRUCT", 0, 12, "struct"),
    5: BtfKind("UNION", 0, 12, "union"),
    6: BtfKind("ENUM", 0, 8, "enum"),
    7: BtfKind("FWD", 0, 0, "other"),
    8: BtfKind("TYPEDEF", 0, 0, "other", qualifier=True),
    9: BtfKind("VOLATILE", 0, 0, "other", qualifier=True),
    10: BtfKind("CONST", 0, 0, "other", qualifier=True),
    11: BtfKind("RESTRICT", 0, 0, "other", qualifier=True),
    12: BtfKind("FUNC", 0, 0, "func"),
    13: BtfKind("FUNC_PROTO", 0, 8, "func"),
    14: BtfKind("VAR", 4, 0, "other"),
    15: BtfKind("DATASEC", 0, 12, "other"),
    16: BtfKind("FLOAT", 0, 0, "float"),
    17: BtfKind("DECL_TAG", 4, 0, "other"),
    18: BtfKind("TYPE_TAG", 0, 0, "other", qualifier=True),
    19: BtfKind("ENUM64", 0, 12, "enum"),
}
K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_TYPEDEF = 1, 2, 3, 4, 5, 8
#: kinds whose size/type word is a byte size
SIZED = frozenset({1, 4, 5, 6, 16, 19})
#: kinds whose own name is the name "as written" when no typedef was seen
NAMED = frozenset({1, 4, 5, 6, 7, 16, 19})

# Flat tables for the indexing loop, in words: record length = _STEP + _PER_VLEN * vlen.
# An unknown kind gets a step that lands far past any section end (see BtfTypes._index).
_STEP = [1 << 40] * 32
_PER_VLEN = [0] * 32
for _k, _d in KINDS.items():
    _STEP[_k], _PER_VLEN[_k] = 3 + _d.extra // 4, _d.per_vlen // 4


class BtfTypes:
    """A :class:`~pvpatch.types.model.TypeSource` over one ``.BTF`` section."""

    origin = "btf"

    def __init__(self, data: memoryview | bytes, label: str, *, ptr_size: int = 8) -> None:
        """``label`` names the file in errors; ``ptr_size`` because BTF does not record it."""
        self.label = label
        self.ptr_size = ptr_size
        self._words, self._strs = self._split(memoryview(data))
        self._offs, self._names = self._index()
        self._cache: dict[str, StructLayout | None] = {}
        self._layouts: dict[int, StructLayout] = {}

    @classmethod
    def from_image(cls, image: ElfImage) -> BtfTypes | None:
        """The image's BTF, or None when it has no ``.BTF`` section."""
        sec = image.section(".BTF")
        if sec is None or not sec.has_file_data:
            return None
        return cls(image.section_data(sec), image.path, ptr_size=image.ptr_size)

    def error(self, message: str) -> InputError:
        return InputError(message, self.label)

    # -- header and index ------------------------------------------------------------------

    def _split(self, data: memoryview) -> tuple[Sequence[int], bytes]:
        """Validate the header; return the type section as words and the string section."""
        if len(data) < HEADER.size:
            raise self.error(f".BTF is {len(data)} bytes, too short for the "
                             f"{HEADER.size}-byte header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            HEADER.unpack_from(data, 0)
        if magic != BTF_MAGIC:
            swapped = " (big-endian BTF is not supported)" if magic == 0x9FEB else ""
            raise self.error(f".BTF magic is {magic:#06x}, expected {BTF_MAGIC:#06x}{swapped}")
        if version != 1:
            raise self.error(f".BTF version {version} is not supported (expected 1)")
        if not HEADER.size <= hdr_len <= len(data):
            raise self.error(f".BTF header length {hdr_len:#x} is not between {HEADER.size} "
                             f"and the section size ({len(data):#x})")
        body = data[hdr_len:]
        for what, off, length in (("type", type_off, type_len), ("string", str_off, str_len)):
            if hdr_len + off + length > len(data):
                raise self.error(f".BTF {what} section (off {off:#x}, len {length:#x}) runs "
                                 f"past the section end ({len(data):#x})")
        strs = bytes(body[str_off:str_off + str_len])
        if strs and (strs[0] != 0 or strs[-1] != 0):
            raise self.error(".BTF string section does not start and end with a NUL byte")
        if type_len % 4:
            raise self.error(f".BTF type section length {type_len:#x} is not a multiple of 4")
        return _words(body[type_off:type_off + type_len]), strs

    def _index(self) -> tuple[list[int], list[int]]:
        """One pass over the type section: word index and name offset of every type id.

        Id 0 is ``void`` and has no record; placeholders keep list index == type id. The loop
        runs ~130k times on a distribution kernel, so it does no checks and computes a
        record's length once per distinct info word (a few thousand of them): unknown kinds
        jump far past the end, and any mismatch is diagnosed afterwards by :meth:`_diagnose`.
        """
        w, end = self._words, len(self._words)
        step, per_vlen = _STEP, _PER_VLEN
        length: dict[int, int] = {}  # info word -> record length in words
        offs = [0]
        append = offs.append
        i = 0
        try:
            while True:  # ends at the IndexError of reading past the last record
                append(i)
                info = w[i + 1]
                try:
                    i += length[info]
                except KeyError:
                    kind = (info >> 24) & 0x1F
                    length[info] = n = step[kind] + per_vlen[kind] * (info & 0xFFFF)
                    i += n
        except IndexError:
            offs.pop()  # the position past the end (or inside the last, truncated record)
        if i != end:
            self._diagnose()
        return offs, [0, *map(w.__getitem__, offs[1:])]  # (an empty section: no records)

    def _diagnose(self) -> None:
        """Walk the type section again, checking each record, to say what is wrong."""
        w, end, i, tid = self._words, len(self._words), 0, 1
        while i < end:
            where = f".BTF type {tid} at type-section offset {4 * i:#x}"
            if i + 3 > end:
                raise self.error(f"{where} is truncated (section is {4 * end:#x} bytes)")
            kind = (w[i + 1] >> 24) & 0x1F
            if kind not in KINDS:
                raise self.error(f"{where} has unknown kind {kind}")
            nxt = i + _STEP[kind] + _PER_VLEN[kind] * (w[i + 1] & 0xFFFF)
            if nxt > end:
                raise self.error(f"{where} ({KINDS[kind].name}, {w[i + 1] & 0xFFFF} entries) "
                                 f"runs past the type section end ({4 * end:#x})")
            i, tid = nxt, tid + 1

    @property
    def count(self) -> int:
        """Number of types, not counting ``void``."""
        return len(self._offs) - 1

    # -- records ---------------------------------------------------------------------------

    def _head(self, tid: int, user: str) -> tuple[int, int, int]:
        """``(kind, info, size_or_type)`` of type ``tid``, which ``user`` refers to."""
        if not 0 < tid < len(self._offs):
            raise self.error(f".BTF {user} refers to type id {tid}, but ids run from 1 to "
                             f"{self.count}")
        i = self._offs[tid]
        info = self._words[i + 1]
        return (info >> 24) & 0x1F, info, self._words[i + 2]

    def _name(self, tid: int) -> str:
        """The name of type ``tid`` ("" when anonymous)."""
        return self._string(self._names[tid], f"type {tid}")

    def _string(self, off: int, user: str) -> str:
        if off == 0:
            return ""
        end = self._strs.find(b"\0", off) if off < len(self._strs) else -1
        if end < 0:
            raise self.error(f".BTF {user} has name offset {off:#x}, outside the string "
                             f"section ({len(self._strs):#x} bytes)")
        return self._strs[off:end].decode("utf-8", "replace")

    def _name_offsets(self, name: str) -> set[int]:
        """Every string-section offset that reads as exactly ``name``.

        A writer may share suffixes ("u8" inside "__u8"), so any position followed by the name
        and a NUL counts, not only those right after a NUL.
        """
        needle = name.encode() + b"\0"
        if len(needle) == 1 or b"\0" in needle[:-1]:
            return set()
        found: set[int] = set()
        pos = self._strs.find(needle, 1)
        while pos >= 0:
            found.add(pos)
            pos = self._strs.find(needle, pos + 1)
        return found

    def _ids_named(self, name: str) -> list[int]:
        """Type ids whose name is ``name``, in id order.

        Usually the name is stored once, and ``list.index`` finds its users at C speed; only
        names with many spellings (short suffixes) need the slower Python scan.
        """
        offsets = self._name_offsets(name)
        if len(offsets) > 4:
            return [tid for tid, off in enumerate(self._names) if off in offsets]
        ids: list[int] = []
        for off in offsets:
            tid = 0
            with contextlib.suppress(ValueError):
                while True:
                    tid = self._names.index(off, tid + 1)
                    ids.append(tid)
        return sorted(ids)

    # -- public ----------------------------------------------------------------------------

    def struct(self, name: str) -> StructLayout | None:
        """The expanded layout of struct/union ``name`` (or of a typedef naming one)."""
        if name not in self._cache:
            self._cache[name] = self._find(name)
        return self._cache[name]

    def _find(self, name: str) -> StructLayout | None:
        ids = self._ids_named(name)
        kinds = {tid: self._head(tid, "lookup")[0] for tid in ids}
        for tid in ids:
            if kinds[tid] in (K_STRUCT, K_UNION):
                return self._layout(tid, 0)
        for tid in ids:
            if kinds[tid] == K_TYPEDEF:
                target, _ = self._strip(tid, f"typedef {name}")
                if self._head(target, f"typedef {name}")[0] in (K_STRUCT, K_UNION):
                    layout = self._layout(target, 0)
                    return layout if layout.name else StructLayout(
                        name, layout.size, layout.kind, layout.fields)
        return None

    # -- decoding --------------------------------------------------------------------------

    def _strip(self, tid: int, user: str) -> tuple[int, str | None]:
        """Follow typedefs and qualifiers to the real type; also the name "as written".

        The name is the first typedef met, else the real type's own name (None if anonymous).
        """
        written: str | None = None
        for _ in range(MAX_CHASE):
            if tid == 0:
                return 0, written
            kind, _info, nxt = self._head(tid, user)
            if not KINDS[kind].qualifier:
                if written is None and kind in NAMED:
                    written = self._name(tid) or None
                return tid, written
            if kind == K_TYPEDEF and written is None:
                written = self._name(tid) or None
            tid = nxt
        raise self.error(f".BTF {user}: typedef/qualifier chain longer than {MAX_CHASE} links "
                         f"(a reference cycle)")

    def _size(self, tid: int, user: str, depth: int = 0) -> int:
        """Byte size of an already-stripped type."""
        if tid == 0:
            return 0
        if depth > MAX_NESTING:
            raise self.error(f".BTF {user}: arrays nested deeper than {MAX_NESTING} (a cycle)")
        kind, _info, size = self._head(tid, user)
        if kind in SIZED:
            return size
        if kind == K_PTR:
            return self.ptr_size
        if kind == K_ARRAY:
            i = self._offs[tid] + 3
            elem, nelems = self._words[i], self._words[i + 2]
            elem, _ = self._strip(elem, user)
            return nelems * self._size(elem, user, depth + 1)
        return 0

    def _layout(self, tid: int, depth: int) -> StructLayout:
        """Decode struct/union ``tid`` and everything embedded in it by value."""
        if tid in self._layouts:
            return self._layouts[tid]
        if depth > MAX_NESTING:
            raise self.error(f".BTF type {tid}: structs nested deeper than {MAX_NESTING} "
                             f"(a struct containing itself?)")
        kind, info, size = self._head(tid, "lookup")
        owner = self._name(tid) or None
        w, base = self._words, self._offs[tid] + 3
        fields = tuple(self._member((w[i], w[i + 1], w[i + 2]), bool(info >> 31),
                                    owner or f"type {tid}", depth)
                       for i in range(base, base + 3 * (info & 0xFFFF), 3))
        layout = StructLayout(owner, size, "union" if kind == K_UNION else "struct", fields)
        self._layouts[tid] = layout
        return layout

    def _member(self, raw: tuple[int, int, int], kind_flag: bool, owner: str,
                depth: int) -> Field:
        name_off, mtype, moff = raw
        name = self._string(name_off, f"member of {owner}")
        user = f"member {name or '(anonymous)'} of {owner}"
        bit_off, bit_size = (moff & 0xFFFFFF, moff >> 24) if kind_flag else (moff, 0)
        tid, written = self._strip(mtype, user)
        kind = self._head(tid, user)[0] if tid else 0
        if not kind_flag and kind == K_INT:
            bit_off, bit_size = self._int_bits(tid, bit_off, user)
        model: Kind = KINDS[kind].model if kind else "void"
        layout = self._layout(tid, depth + 1) if kind in (K_STRUCT, K_UNION) else None
        return Field(name, bit_off // 8, self._size(tid, user), model, written, bit_size, layout)

    def _int_bits(self, tid: int, bit_off: int, user: str) -> tuple[int, int]:
        """Old-style bitfields: the INT's own encoding says how many bits and where."""
        _kind, _info, size = self._head(tid, user)
        enc = self._words[self._offs[tid] + 3]
        nr_bits, int_off = enc & 0xFF, (enc >> 16) & 0xFF
        if nr_bits and nr_bits != size * 8:
            return bit_off + int_off, nr_bits
        return bit_off + int_off, 0


def _words(data: memoryview) -> Sequence[int]:
    """View little-endian bytes as unsigned 32-bit words, without a copy where possible."""
    if sys.byteorder == "little" and array("I").itemsize == 4:
        return data.cast("B").cast("I")
    words = array("I" if array("I").itemsize == 4 else "L")
    words.frombytes(bytes(data))
    if sys.byteorder != "little":
        words.byteswap()
    return words
