"""Record layouts of ``.parainstructions``, one per era, declared as data.

Every released kernel stores an absolute link-time pointer to the site, then the type byte and
the length byte; whether a 16-bit clobber mask follows changed twice. Sources: the kernel's
``paravirt_types.h`` / ``paravirt.h`` of each era (kernel-pv fact sheet §2.1).
"""

from __future__ import annotations

from dataclasses import dataclass

Version = tuple[int, int, int]  # KernelVersion.key


@dataclass(frozen=True)
class RecordLayout:
    name: str
    versions: str
    first: Version
    last: Version  # inclusive
    bits: int  # ELF class it applies to
    stride: int  # bytes from one record to the next
    ptr_size: int
    type_off: int
    len_off: int
    clobbers_off: int | None  # None: no clobber word in the records
    clobbers_used: bool  # does the kernel of that era read the mask?
    note: str = ""

    @property
    def min_record(self) -> int:
        """Bytes the last record must have: the kernel never padded the final one before 6.1."""
        return (self.clobbers_off + 2) if self.clobbers_off is not None else self.len_off + 1

    def holds(self, version: Version) -> bool:
        return self.first <= version <= self.last


LAYOUTS = (
    RecordLayout("i386+clobbers", "2.6.20–4.19 (32-bit)", (2, 6, 20), (4, 19, 0),
                 32, 8, 4, 4, 5, 6, True, "pointer, type, len, u16 clobbers"),
    RecordLayout("i386+stale-clobbers", "4.20–6.1 (32-bit)", (4, 20, 0), (6, 1, 0),
                 32, 8, 4, 4, 5, 6, False,
                 "clobbers left the C struct in 4.20 but compiled sites still wrote them"),
    RecordLayout("i386", "6.2–6.7 (32-bit)", (6, 2, 0), (6, 7, 0),
                 32, 8, 4, 4, 5, None, False, "pointer, type, len, pad (clobber word removed)"),
    RecordLayout("x86_64+clobbers", "2.6.25–4.19", (2, 6, 25), (4, 19, 0),
                 64, 16, 8, 8, 9, 10, True, "pointer, type, len, u16 clobbers, pad"),
    RecordLayout("x86_64+stale-clobbers", "4.20–6.1", (4, 20, 0), (6, 1, 0),
                 64, 16, 8, 8, 9, 10, False,
                 "clobbers left the C struct in 4.20 but compiled sites still wrote them"),
    RecordLayout("x86_64", "6.2–6.7", (6, 2, 0), (6, 7, 0),
                 64, 16, 8, 8, 9, None, False, "pointer, type, len, pad (clobber word removed)"),
)

#: record sizes any layout uses, for error messages
KNOWN_STRIDES = tuple(sorted({lay.stride for lay in LAYOUTS}))


def layouts_for(bits: int) -> list[RecordLayout]:
    return [lay for lay in LAYOUTS if lay.bits == bits]
