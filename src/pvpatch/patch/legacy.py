"""Boot patching before 5.13: ``apply_paravirt()`` calling the era's ``native_patch``.

For every ``.parainstructions`` record the kernel copies the site into a buffer, lets the
patcher fill it and return how many bytes it used, pads the rest with ``add_nops`` and writes
it back; ``used == len`` leaves the site as built (fact sheet §4.1). The native patcher, in
the order the kernel tries it (§4.2):

- 2.6.20–21 (G1): the enum type's inline replacement if it fits, else nothing;
- 2.6.22–5.12 (G2–G4): the 2.6.22–23 zero-byte ops; the op's inline replacement (lock ops
  only while the slot holds the native thunk); else ``paravirt_patch_default``: NULL → ``ud2``,
  ``_paravirt_nop`` → nothing, ``_paravirt_ident_*`` → ``mov``, jmp ops → ``jmp``, else a
  direct call, refused up to 4.18 unless the site's clobber mask allows CLBR_ANY.

Every fact (bytes, op lists, version ranges) lives in :mod:`pvpatch.patch.native_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvpatch.backends import Backend, Resolution
from pvpatch.kernel.era import BY_KEY, EraDetection, PatchEra, era_version
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import Site, site_bytes
from pvpatch.patch import native_tables as T
from pvpatch.patch.nops import NopTable
from pvpatch.patch.plan import PatchPlan, SitePatch, call_rel32

JMP = 0xE9


@dataclass(frozen=True)
class Rules:
    """The tables of one era resolved for one image: what ``native_patch`` consults."""

    era: PatchEra
    version: T.Version
    version_note: str
    bits: int
    inline: dict[str, T.Inline]
    jmp_ops: frozenset[str]
    idents: dict[int, tuple[str, bytes]]  # symbol address → (name, bytes)
    nop_fn: int | None
    thunks: dict[str, int | None]  # gated op → native thunk address
    clobber_check: bool
    clobber_any: int
    leave_if_too_long: bool


@dataclass
class Step:
    """What the patcher returned for one site: ``used`` bytes, or None for ``return len``."""

    used: bytes | None
    outcome: str
    reason: str
    target: int | None = None
    target_name: str | None = None
    problems: list[str] = field(default_factory=list)
    fatal: str = ""


def patch_version(model: KernelModel, era: PatchEra) -> tuple[T.Version, str]:
    """The version the in-era tables are read at (``kernel.era.era_version``)."""
    return era_version(model.version, era)


def rules_for(model: KernelModel, era: PatchEra) -> Rules:
    bits, syms = model.image.bits, model.image.symbols
    version, note = patch_version(model, era)
    inline = {i.op: i for i in T.INLINE if i.bits in (bits, T.ANY) and i.span.holds(version)}
    if era is BY_KEY["G1"]:
        inline.update(T.G1_INLINE)
    jmp: frozenset[str] = frozenset()
    for j in T.JMP_OPS:
        if j.span.holds(version):
            jmp = j.ops | (j.ops_32_only if bits == 32 else frozenset())
    idents = {}
    for ident in T.IDENTS:
        addr = syms.address(ident.symbol)
        if ident.span.holds(version) and addr is not None:
            idents[addr] = (ident.symbol, ident.code[bits])
    return Rules(era, version, note, bits, inline, jmp, idents, syms.address("_paravirt_nop"),
                 {op: syms.address(t) for op, t in T.NATIVE_THUNK_GATED.items()},
                 T.CLOBBER_CHECK.holds(version), model.clobber_bits.any,
                 T.LEAVE_IF_TOO_LONG.holds(version))


def plan_legacy(model: KernelModel, backend: Backend, detection: EraDetection,
                nops: NopTable) -> PatchPlan:
    rules = rules_for(model, detection.era)
    patches = [_patch_site(model, backend, rules, s, nops) for s in model.sites.sites]
    notes = [f"era {rules.era.key} ({rules.era.versions}): {_dispatcher(rules, backend)}; "
             f"{rules.version_note}", _clobber_note(rules)]
    return PatchPlan(backend, nops, "ud2", patches, 0, 0, notes, era=rules.era.key,
                     null_patch="ud2")


def _dispatcher(rules: Rules, backend: Backend) -> str:
    if backend.patcher == "native_patch" or rules.era.key == "G1":
        return rules.era.dispatcher
    head = rules.era.dispatcher.split(" (")[0]
    return f"{head} = {backend.patcher} ({backend.patcher_reason})"


def _clobber_note(rules: Rules) -> str:
    if rules.era.key == "G1":
        return "no call patching in 2.6.20–21: only inline replacements"
    if rules.clobber_check:
        return ("clobber check on (mainline 2.6.22–4.18; stable 4.14.x and 4.18.1+ dropped it "
                "too, which the version cannot show)")
    return "no clobber check (removed in 4.19)"


def _patch_site(model: KernelModel, backend: Backend, rules: Rules, site: Site,
                nops: NopTable) -> SitePatch:
    before = site_bytes(model.image, site)
    step = _g1_patch(rules, site) if rules.era.key == "G1" else \
        _dispatch(model, backend, rules, site)
    sp = SitePatch(site, before, before, step.outcome, step.target, step.target_name,
                   step.reason, problems=step.problems, fatal=step.fatal)
    if step.used is not None:
        sp.after = step.used + nops.fill(site.length - len(step.used))
    return sp


def _g1_patch(rules: Rules, site: Site) -> Step:
    """2.6.20–21 native_patch: inline code for the enum type, or the site stays."""
    ins = rules.inline.get(site.kind or "")
    if ins is None or ins.code is None:
        return Step(None, "unpatched", f"no native replacement for type {site.type}")
    if len(ins.code) > site.length:
        return Step(None, "unpatched", f"{ins.text} ({len(ins.code)} bytes) does not fit")
    return Step(ins.code, "inline-native", f"native_patch: {ins.text}")


def _leaf(site: Site) -> str:
    return site.slot.name.rsplit(".", 1)[-1] if site.slot else ""


def _dispatch(model: KernelModel, backend: Backend, rules: Rules, site: Site) -> Step:
    """The patch op the backend installed: native_patch, xen_patch or paravirt_patch_default."""
    res = backend.resolution(site.type)
    if res is None or res.value is None:
        why = res.reason if res else f"type {site.type} names no slot"
        return Step(None, "unpatched", f"slot value unknown ({why}): not modelled",
                    problems=[f"slot value unknown ({why})"] if res else [])
    op = _leaf(site)
    if backend.patcher == "xen_patch":
        return _xen_patch(model, backend, rules, site, res, op)
    if backend.patcher == "lguest_patch":
        return _lguest_patch(model, rules, site, res, op)
    if backend.patcher == "paravirt_patch_default":
        return _default(rules, site, res, op)
    return _native_patch(rules, site, res, op)


def _native_patch(rules: Rules, site: Site, res: Resolution, op: str) -> Step:
    if rules.era.key == "G2" and T.ZERO_BYTE_SPAN.holds(rules.version) and \
            op in T.ZERO_BYTE_OPS:
        return Step(b"", "nop", f"native_patch: {op} returns its argument in place")
    ins = rules.inline.get(op)
    if op in rules.thunks and res.value != rules.thunks[op]:
        ins = None  # pv_is_native_spin_unlock() / pv_is_native_vcpu_is_preempted() said no
    if ins is not None:
        return _insns(rules, site, ins.code, f"native_patch: {ins.text}", ins.note)
    return _default(rules, site, res, op)


# xen_patch() (2.6.23 arch/i386/xen/enlighten.c … 4.13 arch/x86/xen/enlighten_pv.c): these ops
# are inlined from the template xen_<op>_direct … xen_<op>_direct_end while vcpu_info
# placement works; xen_<op>_direct_reloc marks a rel32 to re-base (0: none). Removed in 4.14
# (edcb5cf84f05), after which Xen installs paravirt_patch_default.
XEN_PATCH_OPS = ("irq_enable", "irq_disable", "save_fl", "restore_fl")


def _xen_patch(model: KernelModel, backend: Backend, rules: Rules, site: Site,
               res: Resolution, op: str) -> Step:
    """xen_patch(): copy the op's template when it fits, re-basing its one call; else default."""
    if op not in XEN_PATCH_OPS or not backend.placement:
        return _default(rules, site, res, op)
    syms = model.image.symbols
    name = f"xen_{op}_direct"
    start, end, reloc = (syms.address(name), syms.address(f"{name}_end"),
                         syms.address(f"{name}_reloc"))
    if start is None:
        return _default(rules, site, res, op)
    if end is None or reloc is None:
        why = f"xen_patch: {name} has no _end or _reloc symbol: the template is unknown"
        return Step(None, "unpatched", why, problems=[why])
    size = end - start
    if size > site.length:
        step = _default(rules, site, res, op)
        step.reason = f"xen_patch: {name} ({size} bytes) does not fit; {step.reason}"
        return step
    word = model.image.ptr_size
    # insnbuf: the template over the site's own bytes; `long *relocp += start - addr`
    buf = bytearray(model.image.read(start, size))
    buf += site_bytes(model.image, site)[size:]
    reason = f"xen_patch: {name} inlined ({size} bytes)"
    if start < reloc < end:
        off = reloc - start
        buf += bytes(max(0, off + word - len(buf)))
        mask = (1 << (8 * word)) - 1
        value = int.from_bytes(buf[off:off + word], "little") + (start - site.address)
        buf[off:off + word] = (value & mask).to_bytes(word, "little")
        reason += f", its call at +{off - 1:#x} re-based by {start - site.address:#x}"
    return Step(bytes(buf[:size]), "inline-xen", reason, start, name)


