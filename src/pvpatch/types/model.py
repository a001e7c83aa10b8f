"""A small, source-neutral model of C struct layouts.

BTF and DWARF both describe the same things; pvpatch only needs the size of a few structs and
the byte offset of every member (recursively through embedded structs and unions). Readers turn
their format into :class:`StructLayout` and nothing above this package sees BTF or DWARF.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["int", "ptr", "struct", "union", "array", "enum", "func", "void", "float", "other"]


@dataclass(frozen=True)
class Field:
    """One member of a struct or union, with its byte offset inside the parent."""

    name: str  # "" for anonymous members
    offset: int  # bytes from the start of the parent
    size: int  # bytes
    kind: Kind  # after stripping typedef/const/volatile/restrict
    type_name: str | None  # e.g. "pv_cpu_ops", "u8"; None for anonymous types and pointers
    bit_size: int = 0  # non-zero for bitfields
    layout: StructLayout | None = None  # expanded for embedded struct/union members


@dataclass(frozen=True)
class StructLayout:
    name: str | None
    size: int
    kind: Literal["struct", "union"] = "struct"
    fields: tuple[Field, ...] = dataclasses.field(default_factory=tuple)

    def field(self, name: str) -> Field | None:
        """The direct member called ``name``, or None."""
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def leaves(self, prefix: str = "", base: int = 0) -> Iterator[tuple[str, int, Field]]:
        """Yield ``(dotted.path, absolute_offset, field)`` for every non-aggregate member.

        Anonymous struct/union members contribute no path component, like C member access.
        """
        for f in self.fields:
            path = f"{prefix}.{f.name}" if prefix and f.name else (f.name or prefix)
            if f.layout is not None:
                yield from f.layout.leaves(path, base + f.offset)
            else:
                yield path, base + f.offset, f


class TypeSource(Protocol):
    """Anything that can answer "what is the layout of struct X" for one image."""

    #: "btf", "dwarf" or "builtin", for reports
    origin: str

    def struct(self, name: str) -> StructLayout | None:
        """The fully expanded layout of ``struct name`` (or union), None if absent."""
        ...
