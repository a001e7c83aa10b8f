"""The patch plan: the exact bytes every pv site holds after the kernel patched itself.

Ported step by step from the kernel's boot sequence in ``alternative_instructions()``
(``arch/x86/kernel/alternative.c``, 5.13–6.7):

1. ``paravirt_set_cap()`` — decided by the backend (pv feature bits);
2. ``apply_paravirt()`` — per site ``paravirt_patch()``: NULL → call the BUG function, the nop
   function → nothing, else a direct call; then ``add_nops`` pads to the site length;
3. ``apply_alternatives()`` — in table order, each entry whose range touches a pv site: copy the
   replacement if the feature test holds (with the call/jmp fix-ups), pad with 0x90, and then,
   patched or not, ``optimize_nops`` over the entry's range.

Each step is a small function that fills a buffer, in the manner of the kernel's own patcher.
Beside the pv sites, every era's plan carries the pv static calls (``patch.static_calls``):
their sites and trampolines as ``static_call_init()`` and the backend's updates leave them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import lru_cache

from pvpatch.backends import Backend
from pvpatch.cpu import DEFAULT, Cpu
from pvpatch.disasm import first_length
from pvpatch.errors import InputError
from pvpatch.kernel.alternatives import AltEntry, AltTable
from pvpatch.kernel.clobbers import ClobberBits
from pvpatch.kernel.era import LEGACY_ERAS, era_version, newer_than_read
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import Site, site_bytes
from pvpatch.patch.boot_nops import NopChoice, choose, fixed
from pvpatch.patch.clobbers import C_ABI, FAMILY, GPR64, ClobberAnalyzer, Clobbers
from pvpatch.patch.entries import decide, feature_text
from pvpatch.patch.nops import NopTable
from pvpatch.patch.static_calls import StaticCallPatch, plan_static_calls, transform_of

CALL, JMP32, JMP8 = 0xE8, 0xE9, 0xEB

OUTCOMES = ("direct-call", "direct-jmp", "nop", "inline-native", "inline-xen", "inline-lguest",
            "ud2",
            "bug-call", "unpatched")


@dataclass
class SitePatch:
    site: Site
    before: bytes
    after: bytes
    outcome: str
    target: int | None = None
    target_name: str | None = None
    reason: str = ""
    alternatives: list[AltEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    clobbered: list[str] | None = None  # what the replacement may write (None: no mask)
    clobber_source: str = ""
    violations: list[str] = field(default_factory=list)  # registers outside the mask
    fatal: str = ""  # why the kernel would BUG at boot patching this site (≤5.12 planner)

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class PatchPlan:
    backend: Backend
    nops: NopTable
    bug_function: str
    patches: list[SitePatch]
    alternatives_used: int
    alternatives_left: int
    notes: list[str] = field(default_factory=list)
    era: str = "G5"  # kernel.era key of the algorithm that planned it
    null_patch: str = ""  # what a NULL slot becomes; "" = `call <bug_function>`
    static_calls: list[StaticCallPatch] = field(default_factory=list)  # sites, then trampolines
    static_call_notes: list[str] = field(default_factory=list)
    nop_choice: NopChoice | None = None  # which table, and why (set by plan())

    @property
    def null_text(self) -> str:
        return self.null_patch or f"call {self.bug_function}"

    def changes(self) -> list[tuple[int, bytes]]:
        """(address, bytes) of every pv site and pv static-call site or trampoline that boot
        changes: what a writer pokes."""
        return [(p.site.address, p.after) for p in self.patches if p.changed] + \
            [(p.address, p.after) for p in self.static_calls if p.changed]


@dataclass(frozen=True)
class Era:
    """How one kernel range patches; more eras arrive with older and newer kernels."""

    name: str
    versions: str
    nop_function: str
    bug_function: str



ERA_5_13_TO_6_7 = Era("paravirt_patch", "5.13–6.7", "_paravirt_nop", "paravirt_BUG")


def plan(model: KernelModel, backend: Backend, alts: AltTable, nops: NopChoice) -> PatchPlan:
    """The single entry: dispatch to the planner of the image's era (kernel.era).

    ``nops`` is :func:`nop_choice` for the boot CPU: the table every planner pads with."""
    out = _plan(model, backend, alts, nops.table)
    out.nop_choice = nops
    out.notes[:0] = backend.notes
    if (newer := newer_than_read(model.version)) is not None:
        out.notes.insert(0, newer)
    out.static_calls, out.static_call_notes = plan_static_calls(model, backend, nops.table)
    b = model.builtin
    if b is not None and b.table is not None:
        out.notes.insert(0, f"op names from {b.described} (no BTF/DWARF in the image)")
    return out


def read_ahead(model: KernelModel, nops: NopChoice) -> None:
    """Read now what every backend's plan reads from the image (the patcher's functions, the
    static-call transform: symbol lookups, ~3 ms each on a debug kernel), so that a process
    waiting for a backend resolved in a worker spends the wait on them, not after it. Raises
    the InputError the plan would raise for an image that cannot be patched, so that once a
    backend is resolved the input is known to be good."""
    if model.sites.origin != ".parainstructions":
        from pvpatch.patch.direct_calls import patcher_functions

        patcher_functions(model)
    elif model.era is None or model.era.era.key not in LEGACY_ERAS:
        _patcher_functions(model, _era(model))
    if model.static_calls.keys:
        transform_of(model, nops.table)


def _plan(model: KernelModel, backend: Backend, alts: AltTable, nops: NopTable) -> PatchPlan:
    if model.sites.origin != ".parainstructions":  # 6.8+: ALT_FLAG_DIRECT_CALL
        from pvpatch.patch.direct_calls import plan_direct_calls

        return plan_direct_calls(model, backend, alts, nops)
    detected = model.era
    if detected is not None and detected.era.key in LEGACY_ERAS:
        from pvpatch.patch.legacy import plan_legacy

        return plan_legacy(model, backend, detected, nops)
    era = _era(model)
    bug_fn, nop_fn = _patcher_functions(model, era)
    by_slot = {t: _slot_patch(backend, t, nop_fn, bug_fn, era)
               for t in {s.type for s in model.sites.sites}}
    patches = [_paravirt_patch(model, s, nops, by_slot[s.type]) for s in model.sites.sites]
    used, left = _apply_alternatives(model, backend, alts, patches, nops)
    check_clobbers(model, patches)
    return PatchPlan(backend, nops, era.bug_function, patches, used, left)


def _patcher_functions(model: KernelModel, era: Era) -> tuple[int, int | None]:
    """(the BUG function, the nop function) NULL and no-op slots get; without the first an
    image cannot be patched."""
    image = model.image
    bug_fn = image.symbols.address(era.bug_function)
    if bug_fn is None:
        raise InputError(f"no {era.bug_function} symbol: cannot patch NULL slots", image.path)
    return bug_fn, image.symbols.address(era.nop_function)


def _era(model: KernelModel) -> Era:
    if model.era is None:
        raise InputError(f"cannot tell how this kernel patches itself: {model.pvops.described}, "
                         "and no types, patcher symbols or linux_banner say the era",
                         model.image.path)
    return ERA_5_13_TO_6_7


def nop_choice(model: KernelModel, cpu: Cpu = DEFAULT) -> NopChoice:
    """The NOP table add_nops pads with on ``cpu`` for this image (patch.boot_nops).

    Before 5.13 the boot CPU decides; the version is the one the era's tables are read at
    (kernel.era.era_version). The 6.8+ planner never asks the CPU: its table is fixed."""
    v, bits, detected = model.version, model.image.bits, model.era
    if model.sites.origin == ".parainstructions" and detected is not None and \
            detected.era.key in LEGACY_ERAS:
        return choose(bits, era_version(v, detected.era)[0], cpu)
    return fixed(bits, v.key, cpu)


# -- step 2: apply_paravirt -------------------------------------------------------------------

def call_rel32(at: int, target: int) -> bytes:
    """``__text_gen_insn(CALL_INSN_OPCODE, at, target)``: e8 and a 32-bit displacement."""
    rel = (target - (at + 5)) & 0xFFFFFFFF
    return bytes([CALL]) + rel.to_bytes(4, "little")


@dataclass(frozen=True)
class _SlotPatch:
    """What ``paravirt_patch()`` makes of every site of one slot (all but the address)."""

    outcome: str
    target: int | None
    target_name: str | None
    reason: str


def _slot_patch(backend: Backend, slot_type: int, nop_fn: int | None, bug_fn: int,
                era: Era) -> _SlotPatch:
    res = backend.resolution(slot_type)
    if res is None or res.value is None:
        return _SlotPatch("unpatched", None, None,
                          res.reason if res else f"type {slot_type} names no pv_ops slot")
    if res.value == 0:
        return _SlotPatch("bug-call", bug_fn, era.bug_function,
                          f"slot is NULL ({res.reason}): call {era.bug_function}")
    if res.value == nop_fn:
        return _SlotPatch("nop", None, None, f"slot is {era.nop_function} ({res.reason})")
    return _SlotPatch("direct-call", res.value, res.name,
                      f"slot holds {res.name} ({res.reason})")


def _paravirt_patch(model: KernelModel, site: Site, nops: NopTable, how: _SlotPatch
                    ) -> SitePatch:
    before = site_bytes(model.image, site)
    if how.outcome == "unpatched":
        return SitePatch(site, before, before, "unpatched", reason=how.reason)
    used = call_rel32(site.address, how.target) if how.target is not None else b""
    if len(used) > site.length:
        reason = f"{len(used)}-byte replacement exceeds the site"
        return SitePatch(site, before, before, "unpatched", how.target, how.target_name,
                         reason, problems=[reason])
    return SitePatch(site, before, used + nops.fill(site.length - len(used)), how.outcome,
                     how.target, how.target_name, how.reason)


# -- step 3: apply_alternatives on the entries that touch pv sites ----------------------------

def _apply_alternatives(model: KernelModel, backend: Backend, alts: AltTable,
                        patches: list[SitePatch], nops: NopTable) -> tuple[int, int]:
    starts = [p.site.address for p in patches]
    order = sorted(range(len(patches)), key=starts.__getitem__)
    sorted_starts = [starts[i] for i in order]
    used = 0
    for entry in alts.entries:
        hit = _covering_site(entry, patches, order, sorted_starts)
        if hit is None:
            continue
        used += 1
        _apply_one(model, backend, entry, hit, nops)
    return used, len(alts.entries) - used


def _covering_site(entry: AltEntry, patches: list[SitePatch], order: list[int],
                   sorted_starts: list[int]) -> SitePatch | None:
    pos = bisect.bisect_right(sorted_starts, entry.instr + max(entry.instrlen, 1) - 1) - 1
    if pos < 0:
        return None
    sp = patches[order[pos]]
    return sp if entry.overlaps(sp.site.address, sp.site.length) else None


def _apply_one(model: KernelModel, backend: Backend, entry: AltEntry, sp: SitePatch,
               nops: NopTable) -> None:
    sp.alternatives.append(entry)
    site = sp.site
    if entry.instr != site.address or entry.instrlen > site.length:
        sp.problems.append(f"alternative #{entry.index} covers {entry.instr:#x}+{entry.instrlen}, "
                           f"not exactly the site: left as the pv patch made it")
        return
    applies, blocker = decide(entry, entry.instrlen, backend)
    if blocker:
        sp.problems.append(blocker)
        return
    buf = bytearray(sp.after)
    if applies:
        repl = model.image.read(entry.replacement, entry.replacementlen)
        new = _replacement(repl, entry, nops)
        buf[:entry.instrlen] = new + b"\x90" * (entry.instrlen - len(new))
        sp.outcome, sp.target, sp.target_name = "inline-native", None, None
        sp.reason = f"alternative #{entry.index} ({feature_text(entry)}) replaced it"
        _reclassify_call(model, sp, bytes(buf))
    buf[:entry.instrlen] = optimize_nops(bytes(buf[:entry.instrlen]), model.image.bits, nops)
    sp.after = bytes(buf)


def _replacement(repl: bytes, entry: AltEntry, nops: NopTable) -> bytes:
    """The replacement with apply_alternatives' fix-ups for a relative call or jump."""
    buf = bytearray(repl)
    shift = entry.replacement - entry.instr
    if len(buf) == 5 and buf[0] == CALL:
        rel = (int.from_bytes(buf[1:5], "little", signed=True) + shift) & 0xFFFFFFFF
        buf[1:5] = rel.to_bytes(4, "little")
    if buf and buf[0] in (JMP32, JMP8) and len(buf) == 5:
        buf = bytearray(_recompute_jump(repl, entry, nops))
    return bytes(buf)


