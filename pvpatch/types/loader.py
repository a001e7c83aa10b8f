"""Pick the image's best type information: BTF first (small, fast), then DWARF."""

from __future__ import annotations

from pvpatch.image.elf import ElfImage
from pvpatch.types.btf import BtfTypes
from pvpatch.types.model import TypeSource


def load_types(image: ElfImage) -> TypeSource | None:
    btf = BtfTypes.from_image(image)
    if btf is not None:
        return btf
    from pvpatch.types.dwarf import DwarfTypes  # pyelftools is only imported when needed

    return DwarfTypes.from_image(image)
