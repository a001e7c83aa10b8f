"""Built-in pv_ops slot-name tables, for images with neither BTF nor DWARF.

Each table is ``struct paravirt_patch_template`` of one kernel series, word size and
configuration, read once from real kernels' own BTF/DWARF by ``scripts/gen-builtin-tables.py``
(the data is in :mod:`pvpatch.types.builtin_data`, never written by hand). Next to each slot
name it keeps the function that kernel's initialiser put there, so a table is only used on an
image whose own initialiser agrees (``pvpatch.kernel.builtin_choice``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.types.model import Field, StructLayout

TEMPLATE = "paravirt_patch_template"


@dataclass(frozen=True)
class BuiltinTable:
    name: str  # e.g. "6.1 i386 !XXL": series, architecture, PARAVIRT_XXL or not
    series: tuple[int, int]  # the major.minor it was read from and is used for
    bits: int
    config: str  # the configuration it holds for
    source: str  # the kernels it was read from, and from which type information
    slots: tuple[tuple[str, str], ...]  # (member path, initial target) per slot index

    @property
    def ptr_size(self) -> int:
        return self.bits // 8

    @property
    def size(self) -> int:
        return len(self.slots) * self.ptr_size


class BuiltinTypes:
    """A :class:`~pvpatch.types.model.TypeSource` that knows one struct: the op template."""

    origin = "builtin"

    def __init__(self, table: BuiltinTable) -> None:
        self.table = table
        self.label = f'built-in table "{table.name}"'
        ptr = table.ptr_size
        self._layout = _layout(TEMPLATE, [(name, i * ptr) for i, (name, _t) in
                                          enumerate(table.slots)], ptr, table.size)

    def struct(self, name: str) -> StructLayout | None:
        return self._layout if name == TEMPLATE else None


def _layout(name: str | None, entries: list[tuple[str, int]], ptr: int,
            size: int) -> StructLayout:
    """A struct of pointers from dotted member paths: ``mmu.lazy_mode.enter`` nests."""
    fields: list[Field] = []
    groups: dict[str, list[tuple[str, int]]] = {}
    for path, off in entries:
        head, _, rest = path.partition(".")
        if rest:
            groups.setdefault(head, []).append((rest, off))
        else:
            fields.append(Field(head, off, ptr, "ptr", None))
    for head, sub in groups.items():
        start = min(o for _p, o in sub)
        end = max(o for _p, o in sub) + ptr
        inner = _layout(None, [(p, o - start) for p, o in sub], ptr, end - start)
        fields.append(Field(head, start, end - start, "struct", None, layout=inner))
    return StructLayout(name, size, "struct", tuple(sorted(fields, key=lambda f: f.offset)))


def tables() -> tuple[BuiltinTable, ...]:
    from pvpatch.types.builtin_data import TABLES

    return TABLES