def _recompute_jump(repl: bytes, entry: AltEntry, nops: NopTable) -> bytes:
    """recompute_jump(): re-target a 5-byte jmp, shrinking it to jmp.d8 when it reaches."""
    target = entry.replacement + 5 + int.from_bytes(repl[1:5], "little", signed=True)
    disp = target - entry.instr
    short = disp - 2 <= 127 if disp >= 0 else ((disp - 2) & 0xFF) == disp - 2
    if short:
        return bytes([JMP8, (disp - 2) & 0xFF]) + nops.fill(3)
    return bytes([JMP32]) + ((disp - 5) & 0xFFFFFFFF).to_bytes(4, "little")


@lru_cache(maxsize=4096)
def optimize_nops(code: bytes, bits: int, nops: NopTable) -> bytes:
    """optimize_nops(): runs of two or more 0x90 become table NOPs (5.13–6.4 semantics).

    Cached: a kernel has thousands of entries but a handful of distinct byte strings. Only
    a run of two 0x90 instructions changes anything, so bytes without ``90 90`` are final
    (every Xen ``call; nop`` site)."""
    if b"\x90\x90" not in code:
        return code
    out = bytearray(code)
    i = 0
    while i < len(out):
        size = first_length(bytes(out[i:]), bits)
        if size is None:  # insn_decode_kernel failed: the kernel stops here too
            break
        if size == 1 and out[i] == 0x90:
            j = i
            while j < len(out) and out[j] == 0x90:
                j += 1
            if j - i > 1:
                out[i:j] = nops.fill(j - i)
            i = j
        else:
            i += size
    return bytes(out)