# lguest_patch() (2.6.23 arch/i386/lguest/boot.c … 4.13 arch/x86/lguest/boot.c): the
# lguest_insns[] table maps an op to its template lgstart_<name> … lgend_<name>; an op without
# one, or a template longer than the site, goes to paravirt_patch_default. Early releases have
# four templates (cli, sti, popf, pushf); once irq_enable and restore_fl became asm routines
# (lg_irq_enable, lg_restore_fl) only cli and pushf remain. Which exist is read from the image.
LGUEST_TEMPLATES = {"irq_disable": "cli", "irq_enable": "sti", "restore_fl": "popf",
                    "save_fl": "pushf"}


def _lguest_patch(model: KernelModel, rules: Rules, site: Site, res: Resolution,
                  op: str) -> Step:
    """lguest_patch(): copy the op's template when the image has one and it fits."""
    name = LGUEST_TEMPLATES.get(op)
    syms = model.image.symbols
    start = syms.address(f"lgstart_{name}") if name else None
    end = syms.address(f"lgend_{name}") if name else None
    if start is None or end is None:
        return _default(rules, site, res, op)
    size = end - start
    if size > site.length:
        step = _default(rules, site, res, op)
        step.reason = f"lguest_patch: lgstart_{name} ({size} bytes) does not fit; {step.reason}"
        return step
    return Step(model.image.read(start, size), "inline-lguest",
                f"lguest_patch: lgstart_{name} inlined ({size} bytes)", start, f"lgstart_{name}")


