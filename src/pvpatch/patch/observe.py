"""Classify what a site holds in any image — the inverse of planning, for ``pvpatch diff``.

Given the original site and the bytes another image (a pvpatch output, or a memory dump of a
booted kernel laid out as an ELF) holds there, say which outcome class they are.
"""

from __future__ import annotations

from pvpatch.disasm import decode
from pvpatch.image.elf import ElfImage
from pvpatch.kernel.sites import Site
from pvpatch.patch.plan import CALL, SitePatch

NOP_MNEMONICS = {"nop", "nopw", "nopl", "xchgw"}
BUG_FUNCTIONS = ("paravirt_BUG", "BUG_func")


def observe(image: ElfImage, site: Site, before: bytes, after: bytes) -> SitePatch:
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
    insns = decode(after, site.address, image.bits)
    if insns and sum(i.size for i in insns) == len(after) and \
            all(i.mnemonic in NOP_MNEMONICS for i in insns):
        sp.outcome = "nop"
    else:
        sp.outcome = "inline-native"
    return sp
