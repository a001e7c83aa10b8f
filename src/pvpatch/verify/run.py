"""One verification: place the kernel, plan every configuration, compare, in that order.

Planning is the costly part (a Xen plan reads the start-up code: ~0.5 s of a Debian kernel), so
the configurations are planned in worker processes (``parallel.fork_map``), one per backend
(Xen with 1 and with N vCPUs share the decoded start-up code), while this process finds the
kernel in memory. They share nothing but the loaded, read-only model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pvpatch.cpu import Cpu
from pvpatch.image.memory import MemoryImage
from pvpatch.kernel.model import KernelModel
from pvpatch.parallel import fork_map
from pvpatch.verify.compare import Verification, build_places, compare, read_found
from pvpatch.verify.configs import Config, Expected, Places, configurations, expect, places
from pvpatch.verify.place import Placement, place


def verify(model: KernelModel, memory: MemoryImage, *, backend: str | None = None,
           vcpus: int = 2, cpu: Cpu | None = None) -> Verification:
    """Does ``memory`` hold, at every .text pv place, what some configuration of ``model``
    leaves there? ``backend``/``cpu`` None: every backend / CPU class the image supports."""
    configs, skipped = configurations(model, backend, vcpus, cpu)
    where = places(model)
    _ = model.sites, model.static_calls, model.alternatives  # read once, before the fork
    model.image.symbols.index_code()
    jobs: list[Callable[[], object]] = [lambda: place(model, memory)]
    jobs += [_planner(model, group, where, backend is not None) for group in _groups(configs)]
    results = fork_map(lambda job: job(), jobs)
    placement: Placement = results[0]  # type: ignore[assignment]
    expected: list[Expected] = [e for group in results[1:] for e in group]  # type: ignore
    skipped += [(e.config.name, e.skipped) for e in expected if e.skipped]
    slide = placement.slide
    pl = build_places(model, where, placement.relocations if slide else None)
    text = model.image.section(".text")
    found = read_found(pl, placement, text.addr)
    outcomes = [compare(pl, found, e, slide) for e in expected if not e.skipped]
    notes = list(placement.notes)
    if slide and placement.relocations is None:
        notes.append("the image keeps no .text relocations: the slide is applied to the "
                     "absolute operands of the known site forms")
    return Verification(model.image.path, memory.path, memory.describe(),
                        model.version.release, placement, pl, found, outcomes, skipped,
                        _freed(model), model.image.bits, notes)


def _groups(configs: list[Config]) -> list[list[Config]]:
    """Configurations by backend, in the order given (a Xen group shares its decoder)."""
    out: dict[str, list[Config]] = {}
    for c in configs:
        out.setdefault(c.backend, []).append(c)
    return list(out.values())


def _planner(model: KernelModel, group: list[Config], where: Places, explicit: bool
             ) -> Callable[[], list[Expected]]:
    return lambda: [expect(model, c, where, explicit) for c in group]


def _freed(model: KernelModel) -> dict[str, int]:
    """Places outside .text, by section: boot frees their text (.init.text, .exit.text)."""
    out: Counter[str] = Counter()
    for s in model.sites.sites:
        if s.section != ".text":
            out[f"pv sites in {s.section}"] += 1
    for s in model.static_calls.sites:
        if s.section != ".text":
            out[f"static-call sites in {s.section}"] += 1
    return dict(out)
