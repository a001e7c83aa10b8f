"""The Xen PV backend: the pv-op table as ``xen_start_kernel`` leaves it when patching runs.

The rule set of the image's kernel range (``xen_rules``) says which Xen op tables are copied
into the live table and which slots are then assigned one by one; the values themselves are
read from the image. Before 5.13 the rules also say which patcher the guest installed
(``xen_patch`` or ``paravirt_patch_default``), which ``pvpatch.patch.legacy`` then runs.
"""

from __future__ import annotations

from pvpatch.backends import (
    Backend,
    CallTarget,
    Resolution,
    decide_pv_features,
    initial_resolutions,
    initial_static_calls,
)
from pvpatch.backends.xen_rules import (
    XEN_STARTUP,
    Assign,
    MemberCopy,
    XenRules,
    member_path,
    no_xen_pv,
    placement_works,
    rules_for,
    slot_path,
)
from pvpatch.errors import InputError
from pvpatch.kernel.era import LEGACY_ERAS, era_version, version_key
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import describe_targets
from pvpatch.kernel.startup import StartupResult, pv_regions, run_startup

KNOWN_PATCHERS = ("xen_patch", "paravirt_patch_default", "native_patch")


def rules_version(model: KernelModel) -> tuple[int, int, int] | None:
    """The version the rules are chosen by: the banner's, bounded by the detected era."""
    era = model.era
    if era is not None and era.era.key in LEGACY_ERAS:
        return era_version(model.version, era.era)[0]
    v = model.version
    return None if v.major is None else version_key(v)


def unsupported(model: KernelModel) -> str | None:
    """Why this image cannot be resolved as a Xen PV guest (None: it can)."""
    era = model.era
    version = rules_version(model)
    if era is not None and era.era.key == "G1":
        return f"era G1 ({era.era.versions}) has no Xen PV guest: it first appears in 2.6.23"
    if version is not None and (why := no_xen_pv(model.image.bits, version)) is not None:
        return f"no Xen PV guest in a {model.image.bits}-bit {_short(version)} kernel: {why}"
    if model.pvops.container is None:
        return f"cannot resolve the Xen backend: {model.pvops.described}"
    if model.image.symbols.get("xen_start_kernel") is None:
        return "the kernel is built without Xen PV support (no xen_start_kernel)"
    if rules_for(version) is None and not _reads_code(model, version):
        return (f"no Xen PV start-up rules for kernel {model.version.short} "
                "(known: 2.6.23–4.19 as tables, 4.20+ read from the start-up code)")
    if era is not None and era.era.key in LEGACY_ERAS and model.pvops.layout is None:
        return ("the Xen start-up assignments name pv-op members, and this image has no "
                "type information (BTF/DWARF) to find them")
    return None


def _reads_code(model: KernelModel, version: tuple[int, int, int] | None) -> bool:
    """4.20+: the start-up functions' stores are read from the image (XEN_STARTUP)."""
    era = model.era
    if era is not None and era.era.key in ("G1", "G2", "G3"):
        return False
    return version is None or XEN_STARTUP.span.holds(version)


def _short(v: tuple[int, int, int]) -> str:
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[0] == 2 else "")


def resolve(model: KernelModel, vcpus: int) -> Backend:
    why = unsupported(model)
    if why is not None:
        raise InputError(why, model.image.path)
    version = rules_version(model)
    if _reads_code(model, version):
        backend = _from_code(model, vcpus, version)
        if backend is not None:
            return backend
    rules = rules_for(version)
    if rules is None:
        raise InputError(f"the Xen start-up code of this {model.version.short} kernel stores "
                         "nothing into its pv-op tables that pvpatch can read, and there are "
                         "no table rules for it", model.image.path)
    assert version is not None and rules is not None
    bits = model.image.bits
    placement = placement_works(bits, version)
    container = model.pvops.container.name if model.pvops.container else "pv_ops"
    slots = initial_resolutions(model, f"{container} initialiser (untouched by Xen)")
    for copy in rules.copies:
        _apply_copy(model, slots, copy)
    _apply_assigns(model, slots, rules, vcpus, version, placement)
    _apply_unknown(model, slots, rules, vcpus, version)
    desc = f"Xen PV guest with {vcpus} vCPU(s); rules {rules.versions}"
    backend = Backend("xen", desc, slots)
    if rules.patcher != "paravirt_patch":
        backend.patcher, backend.patcher_reason = _patcher(model, slots, rules)
        backend.placement = placement
        backend.description += (f"; patcher {backend.patcher}; vcpu_info placement "
                                f"{'assumed to work' if placement else 'off in this kernel'}")
    decide_pv_features(model, backend, xenpv=True)
    return backend


