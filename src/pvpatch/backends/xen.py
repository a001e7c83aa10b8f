"""The Xen PV backend: pv_ops as ``xen_start_kernel`` leaves it when patching runs."""

from __future__ import annotations

from pvpatch.backends import Backend, Resolution, decide_pv_features, initial_resolutions
from pvpatch.backends.xen_rules import MemberCopy, XenRules, rules_for
from pvpatch.errors import InputError
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import describe_targets

# CONFIG_XEN_PV depends on X86_64 from Linux 5.9 (arch/x86/xen/Kconfig; "x86/xen: drop
# 32-bit PV guest support"): a 32-bit kernel of that age is never a Xen PV guest.
NO_32BIT_PV_FROM = (5, 9)


def not_applicable(model: KernelModel) -> str | None:
    """Why no Xen PV guest can run this image at all (None: it may be one)."""
    v = model.version
    if model.image.bits == 32 and (v.major is None or (v.major, v.minor) >= NO_32BIT_PV_FROM):
        since = " (version unknown)" if v.major is None else f"; this is {v.short}"
        return f"32-bit Xen PV guests were dropped in Linux 5.9{since}"
    return None


def resolve(model: KernelModel, vcpus: int) -> Backend:
    v = model.version
    era = model.era
    why_not = not_applicable(model)
    if why_not:
        raise InputError(f"the Xen backend does not apply: {why_not}", model.image.path)
    if era is not None and era.era.key in ("G1", "G2", "G3", "G4"):
        raise InputError(f"Xen patching of era {era.era.key} ({era.era.versions}: xen_patch / "
                         "the Xen pv-op tables of that time) is not modelled yet; use "
                         "--backend native", model.image.path)
    rules = rules_for((v.major, v.minor) if v.major is not None else None)
    if rules is None:
        raise InputError(f"no Xen PV start-up rules for kernel {v.short} yet "
                         "(known: 5.19–6.12)", model.image.path)
    if model.image.symbols.get("xen_start_kernel") is None:
        raise InputError("kernel built without Xen PV support (no xen_start_kernel)",
                         model.image.path)
    slots = initial_resolutions(model, "pv_ops initialiser (untouched by Xen)")
    for copy in rules.copies:
        _apply_copy(model, slots, copy)
    _apply_assigns(model, slots, rules, vcpus)
    backend = Backend("xen", f"Xen PV guest with {vcpus} vCPU(s); rules {rules.versions}",
                      slots)
    decide_pv_features(model, backend, xenpv=True)
    return backend


def _apply_copy(model: KernelModel, slots: dict[int, Resolution], copy: MemberCopy) -> None:
    """Copy one member of a Xen op table; its layout matches pv_ops (typeof(pv_ops) or member)."""
    image, pvops = model.image, model.pvops
    table = image.symbols.get(copy.table)
    member = pvops.layout.field(copy.member) if pvops.layout else None
    if table is None or member is None:
        raise InputError(f"cannot resolve the Xen backend: no {copy.table} symbol or no "
                         f"pv_ops.{copy.member} member", image.path)
    base = table.value if _is_whole_table(model, table.size) else table.value - member.offset
    copied = [(i, res) for i, res in slots.items()
              if member.offset <= res.slot.offset < member.offset + member.size]
    values = [int.from_bytes(image.read(base + res.slot.offset, image.ptr_size), "little")
              for _i, res in copied]
    for (i, res), value, name in zip(copied, values, describe_targets(image, values),
                                     strict=True):
        slots[i] = Resolution(res.slot, value, name,
                              f"{copy.table}.{copy.member} copied by {copy.by}")


def _is_whole_table(model: KernelModel, size: int) -> bool:
    """Is the Xen table a whole typeof(pv_ops) (5.19+) rather than one member struct?

    With .symtab the symbol size says it exactly. Symbols recovered from kallsyms or a
    System.map have no size (each reaches the next symbol), so there the version decides.
    """
    whole = model.pvops.layout.size
    if model.image.symbols.source == ".symtab":
        return size == whole
    v = model.version
    return size >= whole if v.major is None else (v.major, v.minor) >= (5, 19)


def _apply_assigns(model: KernelModel, slots: dict[int, Resolution], rules: XenRules,
                   vcpus: int) -> None:
    for a in rules.assigns:
        if a.when == "vcpus>1" and vcpus <= 1:
            continue
        slot = model.pvops.by_name(a.slot)
        if slot is None:
            continue  # the op does not exist in this build
        sym = model.image.symbols.get(a.target)
        if sym is None:
            slots[slot.index] = Resolution(slot, None, None,
                                           f"{a.by} assigns {a.target}, not in this image")
            continue
        slots[slot.index] = Resolution(slot, sym.value, a.target, a.by)
