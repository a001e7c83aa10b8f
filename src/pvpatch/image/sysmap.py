"""Read a ``System.map`` (``nm -n vmlinux``: ``address type name`` per line) for an image.

Distributions ship one beside each vmlinuz. Debian's is a one-line placeholder pointing to the
``-dbg`` package; that, a map of another build and a KASLR-shifted ``/proc/kallsyms`` are
refused with a message rather than silently naming the wrong functions.
"""

from __future__ import annotations

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.image.symbols import SymbolTable
from pvpatch.inputs import SYSTEM_MAP_LIMIT, read_bounded

MIN_MATCHING = 0.9  # share of the map's text symbols that must land in the image's code

# Symbols the linker script defines at one edge of an output section, in every era pvpatch
# reads (arch/x86/kernel/vmlinux.lds.S; include/asm-generic/vmlinux.lds.h INIT_TEXT_SECTION):
# a map of this build has them exactly there, while another build's tables end elsewhere.
SECTION_EDGES = (
    ("__parainstructions", ".parainstructions", "start"),
    ("__parainstructions_end", ".parainstructions", "end"),
    ("__alt_instructions", ".altinstructions", "start"),
    ("__alt_instructions_end", ".altinstructions", "end"),
    ("_sinittext", ".init.text", "start"),
    ("_einittext", ".init.text", "end"),
)
# Symbols compared with the image's own (.symtab, else kallsyms) wherever it has them.
ANCHORS = ("_text", "_stext", "_etext", "linux_banner", "pv_ops",
           *(name for name, _sec, _edge in SECTION_EDGES))
BANNER = b"Linux version "


HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_system_map(text: str, path: str, bits: int = 64) -> list[tuple[str, int, str]]:
    """(name, address, type letter) of every symbol; ``bits``: the image's address width,
    which every address must fit (nm writes them as plain hex digits, nothing else)."""
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or (len(parts) == 2 and parts[0] in ("U", "w", "v")):
            continue  # blank, or nm's undefined symbol (scripts/mksysmap drops them)
        if "System.map" in line or len(parts) < 3 or len(parts[1]) != 1:
            if "real System.map" in line or "-dbg" in line:
                said = " ".join(parts[2:])
                raise InputError(f"is a placeholder, not a System.map: \"{said}\"", path)
            if len(parts) == 4 and parts[3].startswith("["):
                continue  # a module's symbol in /proc/kallsyms
            raise InputError(f"line {lineno} is not `address type name`: {line.strip()!r}",
                             path)
        addr = _address(parts[0], bits, lineno, path)
        if parts[1] in "Uw" and addr == 0:
            continue  # undefined
        entries.append((parts[2], addr, parts[1]))
    if not entries:
        raise InputError("holds no symbols", path)
    return entries


def _address(text: str, bits: int, lineno: int, path: str) -> int:
    """The address of line ``lineno``: hex digits only (int() would also take a sign, a 0x
    and underscores, and a negative or over-wide address cannot be stored in a symbol)."""
    if not text or not HEX_DIGITS.issuperset(text):
        raise InputError(f"line {lineno}: {text[:40]!r} is not a hex address", path)
    addr = int(text, 16)
    if addr >> bits:
        raise InputError(f"line {lineno}: address {text[:40]} does not fit a {bits}-bit "
                         "image (a System.map of another architecture?)", path)
    return addr


def load_system_map(path: str, image: ElfImage) -> SymbolTable:
    """The symbols of ``path`` for ``image``; InputError when they do not fit its sections."""
    text = read_bounded(path, SYSTEM_MAP_LIMIT, "a System.map").decode("latin-1")
    entries = parse_system_map(text, path, image.bits)
    why = anchor_mismatch(image, {n: a for n, a, _t in entries if n in ANCHORS})
    if why is not None:
        raise InputError(f"does not match {image.path}: {why} (a System.map of another "
                         "build?)", path)
    text_syms = [a for _n, a, t in entries if t in "tT"]
    if text_syms:
        inside = sum(1 for a in text_syms if (s := image.section_at(a)) is not None and s.is_exec)
        if inside < MIN_MATCHING * len(text_syms):
            raise InputError(f"does not match {image.path}: {len(text_syms) - inside} of "
                             f"{len(text_syms)} text symbols lie outside its code (another "
                             "build, or a KASLR-shifted /proc/kallsyms?)", path)
    return SymbolTable.from_entries(image, entries, "System.map")


def anchor_mismatch(image: ElfImage, anchors: dict[str, int]) -> str | None:
    """Where the map's anchor symbols disagree with the image, in a phrase (None: they
    agree, or the map has none): the image's own symbols, the edges of the sections the
    linker script bounds with them, and linux_banner pointing at the banner's bytes."""
    own = image.symbols  # still the image's own table: the map replaces it only afterwards
    for name, addr in anchors.items():
        mine = own.get(name)
        if mine is not None and mine.value != addr:
            return (f"it puts {name} at {addr:#x}, the image's {own.source} at "
                    f"{mine.value:#x}")
    for name, section, edge in SECTION_EDGES:
        sec = image.section(section)
        if name not in anchors or sec is None:
            continue
        at = sec.addr if edge == "start" else sec.addr + sec.size
        if anchors[name] != at:
            return (f"it puts {name} at {anchors[name]:#x}, where the image's {section} "
                    f"{'starts' if edge == 'start' else 'ends'} at {at:#x}")
    banner = anchors.get("linux_banner")
    if banner is not None and image.try_read(banner, len(BANNER)) != BANNER:
        return f"its linux_banner ({banner:#x}) does not point at \"{BANNER.decode()}…\""
    return None
