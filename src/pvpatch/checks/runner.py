"""Run every check family on one image for the chosen backends, in a fixed order.

The order is the report's order: image-level site, alternative and static-call checks, then
per backend the slot, fit, clobber, alternative-feature and static-call checks, then the Xen
notes. Each (family, backend) pair is a *suite*, which the JUnit renderer turns into one
testsuite. An image whose sites are already patched gets one ``image.already-patched``
finding instead of one per site; the families that read sites are skipped, the Xen notes
(patching leaves them) still checked.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from pvpatch.backends import (
    BACKENDS,
    CHECKED_BY_DEFAULT,
    Backend,
    GuestOptions,
    load_backend,
    unsupported_reason,
)
from pvpatch.checks import alternatives, clobbers, fit, sites, slots, static_calls
from pvpatch.checks.context import BackendRun, Context
from pvpatch.checks.model import Finding, finding, load_registry
from pvpatch.cpu import DEFAULT, Cpu
from pvpatch.disasm import preload
from pvpatch.errors import UsageError
from pvpatch.kernel.model import KernelModel
from pvpatch.parallel import Stream
from pvpatch.patch.boot_nops import NopChoice
from pvpatch.patch.plan import ERA_5_13_TO_6_7, nop_choice, plan
from pvpatch.patch.recognise import Recognition, recognise

PerBackend = Callable[[Context, BackendRun], list[Finding]]
PER_BACKEND: tuple[tuple[str, PerBackend], ...] = (
    ("slot", slots.check_slots), ("fit", fit.check_fit), ("clobber", clobbers.check_clobbers),
    ("alt", alternatives.check_features), ("static_call", static_calls.check_backend))


@dataclass(frozen=True)
class Suite:
    """One family run once (backend None) or for one backend; ``skipped`` says why not."""

    family: str
    backend: str | None
    per_backend: bool
    skipped: str | None = None


@dataclass(frozen=True)
class BackendInfo:
    """What a report says of a backend (the resolved backend itself stays with its model)."""

    name: str
    description: str


@dataclass
class CheckRun:
    path: str
    release: str | None
    backends: list[BackendInfo]
    suites: list[Suite] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    nops: NopChoice | None = None  # the table every backend's plan padded with, and why
    machine: str | None = None
    build_id: str | None = None


def parse_backends(text: str | None) -> tuple[tuple[str, ...], bool]:
    """``native,xen`` → names in order; the flag says they were asked for explicitly."""
    if text is None:
        return CHECKED_BY_DEFAULT, False
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise UsageError(f"--backend takes a comma-separated list of {', '.join(BACKENDS)} "
                         f"(got {text!r})")
    return names, True


@dataclass
class Part:
    """What one unit of a check run found: plain data, so a worker process can return it."""

    suites: list[Suite]
    findings: list[Finding]
    checked: dict[str, int] = field(default_factory=dict)
    backend: BackendInfo | None = None
    notes: list[str] = field(default_factory=list)


Unit = Callable[[], Part]


def run_checks(model: KernelModel, names: tuple[str, ...], vcpus: int,
               explicit: bool = True, cpu: Cpu = DEFAULT,
               options: GuestOptions | None = None) -> CheckRun:
    """Every family for ``names``, planned for boots on ``cpu``. Without ``explicit``, a
    backend the image cannot have (Xen PV on a kernel built without it) is skipped with a
    note instead of an error.

    Resolving a backend is the costly step (Xen's reads its start-up code: dozens of
    functions decoded) and needs nothing but the read-only model, so each backend after the
    first is resolved in a worker process, forked as soon as the image-wide facts every
    process reads (symbols, version, types, pv-op table) are known. This process meanwhile
    reads the sites and runs the image-wide checks, the first backend and the Xen notes,
    then plans each resolved backend (plain data) and checks it: planning is cheap here,
    where the sites and caches are warm. A worker not needed (an image already patched) is
    stopped.
    """
    _ = model.era  # what this process and the workers read, read once before forking:
    model.image.symbols.index_code()  # the code index (Xen's start-up code, the clobbers)
    preload(model.image.bits)  # and capstone (~35 ms to load)
    with ExitStack() as stack:  # leaving stops a worker still running (after an error here)
        workers = [stack.enter_context(Stream([_resolver(model, name, vcpus, explicit,
                                                          options)]))
                   for name in names[1:]]
        ctx = Context(model, model.alternatives)  # the table the sites were read with (6.8+)
        nops = nop_choice(model, cpu)
        run = CheckRun(model.image.path, model.version.release, [], nops=nops,
                       machine=model.image.machine, build_id=model.image.build_id)
        if model.builtin is not None and model.builtin.table is not None:
            run.notes.append(f"op names from {model.builtin.described} (no BTF/DWARF in the "
                             "image)")
        recognised = recognise(model)
        if recognised is not None:
            return _patched_run(model, run, names, recognised)
        parts = [_image_part(ctx), _backend_run(ctx, _resolver(model, names[0], vcpus,
                                                               explicit, options)(), nops)]
        if "xen" in names:  # the notes matter to PVH-only kernels too, not tied to the backend
            xen_notes = _xen_part(model)
        load_registry()  # the report needs it: built while the workers finish
        parts += [_backend_run(ctx, next(w), nops) for w in workers]
    if "xen" in names:
        parts.append(xen_notes)
    for part in parts:
        run.suites += part.suites
        run.findings += part.findings
        run.checked.update(part.checked)
        run.notes += part.notes
        if part.backend is not None:
            run.backends.append(part.backend)
    return run


def _resolver(model: KernelModel, name: str, vcpus: int, explicit: bool,
              options: GuestOptions | None) -> Callable[[], Backend | str]:
    """The backend as the image sets it, or why the image cannot have it (only when the
    backend was not asked for by name: an asked-for one fails loudly)."""
    def resolve() -> Backend | str:
        why = None if explicit else _unusable(model, name)
        return f"{name} backend skipped: {why}" if why is not None else \
            load_backend(model, name, vcpus, options)
    return resolve


def _backend_run(ctx: Context, backend: Backend | str, nops: NopChoice) -> Part:
    if isinstance(backend, str):
        return Part([], [], notes=[backend])
    return _backend_part(ctx, backend, nops)


def _unusable(model: KernelModel, name: str) -> str | None:
    """The default list must work on any kernel (an explicit one fails loudly instead):
    why this image cannot have the backend, or None."""
    return unsupported_reason(model, name)


def _image_part(ctx: Context) -> Part:
    """Facts of the image itself: reported once, whatever the backends."""
    findings = sites.check_sites(ctx) + alternatives.check_alignment(ctx) + \
        static_calls.check_image(ctx)
    return Part([Suite("image", None, False), Suite("site", None, False),
                 Suite("alt", None, False), Suite("static_call", None, False)], findings,
                {"sites": len(ctx.model.sites.sites),
                 "pv_alternatives": len(ctx.pv_alternatives),
                 "static_call_sites": len(ctx.model.static_calls.sites)})


def _backend_part(ctx: Context, backend: Backend, nops: NopChoice) -> Part:
    """Plan the backend's boot patching once (as `apply` does) and let each family read it."""
    model = ctx.model
    p = plan(model, backend, ctx.alts, nops)
    br = BackendRun(backend, p, model.image.symbols.address(ERA_5_13_TO_6_7.nop_function))
    out = Part([], [], backend=BackendInfo(backend.name, backend.description))
    for family, fn in PER_BACKEND:
        out.findings.extend(fn(ctx, br))
        out.suites.append(Suite(family, backend.name, True))
    return out


