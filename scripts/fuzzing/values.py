"""The values mutators write: boundary numbers, and the byte-level edits every format shares.

Readers go wrong at 0, at all-ones, at sizes just past an end and at small off-by-ones, so a
field is given one of those far more often than a uniformly random value.
"""

from __future__ import annotations

import random
import struct

from pvpatch.image import layouts as L

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 15, 16, 24, 63, 64, 255, 256, 0x7FFF, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def boundary(rng: random.Random, old: int, limit: int) -> int:
    """A new value for a field holding ``old`` that may hold 0 … ``limit``."""
    choice = rng.randrange(4)
    if choice == 0:
        return rng.choice(INTERESTING) % (limit + 1)
    if choice == 1:
        return (old + rng.choice((-8, -4, -1, 1, 4, 8, 16))) % (limit + 1)
    if choice == 2:
        return old ^ (1 << rng.randrange(limit.bit_length()))
    return rng.randrange(limit + 1)


def poke_int(buf: bytearray, rng: random.Random, at: int, width: int) -> str:
    """Write a boundary-ish value into the little-endian integer at ``at``."""
    if at < 0 or at + width > len(buf):
        return "field out of range"
    old = int.from_bytes(buf[at:at + width], "little")
    new = boundary(rng, old, (1 << (8 * width)) - 1)
    buf[at:at + width] = new.to_bytes(width, "little")
    return f"{old:#x}→{new:#x}"


def poke_field(buf: bytearray, rng: random.Random, at: int, layout: L.Layout, what: str) -> str:
    """:func:`poke_int` on one named field of the ``layout`` record at ``at``."""
    name = rng.choice(layout.fields)
    codes = layout.fmt.format[1:]
    index = layout.fields.index(name)
    off = at + struct.calcsize("<" + codes[:index])
    return f"{what}.{name} " + poke_int(buf, rng, off, struct.calcsize("<" + codes[index]))


def flip_bytes(buf: bytearray, rng: random.Random) -> str:
    """A few random bytes anywhere: what no structure-aware mutator thought of."""
    at = rng.randrange(len(buf)) if buf else 0
    n = rng.choice((1, 2, 4, 8))
    for i in range(at, min(at + n, len(buf))):
        buf[i] = rng.randrange(256)
    return f"bytes@{at:#x}+{n}"


def truncate(buf: bytearray, rng: random.Random) -> str:
    """Cut the file short: at a header's edge or anywhere."""
    keep = rng.choice((0, 3, 16, 24, 52, 64, rng.randrange(len(buf) + 1)))
    del buf[keep:]
    return f"truncated to {keep}"
