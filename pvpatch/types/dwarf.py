"""The DWARF fallback for struct layouts, through pyelftools.

A debug vmlinux carries hundreds of megabytes of ``.debug_info``; walking all of it in Python
takes minutes. Each struct is therefore looked up only in the compile units that define the
kernel object using it (``CU_HINTS``: e.g. ``pv_ops`` lives in ``arch/x86/kernel/paravirt.c``),
and a wider search is bounded.
"""

from __future__ import annotations

from typing import Any

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.types.model import Field, Kind, StructLayout

# The compile units whose DWARF holds each struct, by kernel era (source files, as DW_AT_name
# ends). Order matters: the first CU that has the type wins.
CU_HINTS: dict[str, tuple[str, ...]] = {
    "paravirt_patch_template": ("arch/x86/kernel/paravirt.c", "arch/x86/kernel/alternative.c"),
    "paravirt_patch_site": ("arch/x86/kernel/alternative.c", "arch/x86/kernel/paravirt.c",
                            "arch/i386/kernel/alternative.c"),
    "alt_instr": ("arch/x86/kernel/alternative.c", "arch/i386/kernel/alternative.c"),
    "paravirt_ops": ("arch/i386/kernel/paravirt.c",),
}
MAX_OTHER_CUS = 64  # bound on the unhinted search
QUALIFIERS = {"DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
              "DW_TAG_restrict_type", "DW_TAG_atomic_type"}
KIND_OF: dict[str, Kind] = {
    "DW_TAG_pointer_type": "ptr", "DW_TAG_base_type": "int", "DW_TAG_structure_type": "struct",
    "DW_TAG_union_type": "union", "DW_TAG_array_type": "array",
    "DW_TAG_enumeration_type": "enum", "DW_TAG_subroutine_type": "func",
}


class DwarfTypes:
    """TypeSource over the image's DWARF, one compile unit at a time."""

    origin = "dwarf"

    def __init__(self, image: ElfImage, dwarf: Any) -> None:
        self.image = image
        self._dwarf = dwarf
        self._cache: dict[str, StructLayout | None] = {}

    @classmethod
    def from_image(cls, image: ElfImage) -> DwarfTypes | None:
        if image.section(".debug_info") is None:
            return None
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        try:
            dwarf = ELFFile(open(image.path, "rb")).get_dwarf_info(  # noqa: SIM115
                relocate_dwarf_sections=False)
        except (ELFError, ValueError, OSError) as e:
            raise InputError(f"unreadable DWARF: {e}", image.path) from None
        return cls(image, dwarf)

    def struct(self, name: str) -> StructLayout | None:
        if name not in self._cache:
            self._cache[name] = self._search(name)
        return self._cache[name]

    def _search(self, name: str) -> StructLayout | None:
        hints = CU_HINTS.get(name, ())
        try:
            others = 0
            for cu in self._dwarf.iter_CUs():
                cu_name = _attr(cu.get_top_DIE(), "DW_AT_name") or ""
                hinted = any(cu_name.endswith(h) for h in hints)
                if not hinted:
                    others += 1
                    if hints or others > MAX_OTHER_CUS:
                        continue
                found = self._in_cu(cu, name)
                if found is not None:
                    return found
        except Exception as e:  # pyelftools raises many kinds on corrupt DWARF
            raise InputError(f"DWARF could not be read while looking for struct {name}: "
                             f"{type(e).__name__}: {e}", self.image.path) from None
        return None

    def _in_cu(self, cu: Any, name: str) -> StructLayout | None:
        for die in cu.get_top_DIE().iter_children():
            if die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type") and \
                    _attr(die, "DW_AT_name") == name and "DW_AT_byte_size" in die.attributes:
                return self._layout(die, 0)
        return None

    def _layout(self, die: Any, depth: int) -> StructLayout:
        if depth > 16:
            raise InputError("DWARF structs nested more than 16 deep", self.image.path)
        fields = tuple(self._field(m, depth) for m in die.iter_children()
                       if m.tag == "DW_TAG_member")
        kind = "union" if die.tag == "DW_TAG_union_type" else "struct"
        return StructLayout(_attr(die, "DW_AT_name"), _attr(die, "DW_AT_byte_size") or 0, kind,
                            fields)

    def _field(self, member: Any, depth: int) -> Field:
        offset = _attr(member, "DW_AT_data_member_location") or 0
        bit_size = _attr(member, "DW_AT_bit_size") or 0
        if bit_size and "DW_AT_data_bit_offset" in member.attributes:
            offset = _attr(member, "DW_AT_data_bit_offset") // 8
        named, real = self._strip(member.get_DIE_from_attribute("DW_AT_type"))
        if real is None:
            return Field(_attr(member, "DW_AT_name") or "", offset, 0, "void", named, bit_size)
        kind = KIND_OF.get(real.tag, "other")
        layout = self._layout(real, depth + 1) if kind in ("struct", "union") else None
        return Field(_attr(member, "DW_AT_name") or "", offset, self._size(real), kind, named,
                     bit_size, layout)

    def _strip(self, die: Any) -> tuple[str | None, Any]:
        named = None
        for _ in range(64):
            if die is None:
                return named, None
            named = named or _attr(die, "DW_AT_name")
            if die.tag not in QUALIFIERS:
                return named, die
            die = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes \
                else None
        raise InputError("DWARF type chain longer than 64 (a loop?)", self.image.path)

    def _size(self, die: Any) -> int:
        if die.tag == "DW_TAG_pointer_type":
            return _attr(die, "DW_AT_byte_size") or self.image.ptr_size
        return _attr(die, "DW_AT_byte_size") or 0


def _attr(die: Any, name: str) -> Any:
    a = die.attributes.get(name)
    if a is None:
        return None
    v = a.value
    return v.decode("latin-1") if isinstance(v, bytes) else v
