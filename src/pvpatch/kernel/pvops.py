"""The pv_ops slot table: slot index → member path, and the value the image's initialiser holds.

A ``.parainstructions`` type byte is an index into a table of pointers whose shape changed over
the years (see ``ERAS``). The member paths come from the image's own type information, never
from a hard-coded list; without types, slots are named by byte offset only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from pvpatch.image.elf import ElfImage
from pvpatch.image.layouts import STT_OBJECT
from pvpatch.kernel.table_base import TableBase
from pvpatch.types.model import StructLayout, TypeSource


@dataclass(frozen=True)
class Container:
    """How one kernel generation stores its ops. Kernel facts, with the range they hold for."""

    name: str
    versions: str
    template_type: str  # the struct whose pointer-sized words the type byte indexes
    storage: str  # "single": one global symbol; "per-member": one global per template member
    symbol: str | None  # the single global, when storage == "single"


ERAS = (
    # 4.20+: one global `struct paravirt_patch_template pv_ops` (arch/x86/kernel/paravirt.c)
    Container("pv_ops", "4.20+", "paravirt_patch_template", "single", "pv_ops"),
    # 2.6.24–4.19: the template is a type only; its members are separate globals pv_*_ops
    Container("pv_*_ops", "2.6.24–4.19", "paravirt_patch_template", "per-member", None),
    # 2.6.20–2.6.23 (i386): one `struct paravirt_ops paravirt_ops`
    Container("paravirt_ops", "2.6.20–2.6.23", "paravirt_ops", "single", "paravirt_ops"),
)

# 4.20+ when no symbol names the table (kallsyms without data symbols): the one global whose
# address the call sites imply (kernel.table_base).
DERIVED = Container("pv_ops", "4.20+", "paravirt_patch_template", "single", None)

# 2.6.24–4.19: the members of struct paravirt_patch_template in order; each is also a global of
# that name. pv_apic_ops existed 2.6.24 to about 4.4, pv_lock_ops from 2.6.27 (fact sheet §2.2);
# an absent global is simply skipped, so one list serves the whole range.
SPLIT_MEMBERS = ("pv_init_ops", "pv_time_ops", "pv_cpu_ops", "pv_irq_ops", "pv_apic_ops",
                 "pv_mmu_ops", "pv_lock_ops")

# .parainstructions' type is a u8: no kernel can address more slots than this.
MAX_SLOTS = 256

# Wrapper structs that hold one function pointer; the slot is named after the wrapper member.
CALLEE_SAVE_WRAPPERS = {"paravirt_callee_save"}


def has_table_symbol(image: ElfImage) -> bool:
    """Does any era's op-table symbol exist (pv_ops, pv_cpu_ops, paravirt_ops)?"""
    syms = image.symbols
    return any(syms.get(e.symbol if e.storage == "single" else "pv_cpu_ops") is not None
               for e in ERAS if e.symbol or e.storage == "per-member")


@dataclass(frozen=True)
class ExtraTable:
    """A pv-op table beside ``pv_ops`` that call sites read (objtool allows several from 7.0:
    f88dc319fcb6 "objtool: Allow multiple pv_ops arrays"). Kernel facts, with their range."""

    symbol: str
    struct: str  # its type, for member names
    versions: str


EXTRA_TABLES = (
    # 7.0+: the lock ops left pv_ops for their own table (arch/x86/include/asm/
    # paravirt-spinlock.h, b0b449e6fec4; read in Debian 7.3.4's source)
    ExtraTable("pv_ops_lock", "pv_lock_ops", "7.0+"),
)
# Any other global whose name starts with this is a table too, named by offset when its type
# is not known here (objtool's rule for what may be a pv-op array).
EXTRA_PREFIX = "pv_ops_"


@dataclass(frozen=True)
class Slot:
    index: int  # the type byte of .parainstructions; further tables continue the numbering
    offset: int  # bytes into its table
    name: str  # member path, e.g. "irq.save_fl", "pv_cpu_ops.cpuid", "pv_ops_lock.wait"
    address: int | None  # where the live value is stored in the image
    is_pointer: bool
    table: str = "pv_ops"  # the global it lives in (per-member eras: the template's)


def _wrapper_paths(layout: StructLayout, prefix: str = "") -> set[str]:
    """Member paths whose type is a one-pointer wrapper (CALLEE_SAVE_WRAPPERS)."""
    out = set()
    for f in layout.fields:
        path = f"{prefix}.{f.name}" if prefix and f.name else (f.name or prefix)
        if f.layout is None:
            continue
        if f.type_name in CALLEE_SAVE_WRAPPERS:
            out.add(path)
        else:
            out |= _wrapper_paths(f.layout, path)
    return out


