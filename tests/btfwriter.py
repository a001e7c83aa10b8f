"""A tiny BTF writer for tests: build a ``.BTF`` blob type by type, then lie in it on purpose.

Type ids are handed out in the order types are added (the first is 1), so a test can refer to
a type it will add later by ``w.next_id + n``. Layout per ``Documentation/bpf/btf.rst``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

KIND = {"INT": 1, "PTR": 2, "ARRAY": 3, "STRUCT": 4, "UNION": 5, "ENUM": 6, "FWD": 7,
        "TYPEDEF": 8, "VOLATILE": 9, "CONST": 10, "RESTRICT": 11, "FUNC": 12, "FUNC_PROTO": 13,
        "VAR": 14, "DATASEC": 15, "FLOAT": 16, "DECL_TAG": 17, "TYPE_TAG": 18, "ENUM64": 19}

#: (name or raw string offset, type id, offset in bits, bitfield size in bits (0: none))
Member = tuple[str | int, int, int, int]


class BtfWriter:
    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.strings = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    @property
    def next_id(self) -> int:
        return len(self.records) + 1

    def string(self, s: str) -> int:
        if s not in self._offsets:
            self._offsets[s] = len(self.strings)
            self.strings += s.encode() + b"\0"
        return self._offsets[s]

    def raw(self, kind: str | int, name: str | int, vlen: int, size_or_type: int,
            payload: bytes = b"", kind_flag: bool = False) -> int:
        """Append one record; ``name`` may be a raw string offset (to lie about it)."""
        k = KIND[kind] if isinstance(kind, str) else kind
        name_off = name if isinstance(name, int) else self.string(name)
        info = vlen | k << 24 | int(kind_flag) << 31
        self.records.append(struct.pack("<III", name_off, info, size_or_type) + payload)
        return len(self.records)

    # -- one helper per kind ---------------------------------------------------------------

    def int_(self, name: str, size: int, bits: int | None = None, bit_offset: int = 0,
             signed: bool = False) -> int:
        enc = (bits if bits is not None else size * 8) | bit_offset << 16 | int(signed) << 24
        return self.raw("INT", name, 0, size, struct.pack("<I", enc))

    def ptr(self, target: int) -> int:
        return self.raw("PTR", "", 0, target)

    def array(self, elem: int, index: int, nelems: int) -> int:
        return self.raw("ARRAY", "", 0, 0, struct.pack("<III", elem, index, nelems))

    def struct(self, name: str, size: int, members: Sequence[Member], union: bool = False,
               kind_flag: bool | None = None) -> int:
        """Members' bit sizes go into the offset word when ``kind_flag`` (default: if any)."""
        flag = any(m[3] for m in members) if kind_flag is None else kind_flag
        payload = b"".join(
            struct.pack("<III", n if isinstance(n, int) else self.string(n), t,
                        (bs << 24 | off) if flag else off)
            for n, t, off, bs in members)
        return self.raw("UNION" if union else "STRUCT", name, len(members), size, payload, flag)

    def enum(self, name: str, values: Sequence[tuple[str, int]], size: int = 4) -> int:
        payload = b"".join(struct.pack("<Ii", self.string(n), v) for n, v in values)
        return self.raw("ENUM", name, len(values), size, payload)

    def enum64(self, name: str, values: Sequence[tuple[str, int]]) -> int:
        payload = b"".join(struct.pack("<III", self.string(n), v & 0xFFFFFFFF, v >> 32)
                           for n, v in values)
        return self.raw("ENUM64", name, len(values), 8, payload)

    def fwd(self, name: str, union: bool = False) -> int:
        return self.raw("FWD", name, 0, 0, kind_flag=union)

    def ref(self, kind: str, target: int, name: str = "") -> int:
        """TYPEDEF, VOLATILE, CONST, RESTRICT or TYPE_TAG pointing at ``target``."""
        return self.raw(kind, name, 0, target)

    def typedef(self, name: str, target: int) -> int:
        return self.ref("TYPEDEF", target, name)

    def func_proto(self, ret: int, params: Sequence[tuple[str, int]]) -> int:
        payload = b"".join(struct.pack("<II", self.string(n), t) for n, t in params)
        return self.raw("FUNC_PROTO", "", len(params), ret, payload)

    def func(self, name: str, proto: int) -> int:
        return self.raw("FUNC", name, 0, proto)

    def var(self, name: str, type_id: int) -> int:
        return self.raw("VAR", name, 0, type_id, struct.pack("<I", 1))

    def datasec(self, name: str, vars_: Sequence[tuple[int, int, int]], size: int) -> int:
        payload = b"".join(struct.pack("<III", *v) for v in vars_)
        return self.raw("DATASEC", name, len(vars_), size, payload)

    def float_(self, name: str, size: int) -> int:
        return self.raw("FLOAT", name, 0, size)

    def decl_tag(self, name: str, target: int, component: int = -1) -> int:
        return self.raw("DECL_TAG", name, 0, target, struct.pack("<i", component))

    # -- output ----------------------------------------------------------------------------

    def blob(self, *, magic: int = 0xEB9F, version: int = 1, hdr_len: int = 24,
             type_len: int | None = None, str_off: int | None = None,
             str_len: int | None = None) -> bytes:
        """The ``.BTF`` section; the keyword arguments override header fields to make it lie."""
        types = b"".join(self.records)
        strs = bytes(self.strings)
        header = struct.pack("<HBBIIIII", magic, version, 0, hdr_len, 0,
                             len(types) if type_len is None else type_len,
                             len(types) if str_off is None else str_off,
                             len(strs) if str_len is None else str_len)
        return header + b"\0" * (hdr_len - 24) + types + strs
