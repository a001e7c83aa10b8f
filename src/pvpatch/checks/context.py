"""What every check family reads, computed once per image (and once per backend).

The families are independent functions of this context, so the runner decides what is built
(the Xen-only parts are skipped without a Xen backend) and a family never re-reads the image.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import cached_property

from pvpatch.backends import Backend
from pvpatch.image.elf import Section
from pvpatch.kernel.alternatives import AltEntry, AltTable
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import Site
from pvpatch.patch.plan import PatchPlan


@dataclass
class Context:
    """The image-wide facts; section lookups and alternative pairs are computed on demand."""

    model: KernelModel
    alts: AltTable
    _sections: dict[int, Section | None] = field(default_factory=dict)

    def section(self, site: Site) -> Section | None:
        """The allocated section holding the whole site (looked up once per site)."""
        if site.index not in self._sections:
            length = max(site.length, 1)
            self._sections[site.index] = self.model.image.section_at(site.address, length)
        return self._sections[site.index]

    @cached_property
    def _exec_names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.model.image.sections if s.is_exec and s.is_alloc)

    def in_code(self, site: Site) -> bool:
        """Cheap for the common case: the section read_sites found for the site is code."""
        if site.section in self._exec_names and site.length > 0:
            return True
        sec = self.section(site)
        return sec is not None and sec.is_exec

    def label(self, site: Site) -> str:
        """``function+0xoff`` for a site in code; outside code, the symbol or section there.

        ``Site.function`` names the nearest *code* symbol, which for a record pointing into
        data would be an unrelated function far behind it.
        """
        if self.in_code(site):
            return site.function
        sec = self.section(site)
        name = self.model.image.symbols.name_at(site.address)
        if name:
            return name
        return f"{sec.name}+{site.address - sec.addr:#x}" if sec else "(unmapped)"

    @cached_property
    def pv_alternatives(self) -> list[tuple[AltEntry, Site]]:
        """Every (alternative, site) pair whose byte ranges overlap, in table order."""
        sites = sorted(self.model.sites.sites, key=lambda s: (s.address, s.index))
        starts = [s.address for s in sites]
        reach = max((s.length for s in sites), default=0)
        pairs = []
        for e in self.alts.entries:
            pos = bisect.bisect_right(starts, e.instr + max(e.instrlen, 1) - 1) - 1
            hits = []
            while pos >= 0 and starts[pos] + reach > e.instr:
                if e.overlaps(sites[pos].address, sites[pos].length):
                    hits.append(sites[pos])
                pos -= 1
            pairs.extend((e, s) for s in reversed(hits))
        return pairs


@dataclass
class BackendRun:
    """One backend's view: what each slot holds and the bytes every site ends with."""

    backend: Backend
    plan: PatchPlan
    nop_function: int | None
