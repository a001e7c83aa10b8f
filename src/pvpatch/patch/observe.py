"""Classify what a site holds in any image — the inverse of planning, for ``pvpatch diff``.

Given the original site and the bytes another image (a pvpatch output, or a memory dump of a
booted kernel laid out as an ELF) holds there, say which outcome class they are. The pv
static-call sites and trampolines are classified in the planner's own outcome names.
"""

from __future__ import annotations

from pvpatch.disasm import decode
from pvpatch.image.elf import ElfImage
from pvpatch.kernel.sites import Site
from pvpatch.kernel.static_calls import StaticCallKey, StaticCallSite, rel32_target
from pvpatch.patch.nops import NOP_TABLES, NopTable
from pvpatch.patch.plan import CALL, SitePatch
from pvpatch.patch.static_calls import StaticCallPatch

NOP_MNEMONICS = {"nop", "nopw", "nopl", "xchgw"}
BUG_FUNCTIONS = ("paravirt_BUG", "BUG_func")


# How many bytes the replacement of each outcome takes; the rest of the site is padding.
USED = {"direct-call": 5, "direct-jmp": 5, "bug-call": 5, "ud2": 2, "nop": 0}


def observe(image: ElfImage, site: Site, before: bytes, after: bytes,
            nops: NopTable | None = None) -> SitePatch:
    """The outcome ``after`` shows; ``nops``, the expected table, also counts as all-NOP
    (its i386 forms are lea/mov, which no disassembler calls nop)."""
    sp = SitePatch(site, before, after, "unpatched", reason="observed")
    if after == before:
        sp.reason = "bytes unchanged"
        return sp
    if after[:1] == bytes([CALL]) and len(after) >= 5:
        target = (site.address + 5 + int.from_bytes(after[1:5], "little", signed=True)) \
            & ((1 << image.bits) - 1)
        name = image.symbols.name_at(target) or image.symbols.describe(target)
        sp.target, sp.target_name = target, name
        sp.outcome = "bug-call" if name in BUG_FUNCTIONS else "direct-call"
        return sp
    if after[:1] == b"\xe9" and len(after) >= 5:  # ≤5.12 paravirt_patch_jmp
        target = (site.address + 5 + int.from_bytes(after[1:5], "little", signed=True)) \
            & ((1 << image.bits) - 1)
        sp.target, sp.target_name = target, image.symbols.name_at(target)
        sp.outcome = "direct-jmp"
        return sp
    if after[:2] == b"\x0f\x0b":  # ≤5.12: a NULL slot's ud2
        sp.outcome = "ud2"
        return sp
    if nops is not None and after == nops.fill(len(after)):
        sp.outcome = "nop"
        return sp
    insns = decode(after, site.address, image.bits)
    if insns and sum(i.size for i in insns) == len(after) and \
            all(i.mnemonic in NOP_MNEMONICS for i in insns):
        sp.outcome = "nop"
    else:
        sp.outcome = "inline-native"
    return sp


def observe_static_site(image: ElfImage, site: StaticCallSite, after: bytes) -> StaticCallPatch:
    before = site.code or b""
    sp = StaticCallPatch("site", site.key, site.address, site.section, before, after,
                         "unpatched", site=site, reason="observed")
    if after != before:
        _classify_static(image, sp)
    return sp


def observe_trampoline(image: ElfImage, key: StaticCallKey, after: bytes) -> StaticCallPatch:
    before = key.tramp_code[:5] if key.tramp_code else b""
    sp = StaticCallPatch("trampoline", key.name, key.tramp, None, before, after, "as-built",
                         reason="observed")
    if after != before:
        _classify_static(image, sp)
    return sp


def _classify_static(image: ElfImage, sp: StaticCallPatch) -> None:
    """A rel32 call/jmp/Jcc (its target named), ret, a NOP, or inline code."""
    code = sp.after
    opcode_len = {0xE8: 1, 0xE9: 1}.get(code[0], 2 if code[:1] == b"\x0f" and
                                        len(code) >= 6 and code[1] & 0xF0 == 0x80 else 0)
    if opcode_len:
        sp.outcome = {0xE8: "direct-call", 0xE9: "direct-jmp"}.get(code[0], "direct-jcc")
        sp.target = rel32_target(sp.address, code, opcode_len, image.bits)
        sp.target_name = image.symbols.name_at(sp.target) or image.symbols.describe(sp.target)
        return
    insns = decode(code, sp.address, image.bits)
    whole = insns and sum(i.size for i in insns) == len(code)
    if code[0] == 0xC3:
        sp.outcome = "ret"
    elif whole and all(i.mnemonic in NOP_MNEMONICS for i in insns):
        sp.outcome = "nop"
    else:
        sp.outcome = "inline"


def padded_with(sp: SitePatch, nops: NopTable, bits: int) -> bool | None:
    """Is the site padded with ``nops``? None: unchanged, no padding, or none that any
    table would write.

    The padding starts where the replacement ends: after the call, jmp or ud2, at 0 for a
    nop site, and for inline code at the first instruction boundary from which the rest
    is some table's fill (several tables agree on short fills, which then count as a match).
    """
    if not sp.changed:
        return None
    n = len(sp.after)
    starts = [USED[sp.outcome]] if sp.outcome in USED else _boundaries(sp.after, bits)
    for start in starts:
        tail = sp.after[start:]
        if tail and any(t.fill(n - start) == tail for t in NOP_TABLES.values()):
            return tail == nops.fill(n - start)
    return None


def _boundaries(code: bytes, bits: int) -> list[int]:
    """Where each instruction after the first starts (the inline replacement is at least one)."""
    out, at = [], 0
    for insn in decode(code, 0, bits):
        at += insn.size
        out.append(at)
    return out
