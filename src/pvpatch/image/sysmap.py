"""Read a ``System.map`` (``nm -n vmlinux``: ``address type name`` per line) for an image.

Distributions ship one beside each vmlinuz. Debian's is a one-line placeholder pointing to the
``-dbg`` package; that, a map of another build and a KASLR-shifted ``/proc/kallsyms`` are
refused with a message rather than silently naming the wrong functions.
"""

from __future__ import annotations

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.image.symbols import SymbolTable

MIN_MATCHING = 0.9  # share of the map's text symbols that must land in the image's code


def parse_system_map(text: str, path: str) -> list[tuple[str, int, str]]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if "System.map" in line or len(parts) < 3 or len(parts[1]) != 1:
            if "real System.map" in line or "-dbg" in line:
                said = " ".join(parts[2:])
                raise InputError(f"is a placeholder, not a System.map: \"{said}\"", path)
            if len(parts) == 4 and parts[3].startswith("["):
                continue  # a module's symbol in /proc/kallsyms
            raise InputError(f"line {lineno} is not `address type name`: {line.strip()!r}",
                             path)
        try:
            addr = int(parts[0], 16)
        except ValueError:
            raise InputError(f"line {lineno}: {parts[0]!r} is not a hex address", path) from None
        if parts[1] in "Uw" and addr == 0:
            continue  # undefined
        entries.append((parts[2], addr, parts[1]))
    if not entries:
        raise InputError("holds no symbols", path)
    return entries


def load_system_map(path: str, image: ElfImage) -> SymbolTable:
    """The symbols of ``path`` for ``image``; InputError when they do not fit its sections."""
    try:
        with open(path, encoding="latin-1") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror}", path) from None
    entries = parse_system_map(text, path)
    text_syms = [a for _n, a, t in entries if t in "tT"]
    if text_syms:
        inside = sum(1 for a in text_syms if (s := image.section_at(a)) is not None and s.is_exec)
        if inside < MIN_MATCHING * len(text_syms):
            raise InputError(f"does not match {image.path}: {len(text_syms) - inside} of "
                             f"{len(text_syms)} text symbols lie outside its code (another "
                             "build, or a KASLR-shifted /proc/kallsyms?)", path)
    return SymbolTable.from_entries(image, entries, "System.map")
