"""Pick the image's best type information: BTF first (small, fast), then DWARF."""

from __future__ import annotations

from pvpatch.image.elf import ElfImage
from pvpatch.inputs import BTF_LIMIT, read_bounded
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


def load_types(image: ElfImage, btf_path: str | None = None) -> TypeSource | None:
    """BTF if the image has ``.BTF``, else DWARF if it has ``.debug_info``, else None.

    ``btf_path`` (``--btf``: raw BTF such as /sys/kernel/btf/vmlinux) comes before both.
    """
    if btf_path is not None:
        return load_btf_file(btf_path, image.ptr_size)
    btf = BtfTypes.from_image(image)
    if btf is not None:
        return btf
    from pvpatch.types.dwarf import DwarfTypes  # pyelftools is only imported when needed

    return DwarfTypes.from_image(image, cu_hints=KNOWN_CU_HINTS)


def load_btf_file(path: str, ptr_size: int = 8) -> BtfTypes:
    """Raw BTF from a file; InputError when it cannot be read or is not BTF."""
    data = read_bounded(path, BTF_LIMIT, "a BTF file")
    return BtfTypes(data, path, ptr_size=ptr_size)  # checks the header and type section


def describe_types(types: TypeSource | None, btf_path: str | None,
                   builtin: str | None = None, builtin_detail: str | None = None) -> str:
    """Where the struct layouts come from, or what to do when there are none.

    ``builtin``: what the built-in table choice says (``pvpatch.kernel.builtin_choice``);
    ``builtin_detail`` only when a table was chosen."""
    hint = "pass --btf FILE (e.g. /sys/kernel/btf/vmlinux of the same kernel)"
    if types is None and builtin_detail:
        return f"{builtin} (no BTF/DWARF in the image): {builtin_detail}"
    if types is None:
        tried = f"; {builtin}" if builtin else ""
        return (f"no type information (no .BTF, no DWARF){tried}: pv ops are named by offset; "
                f"{hint}")
    if btf_path is not None:
        return f"BTF from {btf_path}"
    return ".BTF of the image" if types.origin == "btf" else "DWARF of the image"
