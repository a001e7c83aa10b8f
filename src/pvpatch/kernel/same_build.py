"""Are two images the same build? Asked wherever two inputs must describe one kernel.

``pvpatch diff ORIGINAL PATCHED`` compares bytes at ORIGINAL's site addresses: against an image
of another build every row "differs", and the result looks like a finding. So the two are
compared first, by the strongest fact both carry:

1. the GNU build-id (:mod:`pvpatch.image.buildid`): when both have one it decides alone —
   patching changes only site bytes, so a ``pvpatch apply`` output keeps its input's id;
2. otherwise what is there: the ``linux_banner`` (release, build number, compiler, date) when
   both have one, and the layout of the allocated sections (name, address, size), which two
   builds share only if every section came out the same size.
"""

from __future__ import annotations

from pvpatch.image.elf import ElfImage
from pvpatch.kernel.version import detect_version

Layout = tuple[tuple[str, int, int], ...]


def section_layout(image: ElfImage) -> Layout:
    """(name, address, size) of every allocated section with a size, in address order: what
    a bzImage's vmlinux.bin keeps of its vmlinux (objcopy -S drops only unallocated ones)."""
    return tuple(sorted((s.name, s.addr, s.size) for s in image.sections
                        if s.is_alloc and s.size))


def build_difference(a: ElfImage, b: ElfImage) -> str | None:
    """Why ``a`` and ``b`` are not one build, in a phrase; None when nothing says so."""
    if a.build_id and b.build_id:
        if a.build_id == b.build_id:
            return None
        return f"build-id {a.build_id} vs {b.build_id}"
    banner_a, banner_b = detect_version(a).banner, detect_version(b).banner
    if banner_a and banner_b and banner_a != banner_b:
        return f"linux_banner {banner_a!r} vs {banner_b!r}"
    return _layout_difference(section_layout(a), section_layout(b))


def _layout_difference(a: Layout, b: Layout) -> str | None:
    if a == b:
        return None
    by_name_b = {name: (addr, size) for name, addr, size in b}
    for name, addr, size in a:
        other = by_name_b.get(name)
        if other is None:
            return f"section {name} is in one image only"
        if other != (addr, size):
            return (f"section {name} is {size:#x} bytes at {addr:#x} vs {other[1]:#x} bytes "
                    f"at {other[0]:#x}")
    extra = sorted({name for name, _a, _s in b} - {name for name, _a, _s in a})
    return f"section {extra[0]} is in one image only" if extra else "the section layouts differ"
