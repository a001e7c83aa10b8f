"""Write small ELF core files for the verify tests: memory laid out as a kdump vmcore,
/proc/kcore or QEMU's dump-guest-memory would lay it out, from a fixture kernel's bytes.

Written by hand from the System V gABI (ELF64 header, program headers, notes), independent of
the reader under test. Segments are placed at page-aligned file offsets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PT_LOAD, PT_NOTE = 1, 4
ET_CORE, EM_X86_64 = 4, 62
NO_ADDRESS = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Segment:
    vaddr: int  # 0: none (QEMU without paging)
    paddr: int  # NO_ADDRESS: none (kcore's vmalloc ranges)
    data: bytes


def note(name: str, ntype: int, desc: bytes) -> bytes:
    raw = name.encode() + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(raw), len(desc), ntype) + pad(raw) + pad(desc)


def vmcoreinfo(**fields: str) -> bytes:
    """A VMCOREINFO note: ``KEY=VALUE`` lines (keys with parentheses via ``dict(**{...})``)."""
    text = "".join(f"{k}={v}\n" for k, v in fields.items())
    return note("VMCOREINFO", 0, text.encode())


def write_core(path: Path, segments: list[Segment], notes: bytes = b"") -> Path:
    phnum = len(segments) + (1 if notes else 0)
    head = 64 + 56 * phnum
    offset = head + len(notes)
    phdrs, body = [], bytearray()
    if notes:
        phdrs.append(struct.pack("<IIQQQQQQ", PT_NOTE, 0, head, 0, 0, len(notes), 0, 0))
    for seg in segments:
        offset += -offset % 4096
        phdrs.append(struct.pack("<IIQQQQQQ", PT_LOAD, 7, offset, seg.vaddr, seg.paddr,
                                 len(seg.data), len(seg.data), 4096))
        body += bytes(offset - head - len(notes) - len(body)) + seg.data
        offset += len(seg.data)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", ET_CORE, EM_X86_64, 1, 0, 64, 0, 0, 64, 56,
                               phnum, 0, 0, 0)
    path.write_bytes(ehdr + b"".join(phdrs) + notes + bytes(body))
    return path
