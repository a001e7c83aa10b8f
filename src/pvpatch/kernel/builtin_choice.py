"""Which built-in slot table (if any) fits an image that has no BTF and no DWARF.

A table is used only when every fact the image offers agrees with it: the kernel series
(build-salt note or banner), the word size, the highest type byte a site uses, a section that
holds the whole table, and — the plausibility check — the image's own pv_ops initialiser,
whose slot values must be the functions the table's source kernel had there (slot
``cpu.io_delay`` → ``native_io_delay``). Anything less and the slots stay named by offset.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pvpatch.image.elf import ElfImage
from pvpatch.kernel.version import KernelVersion
from pvpatch.types.builtin import BuiltinTable, BuiltinTypes, tables

# Share of slots whose initial value must name the function the table expects. Most slots
# of a 6.1.y or 6.12.y kernel hold the same native function throughout the series.
PLAUSIBLE = 0.75


@dataclass
class BuiltinChoice:
    table: BuiltinTable | None
    matched: int = 0  # slots whose value names the expected function
    refusals: list[str] = field(default_factory=list)  # why each other table does not fit

    @property
    def types(self) -> BuiltinTypes | None:
        return BuiltinTypes(self.table) if self.table else None

    @property
    def described(self) -> str:
        if self.table is None:
            return "no built-in table fits (" + "; ".join(self.refusals) + ")"
        return (f'built-in table "{self.table.name}"')

    @property
    def detail(self) -> str:
        """The chosen table's provenance and how well the image's initialiser agrees."""
        if self.table is None:
            return self.described
        return (f"{self.table.config}; read from {self.table.source}; {self.matched} of "
                f"{len(self.table.slots)} slot values agree")


def choose_builtin(image: ElfImage, version: KernelVersion, base: int | None,
                   highest_type: int | None,
                   candidates: tuple[BuiltinTable, ...] | None = None) -> BuiltinChoice:
    """The best-fitting table, or none with a reason per table."""
    candidates = tables() if candidates is None else candidates
    if base is None:
        return BuiltinChoice(None, refusals=["the pv-op table's address is unknown"])
    refusals = []
    best: tuple[int, BuiltinTable] | None = None
    for t in candidates:
        why, matched = _misfit(image, version, base, highest_type, t)
        if why:
            refusals.append(f"{t.name}: {why}")
        elif best is None or matched * len(best[1].slots) > best[0] * len(t.slots):
            best = (matched, t)
    if best is None:
        return BuiltinChoice(None, refusals=refusals or ["no tables"])
    return BuiltinChoice(best[1], best[0], refusals)


def _misfit(image: ElfImage, version: KernelVersion, base: int, highest_type: int | None,
            t: BuiltinTable) -> tuple[str | None, int]:
    if t.bits != image.bits:
        return f"for {t.bits}-bit kernels, the image is {image.bits}-bit", 0
    if version.major is None:
        return "the kernel version is unknown", 0
    if (version.major, version.minor) != t.series:
        return f"for {t.series[0]}.{t.series[1]}, the image is {version.short}", 0
    if highest_type is not None and highest_type >= len(t.slots):
        return f"{len(t.slots)} slots, but a site uses type {highest_type}", 0
    if image.section_at(base, t.size) is None:
        return f"no section holds its {t.size} bytes at {base:#x}", 0
    actual = slot_value_names(image, base, len(t.slots))
    if actual is None:
        return f"no file bytes at {base:#x}", 0
    verdict = agreement([(slot, want, got) for (slot, want), got
                         in zip(t.slots, actual, strict=True)])
    if not verdict.plausible:
        return verdict.refusal, verdict.matched
    return None, verdict.matched


def locate_by_contents(image: ElfImage, version: KernelVersion, highest_type: int | None,
                       limit: int = 64) -> tuple[int, BuiltinTable] | None:
    """Where a built-in table's initialiser lies, for an image whose call sites no longer
    name the table (already patched) and whose symbols do not either: the places in data
    that hold the table's first function, each judged as :func:`choose_builtin` judges a
    table at a known address. ``limit`` bounds the places tried per table."""
    for t in tables():
        if t.bits != image.bits or (version.major, version.minor) != t.series:
            continue
        first = image.symbols.address(t.slots[0][1])
        if not first:
            continue
        needle = first.to_bytes(t.ptr_size, "little")
        for base in _places_holding(image, needle, t.ptr_size, limit):
            if _misfit(image, version, base, highest_type, t)[0] is None:
                return base, t
    return None


def _places_holding(image: ElfImage, needle: bytes, align: int, limit: int) -> list[int]:
    """Aligned addresses in allocated, non-executable sections whose bytes are ``needle``."""
    out: list[int] = []
    for sec in image.sections:
        if not (sec.is_alloc and sec.has_file_data and sec.size) or sec.is_exec:
            continue
        data = bytes(image.section_data(sec))
        pos = data.find(needle)
        while pos >= 0 and len(out) < limit:
            if (sec.addr + pos) % align == 0:
                out.append(sec.addr + pos)
            pos = data.find(needle, pos + 1)
    return out


# -- slot agreement: does a table of slot names fit the values the image stores? ---------------

Agrees = Callable[[str, str], bool | None]  # (expected, actual name) → agree? None: no say


@dataclass(frozen=True)
class SlotAgreement:
    """How many slots hold what a table of slot names expects, out of those that count."""

    matched: int
    counted: int
    wrong: tuple[tuple[str, str, str], ...]  # (slot, expected, actual), in slot order

    @property
    def plausible(self) -> bool:
        return self.matched >= PLAUSIBLE * self.counted

    @property
    def refusal(self) -> str:
        """Why the table does not fit, with the first slot that disagrees."""
        text = (f"only {self.matched} of {self.counted} slot values are the functions it "
                "names")
        if self.wrong:
            slot, want, got = self.wrong[0]
            text += f" (e.g. {slot} holds {got}, not {want})"
        return text


def agreement(slots: Sequence[tuple[str, str, str]],
              agrees: Agrees = operator.eq) -> SlotAgreement:
    """Judge (slot, expected, actual) triples; ``agrees`` may abstain (None) on a value that
    proves nothing, such as the nop function many slots share."""
    verdicts = [(slot, want, got, agrees(want, got)) for slot, want, got in slots]
    counted = [v for v in verdicts if v[3] is not None]
    wrong = tuple((slot, want, got) for slot, want, got, ok in counted if not ok)
    return SlotAgreement(len(counted) - len(wrong), len(counted), wrong)


def slot_value_names(image: ElfImage, base: int, count: int) -> list[str] | None:
    """What each of ``count`` pointers from ``base`` holds: ``NULL``, the symbol defined there,
    or the address in hex (None: the file has no bytes there)."""
    ptr = image.ptr_size
    raw = image.try_read(base, count * ptr)
    if raw is None:
        return None
    values = [int.from_bytes(raw[i:i + ptr], "little") for i in range(0, count * ptr, ptr)]
    names = image.symbols.names_at({v for v in values if v})
    return ["NULL" if v == 0 else names.get(v, f"{v:#x}") for v in values]


def known_targets(bits: int) -> dict[str, frozenset[str]]:
    """Member path → every function a built-in table of that word size saw in it (the
    functions whose names do not say their slot: ``flush_tlb_user`` holds
    ``native_flush_tlb_local``)."""
    out: dict[str, set[str]] = {}
    for t in tables():
        if t.bits == bits:
            for slot, target in t.slots:
                out.setdefault(slot, set()).add(target)
    return {k: frozenset(v) for k, v in out.items()}
