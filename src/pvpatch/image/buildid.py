"""The GNU build-id of an image: the linker's hash of one build (``ld --build-id``).

Linux links every vmlinux with ``--build-id`` (the top Makefile's ``LDFLAGS_vmlinux``), and the
note survives into the ``vmlinux.bin`` a bzImage compresses (``objcopy -S`` keeps allocated
note sections), so a debug vmlinux and the vmlinuz of the same build carry the same id. It is
the one fact that says "same build" without reading anything else; an image without one is
compared by what it has instead (:mod:`pvpatch.image.same_build`).
"""

from __future__ import annotations

from pvpatch.image.elf import ElfImage
from pvpatch.image.notes import iter_notes, note_areas

GNU_OWNER = "GNU"
NT_GNU_BUILD_ID = 3  # elf.h


def read_build_id(image: ElfImage) -> str | None:
    """The build-id as lowercase hex, or None when the image has no such note.

    PT_NOTE segments first (what a loader sees), then SHT_NOTE sections (an image linked
    without program headers, or whose segments lost the note)."""
    for kind in ("segments", "sections"):
        for area in note_areas(image, kind):
            for note in iter_notes(image, area):
                if note.name == GNU_OWNER and note.type == NT_GNU_BUILD_ID and note.desc:
                    return note.desc.hex()
    return None