def _patched_run(model: KernelModel, run: CheckRun, names: tuple[str, ...],
                 recognised: Recognition) -> CheckRun:
    """One finding for the whole image; every family that reads sites is skipped, saying
    why, so a report (and JUnit) shows what was not looked at."""
    why = "the image is already patched (image.already-patched)"
    config = recognised.matches[0].described if recognised.matches else "no configuration"
    run.findings.append(finding(
        "image.already-patched", None, None, "", config,
        f"{recognised.look.described}: {recognised.described}; check the unpatched vmlinux"))
    run.suites += [Suite("image", None, False), Suite("site", None, False, why),
                   Suite("alt", None, False, why)]
    run.suites += [Suite(family, name, True, why) for name in names for family, _ in PER_BACKEND]
    run.checked["sites"] = len(model.sites.sites)
    run.notes.append(f"sites not checked: {why}")
    if "xen" in names:
        part = _xen_part(model)
        run.suites += part.suites
        run.findings += part.findings
        run.checked.update(part.checked)
    load_registry()
    return run


def _xen_part(model: KernelModel) -> Part:
    """Skipped, not silent, when the kernel has no Xen guest code at all."""
    from pvpatch.checks import xen

    found, evaluated = xen.check_xen(model.image)
    skipped = None if evaluated else "the kernel is built without Xen PV or PVH support"
    return Part([Suite("xen", None, False, skipped)], found, {"xen_conditions": evaluated})