def _patcher(model: KernelModel, slots: dict[int, Resolution], rules: XenRules
             ) -> tuple[str, str]:
    """The patch op as the image's own table leaves it, else what the rules say."""
    slot = model.pvops.by_name(slot_path(model.pvops.container.name, "init.patch")) \
        if model.pvops.container else None
    res = slots.get(slot.index) if slot else None
    if res is not None and res.name in KNOWN_PATCHERS:
        return res.name, f"patch slot holds {res.name} ({res.reason})"
    return rules.patcher, f"{rules.patcher_by} (rules {rules.versions})"


def _apply_copy(model: KernelModel, slots: dict[int, Resolution], copy: MemberCopy) -> None:
    """Copy one member of a Xen op table; its layout matches the live table's member."""
    image, pvops = model.image, model.pvops
    assert pvops.container is not None
    table = image.symbols.get(copy.table)
    path = member_path(pvops.container.name, copy.member)
    lay = pvops.layout
    if lay is not None and not path:
        span = (0, lay.size)
    else:
        member = lay.field(path) if lay else None
        span = (member.offset, member.size) if member else None
    if table is None or span is None:
        if copy.optional:
            return
        raise InputError(f"cannot resolve the Xen backend: no {copy.table} symbol or no "
                         f"{path or 'op struct'} member in the pv-op table", image.path)
    offset, size = span
    base = table.value if _is_whole_table(model, table.size) else table.value - offset
    copied = [(i, res) for i, res in slots.items()
              if offset <= res.slot.offset < offset + size]
    values = [int.from_bytes(image.read(base + res.slot.offset, image.ptr_size), "little")
              for _i, res in copied]
    what = f"{copy.table}.{copy.member}" if copy.member else copy.table
    for (i, res), value, name in zip(copied, values, describe_targets(image, values),
                                     strict=True):
        slots[i] = Resolution(res.slot, value, name, f"{what} copied by {copy.by}")


def _is_whole_table(model: KernelModel, size: int) -> bool:
    """Is the Xen table a whole pv-op struct (2.6.23, 5.19+) rather than one member struct?

    With .symtab the symbol size says it exactly. Symbols recovered from kallsyms or a
    System.map have no size (each reaches the next symbol), so there the version decides.
    """
    whole = model.pvops.layout.size
    if model.image.symbols.source == ".symtab":
        return size == whole
    v = model.version
    return size >= whole if v.major is None else (v.major, v.minor) >= (5, 19)


def _applies(a: Assign, bits: int, version: tuple[int, int, int], vcpus: int,
             placement: bool) -> bool:
    if bits not in a.bits or not a.span.holds(version):
        return False
    if a.when == "vcpus>1":
        return vcpus > 1
    if a.when == "placement":
        return placement
    return True


def _apply_assigns(model: KernelModel, slots: dict[int, Resolution], rules: XenRules,
                   vcpus: int, version: tuple[int, int, int], placement: bool) -> None:
    container = model.pvops.container.name if model.pvops.container else ""
    for a in rules.assigns:
        if not _applies(a, model.image.bits, version, vcpus, placement):
            continue
        slot = model.pvops.by_name(slot_path(container, a.slot))
        if slot is None:
            continue  # the op does not exist in this build
        sym = model.image.symbols.get(a.target)
        if sym is None:
            slots[slot.index] = Resolution(slot, None, None,
                                           f"{a.by} assigns {a.target}, not in this image")
            continue
        slots[slot.index] = Resolution(slot, sym.value, a.target, a.by)


def _apply_unknown(model: KernelModel, slots: dict[int, Resolution], rules: XenRules,
                   vcpus: int, version: tuple[int, int, int]) -> None:
    container = model.pvops.container.name if model.pvops.container else ""
    for u in rules.unknown:
        if not u.span.holds(version) or (u.when == "vcpus>1" and vcpus <= 1) or \
                (u.when == "vcpus=1" and vcpus != 1):
            continue
        prefix = member_path(container, u.group)
        for i, res in slots.items():
            if res.slot.name.startswith(prefix + "."):
                slots[i] = Resolution(res.slot, None, None, u.why)


# -- 4.20+: read from the start-up code --------------------------------------------------------

