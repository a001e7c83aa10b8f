"""Pick the image's best type information: BTF first (small, fast), then DWARF."""

from __future__ import annotations

from pvpatch.image.elf import ElfImage
from pvpatch.types.btf import BtfTypes
from pvpatch.types.model import TypeSource

# The compile units whose DWARF describes each struct pvpatch asks for, as substrings of the
# unit's DW_AT_name; the DWARF reader searches these first. Order matters: the unit that
# defines the object using the struct comes first (gcc only emits types a unit uses).
#   paravirt.c     defines pv_ops (4.20+), the pv_*_ops globals (2.6.24–4.19), paravirt_ops
#   alternative.c  apply_paravirt() walks struct paravirt_patch_site, apply_alternatives() alt_instr
_X86 = "arch/x86/kernel/"
_I386 = "arch/i386/kernel/"  # 2.6.20–2.6.23, before the i386/x86_64 merge
_PV_OPS = (f"{_X86}paravirt.c", f"{_I386}paravirt.c")
_PATCHING = (f"{_X86}alternative.c", f"{_I386}alternative.c")
KNOWN_CU_HINTS: dict[str, tuple[str, ...]] = {
    "paravirt_patch_template": (*_PV_OPS, *_PATCHING),
    "pv_cpu_ops": (*_PV_OPS, *_PATCHING),
    "paravirt_ops": (*_PV_OPS, *_PATCHING),
    "paravirt_patch_site": (*_PATCHING, *_PV_OPS),
    "alt_instr": _PATCHING,
}


def load_types(image: ElfImage) -> TypeSource | None:
    """BTF if the image has ``.BTF``, else DWARF if it has ``.debug_info``, else None."""
    btf = BtfTypes.from_image(image)
    if btf is not None:
        return btf
    from pvpatch.types.dwarf import DwarfTypes  # pyelftools is only imported when needed

    return DwarfTypes.from_image(image, cu_hints=KNOWN_CU_HINTS)
