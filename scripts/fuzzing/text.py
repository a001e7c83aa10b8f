"""Mutants of the text inputs: ``--system-map FILE`` and ``--cpuinfo FILE``.

Both are line-based, so most mutants change one line: a field dropped or added, an address
too large for any register, negative or not hex, a name duplicated at another address, a
type letter that is a word, a line of binary garbage or a megabyte long. Some change the
whole file: every address shifted (a KASLR /proc/kallsyms), another build's map, nothing at
all, the Debian placeholder, CRLF line ends, bytes that are not UTF-8.
"""

from __future__ import annotations

import random

HUGE_HEX = ("f" * 17, "1" + "0" * 16, "f" * 64, "9" * 5000)
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 158
model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz
stepping\t: 10
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov monitor sse sse2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
flags\t\t: fpu vme de pse tsc
"""
VENDORS = ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls", "  Shanghai  ",
           "CyrixInstead", "", " ", "GenuineIntel\x00", "Genuine Intel", "é" * 12)
NUMBERS = ("0", "-1", "6", "15", "0x6", "1e3", "", " ", "99999999999999999999", "9" * 5000,
           "６", "1_5", "+6", "NaN", "0b1", "255", "256", "271")


def _encode(text: str) -> bytes:
    """The file's bytes: UTF-8, with the bytes a mutant holds that are not (surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def _random_line(rng: random.Random) -> str:
    pick = rng.randrange(5)
    if pick == 0:
        return rng.randbytes(rng.randrange(1, 64)).decode("latin-1")
    if pick == 1:
        return "x" * rng.choice((4096, 1 << 20))
    if pick == 2:
        return "\0" * rng.randrange(1, 8)
    if pick == 3:
        return "\ufeff" + "ffffffff81000000 T _text"
    return " ".join(rng.choice(("T", "t", "[mod]", "0", "U", "w", "ffff", "::")) for _ in
                    range(rng.randrange(1, 6)))


def _map_line(line: str, rng: random.Random) -> str:
    """One System.map line ``address type name`` changed in one of its fields."""
    parts = line.split()
    if len(parts) != 3:
        return _random_line(rng)
    addr, kind, name = parts
    pick = rng.randrange(9)
    if pick == 0:
        addr = rng.choice(HUGE_HEX)
    elif pick == 1:
        addr = rng.choice(("-1", "-" + addr, "0x" + addr, "zzzz", "", "1_0", addr + "g"))
    elif pick == 2:
        kind = rng.choice(("TT", "?", "", "U", "w", "a", "A", "\x00", "é"))
    elif pick == 3:
        name = rng.choice(("", name + " extra", name * 500, "é" + name, name + "\x00"))
    elif pick == 4:
        return f"{addr} {kind}"
    elif pick == 5:
        return f"{addr} {kind} {name} [{rng.choice(('kvm', ''))}]"
    elif pick == 6 and all(c in "0123456789abcdef" for c in addr):
        addr = f"{(int(addr, 16) + rng.choice((1, 0x40, -1, 1 << 63))) % (1 << 64):016x}"
    elif pick == 7:
        addr = f"{rng.choice((0, 1, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF)):016x}"
    else:
        return _random_line(rng)
    return f"{addr} {kind} {name}"


def system_map(text: str, rng: random.Random, other: str | None = None) -> tuple[bytes, str]:
    """A mutant of the map ``text``; ``other`` is another build's map, sometimes taken."""
    lines = text.splitlines()
    pick = rng.randrange(12)
    if pick == 0 and other is not None:
        return _encode(other), "another build's map"
    if pick == 1 and lines:  # every address moved: /proc/kallsyms of a KASLR boot
        delta = rng.choice((0x1000, 0x200000, 0x1E600000, -0x1000))
        moved = []
        for line in lines:
            p = line.split()
            if len(p) == 3 and all(c in "0123456789abcdef" for c in p[0]):
                p[0] = f"{(int(p[0], 16) + delta) % (1 << 64):016x}"
            moved.append(" ".join(p))
        return _encode("\n".join(moved)), f"every address moved by {delta:#x}"
    if pick == 2:
        return rng.choice((b"", b"\n", b"ffffffffffffffff B The real System.map is in the "
                           b"linux-image-<version>-dbg package\n")), "empty or placeholder"
    if pick == 3:
        return _encode(text.replace("\n", "\r\n")), "CRLF line ends"
    if pick == 4 and lines:  # a symbol again, elsewhere
        i = rng.randrange(len(lines))
        dup = _map_line(lines[i], random.Random(rng.random())) if rng.random() < 0.5 else lines[i]
        lines.insert(rng.randrange(len(lines) + 1), dup)
        return _encode("\n".join(lines)), f"line {i + 1} duplicated"
    if pick == 5:
        return rng.randbytes(rng.choice((1, 100, 4096))), "binary garbage"
    if pick == 6 and lines:
        del lines[rng.randrange(len(lines)):]
        return _encode("\n".join(lines)), "cut short"
    if not lines:
        return _encode(_random_line(rng)), "a random line"
    log = []
    for _ in range(rng.choice((1, 1, 2, 4))):
        i = rng.randrange(len(lines))
        lines[i] = _map_line(lines[i], rng)
        log.append(f"line {i + 1}")
    return _encode("\n".join(lines)), "changed " + ", ".join(log)


def cpuinfo(rng: random.Random) -> tuple[bytes, str]:
    """A mutant of a two-processor /proc/cpuinfo."""
    lines = CPUINFO.splitlines()
    pick = rng.randrange(9)
    if pick == 0:
        return rng.choice((b"", b"\n\n", rng.randbytes(256), b"\xff\xfe" + b"\0" * 64)), \
            "empty or garbage"
    log = []
    for _ in range(rng.choice((1, 2, 3))):
        i = rng.randrange(len(lines))
        key, sep, value = lines[i].partition(":")
        field = key.strip()
        what = rng.randrange(6)
        if what == 0:
            lines[i] = ""  # a blank line: the first processor ends early
        elif what == 1:
            del lines[i]
        elif what == 2 and field in ("cpu family", "model"):
            lines[i] = f"{key}: {rng.choice(NUMBERS)}"
        elif what == 2 and field == "vendor_id":
            lines[i] = f"{key}: {rng.choice(VENDORS)}"
        elif what == 3:
            lines[i] = key + value  # no colon
        elif what == 4:
            lines.insert(i, f"{key}{sep} {rng.choice(NUMBERS + VENDORS)}")  # the key again
        else:
            lines[i] = f"{key}: " + " ".join(f"f{n}" for n in range(rng.choice((0, 1, 50000))))
        log.append(f"{field or 'line'} ({what})")
        if not lines:
            break
    return "\n".join(lines).encode("utf-8"), ", ".join(log)
