"""Run every check family on one image for the chosen backends, in a fixed order.

The order is the report's order: image-level site and alternative checks, then per backend
the slot, fit, clobber and alternative-feature checks, then the Xen notes. Each (family,
backend) pair is a *suite*, which the JUnit renderer turns into one testsuite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pvpatch.backends import BACKENDS, Backend, load_backend
from pvpatch.checks import alternatives, clobbers, fit, sites, slots, xen
from pvpatch.checks.context import BackendRun, Context
from pvpatch.checks.model import Finding
from pvpatch.errors import UsageError
from pvpatch.kernel.model import KernelModel
from pvpatch.parallel import fork_map
from pvpatch.patch.plan import ERA_5_13_TO_6_7, nop_table, plan

PerBackend = Callable[[Context, BackendRun], list[Finding]]
PER_BACKEND: tuple[tuple[str, PerBackend], ...] = (
    ("slot", slots.check_slots), ("fit", fit.check_fit), ("clobber", clobbers.check_clobbers),
    ("alt", alternatives.check_features))


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


@dataclass(frozen=True)
class BackendResult:
    """One backend's suites and findings: plain data, so a worker process can return it."""

    backend: BackendInfo
    suites: list[Suite]
    findings: list[Finding]


@dataclass
class CheckRun:
    path: str
    release: str | None
    backends: list[BackendInfo]
    suites: list[Suite] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse_backends(text: str | None) -> tuple[tuple[str, ...], bool]:
    """``native,xen`` → names in order; the flag says they were asked for explicitly."""
    if text is None:
        return BACKENDS, False
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise UsageError(f"--backend takes a comma-separated list of {', '.join(BACKENDS)} "
                         f"(got {text!r})")
    return names, True


def run_checks(model: KernelModel, names: tuple[str, ...], vcpus: int,
               explicit: bool = True) -> CheckRun:
    """Every family for ``names``. Without ``explicit``, a backend the image cannot have
    (Xen PV on a kernel built without it) is skipped with a note instead of an error."""
    ctx = Context(model, model.alternatives)  # the table the sites were read with (6.8+)
    run = CheckRun(model.image.path, model.version.release, [])
    if model.builtin is not None and model.builtin.table is not None:
        run.notes.append(f"op names from {model.builtin.described} (no BTF/DWARF in the image)")
    _image_suites(ctx, run)
    run.checked.update(sites=len(model.sites.sites), pv_alternatives=len(ctx.pv_alternatives))
    wanted = _usable(model, names, explicit, run)
    # Each backend plans the whole boot on its own: one per core (parallel.fork_map), after
    # building what they all read.
    model.image.symbols.index_code()
    for result in fork_map(lambda name: _backend_suites(ctx, load_backend(model, name, vcpus)),
                           wanted):
        run.backends.append(result.backend)
        run.suites += result.suites
        run.findings += result.findings
    if "xen" in names:  # the notes matter to PVH-only kernels too, so not tied to `wanted`
        _xen_suite(model, run)
    return run


def _usable(model: KernelModel, names: tuple[str, ...], explicit: bool, run: CheckRun
            ) -> tuple[str, ...]:
    """The default list must work on any kernel; an explicit one fails loudly instead."""
    if explicit or "xen" not in names:
        return names
    from pvpatch.backends.xen import unsupported

    why = unsupported(model)
    if why is None:
        return names
    run.notes.append(f"xen backend skipped: {why}")
    return tuple(n for n in names if n != "xen")


def _image_suites(ctx: Context, run: CheckRun) -> None:
    """Facts of the image itself: reported once, whatever the backends."""
    run.findings += sites.check_sites(ctx)
    run.suites.append(Suite("site", None, False))
    run.findings += alternatives.check_alignment(ctx)
    run.suites.append(Suite("alt", None, False))


def _backend_suites(ctx: Context, backend: Backend) -> BackendResult:
    """Plan the backend's boot patching once (as `apply` does) and let each family read it."""
    model = ctx.model
    p = plan(model, backend, ctx.alts, nop_table(model))
    br = BackendRun(backend, p, model.image.symbols.address(ERA_5_13_TO_6_7.nop_function))
    out = BackendResult(BackendInfo(backend.name, backend.description), [], [])
    for family, fn in PER_BACKEND:
        out.findings.extend(fn(ctx, br))
        out.suites.append(Suite(family, backend.name, True))
    return out


def _xen_suite(model: KernelModel, run: CheckRun) -> None:
    """Skipped, not silent, when the kernel has no Xen guest code at all."""
    found, evaluated = xen.check_xen(model.image)
    run.findings += found
    run.checked["xen_conditions"] = evaluated
    skipped = None if evaluated else "the kernel is built without Xen PV or PVH support"
    run.suites.append(Suite("xen", None, False, skipped))
