"""Backends: what each pv_ops slot and pv static call holds, and which pv CPU features are set,
when patching runs.

A backend resolves every slot to a target with the reason it holds that value, read from the
image itself (initialisers, Xen's op tables) plus the start-up rules of the kernel range in
``pvpatch.backends.xen_rules``; likewise every pv static-call key (``static_calls``: key name →
the function its last ``static_call_update()`` left, or its initialiser). Nothing here knows
about bytes or sites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the names below are read by every command's options,
    # before the model's modules are loaded (apply starts its copy first)
    from pvpatch.kernel.model import KernelModel
    from pvpatch.kernel.pvops import Slot
    from pvpatch.kernel.startup import StartupResult


@dataclass(frozen=True)
class Resolution:
    slot: Slot
    value: int | None  # None: could not be determined
    name: str | None  # symbol at value, "NULL", or None
    reason: str


@dataclass(frozen=True)
class CallTarget:
    """What a pv static-call key holds once start-up is done (Resolution's shape, no slot)."""

    value: int | None  # None: could not be determined; 0: NULL (DEFINE_STATIC_CALL_NULL)
    name: str | None  # symbol at value, "NULL", or None
    reason: str


@dataclass(frozen=True)
class GuestOptions:
    """What a guest's run-time tests see, beyond the vCPU count. None: the backend's stated
    default (the options' help and docs/backends.md say which, and from where)."""

    kvm_features: frozenset[str] | None = None  # KVM_FEATURE_* names, lower case
    kvm_hints: frozenset[str] = frozenset()  # KVM_HINTS_* ("realtime")
    hyperv_features: frozenset[str] | None = None  # the recommendations Hyper-V makes
    vmware_features: frozenset[str] | None = None
    cmdline: frozenset[str] = frozenset()  # kernel command-line words (nopvspin, …)
    mwait: bool = False  # the guest's CPUID shows MONITOR/MWAIT (X86_FEATURE_MWAIT)


@dataclass(frozen=True)
class Feature:
    """A synthetic CPU feature bit that pv-related alternatives test (cpufeatures.h, 5.13+)."""

    name: str
    number: int  # word * 32 + bit
    versions: str


PV_FEATURES = (
    Feature("X86_FEATURE_ALWAYS", 3 * 32 + 21, "3.x+"),
    Feature("X86_FEATURE_XENPV", 8 * 32 + 16, "4.14+ (checked 6.1, 6.12)"),
    Feature("X86_FEATURE_PVUNLOCK", 8 * 32 + 20, "5.13+"),
    Feature("X86_FEATURE_VCPUPREEMPT", 8 * 32 + 21, "5.13+"),
)
FEATURE_BY_NAME = {f.name: f for f in PV_FEATURES}

# paravirt_set_cap() (arch/x86/kernel/paravirt-spinlocks.c, 5.13+): a lock op that is not the
# native callee-save thunk forces the feature, which turns off the native ALTERNATIVE.
# From 7.0 the lock ops live in pv_ops_lock; 7.3 made queued_spin_unlock a static call and
# paravirt_set_cap() tests only vcpu_is_preempted (fc6ad5eadcd1): a slot a build lacks sets
# nothing.
NATIVE_LOCK_THUNKS = {
    "X86_FEATURE_PVUNLOCK": (("lock.queued_spin_unlock", "pv_ops_lock.queued_spin_unlock"),
                             "__raw_callee_save___native_queued_spin_unlock"),
    "X86_FEATURE_VCPUPREEMPT": (("lock.vcpu_is_preempted", "pv_ops_lock.vcpu_is_preempted"),
                                "__raw_callee_save___native_vcpu_is_preempted"),
}


@dataclass
class Backend:
    name: str
    description: str
    slots: dict[int, Resolution]
    features: dict[int, bool] = field(default_factory=dict)  # feature number → set?
    feature_reasons: dict[str, str] = field(default_factory=dict)
    # Before 5.13: the function the era's apply_paravirt calls per site, and why.
    patcher: str = "native_patch"
    patcher_reason: str = "the image's own initialiser"
    placement: bool = False  # Xen: vcpu_info placement worked (xen_patch's condition)
    notes: list[str] = field(default_factory=list)  # warnings and facts for every report
    startup: StartupResult | None = None  # read from the image's start-up code, when it was
    # pv static-call key name (``pv_steal_clock``, no ``__SCK__``) → its final function; a key
    # the image has but the backend leaves out is planned as unresolved, never guessed.
    static_calls: dict[str, CallTarget] = field(default_factory=dict)

    def resolution(self, slot_index: int) -> Resolution | None:
        return self.slots.get(slot_index)

    def has_feature(self, number: int) -> bool | None:
        """True/False when the backend decides the bit, None when it depends on the CPU."""
        return self.features.get(number)


def initial_resolutions(model: KernelModel, reason: str) -> dict[int, Resolution]:
    """Every slot as the image's pv_ops initialiser leaves it."""
    out = {}
    for i, slot in model.pvops.slots.items():
        value, name = model.pvops.initial_target(slot)
        out[i] = Resolution(slot, value, name, reason)
    return out


def initial_static_calls(model: KernelModel, reason: str) -> dict[str, CallTarget]:
    """Every pv static-call key as its DEFINE_STATIC_CALL initialiser leaves it."""
    return {name: CallTarget(key.func, key.func_name, reason)
            for name, key in model.static_call_keys.items()}


def decide_pv_features(model: KernelModel, backend: Backend, xenpv: bool) -> None:
    """Set the pv feature bits exactly as the kernel does before apply_alternatives."""
    backend.features[FEATURE_BY_NAME["X86_FEATURE_ALWAYS"].number] = True
    backend.feature_reasons["X86_FEATURE_ALWAYS"] = "always set"
    backend.features[FEATURE_BY_NAME["X86_FEATURE_XENPV"].number] = xenpv
    backend.feature_reasons["X86_FEATURE_XENPV"] = (
        "forced by xen_start_kernel" if xenpv else "only a Xen PV guest sets it")
    for fname, (ops, thunk) in NATIVE_LOCK_THUNKS.items():
        slot = next((s for op in ops if (s := model.pvops.by_name(op)) is not None), None)
        op = slot.name if slot else ops[0]
        res = backend.slots.get(slot.index) if slot else None
        if res is None or res.value is None:
            continue
        native = model.image.symbols.address(thunk)
        forced = res.value != native
        backend.features[FEATURE_BY_NAME[fname].number] = forced
        backend.feature_reasons[fname] = (
            f"paravirt_set_cap: {op} is {res.name}, " +
            ("not the native thunk: forced" if forced else "the native thunk: not set"))


def load_backend(model: KernelModel, name: str, vcpus: int = 2,
                 options: GuestOptions | None = None) -> Backend:
    from pvpatch.backends import native, xen

    if name == "native":
        return native.resolve(model)
    if name == "xen":
        return xen.resolve(model, vcpus)
    if name in GUESTS:
        from importlib import import_module

        module = import_module(f"pvpatch.backends.{name}")
        return module.resolve(model, vcpus, options or GuestOptions())
    raise ValueError(f"unknown backend {name!r}")


def unsupported_reason(model: KernelModel, name: str) -> str | None:
    """Why this image cannot have the backend (None: it can), for lists that must work on
    any kernel (``check``'s default, ``verify``)."""
    if name == "native":
        return None
    if name == "xen":
        from pvpatch.backends.xen import unsupported

        return unsupported(model)
    from importlib import import_module

    return import_module(f"pvpatch.backends.{name}").unsupported(model)


GUESTS = ("kvm", "hyperv", "vmware", "lguest")  # modules with resolve() and unsupported()
BACKENDS = ("native", "xen", *GUESTS)
CHECKED_BY_DEFAULT = ("native", "xen")  # `check` without --backend
# the backends whose start-up depends on the guest's vCPU count (--vcpus): Xen's and KVM's
# pv spinlocks need more than one; Hyper-V's and VMware's read it too (docs/backends.md)
VCPU_BACKENDS = ("xen", "kvm", "hyperv", "vmware")