# -- clobber-mask validation -----------------------------------------------------------------

def check_clobbers(model: KernelModel, patches: list[SitePatch]) -> None:
    """Where a record carries a clobber mask, the replacement must stay inside it.

    Thousands of sites share a few (replacement, mask) pairs, so each pair is judged once."""
    analyzer = ClobberAnalyzer(model.image)
    bits, abi = model.clobber_bits, C_ABI[model.image.bits]
    judged: dict[tuple[object, int], tuple[list[str], str, list[str], str]] = {}
    for sp in patches:
        mask = sp.site.clobbers
        if mask is None or sp.outcome == "unpatched":
            continue
        call = sp.outcome in ("direct-call", "bug-call") and sp.target is not None
        key = (sp.target if call else sp.after, mask)
        if key not in judged:
            judged[key] = _judge(analyzer, bits, abi, sp, mask, call)
        clobbered, sp.clobber_source, violations, problem = judged[key]
        sp.clobbered, sp.violations = list(clobbered), list(violations)
        if problem:
            sp.problems.append(problem)


def _judge(analyzer: ClobberAnalyzer, bits: ClobberBits, abi: frozenset[str], sp: SitePatch,
           mask: int, call: bool) -> tuple[list[str], str, list[str], str]:
    """(registers written, where that was read from, those outside the mask, the problem)."""
    allowed = _allowed(bits, mask)
    if call and abi <= allowed:  # any C function fits: nothing to prove
        found = Clobbers(abi, "C ABI (the mask allows it all)")
    elif call:
        found = analyzer.for_target(sp.target)
    else:
        found = analyzer.inline(sp.after, sp.site.address)
    clobbered = list(_in_order(found.regs))
    violations = [r for r in clobbered if r not in allowed]
    problem = (f"clobbers {','.join(violations)} outside the site's mask {mask:#x} "
               f"({','.join(bits.decode(mask)) or 'none'}); from {found.how}"
               if violations else "")
    return clobbered, found.how, violations, problem


@lru_cache(maxsize=256)
def _in_order(regs: frozenset[str]) -> tuple[str, ...]:
    """Registers in GPR64 order (a kernel has a handful of distinct sets over 4000 sites)."""
    return tuple(sorted(regs, key=GPR64.index))


@lru_cache(maxsize=64)
def _allowed(bits: ClobberBits, mask: int) -> frozenset[str]:
    """The 64-bit register families a clobber mask allows (a kernel has two or three masks)."""
    return frozenset(FAMILY.get(r, r) for r in bits.decode(mask))


def _reclassify_call(model: KernelModel, sp: SitePatch, code: bytes) -> None:
    """A replacement that is itself a direct call is reported as one."""
    if code[:1] == bytes([CALL]):
        target = (sp.site.address + 5 + int.from_bytes(code[1:5], "little", signed=True)) \
            & ((1 << model.image.bits) - 1)
        sp.outcome, sp.target = "direct-call", target
        sp.target_name = model.image.symbols.describe(target)
