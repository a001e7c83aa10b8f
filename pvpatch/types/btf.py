"""A small BTF reader: struct layouts from the image's ``.BTF`` section.

One sequential pass records where each type record starts (BTF records are variable-length and
only addressable by walking); names and members are decoded only for the structs asked for.
Every offset is checked against the section, and type chains are bounded, so BTF that lies gives
an :class:`InputError`, never a hang. Format: ``Documentation/bpf/btf.rst`` (kernel 5.2+).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.types.model import Field, Kind, StructLayout

MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")  # magic version flags hdr_len type_off type_len str_off len
TYPE = struct.Struct("<III")  # name_off info size_or_type
MEMBER = struct.Struct("<III")  # name_off type offset
MAX_CHAIN = 64  # typedef/const/... chains longer than this are a loop
MAX_NESTING = 16  # embedded struct depth


@dataclass(frozen=True)
class BtfKind:
    number: int
    name: str
    extra: int  # bytes after the common header, fixed part
    per_vlen: int  # bytes per vlen item
    model_kind: Kind


# Documentation/bpf/btf.rst, "2.2 Type encoding": the record size of every kind.
KINDS = {k.number: k for k in (
    BtfKind(1, "INT", 4, 0, "int"),
    BtfKind(2, "PTR", 0, 0, "ptr"),
    BtfKind(3, "ARRAY", 12, 0, "array"),
    BtfKind(4, "STRUCT", 0, 12, "struct"),
    BtfKind(5, "UNION", 0, 12, "union"),
    BtfKind(6, "ENUM", 0, 8, "enum"),
    BtfKind(7, "FWD", 0, 0, "other"),
    BtfKind(8, "TYPEDEF", 0, 0, "other"),
    BtfKind(9, "VOLATILE", 0, 0, "other"),
    BtfKind(10, "CONST", 0, 0, "other"),
    BtfKind(11, "RESTRICT", 0, 0, "other"),
    BtfKind(12, "FUNC", 0, 0, "other"),
    BtfKind(13, "FUNC_PROTO", 0, 8, "func"),
    BtfKind(14, "VAR", 4, 0, "other"),
    BtfKind(15, "DATASEC", 0, 12, "other"),
    BtfKind(16, "FLOAT", 0, 0, "float"),
    BtfKind(17, "DECL_TAG", 4, 0, "other"),
    BtfKind(18, "TYPE_TAG", 0, 0, "other"),
    BtfKind(19, "ENUM64", 0, 12, "enum"),
)}
QUALIFIERS = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type_tag
STRUCT, UNION, PTR, ARRAY = 4, 5, 2, 3


class BtfTypes:
    """TypeSource over one ``.BTF`` blob."""

    origin = "btf"

    def __init__(self, data: bytes | memoryview, label: str, ptr_size: int = 8) -> None:
        self.label = label
        self.ptr_size = ptr_size
        self._data = memoryview(data)
        self._types, self._strings = self._parse_header()
        self._offsets: list[int] = [0]  # type id → record offset in _types (id 0 is void)
        self._index()

    @classmethod
    def from_image(cls, image: ElfImage) -> BtfTypes | None:
        sec = image.section(".BTF")
        if sec is None or not sec.has_file_data or not sec.size:
            return None
        return cls(image.section_data(sec), image.path, image.ptr_size)

    def _fail(self, message: str) -> InputError:
        return InputError(f".BTF {message}", self.label)

    # -- parsing ---------------------------------------------------------------------------

    def _parse_header(self) -> tuple[memoryview, bytes]:
        d = self._data
        if len(d) < HEADER.size:
            raise self._fail(f"is {len(d)} bytes, too short for its {HEADER.size}-byte header")
        magic, version, _flags, hdr_len, t_off, t_len, s_off, s_len = HEADER.unpack_from(d)
        if magic != MAGIC:
            raise self._fail(f"magic is {magic:#06x}, expected {MAGIC:#06x}")
        if version != 1:
            raise self._fail(f"version {version} is not supported (expected 1)")
        if hdr_len < HEADER.size or hdr_len > len(d):
            raise self._fail(f"header length {hdr_len} is impossible for {len(d)} bytes")
        for what, off, ln in (("type", t_off, t_len), ("string", s_off, s_len)):
            if hdr_len + off + ln > len(d):
                raise self._fail(f"{what} section (off {off:#x}, len {ln:#x}) runs past the "
                                 f"section end ({len(d) - hdr_len:#x})")
        base = hdr_len
        return d[base + t_off:base + t_off + t_len], bytes(d[base + s_off:base + s_off + s_len])

    def _index(self) -> None:
        """Record each type's offset; the walk is bounded by the type section's size."""
        types, offsets = self._types, self._offsets
        pos, end = 0, len(types)
        unpack = TYPE.unpack_from
        while pos < end:
            if pos + TYPE.size > end:
                raise self._fail(f"type {len(offsets)} is truncated at offset {pos:#x}")
            _name, info, _size = unpack(types, pos)
            kind = KINDS.get((info >> 24) & 0x1F)
            if kind is None:
                raise self._fail(f"type {len(offsets)} has unknown kind {(info >> 24) & 0x1F}")
            offsets.append(pos)
            pos += TYPE.size + kind.extra + kind.per_vlen * (info & 0xFFFF)
        if pos != end:
            raise self._fail(f"last type record runs {pos - end} bytes past the type section")

    def _record(self, type_id: int) -> tuple[int, int, int, int]:
        """(name_off, kind, vlen, size_or_type) of a type id, with the id checked."""
        if not 0 < type_id < len(self._offsets):
            raise self._fail(f"refers to type id {type_id}, but there are "
                             f"{len(self._offsets) - 1} types")
        name_off, info, size = TYPE.unpack_from(self._types, self._offsets[type_id])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, size | ((info >> 31) << 32)

    def _name(self, off: int) -> str:
        if off >= len(self._strings):
            raise self._fail(f"string offset {off:#x} is past the string section "
                             f"({len(self._strings):#x} bytes)")
        end = self._strings.find(b"\0", off)
        return self._strings[off:end if end >= 0 else None].decode("latin-1")

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def find(self, name: str, kinds: tuple[int, ...] = (STRUCT, UNION)) -> int | None:
        """Type id of the first struct/union (or typedef to one) called ``name``."""
        wanted = self._string_offsets(name)
        if not wanted:
            return None
        unpack, types = TYPE.unpack_from, self._types
        for tid in range(1, len(self._offsets)):
            name_off, info, _ = unpack(types, self._offsets[tid])
            if name_off in wanted:
                kind = (info >> 24) & 0x1F
                if kind in kinds:
                    return tid
                if kind == 8:  # typedef struct {...} name
                    target = self._strip(tid)
                    if self._record(target)[1] in kinds:
                        return target
        return None

    def _string_offsets(self, name: str) -> set[int]:
        needle, out = name.encode("latin-1") + b"\0", set()
        pos = self._strings.find(needle)
        while pos >= 0:
            out.add(pos)
            pos = self._strings.find(needle, pos + 1)
        return out

    def struct(self, name: str) -> StructLayout | None:
        tid = self.find(name)
        return None if tid is None else self._layout(tid, 0)

    def _strip(self, tid: int) -> int:
        """Follow typedef/const/volatile/restrict/type_tag to the underlying type."""
        for _ in range(MAX_CHAIN):
            if tid == 0:
                return 0
            _n, kind, _v, ref = self._record(tid)
            if kind not in QUALIFIERS:
                return tid
            tid = ref
        raise self._fail(f"type chain longer than {MAX_CHAIN} at id {tid} (a loop?)")

    def _layout(self, tid: int, depth: int) -> StructLayout:
        if depth > MAX_NESTING:
            raise self._fail(f"structs nested more than {MAX_NESTING} deep at id {tid}")
        name_off, kind, vlen, size = self._record(tid)
        kflag = self._kind_flag(tid)
        base = self._offsets[tid] + TYPE.size
        fields = []
        for i in range(vlen):
            m_name, m_type, m_off = MEMBER.unpack_from(self._types, base + i * MEMBER.size)
            bit_off, bit_size = (m_off & 0xFFFFFF, m_off >> 24) if kflag else (m_off, 0)
            fields.append(self._field(self._name(m_name), m_type, bit_off, bit_size, depth))
        return StructLayout(self._name(name_off) or None, size,
                            "union" if kind == UNION else "struct", tuple(fields))

    def _kind_flag(self, tid: int) -> bool:
        return bool(TYPE.unpack_from(self._types, self._offsets[tid])[1] >> 31)

    def _field(self, name: str, type_id: int, bit_off: int, bit_size: int, depth: int) -> Field:
        named = self._named(type_id)
        real = self._strip(type_id)
        if real == 0:
            return Field(name, bit_off // 8, 0, "void", named, bit_size)
        _n, kind, _v, _s = self._record(real)
        layout = self._layout(real, depth + 1) if kind in (STRUCT, UNION) else None
        return Field(name, bit_off // 8, self._size(real), KINDS[kind].model_kind, named,
                     bit_size, layout)

    def _named(self, type_id: int) -> str | None:
        """The first name along the qualifier chain: the typedef or struct as written."""
        tid = type_id
        for _ in range(MAX_CHAIN):
            if tid == 0:
                return None
            name_off, kind, _v, ref = self._record(tid)
            if name_off:
                return self._name(name_off)
            if kind not in QUALIFIERS:
                return None
            tid = ref
        return None

    def _size(self, tid: int) -> int:
        for _ in range(MAX_CHAIN):
            _n, kind, _v, size = self._record(tid)
            if kind == PTR:
                return self.ptr_size
            if kind == ARRAY:
                off = self._offsets[tid] + TYPE.size
                elem, _index, count = struct.unpack_from("<III", self._types, off)
                return count * self._size(self._strip(elem)) if elem else 0
            if kind in QUALIFIERS:
                tid = self._strip(tid)
                continue
            if kind in (1, 4, 5, 6, 16, 19):
                return size & 0xFFFFFFFF
            return 0
        raise self._fail(f"cannot size type {tid}")
