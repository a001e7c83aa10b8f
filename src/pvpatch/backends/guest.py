"""A guest backend read from its start-up code: KVM, Hyper-V, VMware (4.20+).

Each of these guests installs its functions with plain stores and ``static_call_update()``
calls in a few ``__init`` functions, some of them under run-time tests of what the hypervisor
offers (a CPUID feature bit, a hint, the vCPU count, a command-line word). What lands where is
read from the image's code (:mod:`pvpatch.kernel.startup`); a backend module states only its
steps, the guards of its conditional stores, and how each condition is evaluated from the
options (:class:`GuestRules`, :class:`Condition`). Every slot and pv static-call key then says
which store set it and under which condition, or that the guest left it alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pvpatch.backends import (
    Backend,
    CallTarget,
    GuestOptions,
    Resolution,
    decide_pv_features,
    initial_resolutions,
    initial_static_calls,
)
from pvpatch.backends.xen_rules import Range, Version
from pvpatch.errors import InputError
from pvpatch.kernel.era import version_key
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import describe_targets
from pvpatch.kernel.startup import StartupResult, Step, pv_regions, run_startup
from pvpatch.kernel.stores import StoreReader


@dataclass(frozen=True)
class Condition:
    """One run-time test of the guest, evaluated from the options.

    ``test`` returns (holds, why); ``source`` is the test as the kernel writes it and where."""

    name: str
    source: str
    test: Callable[[GuestOptions, int, Version], tuple[bool, str]]


@dataclass(frozen=True)
class GuestRules:
    """Which start-up functions a guest runs before patching, and when (per release range)."""

    backend: str
    title: str  # "KVM guest"
    versions: str  # where the steps were read
    span: Range
    last_read: Version
    entry: str  # a symbol every build with this guest has (its hypervisor_x86 hook)
    steps: tuple[Step, ...]
    conditions: tuple[Condition, ...]
    bits: tuple[int, ...] = ()  # the ELF classes the guest exists for (empty: both)


def version_of(model: KernelModel) -> Version | None:
    v = model.version
    return None if v.major is None else version_key(v)


def unsupported(model: KernelModel, rules: GuestRules) -> str | None:
    """Why this image cannot be planned as this guest (None: it can)."""
    if model.image.symbols.get(rules.entry) is None:
        return f"the kernel is built without {rules.title} support (no {rules.entry})"
    if model.pvops.container is None:
        return f"cannot resolve the {rules.title} backend: {model.pvops.described}"
    if rules.bits and model.image.bits not in rules.bits:
        return f"no {model.image.bits}-bit {rules.title}: it exists on {rules.bits[0]}-bit only"
    v = version_of(model)
    if v is not None and not rules.span.holds(v):
        return (f"no {rules.title} start-up steps for kernel {model.version.short} "
                f"(read for {rules.versions})")
    return None


def evaluate(rules: GuestRules, options: GuestOptions, vcpus: int, version: Version
             ) -> tuple[dict[str, bool], dict[str, str]]:
    """Every condition's value and the sentence the report gives for it."""
    values, said = {}, {}
    for c in rules.conditions:
        holds, why = c.test(options, vcpus, version)
        values[c.name] = holds
        said[c.name] = f"{'yes' if holds else 'no'}: {why} [{c.source}]"
    return values, said


def resolve(model: KernelModel, rules: GuestRules, options: GuestOptions, vcpus: int,
            description: str) -> Backend:
    """The backend as the image's start-up code leaves pv_ops and the pv static calls."""
    why = unsupported(model, rules)
    if why is not None:
        raise InputError(why, model.image.path)
    version = version_of(model) or rules.last_read
    values, said = evaluate(rules, options, vcpus, version)
    result = run_startup(StoreReader(model.image), rules.steps, pv_regions(model), values)
    label = rules.title
    slots = _slots(model, result, label)
    desc = f"{description}; start-up code read from the image ({', '.join(result.ran)}); " \
           f"steps {rules.versions}"
    backend = Backend(rules.backend, desc, slots, startup=result,
                      static_calls=_static_calls(model, result, label))
    backend.feature_reasons.update(said)
    backend.notes += [f"{f} {w}" for f, w in result.skipped if w.startswith("does not")]
    backend.notes += [f"not applied: {where} stores {value}, only when {cond} (false)"
                      for where, value, cond in result.guarded_off]
    backend.notes += result.problems
    _newer_than_read(model, rules, backend)
    _patcher(model, backend)
    decide_pv_features(model, backend, xenpv=False)
    return backend