def _insns(rules: Rules, site: Site, code: bytes | None, reason: str, note: str = "",
           outcome: str = "inline-native") -> Step:
    """paravirt_patch_insns(): copy, unless it does not fit (≤5.2: leave; 5.3+: BUG)."""
    if code is None:
        why = f"{reason}: bytes not established ({note})"
        return Step(None, "unpatched", why, problems=[why])
    if len(code) <= site.length:
        return Step(code, outcome, reason)
    return _too_long(rules, site, len(code), reason)


def _too_long(rules: Rules, site: Site, size: int, reason: str) -> Step:
    why = f"{reason}: {size} bytes do not fit the {site.length}-byte site"
    if rules.leave_if_too_long:
        return Step(None, "unpatched", why + ", left as built")
    fatal = why + ": BUG_ON at boot (5.3–5.12)"
    return Step(None, "unpatched", why, problems=[fatal], fatal=fatal)


def _default(rules: Rules, site: Site, res: Resolution, op: str) -> Step:
    """paravirt_patch_default(), rule by rule in the kernel's order."""
    via = f"{res.name} ({res.reason})"
    if res.value == 0:
        return _insns(rules, site, T.UD2, f"slot is NULL ({res.reason}): ud2", outcome="ud2")
    if res.value == rules.nop_fn:
        return Step(b"", "nop", f"slot is {via}")
    if res.value in rules.idents:
        name, code = rules.idents[res.value]
        return _insns(rules, site, code, f"slot is {name}: paravirt_patch_ident",
                      outcome="inline-native" if code else "nop")
    if op in rules.jmp_ops:
        if site.length < T.JMP_LEN:
            return Step(None, "unpatched", f"jmp to {via} does not fit: left as built")
        rel = (res.value - (site.address + T.JMP_LEN)) & 0xFFFFFFFF
        return Step(bytes([JMP]) + rel.to_bytes(4, "little"), "direct-jmp", f"jmp to {via}",
                    res.value, res.name)
    return _call(rules, site, res, via)


def _call(rules: Rules, site: Site, res: Resolution, via: str) -> Step:
    """paravirt_patch_call() with CLBR_ANY as the target's clobbers."""
    if rules.clobber_check:
        mask = site.clobbers or 0
        if rules.clobber_any & ~mask:
            return Step(None, "unpatched", f"call {via} refused: site mask {mask:#x} lacks "
                        f"CLBR_ANY {rules.clobber_any:#x} (clobber check, ≤4.18)")
    if site.length < T.CALL_LEN:
        return _too_long(rules, site, T.CALL_LEN, f"call {via}")
    return Step(call_rel32(site.address, res.value), "direct-call", f"slot holds {via}",
                res.value, res.name)
