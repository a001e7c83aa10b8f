"""Walk ELF note areas (PT_NOTE segments and SHT_NOTE sections).

Notes are found the way Xen's libelf finds them: every PT_NOTE segment first, and SHT_NOTE
sections only when the segments held none of the wanted notes (the caller decides that).
Name and descriptor sizes are rounded up to 4 bytes in both ELF classes, as Linux writes them
and libelf reads them.

libelf bounds its walk by the area only when choosing where the *next* note starts: a note that
starts inside the area is read even if its descriptor runs past the area's end, as long as the
bytes are in the file (``xen/common/libelf/libelf-dominfo.c`` ``elf_xen_parse_notes`` with
``libelf-tools.c`` ``elf_note_next``). ``iter_notes(..., like_libelf=True)`` does the same and
marks such a note ``overruns``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pvpatch.image import layouts as L
from pvpatch.image.elf import ElfImage

MAX_NOTES = 65536  # libelf's ELF_MAX_TOTAL_NOTE_COUNT: bound any walk


@dataclass(frozen=True)
class Note:
    name: str
    type: int
    desc: bytes
    offset: int  # file offset of the note header
    area: str  # e.g. "PT_NOTE[2]" or "section .notes"
    padded_desc: bytes = b""  # descriptor plus its alignment padding (libelf reads strings here)
    desc_offset: int = -1  # file offset of the descriptor (strings may run on past it)
    overruns: bool = False  # the note runs past the end of its area (read only like_libelf)


@dataclass(frozen=True)
class NoteArea:
    label: str
    offset: int
    size: int


def note_areas(image: ElfImage, kind: str) -> list[NoteArea]:
    """The PT_NOTE segments (``kind="segments"``) or SHT_NOTE sections (``"sections"``)."""
    if kind == "segments":
        return [NoteArea(f"PT_NOTE[{p.index}]", p.offset, p.filesz) for p in image.segments
                if p.type == L.PT_NOTE and p.offset != 0 and p.filesz]
    return [NoteArea(f"section {s.name}", s.offset, s.size) for s in image.sections
            if s.type == L.SHT_NOTE and s.size]


def iter_notes(image: ElfImage, area: NoteArea, problems: list[str] | None = None, *,
               like_libelf: bool = False) -> Iterator[Note]:
    """Yield the notes of one area; malformed tails are reported in ``problems`` and end it.

    With ``like_libelf`` a note that starts inside the area but runs past its end is still
    yielded (flagged ``overruns``) when its bytes are in the file, because Xen reads it; the
    walk ends after it, as libelf's does.
    """
    data = image.data
    end = min(area.offset + area.size, image.size)
    limit = image.size if like_libelf else end
    pos, count = area.offset, 0
    while pos < end and count < MAX_NOTES:
        if pos + L.NOTE_HEADER.size > limit:
            if like_libelf:
                _report(problems, f"{area.label}: {end - pos} stray bytes at file offset "
                                  f"{pos:#x}, too few for a note header")
            return
        h = L.NOTE_HEADER.unpack(data, pos)
        name_at = pos + L.NOTE_HEADER.size
        desc_at = name_at + _round4(h["n_namesz"])
        nxt = desc_at + _round4(h["n_descsz"])
        if nxt > limit or nxt <= pos:
            _report(problems, f"{area.label}: note at file offset {pos:#x} claims name "
                              f"{h['n_namesz']} + desc {h['n_descsz']} bytes, past the end of "
                              f"the {'file' if like_libelf else 'area'} ({limit:#x})")
            return
        overruns = nxt > end
        if overruns:
            _report(problems, f"{area.label}: note at file offset {pos:#x} (name "
                              f"{h['n_namesz']} + desc {h['n_descsz']} bytes) runs past the end "
                              f"of its area ({end:#x}); Xen still reads it from the file")
        raw_name = bytes(data[name_at:name_at + h["n_namesz"]])
        name = raw_name.split(b"\0", 1)[0].decode("latin-1")
        desc = bytes(data[desc_at:desc_at + h["n_descsz"]])
        padded = bytes(data[desc_at:nxt])
        yield Note(name, h["n_type"], desc, pos, area.label, padded, desc_at, overruns)
        if overruns:
            return
        pos = nxt
        count += 1


def _report(problems: list[str] | None, message: str) -> None:
    if problems is not None:
        problems.append(message)


def _round4(n: int) -> int:
    return (n + 3) & ~3


NT_GNU_BUILD_ID = 3  # elf.h; ld --build-id writes it into .notes of every vmlinux


def build_id(image: ElfImage) -> str | None:
    """The image's GNU build-id, hex (None: linked without one)."""
    for kind in ("segments", "sections"):
        for area in note_areas(image, kind):
            for note in iter_notes(image, area):
                if note.name == "GNU" and note.type == NT_GNU_BUILD_ID and note.desc:
                    return note.desc.hex()
    return None
