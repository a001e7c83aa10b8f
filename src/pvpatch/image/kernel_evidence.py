"""Is this ELF a Linux kernel at all? Every command asks before it reads anything else.

Without this, ``pvpatch inspect /bin/ls`` found "no pv-op table" and exited 0, while
``check`` and ``apply`` failed for reasons that had nothing to do with the real problem. An
image counts as a kernel when it shows any mark only a kernel build leaves, tried cheapest
first (so a real vmlinux answers from its section headers):

- a section only the kernel's linker script makes (the pv and alternative tables, the
  exported-symbol table);
- an ELF note with owner ``Linux`` (the build-salt and kernel-version notes of
  ``include/linux/elfnote.h``) or ``Xen`` (``arch/x86/xen/xen-head.S``), or the legacy
  ``__xen_guest`` section;
- a ``linux_banner`` or ``start_kernel`` symbol (from ``.symtab``, else kallsyms).
"""

from __future__ import annotations

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.image.notes import iter_notes, note_areas

KERNEL_SECTIONS = (".parainstructions", ".altinstructions", "__ksymtab", "__ksymtab_gpl",
                   "__xen_guest")
KERNEL_NOTE_OWNERS = ("Linux", "Xen")
KERNEL_SYMBOLS = ("linux_banner", "start_kernel")


def kernel_mark(image: ElfImage) -> str | None:
    """The first mark of a kernel the image shows (for messages), or None."""
    names = {s.name for s in image.sections}
    for name in KERNEL_SECTIONS:
        if name in names:
            return f"section {name}"
    for kind in ("segments", "sections"):
        for area in note_areas(image, kind):
            for note in iter_notes(image, area):
                if note.name in KERNEL_NOTE_OWNERS:
                    return f"a {note.name} ELF note"
    for name in KERNEL_SYMBOLS:
        if image.symbols.get(name) is not None:
            return f"symbol {name}"
    return None


def require_kernel(image: ElfImage) -> None:
    """InputError, in one line saying what is missing, when ``image`` is not a kernel."""
    if kernel_mark(image) is None:
        raise InputError(
            f"is an ELF{image.bits} {image.machine} file but not a Linux kernel: no "
            f"{' or '.join(KERNEL_SYMBOLS)} symbol, no {' or '.join(KERNEL_NOTE_OWNERS)} ELF "
            f"note, none of the sections {', '.join(KERNEL_SECTIONS)}", image.path)