def startup(model: KernelModel, vcpus: int) -> StartupResult:
    """What the Xen start-up functions leave in the pv tables and static-call keys (the
    model's decoder is shared, so the second vCPU count decodes nothing again)."""
    return run_startup(model.stores, XEN_STARTUP.steps, pv_regions(model), {"vcpus>1": vcpus > 1})


def _from_code(model: KernelModel, vcpus: int, version: tuple[int, int, int] | None
               ) -> Backend | None:
    """The backend as the image's start-up code sets it (None: the code stores nothing into
    the pv tables, e.g. a fixture that keeps only Xen's op tables)."""
    result = startup(model, vcpus)
    slots = model.pvops.slots
    stored = [res for res in slots.values() if res.address is not None and
              (o := result.value(res.address)) is not None and o.step is not None]
    if not stored:
        return None
    values = [result.value(s.address).value if s.address is not None and
              result.value(s.address) else None for s in slots.values()]
    names = describe_targets(model.image, values)
    container = model.pvops.container.name if model.pvops.container else "pv_ops"
    out: dict[int, Resolution] = {}
    for (i, slot), value, name in zip(slots.items(), values, names, strict=True):
        origin = result.value(slot.address) if slot.address is not None else None
        if origin is None or origin.step is None:
            value0, name0 = model.pvops.initial_target(slot)
            out[i] = Resolution(slot, value0, name0, f"{slot.table or container} initialiser "
                                                     "(untouched by Xen)")
        elif origin.value is None:
            out[i] = Resolution(slot, None, None, f"{origin.how}: not established")
        else:
            out[i] = Resolution(slot, value, name, f"set by {origin.how}")
    ran = ", ".join(result.ran)
    desc = (f"Xen PV guest with {vcpus} vCPU(s); values read from its start-up code "
            f"({len(result.ran)} functions: {ran}); steps {XEN_STARTUP.versions}")
    backend = Backend("xen", desc, out, startup=result,
                      static_calls=_static_calls(model, result))
    backend.notes += [f"{f} {why}" for f, why in result.skipped if why.startswith("does not")]
    backend.notes += result.problems
    _newer_than_read(model, version, backend, result)
    _legacy_patcher(model, backend)
    decide_pv_features(model, backend, xenpv=True)
    return backend


def _static_calls(model: KernelModel, result: StartupResult) -> dict[str, CallTarget]:
    """Each pv static-call key as the start-up code leaves it (the initialiser otherwise)."""
    out = initial_static_calls(model, "DEFINE_STATIC_CALL initialiser (untouched by Xen)")
    changed = {name: o for name, key in model.static_call_keys.items()
               if (o := result.value(key.address)) is not None and o.step is not None}
    names = describe_targets(model.image, [o.value for o in changed.values()])
    for (name, origin), target in zip(changed.items(), names, strict=True):
        out[name] = CallTarget(origin.value, target, f"set by {origin.how}" if origin.value
                               is not None else f"{origin.how}: not established")
    return out


def _newer_than_read(model: KernelModel, version: tuple[int, int, int] | None,
                     backend: Backend, result: StartupResult) -> None:
    """A kernel newer than the last release the steps were read in: answer when the code
    establishes every slot it touches, with a warning; refuse otherwise."""
    last = XEN_STARTUP.last_read
    if version is None or version[:2] <= last[:2]:
        return
    missing = [p for p in result.problems]
    missing += [f"{r.slot.name}: {r.reason}" for r in backend.slots.values()
                if r.value is None and "not established" in r.reason]
    newer = f"{model.version.short} is newer than {last[0]}.{last[1]}, the last release " \
            "whose Xen start-up functions pvpatch was checked against"
    if missing:
        raise InputError(f"{newer}, and its code does not establish everything: "
                         + "; ".join(missing[:5]), model.image.path)
    backend.notes.insert(0, f"warning: {newer}; every value was read from this image's code")


def _legacy_patcher(model: KernelModel, backend: Backend) -> None:
    """4.20–5.12: the patch op as the start-up code leaves it (paravirt_patch_default)."""
    era = model.era
    if era is None or era.era.key not in LEGACY_ERAS:
        return
    slot = model.pvops.by_name("init.patch")
    res = backend.slots.get(slot.index) if slot else None
    if res is not None and res.name in KNOWN_PATCHERS:
        backend.patcher, backend.patcher_reason = res.name, f"patch slot holds {res.name} " \
                                                            f"({res.reason})"
    else:
        backend.patcher, backend.patcher_reason = "paravirt_patch_default", \
            "pv_ops.init.patch was not read from the code: paravirt_patch_default assumed"
    backend.placement = True
    backend.description += f"; patcher {backend.patcher}"
