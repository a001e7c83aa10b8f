"""Everything pvpatch knows about one kernel image, built in the order the facts depend on.

image → version → types → pv_ops slots → sites; beside them, from the image and version alone,
the pv static calls. Commands ask for a :class:`KernelModel` and never assemble these pieces
themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from pvpatch.image.elf import ElfImage
from pvpatch.image.loader import open_image
from pvpatch.kernel.alternatives import AltTable, read_alternatives
from pvpatch.kernel.boot_writes import BootWrites, read_boot_writes
from pvpatch.kernel.btf_fit import check_btf_fits
from pvpatch.kernel.builtin_choice import BuiltinChoice, choose_builtin, locate_by_contents
from pvpatch.kernel.clobbers import ClobberBits, clobber_bits
from pvpatch.kernel.era import EraDetection, detect_era
from pvpatch.kernel.pvops import PvOps, has_table_symbol
from pvpatch.kernel.sites import RecordSet, SiteTable, read_records, read_sites
from pvpatch.kernel.static_calls import (
    StaticCallKey,
    StaticCallTable,
    read_static_call_keys,
    read_static_calls,
)
from pvpatch.kernel.table_base import TableBase, derive_table_base
from pvpatch.kernel.version import KernelVersion, detect_version
from pvpatch.types.loader import load_types
from pvpatch.types.model import TypeSource

if TYPE_CHECKING:
    from pvpatch.kernel.stores import StoreReader


@dataclass
class KernelModel:
    image: ElfImage
    layout_name: str | None = None  # force a .parainstructions layout
    btf_path: str | None = None  # raw BTF to use instead of the image's own types

    @classmethod
    def open(cls, path: str, layout_name: str | None = None, *, system_map: str | None = None,
             btf: str | None = None,
             progress: Callable[[str], None] | None = None) -> KernelModel:
        """The model of ``path``: a vmlinux or a vmlinuz (see :func:`open_image`)."""
        return cls(open_image(path, system_map=system_map, progress=progress), layout_name,
                   btf)

    def close(self) -> None:
        self.image.close()

    def __enter__(self) -> KernelModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def version(self) -> KernelVersion:
        return detect_version(self.image)

    @cached_property
    def types(self) -> TypeSource | None:
        types = load_types(self.image, self.btf_path)
        if self.btf_path is not None and types is not None:
            check_btf_fits(self.image, types, self.btf_path)  # another kernel's: refused
        return types

    @cached_property
    def table_base(self) -> TableBase | None:
        """Only when no symbol names an op table: the address the call sites agree on."""
        if has_table_symbol(self.image) or self.records is None:
            return None
        key = self.version.key
        if key is not None and key < (4, 20, 0):
            return TableBase(None, 0, 0, None, f"kernel {self.version.short} keeps its ops in "
                             "separate globals before 4.20: no single table to derive")
        found = derive_table_base(self.image, self.records.records)
        if found.address is None and found.total == 0:  # no site reads a slot: patched?
            located = locate_by_contents(self.image, self.version, self.records.highest_type)
            if located is not None:
                base, table = located
                return TableBase(base, 0, 0, self.records.highest_type, found_by=(
                    f'address of the initialiser the built-in table "{table.name}" describes '
                    "(no call site reads its slot: already patched)"))
        return found

    @cached_property
    def builtin(self) -> BuiltinChoice | None:
        """With no BTF, DWARF or --btf: the built-in slot table that fits the image, if any."""
        if self.types is not None:
            return None
        base = self.image.symbols.address("pv_ops")
        if base is None and self.table_base is not None:
            base = self.table_base.address
        highest = self.records.highest_type if self.records is not None else None
        return choose_builtin(self.image, self.version, base, highest)

    @cached_property
    def pvops(self) -> PvOps:
        types = self.types
        if types is None and self.builtin is not None:
            types = self.builtin.types
        return PvOps(self.image, types, self.table_base)

    @cached_property
    def era(self) -> EraDetection | None:
        """The boot-patching era (None: no pv-op table, so nothing to patch)."""
        return detect_era(self.image, self.pvops, self.version)

    @cached_property
    def clobber_bits(self) -> ClobberBits:
        return clobber_bits(self.image.bits, self.version.major, self.version.minor)

    @cached_property
    def alternatives(self) -> AltTable:
        return read_alternatives(self.image, self.types)

    @cached_property
    def records(self) -> RecordSet | None:
        """The ``.parainstructions`` records and their layout (None: no such section)."""
        return read_records(self.image, self.types, self.layout_name, self.version)

    @cached_property
    def sites(self) -> SiteTable:
        enum_types = self.era is not None and not self.era.era.type_is_slot
        return read_sites(self.image, self.records, self.pvops, self.clobber_bits,
                          None if self.records is not None else self.alternatives,
                          enum_types=enum_types)

    @cached_property
    def static_call_keys(self) -> dict[str, StaticCallKey]:
        """The pv static-call keys and their trampolines, without the site records: all that
        a backend's resolution reads (a worker resolving one need not decode the sites)."""
        return read_static_call_keys(self.image, self.version)

    @cached_property
    def static_calls(self) -> StaticCallTable:
        """The pv static calls (5.12+): keys, trampolines and ``.static_call_sites`` records;
        empty for a kernel that has none."""
        return read_static_calls(self.image, self.version, self.static_call_keys)

    @cached_property
    def boot_writes(self) -> BootWrites | None:
        """Where in .text boot may rewrite the image, per patch table (None: no .text)."""
        return read_boot_writes(self.image, self.sites, self.static_calls, self.alternatives)

    @cached_property
    def stores(self) -> StoreReader:
        """The store decoder over the image's functions, shared by every backend that reads
        start-up code: its decoded functions are cached, so a second backend (Xen with
        another vCPU count) decodes nothing again."""
        from pvpatch.kernel.stores import StoreReader  # capstone's decoder: only when asked

        return StoreReader(self.image)
