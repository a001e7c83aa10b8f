"""One verification: place the kernel, plan every configuration, compare, in that order.

Planning is the costly part (a Xen plan reads the start-up code: ~0.3 s of a Debian kernel), so
Xen's configurations are planned in a worker process (``parallel.fork_map``; with 1 and with N
vCPUs they share the decoded start-up code) while this process finds the kernel in memory and
plans the native ones. The two share nothing but the loaded, read-only model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pvpatch.backends import GuestOptions
from pvpatch.cpu import Cpu
from pvpatch.image.memory import MemoryImage
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import site_bytes
from pvpatch.parallel import Stream, fork_map
from pvpatch.verify.compare import Verification, build_places, compare, read_found
from pvpatch.verify.configs import Config, Expected, Places, configurations, expect, places
from pvpatch.verify.place import Placement, check_text, place, text_relocations

# Tried first, in parallel: bare metal and Xen PV. The other guests (KVM, Hyper-V, VMware,
# lguest) are planned only when none of these matches every place: most memory checked is of
# one of the first two, and a guest's plan reads its start-up code too.
FIRST = ("native", "xen")


def verify(model: KernelModel, memory: MemoryImage, *, backend: str | None = None,
           vcpus: int = 2, cpu: Cpu | None = None, text: bool = False,
           options: GuestOptions | None = None) -> Verification:
    """Does ``memory`` hold, at every .text pv place, what some configuration of ``model``
    leaves there? ``backend``/``cpu`` None: every backend / CPU class the image supports.
    ``text``: also compare all of .text outside the patch tables (``place.check_text``)."""
    configs, skipped = configurations(model, backend, vcpus, cpu, options)
    where = places(model)
    _ = model.sites, model.static_calls, model.alternatives  # read once, before the fork
    explicit = backend is not None
    first = [c for c in configs if explicit or c.backend in FIRST]
    later = [c for c in configs if c not in first]
    notes: list[str] = []
    placement, expected, untried, read = _plan_with_placing(model, memory, text, first, where,
                                                            explicit, notes)
    slide = placement.slide
    notes[:0] = placement.notes
    pl, found = read if read is not None else _found(model, where, placement, expected, notes)
    outcomes = [compare(pl, found, e, slide) for e in expected if not e.skipped]
    if later and not any(o.every_place for o in outcomes):
        more = _plan(model, later, where, explicit)
        expected += more
        if _as_built(model, where, more) and slide and placement.relocations is None:
            pl, found = _found(model, where, placement, expected, notes)
            outcomes = [compare(pl, found, e, slide) for e in expected if not e.skipped]
        else:
            outcomes += [compare(pl, found, e, slide) for e in more if not e.skipped]
    else:
        untried += later
    if untried:
        notes.append(f"{', '.join(sorted({c.backend for c in untried}))} not tried: "
                     f"{next(o for o in outcomes if o.every_place).expected.config.name} "
                     "matches every place")
    skipped += [(e.config.name, e.skipped) for e in expected if e.skipped]
    return Verification(model.image.path, memory.path, memory.describe(),
                        model.version.release, placement, pl, found, outcomes, skipped,
                        _freed(model), model.image.bits, notes)


def _plan_with_placing(model: KernelModel, memory: MemoryImage, text: bool,
                       configs: list[Config], where: Places, explicit: bool, notes: list[str]
                       ) -> tuple[Placement, list[Expected], list[Config],
                                  tuple[list, list[bytes | None]] | None]:
    """Place the kernel in this process while a worker plans each backend's group, native's
    first; once native's plans are in and one matches every place, the others are not
    waited for (a Xen plan reads the start-up code and costs most): they are returned as
    untried, with the places and memory read for that match (not read again)."""
    groups = [g for g in _groups(configs) if g]
    with Stream([_planner(model, g, where, explicit) for g in groups]) as plans:
        placement = _place(model, memory, text)
        expected: list[Expected] = []
        for k, group in enumerate(groups):
            expected += next(plans)
            if group[0].backend == "native" and k + 1 < len(groups):
                read = _found(model, where, placement, expected, notes)
                if _matches_everywhere(read, placement, expected):
                    return placement, expected, [c for g in groups[k + 1:] for c in g], read
    return placement, _in_order(configs, expected), [], None


def _matches_everywhere(read: tuple[list, list[bytes | None]], placement: Placement,
                        expected: list[Expected]) -> bool:
    pl, found = read
    return any(compare(pl, found, e, placement.slide).every_place
               for e in expected if not e.skipped)


def _plan(model: KernelModel, configs: list[Config], where: Places, explicit: bool
          ) -> list[Expected]:
    groups = _groups(configs)
    results = fork_map(lambda job: job(), [_planner(model, g, where, explicit) for g in groups
                                           if g])
    return _in_order(configs, [e for g in results for e in g])


def _in_order(configs: list[Config], expected: list[Expected]) -> list[Expected]:
    order = {c.key: i for i, c in enumerate(configs)}
    return sorted(expected, key=lambda e: order[e.config.key])


def _found(model: KernelModel, where: Places, placement: Placement,
           expected: list[Expected], notes: list[str]) -> tuple[list, list[bytes | None]]:
    """The places (with the operands a slide moves, where a plan leaves a site as built)
    and what memory holds at each."""
    slide = placement.slide
    if bool(slide) and _as_built(model, where, expected) and placement.relocations is None:
        placement.relocations = text_relocations(model)
        if placement.relocations is None:
            note = ("the image keeps no .text relocations: the slide is applied to the "
                    "absolute operands of the known site forms")
            if note not in notes:
                notes.append(note)
    pl = build_places(model, where, placement.relocations if slide else None)
    return pl, read_found(pl, placement, model.image.section(".text").addr)


def _place(model: KernelModel, memory: MemoryImage, text: bool) -> Placement:
    """This process's share while the planners run: find the kernel, compare its .text."""
    p = place(model, memory)
    if text:
        check_text(model, memory, p)
    return p


def _as_built(model: KernelModel, where: Places, expected: list[Expected]) -> bool:
    """Does some configuration leave a pv site as built? Only then can the slide have moved
    an operand it expects (every byte a plan writes is computed at the runtime address)."""
    sites = model.sites.sites
    built = {i: site_bytes(model.image, sites[i]) for i in where.pv}
    return any(e.pv[k] == built[i] for e in expected if not e.skipped
               for k, i in enumerate(where.pv))


def _groups(configs: list[Config]) -> list[list[Config]]:
    """Configurations by backend, native's first (empty when not asked for): a Xen group
    shares its start-up decoder, and is the longest to plan."""
    out: dict[str, list[Config]] = {"native": []}
    for c in configs:
        out.setdefault(c.backend, []).append(c)
    return list(out.values())


def _planner(model: KernelModel, group: list[Config], where: Places, explicit: bool
             ) -> Callable[[], list[Expected]]:
    return lambda: [expect(model, c, where, explicit) for c in group]


def _freed(model: KernelModel) -> dict[str, dict[str, int]]:
    """Places outside .text, per kind and section: boot frees their text (.init.text,
    .exit.text), so memory holds something else there."""
    out: dict[str, Counter[str]] = {"pv_site": Counter(), "static_call_site": Counter()}
    for s in model.sites.sites:
        if s.section != ".text":
            out["pv_site"][str(s.section)] += 1
    for s in model.static_calls.sites:
        if s.section != ".text":
            out["static_call_site"][str(s.section)] += 1
    return {kind: dict(c) for kind, c in out.items() if c}
