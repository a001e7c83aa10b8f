#!/usr/bin/env python3
"""Turn the kcore /init's debugcon stream into a core file `pvpatch verify` reads.

The guest's /proc/kcore cannot leave the guest whole (its offsets run to 128 TiB), so the
kcore /init (initramfs.py) streams the parts verify reads — the head of the file (ELF header,
program headers, notes, VMCOREINFO among them) and the first 32 MiB of the PT_LOAD of the
kernel image (KCORE_TEXT, at its runtime address: .text and the start of .rodata) — as
records after a magic. Here they
become one ELF core: the guest's own header fields and notes, that one PT_LOAD with the
guest's p_vaddr/p_paddr, its bytes at an offset that fits a file. Every byte is /proc/kcore's.

    scripts/boottest/kcore.py STREAM OUT
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boottest.common import BootError
from boottest.initramfs import KCORE_MAGIC

END = 0xFFFFFFFFFFFFFFFF
PHDR = struct.Struct("<IIQQQQQQ")  # p_type p_flags p_offset p_vaddr p_paddr p_filesz …


def records(stream: bytes) -> dict[int, bytes]:
    """File offset → bytes, as the guest read them."""
    if not stream.startswith(KCORE_MAGIC):
        raise BootError("the guest wrote no kcore stream (no /proc/kcore, or no iopl?)")
    out, pos = {}, len(KCORE_MAGIC)
    while pos + 16 <= len(stream):
        off, n = struct.unpack_from("<QQ", stream, pos)
        pos += 16
        if off == END:
            return out
        out[off] = stream[pos:pos + n]
        pos += n
    raise BootError("the kcore stream ends before its last record: the guest stopped?")


def reassemble(stream: bytes, path: Path) -> dict:
    """Write the core; return what it holds (for the boot metadata)."""
    got = records(stream)
    head = got.pop(0, b"")
    if len(head) < 64 or head[:4] != b"\x7fELF":
        raise BootError("the kcore stream has no ELF header")
    phoff, = struct.unpack_from("<Q", head, 32)
    ent, num = struct.unpack_from("<HH", head, 54)
    phdrs = [PHDR.unpack_from(head, phoff + i * ent) for i in range(num)]
    notes = [p for p in phdrs if p[0] == 4]
    text = [p for p in phdrs if p[0] == 1 and p[3] >= 0xFFFFFFFF80000000]
    if not notes or not text:
        raise BootError("/proc/kcore has no PT_NOTE or no kernel-image PT_LOAD")
    note = head[notes[0][2]:notes[0][2] + notes[0][5]]
    t = text[0]
    data = b"".join(got[off] for off in sorted(got) if t[2] <= off < t[2] + t[5])
    note_at = 64 + 2 * PHDR.size
    load_at = -(-(note_at + len(note)) // 4096) * 4096
    ehdr = head[:16] + struct.pack("<HHIQQQIHHHHHH", 4, struct.unpack_from("<H", head, 18)[0],
                                   1, 0, 64, 0, 0, 64, PHDR.size, 2, 0, 0, 0)
    ph = PHDR.pack(4, 0, note_at, 0, 0, len(note), len(note), 4) + \
        PHDR.pack(1, t[1], load_at, t[3], t[4], len(data), len(data), t[7])
    body = ehdr + ph + note
    path.write_bytes(body + bytes(load_at - len(body)) + data)
    return {"kcore_phnum": num, "text_vaddr": hex(t[3]), "text_paddr": hex(t[4]),
            "text_filesz": t[5], "captured": len(data), "notes_bytes": len(note)}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[-1].strip(), file=sys.stderr)
        return 2
    try:
        info = reassemble(Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]))
    except BootError as e:
        print(f"kcore: {e}", file=sys.stderr)
        return 2
    print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
