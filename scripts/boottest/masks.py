"""Where in ``.text`` the kernel may rewrite itself at boot, from its own patch tables.

Each byte of ``.text`` gets a bit per table naming it: the pv sites (``.parainstructions``, via
``pvpatch inspect``), the pv static-call sites and trampolines (its ``static_calls``: a kind of
their own, counted before the generic static-call tables), alternatives, jump labels, ftrace's
mcount locations, static calls (sites and trampolines), retpoline and return-thunk sites, SMP
lock prefixes, sealed ENDBRs. A byte that boot changed but no table names is *unexplained*; a
located page should have almost none.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from boottest.common import TextLayout
from pvpatch.kernel.boot_writes import KINDS

# The tables themselves are read by the library (pvpatch.kernel.boot_writes, which verify
# uses too); here each byte gets a bit per kind, for the accounting.
BIT = {k: 1 << i for i, k in enumerate(KINDS)}


@dataclass
class PatchMask:
    text: TextLayout
    bits: array  # one unsigned short per .text byte
    flat: bytearray  # 1 where any table names the byte, else 0
    counts: dict[str, int]  # table entries that landed in .text, per kind
    pages: dict[str, set[int]]  # .text pages (offset // 4096) holding a site, per kind
    notes: list[str]

    def kinds_at(self, offset: int) -> list[str]:
        b = self.bits[offset]
        return [k for k in KINDS if b & BIT[k]]

    def clean(self, start: int, end: int) -> bool:
        return self.flat.find(1, start, end) < 0


def build_mask(vmlinux, text: TextLayout, pv_sites: list[dict],
               pv_static_calls: list[dict] = ()) -> PatchMask:
    from pvpatch.image.elf import ElfImage
    from pvpatch.kernel.alternatives import read_alternatives
    from pvpatch.kernel.boot_writes import table_spans

    bits = array("H", bytes(2 * text.size))
    flat = bytearray(text.size)
    counts = dict.fromkeys(KINDS, 0)
    pages: dict[str, set[int]] = {k: set() for k in KINDS}
    notes: list[str] = []

    def mark(kind: str, addr: int, length: int) -> None:
        off = addr - text.vaddr
        if 0 <= off < text.size:
            counts[kind] += 1
            pages[kind].update(range(off // 4096, (off + length - 1) // 4096 + 1))
            b = BIT[kind]
            end = min(off + length, text.size)
            for i in range(off, end):
                bits[i] |= b
            flat[off:end] = b"\1" * (end - off)

    for s in pv_sites:
        mark("pv", s["addr"], s["length"])
    for s in pv_static_calls:
        mark("pv_static_call", s["addr"], s["length"])
    with ElfImage(vmlinux) as im:
        try:
            alts = read_alternatives(im, None)
        except Exception as e:  # the mask only steers the search; say so and go on
            alts = None
            notes.append(f".altinstructions not read ({e})")
        spans, more = table_spans(im, im.section(".text"), alts)
    notes += more
    for kind in KINDS:
        for addr, length in spans.get(kind, ()):
            mark(kind, addr, length)
    return PatchMask(text, bits, flat, counts, pages, notes)


def account(orig: bytes, boot: bytes, mask: PatchMask, valid=None) -> dict:
    """Which tables explain the bytes that differ between ``orig`` and ``boot`` (.text images).

    ``valid(offset)`` may exclude bytes (pages a dump lacks). Each differing byte counts once,
    for the first table naming it; ``unexplained`` lists the runs no table names.
    """
    by_kind = dict.fromkeys(KINDS, 0)
    unexplained: list[tuple[int, int]] = []
    total = 0
    step = 256
    for base in range(0, min(len(orig), len(boot)), step):
        a, b = orig[base:base + step], boot[base:base + step]
        if a == b:
            continue
        for j in range(len(a)):
            if a[j] == b[j]:
                continue
            off = base + j
            if valid is not None and not valid(off):
                continue
            total += 1
            m = mask.bits[off]
            if not m:
                if unexplained and unexplained[-1][0] + unexplained[-1][1] == off:
                    unexplained[-1] = (unexplained[-1][0], unexplained[-1][1] + 1)
                else:
                    unexplained.append((off, 1))
                continue
            for k in KINDS:
                if m & BIT[k]:
                    by_kind[k] += 1
                    break
    return {"changed_bytes": total, "by_table": {k: v for k, v in by_kind.items() if v},
            "unexplained_bytes": sum(n for _, n in unexplained), "unexplained_runs": unexplained}
