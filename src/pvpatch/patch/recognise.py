"""Which configuration an already-patched image matches: planned, then compared site by site.

:mod:`pvpatch.kernel.boot_patched` says, from the bytes alone, that most sites of an image hold
what boot patching leaves. This module says whose boot: each configuration ``pvpatch apply``
can write — native, Xen PV with one vCPU, Xen PV with two (every count above one patches
alike) — is planned as apply plans it and compared with the image's bytes at every site. A
pristine image costs nothing here: without the look there is nothing to plan.

A 6.8+ site carried its slot only in the indirect call that patching replaced, so before a
configuration is planned each patched site gets back the slot whose value, in that
configuration, its direct call reaches (the nop function for an all-NOP site; an inline site
keeps none, which the plan then only explains if the configuration inlines it anyway).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from pvpatch.backends import Backend, load_backend
from pvpatch.errors import InputError
from pvpatch.kernel.boot_patched import INDIRECT, PATCHED, PatchedLook
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import SECTION, Site, give_slot
from pvpatch.patch.plan import CALL, SitePatch, nop_choice, plan


@dataclass(frozen=True)
class Configuration:
    """One way ``pvpatch apply`` patches: a backend and, for Xen, the vCPU count."""

    backend: str
    vcpus: int | None = None

    @property
    def options(self) -> str:
        """The apply options that write it."""
        return f"--backend {self.backend}" + (f" --vcpus {self.vcpus}" if self.vcpus else "")

    @property
    def described(self) -> str:
        return "native" if self.vcpus is None else f"{self.backend}, {self.vcpus} vCPU(s)"


# In the order tried; the first that explains every site is the answer (planning Xen reads
# its start-up code, ~1 s on 6.12, so the likelier guest, more than one vCPU, goes first).
CONFIGURATIONS = (Configuration("native"), Configuration("xen", 2), Configuration("xen", 1))


@dataclass(frozen=True)
class Recognition:
    """An already-patched image and how well each configuration explains its sites."""

    look: PatchedLook
    scores: tuple[tuple[Configuration, int], ...]  # sites each configuration explains
    # 6.8+: site index → the slot its bytes imply under the matching configuration
    slots: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def matches(self) -> list[Configuration]:
        """The configuration that explains every site (at most one: trying stops there)."""
        return [c for c, n in self.scores if n == self.look.sites]

    @property
    def closest(self) -> tuple[Configuration, int] | None:
        return max(self.scores, key=lambda cn: cn[1], default=None)

    @property
    def described(self) -> str:
        """``it matches --backend xen --vcpus 2``, or the closest when none matches."""
        if self.matches:
            return f"it matches {self.matches[0].options}"
        best = self.closest
        closest = "" if best is None else \
            f"; closest: {best[0].options}, {best[1]} of {self.look.sites} sites"
        return (f"{self.look.described}, but no configuration pvpatch plans writes these "
                f"bytes{closest}")

    def refusal(self, path: str, needs: str) -> str:
        """The one line a command that needs a pristine image says."""
        who = "was already patched by pvpatch apply" if self.matches else "is already patched"
        return f"{path} {who} ({self.described}); {needs}"

    def to_json(self) -> dict:
        return {"matches": [{"backend": c.backend, "vcpus": c.vcpus, "options": c.options}
                            for c in self.matches],
                "sites": self.look.sites, "patched_form": self.look.patched_form,
                "explained": {c.options: n for c, n in self.scores}}


def recognise(model: KernelModel) -> Recognition | None:
    """None for a pristine image (the normal case, decided without planning anything)."""
    look = model.sites.patched
    if look is None:
        return None
    scores: list[tuple[Configuration, int]] = []
    for config in CONFIGURATIONS:
        n, view = _explained(model, config)
        if n is not None:
            scores.append((config, n))
        if n == look.sites:
            slots = {} if view is model else {s.index: s.type for s in view.sites.sites
                                              if s.form == PATCHED and s.type >= 0}
            return Recognition(look, tuple(scores), slots)
    return Recognition(look, tuple(scores))


def restore_slots(model: KernelModel, recognised: Recognition) -> None:
    """Give a patched 6.8+ image's sites the slots the matching configuration implies, so
    that listings name their ops again."""
    for s in model.sites.sites:
        index = recognised.slots.get(s.index)
        if index is not None:
            give_slot(s, index, model.pvops)


def _explained(model: KernelModel, config: Configuration
               ) -> tuple[int | None, KernelModel]:
    """How many sites ``config`` explains (None: the image cannot have it), and the model
    view it was planned on."""
    if config.backend == "xen":
        from pvpatch.backends.xen import unsupported

        if unsupported(model) is not None:
            return None, model
    try:
        backend = load_backend(model, config.backend, config.vcpus or 2)
        view = model if model.sites.origin == SECTION else _with_slots(model, backend)
        patches = plan(view, backend, view.alternatives, nop_choice(view)).patches
    except InputError:
        return None, model
    return sum(map(_explains, patches)), view


def _explains(sp: SitePatch) -> bool:
    """The plan writes what the site holds — and not merely by leaving it as it is, unless
    it is still as built."""
    current = sp.site.code
    return current is not None and sp.after == current and \
        (sp.outcome != "unpatched" or sp.site.form == INDIRECT)


def _with_slots(model: KernelModel, backend: Backend) -> KernelModel:
    """A view of the model whose patched 6.8+ sites carry the slot ``backend`` implies."""
    from pvpatch.patch.direct_calls import ERA_6_8_PLUS

    first_holding: dict[int, int] = {}
    for index, res in sorted(backend.slots.items()):
        if res.value is not None:
            first_holding.setdefault(res.value, index)
    syms = model.image.symbols
    bug, nop = syms.address(ERA_6_8_PLUS.bug_function), syms.address(ERA_6_8_PLUS.nop_function)
    sites = [s if s.form != PATCHED else
             dataclasses.replace(s, type=_slot_for(s, first_holding, bug, nop, model.image.bits))
             for s in model.sites.sites]
    view = copy.copy(model)
    view.__dict__["sites"] = dataclasses.replace(model.sites, sites=sites)
    return view


def _slot_for(site: Site, holding: dict[int, int], bug: int | None, nop: int | None,
              bits: int) -> int:
    """The slot whose value the patched site's bytes imply (-1: they imply none)."""
    code = site.code or b""
    if code[:1] == bytes([CALL]) and len(code) >= 5:
        target = (site.address + 5 + int.from_bytes(code[1:5], "little", signed=True)) \
            & ((1 << bits) - 1)
        return holding.get(0 if target == bug else target, -1)
    from pvpatch.patch.direct_calls import is_nop

    if site.insns and all(is_nop(i.raw) for i in site.insns) and nop is not None:
        return holding.get(nop, -1)
    return -1
