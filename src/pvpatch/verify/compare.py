"""Each configuration's expected bytes against what memory holds, place by place.

A place is a .text pv site, pv static-call site or pv trampoline; what memory holds there is
read through the placement (``verify.place``), what a configuration expects there is its plan
(``verify.configs``) with the KASLR slide applied to the operands it moves
(``verify.relocate``). The configuration with the most matching places is the verdict; a tie
goes to the first tried (native before Xen, 1 vCPU before N).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvpatch.image.relocations import Relocations
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import site_bytes
from pvpatch.kernel.static_calls import TRAMP_PREFIX
from pvpatch.verify.configs import Expected, Places
from pvpatch.verify.locate import PAGE
from pvpatch.verify.place import Placement
from pvpatch.verify.relocate import Move, moves_from_forms, moves_from_relocations, relocate

KINDS = ("pv_site", "static_call_site", "trampoline")
LABELS = {"pv_site": "pv site", "static_call_site": "static-call site", "trampoline": "trampoline"}


@dataclass(frozen=True)
class Place:
    """One compared place of .text, at its link address, with its bytes as built."""

    kind: str  # one of KINDS
    address: int
    length: int
    op: str  # the pv op (``irq.save_fl``) or ``static_call.<key>``
    before: bytes
    moves: tuple[Move, ...]  # operands of the as-built bytes the KASLR slide moves
    source: object = field(compare=False, repr=False)  # Site, StaticCallSite or key name

    @property
    def function(self) -> str:
        """``function+0xoff`` (asked only of places a report shows)."""
        if isinstance(self.source, str):
            return TRAMP_PREFIX + self.source
        return self.source.function


@dataclass
class Outcome:
    """One configuration against memory."""

    expected: Expected
    matched: int
    unexpected: list[int]  # indexes into the places
    wanted: dict[int, bytes] = field(default_factory=dict)  # expected bytes, slid, per index

    @property
    def total(self) -> int:
        return self.matched + len(self.unexpected)

    @property
    def every_place(self) -> bool:
        return not self.unexpected


@dataclass
class Verification:
    """Everything ``pvpatch verify`` found, for the renderers."""

    image: str
    memory: str
    memory_described: str
    release: str | None
    placement: Placement
    places: list[Place]
    found: list[bytes | None]  # what memory holds at each place (None: not in memory)
    outcomes: list[Outcome]
    skipped: list[tuple[str, str]]  # (configuration or backend, why)
    freed: dict[str, dict[str, int]]  # kind → section → places not compared (text freed)
    bits: int
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Outcome | None:
        return max(self.outcomes, key=lambda o: o.matched, default=None)

    @property
    def also(self) -> list[Outcome]:
        """Other configurations that also match every place."""
        best = self.best
        return [o for o in self.outcomes if o is not best and o.every_place]

    @property
    def ok(self) -> bool:
        best = self.best
        return best is not None and best.every_place


def build_places(model: KernelModel, where: Places, relocs: Relocations | None
                 ) -> list[Place]:
    """The places, with the operands the slide moves (from ``relocs``, else the known
    site forms)."""
    image = model.image
    bits = image.bits
    out = []
    for i in where.pv:
        s = model.sites.sites[i]
        moves = moves_from_relocations(relocs, s.address, s.length) if relocs is not None \
            else moves_from_forms(s.insns, s.address, bits)
        out.append(Place("pv_site", s.address, s.length, s.op, site_bytes(image, s),
                         tuple(moves), s))
    sites = {s.address: s for s in model.static_calls.sites}
    keys = {k.tramp: k for k in model.static_calls.keys.values() if k.tramp is not None}
    for kind, addr in where.static:
        if kind == "site":
            s = sites[addr]
            out.append(Place("static_call_site", addr, s.length, s.op, s.code or b"", (), s))
        else:
            k = keys[addr]
            out.append(Place("trampoline", addr, 5, f"static_call.{k.name}",
                             (k.tramp_code or b"")[:5], (), k.name))
    return out


def read_found(places: list[Place], p: Placement, text_start: int) -> list[bytes | None]:
    """What memory holds at each place (None where its page is not in memory)."""
    out: list[bytes | None] = []
    for pl in places:
        off = pl.address - text_start
        pages = range(off // PAGE, (off + pl.length - 1) // PAGE + 1)
        out.append(None if any(pg in p.missing for pg in pages)
                   else p.text[off:off + pl.length])
    return out


def compare(places: list[Place], found: list[bytes | None], expected: Expected, slide: int
            ) -> Outcome:
    """One configuration at every place."""
    wanted_all = [*expected.pv, *expected.static]
    out = Outcome(expected, 0, [])
    for i, (pl, got, want) in enumerate(zip(places, found, wanted_all, strict=True)):
        if want is not None and pl.moves and slide:
            want = relocate(want, pl.before, list(pl.moves), slide)
        if want is not None and got == want:
            out.matched += 1
        else:
            out.unexpected.append(i)
            if want is not None:
                out.wanted[i] = want
    return out
