"""Mutants of raw BTF files (``--btf FILE``, as /sys/kernel/btf/vmlinux holds them).

The seeds are the .BTF sections of the fixture images, extracted as files. A mutant changes
one header field (magic, version, hdr_len, the type and string sections' offsets and
lengths), one field of one type record (its name offset, its kind, vlen and kind_flag, its
size or type id — a typedef pointing at itself, a struct of 2^32 bytes), one member (its
name, type id and bit offset), or the string section (a NUL lost, a name renamed, bytes
that are not UTF-8); or it cuts, extends or shifts the file.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from fuzzing.values import boundary, flip_bytes, poke_int, truncate
from pvpatch.types.btf import HEADER, KINDS

#: the header's fields as (offset, width, name)
HEADER_FIELDS = ((0, 2, "magic"), (2, 1, "version"), (3, 1, "flags"), (4, 4, "hdr_len"),
                 (8, 4, "type_off"), (12, 4, "type_len"), (16, 4, "str_off"),
                 (20, 4, "str_len"))


def _sections(buf: bytes | bytearray) -> tuple[int, int, int, int] | None:
    """(type section start, end, string section start, end) as the header says, clipped."""
    if len(buf) < HEADER.size:
        return None
    _m, _v, _f, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(buf)
    t0 = min(hdr_len + type_off, len(buf))
    s0 = min(hdr_len + str_off, len(buf))
    return t0, min(t0 + type_len, len(buf)), s0, min(s0 + str_len, len(buf))


def records(buf: bytes | bytearray) -> list[tuple[int, int, int]]:
    """(offset, kind, vlen) of each type record, walked until one does not parse."""
    where = _sections(buf)
    if where is None:
        return []
    pos, end, _s0, _s1 = where
    out = []
    while pos + 12 <= end and len(out) < 100_000:
        info = struct.unpack_from("<I", buf, pos + 4)[0]
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        k = KINDS.get(kind)
        if k is None:
            break
        out.append((pos, kind, vlen))
        pos += 12 + k.extra + k.per_vlen * vlen
    return out


def header_field(buf: bytearray, rng: random.Random) -> str:
    at, width, name = rng.choice(HEADER_FIELDS)
    return f"btf header {name} " + poke_int(buf, rng, at, width)


def type_record(buf: bytearray, rng: random.Random) -> str:
    """The common part of one record: name_off, info (vlen, kind, kind_flag), size/type."""
    recs = records(buf)
    if not recs:
        return header_field(buf, rng)
    pos, kind, _vlen = rng.choice(recs)
    what = rng.choice(("name_off", "vlen", "kind", "kind_flag", "size_or_type", "self"))
    if what == "name_off":
        return f"type@{pos:#x} name_off " + poke_int(buf, rng, pos, 4)
    if what == "size_or_type":
        return f"type@{pos:#x} size/type " + poke_int(buf, rng, pos + 8, 4)
    if what == "self":  # a qualifier or pointer to itself: a cycle in the type graph
        type_id = recs.index((pos, kind, _vlen)) + 1
        struct.pack_into("<I", buf, pos + 8, type_id)
        return f"type@{pos:#x} refers to itself (id {type_id})"
    info = struct.unpack_from("<I", buf, pos + 4)[0]
    if what == "vlen":
        new = (info & ~0xFFFF) | boundary(rng, info & 0xFFFF, 0xFFFF)
    elif what == "kind":
        new = (info & ~(0x1F << 24)) | rng.randrange(32) << 24
    else:
        new = info ^ (1 << 31)
    struct.pack_into("<I", buf, pos + 4, new)
    return f"type@{pos:#x} info {info:#x}→{new:#x} ({what})"


def member(buf: bytearray, rng: random.Random) -> str:
    """One member, parameter, enumerator or array field after a record's common part."""
    recs = [r for r in records(buf) if (KINDS[r[1]].per_vlen and r[2]) or KINDS[r[1]].extra]
    if not recs:
        return type_record(buf, rng)
    pos, kind, vlen = rng.choice(recs)
    k = KINDS[kind]
    payload = k.extra + k.per_vlen * vlen
    at = pos + 12 + rng.randrange(max(payload // 4, 1)) * 4
    return f"{k.name}@{pos:#x} payload+{at - pos - 12:#x} " + poke_int(buf, rng, at, 4)


def strings(buf: bytearray, rng: random.Random) -> str:
    """The string section: a NUL dropped or added, a name changed, bytes not UTF-8."""
    where = _sections(buf)
    if where is None or where[3] <= where[2]:
        return flip_bytes(buf, rng)
    s0, s1 = where[2], where[3]
    at = rng.randrange(s0, s1)
    pick = rng.randrange(3)
    if pick == 0:
        buf[at] = 0 if buf[at] else ord("x")
        return f"btf string@{at - s0:#x}: NUL toggled"
    if pick == 1:
        buf[at] = rng.choice((0x80, 0xC3, 0xFF, 0xE2))
        return f"btf string@{at - s0:#x}: a byte that is not UTF-8"
    end = buf.find(b"\0", at, s1)
    if end < 0:
        end = s1
    if end > at:
        buf[at:end] = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(end - at))
    return f"btf string@{at - s0:#x}: renamed"


def reshape(buf: bytearray, rng: random.Random) -> str:
    """The file cut, extended with garbage, or a record's bytes shifted by a word."""
    pick = rng.randrange(3)
    if pick == 0:
        return truncate(buf, rng)
    if pick == 1:
        n = rng.choice((1, 4, 12, 4096))
        buf += rng.randbytes(n)
        return f"{n} bytes appended"
    recs = records(buf)
    if not recs:
        return truncate(buf, rng)
    pos = rng.choice(recs)[0]
    del buf[pos:pos + 4]
    return f"4 bytes removed at type@{pos:#x}"


MUTATORS: dict[str, Callable[[bytearray, random.Random], str]] = {
    "btf-header": header_field,
    "btf-type": type_record,
    "btf-member": member,
    "btf-strings": strings,
    "btf-reshape": reshape,
}


def mutate(raw: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """One raw-BTF mutant: 1–3 of the mutations above."""
    buf = bytearray(raw)
    log = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        name = rng.choice(list(MUTATORS))
        log.append(f"{name}: {MUTATORS[name](buf, rng)}")
    return bytes(buf), log