class PvOps:
    """The slots of one image's pv-op table and their initial (native) values."""

    def __init__(self, image: ElfImage, types: TypeSource | None,
                 derived: TableBase | None = None) -> None:
        """``derived``: the table address the call sites imply, used when no symbol names
        the table (see :func:`pvpatch.kernel.table_base.derive_table_base`)."""
        self.image = image
        self.ptr = image.ptr_size
        self.derived = derived
        self._types = types
        self.container, self.layout = self._find(types)
        self.type_origin = types.origin if types and self.layout else None
        self.type_label = (getattr(types, "label", None) if self.type_origin == "builtin"
                           else self.type_origin)
        self._targets: dict[int, tuple[int | None, str | None]] = {}

    def _find(self, types: TypeSource | None) -> tuple[Container | None, StructLayout | None]:
        syms = self.image.symbols
        for era in ERAS:
            if era.storage == "single" and syms.get(era.symbol or "") is None:
                continue
            if era.storage == "per-member" and syms.get("pv_cpu_ops") is None:
                continue
            layout = types.struct(era.template_type) if types else None
            return era, layout
        if self.derived is not None and self.derived.address is not None:
            return DERIVED, types.struct(DERIVED.template_type) if types else None
        return None, None

    @property
    def base(self) -> int | None:
        """Address of a single table: its symbol's, or the one its call sites imply."""
        if self.container is None or self.container.storage != "single":
            return None
        if self.container.symbol is None:
            return self.derived.address if self.derived else None
        return self.image.symbols.address(self.container.symbol)

    @property
    def main_size(self) -> int | None:
        """Bytes of the single table at :attr:`base`: its layout's size when the image holds
        that many bytes there (damaged type info may claim gigabytes), else the extent of
        its slots."""
        if self.base is None:
            return None
        size = self.layout.size if self.layout is not None else 0
        if not size or size > MAX_SLOTS * self.ptr or \
                self.image.section_at(self.base, size) is None:
            size = max((s.offset for s in self.slots.values() if s.table == "pv_ops"),
                       default=-1) + self.ptr
        return size

    @property
    def base_origin(self) -> str | None:
        """Where :attr:`base` comes from, for reports."""
        if self.base is None:
            return None
        if self.container is DERIVED and self.derived is not None:
            return self.derived.described
        return f"symbol {self.container.symbol}"

    @property
    def described(self) -> str:
        if self.container is None:
            why = f" ({self.derived.reason})" if self.derived and self.derived.reason else ""
            return f"no pv-op table found{why}"
        if self.layout is not None:
            how = f"layout from {self.type_label}"
        elif self.container is DERIVED:
            how = "no type information: slots up to the highest type a site uses"
        else:
            how = "no type information"
        where = f"; {self.derived.described}" if self.container is DERIVED and self.derived \
            else ""
        extra = "".join(f" + {name}" for name, *_ in self.extra_tables) \
            if self.container.name == "pv_ops" else ""
        return f"{self.container.name}{extra} ({self.container.versions}{where}; {how})"

    @cached_property
    def slots(self) -> dict[int, Slot]:
        """Every slot: the main table's by type byte, then each further table's."""
        if self.container is None:
            return {}
        out = self._main_slots()
        if self.container.name == "pv_ops":
            for table in self.extra_tables:
                out.update(self._table_slots(table, max(out, default=-1) + 1))
        return out

    @cached_property
    def extra_tables(self) -> list[tuple[str, int, int, StructLayout | None]]:
        """(symbol, address, size, layout) of each pv-op table beside pv_ops, by address."""
        syms = self.image.symbols
        known = {t.symbol: t for t in EXTRA_TABLES}
        names = set(known) | {s.name for s in syms.named_prefix(EXTRA_PREFIX)
                              if s.type == STT_OBJECT}
        out = []
        for name in sorted(names):
            sym = syms.get(name)
            if sym is None or sym.value == self.base:
                continue
            layout = self._types.struct(known[name].struct) if name in known and self._types \
                else None
            size = layout.size if layout is not None else sym.size
            if not size or self.image.section_at(sym.value, size) is None:
                continue
            out.append((name, sym.value, min(size, MAX_SLOTS * self.ptr), layout))
        return sorted(out, key=lambda t: t[1])

    def _table_slots(self, table: tuple[str, int, int, StructLayout | None],
                     first: int) -> dict[int, Slot]:
        name, address, size, layout = table
        if layout is None:
            return {first + i: Slot(first + i, i * self.ptr, f"{name}+{i * self.ptr:#x}",
                                    address + i * self.ptr, True, name)
                    for i in range(size // self.ptr)}
        out: dict[int, Slot] = {}
        wrappers = _wrapper_paths(layout)
        for path, offset, field in layout.leaves():
            if offset % self.ptr or offset >= size:
                continue
            index = first + offset // self.ptr
            parent = path.rpartition(".")[0]
            member = parent if parent in wrappers else path
            if index not in out:
                out[index] = Slot(index, offset, f"{name}.{member}", address + offset,
                                  field.kind == "ptr" and field.size == self.ptr, name)
        return out

    def _main_slots(self) -> dict[int, Slot]:
        if self.layout is None:
            return self._untyped_slots()
        out: dict[int, Slot] = {}
        wrappers = _wrapper_paths(self.layout)
        for path, offset, field in self.layout.leaves():
            if offset % self.ptr:
                continue
            index = offset // self.ptr
            is_ptr = field.kind == "ptr" and field.size == self.ptr
            parent = path.rpartition(".")[0]
            name = parent if parent in wrappers else path  # irq.save_fl.func → irq.save_fl
            if index not in out:
                out[index] = Slot(index, offset, name, self._storage(path, offset), is_ptr)
        return out

    def _storage(self, path: str, offset: int) -> int | None:
        syms = self.image.symbols
        assert self.container is not None
        if self.container.storage == "single":
            base = self.base
            return None if base is None else base + offset
        member = path.split(".", 1)[0]
        field = self.layout.field(member) if self.layout else None
        base = syms.address(member)
        if field is None or base is None:
            return None
        return base + (offset - field.offset)

    def _untyped_slots(self) -> dict[int, Slot]:
        """Without types only a single global table can be indexed, by its symbol size.

        The size comes from the file, so it is checked: the table must lie in one section,
        and no more than MAX_SLOTS slots are addressable by a u8 type byte anyway.
        """
        assert self.container is not None
        if self.container.storage == "per-member":
            return self._untyped_split_slots()
        if self.container is DERIVED:
            return self._untyped_derived_slots()
        sym = self.image.symbols.get(self.container.symbol or "")
        if sym is None or not sym.size:
            return {}
        if self.image.section_at(sym.value, sym.size) is None:
            raise self.image.error(f"symbol {sym.name} claims {sym.size:#x} bytes at "
                                   f"{sym.value:#x}, which no section holds")
        count = min(sym.size // self.ptr, MAX_SLOTS)
        return {i: Slot(i, i * self.ptr, f"{sym.name}+{i * self.ptr:#x}", sym.value + i * self.ptr,
                        True) for i in range(count)}

    def _untyped_derived_slots(self) -> dict[int, Slot]:
        """No symbol and no types: as many slots as the highest type a site uses, + 1 (the
        table may be longer; nothing in the image says by how much)."""
        d = self.derived
        assert d is not None and d.address is not None and d.highest_type is not None
        name = self.container.name if self.container else "table"
        return {i: Slot(i, i * self.ptr, f"{name}+{i * self.ptr:#x}", d.address + i * self.ptr,
                        True) for i in range(min(d.highest_type + 1, MAX_SLOTS))}

    def _untyped_split_slots(self) -> dict[int, Slot]:
        """2.6.24–4.19 without types: the template is the pv_*_ops globals back to back, each
        as long as its symbol says (the fact sheet's tool note)."""
        out: dict[int, Slot] = {}
        base = 0
        limit = MAX_SLOTS * self.ptr  # a u8 type byte reaches no further, whatever sizes say
        for name in SPLIT_MEMBERS:
            sym = self.image.symbols.get(name)
            if sym is None or not sym.size:
                continue
            if base >= limit:
                break
            for off in range(0, min(sym.size, limit - base) - self.ptr + 1, self.ptr):
                i = (base + off) // self.ptr
                out[i] = Slot(i, base + off, f"{name}+{off:#x}", sym.value + off, True)
            base += sym.size
        return out

    def slot(self, index: int) -> Slot | None:
        return self.slots.get(index)

    @cached_property
    def _by_address(self) -> dict[int, Slot]:
        return {s.address: s for s in self.slots.values() if s.address is not None}

    def slot_by_address(self, addr: int) -> Slot | None:
        return self._by_address.get(addr)

    def initial_value(self, slot: Slot) -> int | None:
        """The pointer the image's static initialiser stores in ``slot`` (None if unreadable)."""
        if slot.address is None:
            return None
        raw = self.image.try_read(slot.address, self.ptr)
        return None if raw is None else int.from_bytes(raw, "little")

    def initial_target(self, slot: Slot) -> tuple[int | None, str | None]:
        """The initial value of ``slot`` and its name (``NULL``, a symbol), computed once."""
        if not self._targets:
            self._name_initial_targets()
        if slot.index not in self._targets:
            from pvpatch.kernel.sites import describe_target

            value = self.initial_value(slot)
            self._targets[slot.index] = (value, describe_target(self.image, value))
        return self._targets[slot.index]

    def _name_initial_targets(self) -> None:
        """Name every slot's initial value in one pass over the symbol table."""
        values = {i: self.initial_value(s) for i, s in self.slots.items()}
        names = self.image.symbols.names_at({v for v in values.values() if v})
        for i, v in values.items():
            if v is None:
                self._targets[i] = (None, None)
            elif v == 0:
                self._targets[i] = (0, "NULL")
            elif v in names:
                self._targets[i] = (v, names[v])

    def by_name(self, name: str) -> Slot | None:
        for s in self.slots.values():
            if s.name == name:
                return s
        return None