PATCHERS = ("lguest_patch", "paravirt_patch_default", "native_patch")


def _patcher(model: KernelModel, backend: Backend) -> None:
    """Before 5.13: the patch op as the start-up code leaves it (lguest_init installs
    lguest_patch); the native patcher when the guest does not touch it."""
    slot = next((s for s in model.pvops.slots.values()
                 if s.name.rsplit(".", 1)[-1] == "patch"), None)
    res = backend.slots.get(slot.index) if slot is not None else None
    if res is not None and res.name in PATCHERS:
        backend.patcher, backend.patcher_reason = res.name, f"patch slot holds {res.name} " \
                                                            f"({res.reason})"


def _reason(origin_how: str, condition: str | None) -> str:
    return f"set by {origin_how}" + (f", when {condition}" if condition else "")


def _slots(model: KernelModel, result: StartupResult, label: str) -> dict[int, Resolution]:
    """Each slot as the code left it; its table's initialiser where no step stored into it."""
    out = initial_resolutions(model, "")
    for i, res in out.items():
        out[i] = Resolution(res.slot, res.value, res.name,
                            f"{res.slot.table} initialiser (untouched by the {label})")
    slots = model.pvops.slots
    stored = {i: o for i, s in slots.items() if s.address is not None and
              (o := result.value(s.address)) is not None and o.step is not None}
    names = describe_targets(model.image, [o.value for o in stored.values()])
    for (i, origin), name in zip(stored.items(), names, strict=True):
        if origin.value is None:
            out[i] = Resolution(slots[i], None, None, f"{origin.how}: not established")
        else:
            out[i] = Resolution(slots[i], origin.value, name,
                                _reason(origin.how, origin.condition))
    return out


def _static_calls(model: KernelModel, result: StartupResult, label: str
                  ) -> dict[str, CallTarget]:
    out = initial_static_calls(model, f"DEFINE_STATIC_CALL initialiser (untouched by the "
                                      f"{label})")
    changed = {name: o for name, key in model.static_call_keys.items()
               if (o := result.value(key.address)) is not None and o.step is not None}
    names = describe_targets(model.image, [o.value for o in changed.values()])
    for (name, origin), target in zip(changed.items(), names, strict=True):
        out[name] = CallTarget(origin.value, target, _reason(origin.how, origin.condition)
                               if origin.value is not None else
                               f"{origin.how}: not established")
    return out


def _newer_than_read(model: KernelModel, rules: GuestRules, backend: Backend) -> None:
    """Newer than the last release read: answer with a warning when the code establishes
    every value it touches; refuse otherwise (Xen's rule)."""
    v = version_of(model)
    last = rules.last_read
    if v is None or v[:2] <= last[:2]:
        return
    newer = (f"{model.version.short} is newer than {last[0]}.{last[1]}, the last release whose "
             f"{rules.title} start-up functions pvpatch was checked against")
    missing = list(backend.startup.problems if backend.startup else [])
    missing += [f"{r.slot.name}: {r.reason}" for r in backend.slots.values()
                if r.value is None and "not established" in r.reason]
    if missing:
        raise InputError(f"{newer}, and its code does not establish everything: "
                         + "; ".join(missing[:5]), model.image.path)
    backend.notes.insert(0, f"warning: {newer}; every value was read from this image's code")


def parse_names(text: str | None, known: dict[str, object], option: str) -> frozenset[str] | None:
    """``steal_time,pv_unhalt`` → names (None: not given); "none" is the empty set."""
    if text is None:
        return None
    names = [n.strip().lower().replace("-", "_") for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return frozenset()
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"{option}: unknown {', '.join(bad)} (known: {', '.join(known)}, "
                         "or none)")
    return frozenset(names)
