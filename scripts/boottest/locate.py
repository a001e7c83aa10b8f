#!/usr/bin/env python3
"""Find a kernel's ``.text`` in a raw dump of guest RAM, page by page, and write it out.

A Xen PV dom0 runs at its link addresses, but its pseudo-physical pages sit on machine frames
the hypervisor chose; QEMU only sees machine memory. The search itself is the library's
(``pvpatch.verify.locate``, whose docstring gives the steps), steered by the patch tables of
masks.py; this driver writes the reassembled .text image (pages found nowhere zero-filled) and
the location metadata boot.py records.

    scripts/boottest/locate.py --vmlinux V --ram RAM.bin -o xen1.text.bin [--meta M.json]
"""

from __future__ import annotations

import argparse
import collections
import mmap
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boottest.common import (PAGE, BootError, TextLayout, read_text, say,  # noqa: I001
                             text_layout, text_sites, write_json)
from boottest.masks import build_mask
from pvpatch.verify.locate import Located, Locator


def locate_text(vmlinux: Path, ram_path: Path, out: Path) -> dict:
    """Write the reassembled .text image to ``out``; return the location metadata."""
    text = text_layout(vmlinux)
    code = read_text(vmlinux)
    mask = build_mask(vmlinux, text, text_sites(vmlinux))
    with open(ram_path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as ram:
        loc = Locator(code, mask.flat, mask.pages["pv"], ram, say=say).locate()
        image = bytearray(len(code))
        for i, f in enumerate(loc.frames):
            if f is not None:
                n = min(PAGE, len(code) - i * PAGE)
                image[i * PAGE:i * PAGE + n] = ram[f * PAGE:f * PAGE + n]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(image)
    tmp.replace(out)
    return location_meta(text, loc)


def location_meta(text: TextLayout, loc: Located) -> dict:
    missing = [i for i, f in enumerate(loc.frames) if f is None]
    odd = [{"page": i, "vaddr": hex(text.vaddr + i * PAGE), "frame_addr": hex(f.frame * PAGE),
            "how": loc.how[i], "unexplained_bytes": f.unexplained}
           for i, f in enumerate(loc.fits) if f is not None and f.unexplained]
    return {
        "pages": len(loc.frames),
        "located": len(loc.frames) - len(missing),
        "how": dict(collections.Counter(h for h in loc.how if h)),
        "missing_pages": [{"page": i, "vaddr": hex(text.vaddr + i * PAGE)} for i in missing],
        "ambiguous_pages": [hex(text.vaddr + i * PAGE) for i in loc.ambiguous],
        "stale_copies_at": [hex(d * PAGE) for d in loc.stale],
        "pages_with_unexplained_bytes": odd,
        "displacements": {hex(d * PAGE): c for d, c in loc.deltas.most_common(8)},
        "runs": [{"vaddr": hex(text.vaddr + r["first_page"] * PAGE),
                  "machine_addr": hex(r["first_frame"] * PAGE), "pages": r["pages"]}
                 for r in loc.runs()],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vmlinux", required=True, type=Path)
    ap.add_argument("--ram", required=True, type=Path, help="raw guest RAM from address 0")
    ap.add_argument("-o", "--output", required=True, type=Path, help="the .text image to write")
    ap.add_argument("--meta", type=Path, help="also write the location metadata (JSON)")
    a = ap.parse_args()
    try:
        meta = locate_text(a.vmlinux, a.ram, a.output)
    except BootError as e:
        print(f"locate: {e}", file=sys.stderr)
        return 2
    if a.meta:
        write_json(a.meta, meta)
    print(f"{meta['located']}/{meta['pages']} pages located ({meta['how']}); runs:")
    for r in meta["runs"]:
        print(f"  {r['vaddr']} → machine {r['machine_addr']}  {r['pages']} pages")
    for p in meta["missing_pages"]:
        print(f"  missing: page at {p['vaddr']}")
    for p in meta["pages_with_unexplained_bytes"]:
        print(f"  {p['vaddr']}: {p['unexplained_bytes']} bytes differ outside every patch "
              f"table ({p['how']})")
    return 0 if not meta["missing_pages"] else 1


if __name__ == "__main__":
    sys.exit(main())
