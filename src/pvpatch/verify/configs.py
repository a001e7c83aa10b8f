"""The boot configurations an image supports, and what each expects at every compared place.

A configuration is what decides the bytes boot leaves at the pv sites: the backend (every one
pvpatch has, ``backends.BACKENDS``), for Xen the vCPU count (1 keeps native spinlocks; N, the
``--vcpus``, takes the pv ones), and before 5.13 the boot CPU's NOP table — which, when no
``--cpu`` names the machine, is tried once per table the release can choose
(``patch.boot_nops.CPU_CLASSES``). Each is planned exactly as ``apply`` plans it; what a
verification keeps of the plan is plain data (:class:`Expected`), so planning can run in a
worker process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvpatch.backends import BACKENDS, VCPU_BACKENDS, GuestOptions, load_backend, unsupported_reason
from pvpatch.cpu import DEFAULT, Cpu, parse_cpu
from pvpatch.errors import InputError
from pvpatch.kernel.model import KernelModel
from pvpatch.patch.boot_nops import CPU_CLASSES
from pvpatch.patch.plan import nop_choice, plan


@dataclass(frozen=True)
class Config:
    backend: str
    vcpus: int | None  # the guest backends only (VCPU_BACKENDS)
    cpu: Cpu = DEFAULT
    cpu_class: str | None = None  # the NOP table, when CPU classes were tried
    options: GuestOptions | None = None  # the guests' run-time facts (None: their defaults)

    @property
    def key(self) -> str:
        """A short stable name: ``native``, ``xen:2``, ``native@k8``."""
        base = self.backend + ("" if self.vcpus is None else f":{self.vcpus}")
        return base + (f"@{self.cpu_class}" if self.cpu_class else "")

    @property
    def name(self) -> str:
        """``xen, 2 vCPUs``; with a CPU class ``native, k8 NOPs (as on amd:15:107)``."""
        out = self.backend
        if self.vcpus is not None:
            out += f", {self.vcpus} vCPU{'s' if self.vcpus != 1 else ''}"
        if self.cpu_class:
            out += f", {self.cpu_class} NOPs (as on {self.cpu.source.removeprefix('--cpu ')})"
        return out


@dataclass(frozen=True)
class Places:
    """What is compared: the .text pv sites (indexes into ``model.sites.sites``), and the
    .text pv static-call sites and trampolines (``(kind, address)`` as plans key them)."""

    pv: tuple[int, ...]
    static: tuple[tuple[str, int], ...]


@dataclass
class Expected:
    """What one configuration's plan leaves at each place (link-time bytes, before any
    KASLR slide is applied), and what the report says about it."""

    config: Config
    description: str = ""
    nops: str = ""
    pv: list[bytes] = field(default_factory=list)
    static: list[bytes | None] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # pv, then static, as listed
    targets: list[str | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the configuration could not be planned


def configurations(model: KernelModel, backend: str | None, vcpus: int, cpu: Cpu | None,
                   options: GuestOptions | None = None
                   ) -> tuple[list[Config], list[tuple[str, str]]]:
    """Every configuration to try, and (backend, why) for those the image cannot have.

    ``backend`` None: every backend, Xen with 1 and with ``vcpus``; else that backend only
    (Xen with ``vcpus``). ``cpu`` None: the CPU classes, where the release's choice depends on
    the CPU; else that CPU."""
    names = (backend,) if backend else BACKENDS
    cpus = [(cpu, None)] if cpu is not None else cpu_classes(model)
    configs, skipped = [], []
    for name in names:
        why = None if backend else unusable(model, name)
        if why is not None:
            skipped.append((name, why))
            continue
        counts: list[int | None] = [None] if name not in VCPU_BACKENDS else \
            ([vcpus] if backend else sorted({1, vcpus}))
        configs += [Config(name, n, c, cls, options) for n in counts for c, cls in cpus]
    return configs, skipped


def cpu_classes(model: KernelModel) -> list[tuple[Cpu, str | None]]:
    """One CPU per NOP table the release can choose (just the default from 5.13)."""
    if not nop_choice(model, DEFAULT).cpu_matters:
        return [(DEFAULT, None)]
    seen: dict[str, Cpu] = {}
    for spec, _what in CPU_CLASSES:
        cpu = parse_cpu(spec)
        seen.setdefault(nop_choice(model, cpu).table.name, cpu)
    return [(c, table) for table, c in seen.items()]


def unusable(model: KernelModel, name: str) -> str | None:
    """Why the image cannot boot with backend ``name`` (None: it can)."""
    return unsupported_reason(model, name)


def places(model: KernelModel) -> Places:
    """The .text places: what is freed after boot (.init.text, .exit.text) is not compared."""
    text = model.image.section(".text")
    pv = tuple(i for i, s in enumerate(model.sites.sites) if s.section == ".text")
    table = model.static_calls
    static = [("site", s.address) for s in table.sites if s.section == ".text"]
    static += [("trampoline", k.tramp) for k in table.keys.values()
               if k.tramp is not None and k.tramp_code and text is not None
               and text.contains_addr(k.tramp, 5)]
    return Places(pv, tuple(static))


def expect(model: KernelModel, config: Config, where: Places, explicit: bool) -> Expected:
    """Plan ``config``; a backend the image refuses is skipped unless it was asked for."""
    try:
        be = load_backend(model, config.backend, config.vcpus or 1, config.options)
    except InputError as e:
        if explicit:
            raise
        return Expected(config, skipped=e.message)
    p = plan(model, be, model.alternatives, nop_choice(model, config.cpu))
    out = Expected(config, be.description, p.nop_choice.why if p.nop_choice else "",
                   notes=list(dict.fromkeys(p.notes + p.static_call_notes)))
    for i in where.pv:
        sp = p.patches[i]
        out.pv.append(sp.after)
        out.outcomes.append(sp.outcome)
        out.targets.append(sp.target_name)
    by_place = {(sc.kind, sc.address): sc for sc in p.static_calls}
    for key in where.static:
        sc = by_place.get(key)
        out.static.append(None if sc is None else sc.after)
        out.outcomes.append("unplanned" if sc is None else sc.outcome)
        out.targets.append(None if sc is None else sc.target_name)
    return out
