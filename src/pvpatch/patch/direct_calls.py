"""6.8+: pv calls are ALT_FLAG_DIRECT_CALL alternatives, patched by apply_alternatives().

Ported from ``arch/x86/kernel/alternative.c`` of 6.12 (Debian 6.12.117), the pieces that touch
pv sites, each a small function over a byte buffer like the kernel's own:

- consecutive entries for one address (nested ALTERNATIVEs) share the largest ``instrlen``;
- an entry whose feature test fails still runs ``optimize_nops()`` over the site;
- an applied entry copies its replacement; for DIRECT_CALL, ``alt_replace_call()`` turns the
  placeholder ``call BUG_func`` into a call to the slot's function (NULL → ``BUG_func``, the
  nop function → no bytes at all); the rest is padded with 0x90, then
  ``text_poke_apply_relocation()`` re-bases relative branches that leave the replacement and
  ``optimize_nops()`` merges NOP runs into one NOP (or a jmp over int3 when longer than the
  table's longest NOP).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from pvpatch.backends import Backend
from pvpatch.disasm import first_length
from pvpatch.errors import InputError
from pvpatch.kernel.alternatives import AltEntry, AltTable
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import site_bytes
from pvpatch.patch.entries import decide, feature_text
from pvpatch.patch.nops import NopTable

if TYPE_CHECKING:
    from pvpatch.patch.plan import PatchPlan, SitePatch

CALL, JMP32, JMP8, INT3, NOP1 = 0xE8, 0xE9, 0xEB, 0xCC, 0x90
_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF2, 0xF3})


@dataclass(frozen=True)
class DirectCallEra:
    versions: str
    nop_function: str
    bug_function: str


ERA_6_8_PLUS = DirectCallEra("6.8–7.3 (read in Debian 6.12.117 and 7.3.4)", "nop_func",
                             "BUG_func")

# 7.0: apply_alternatives() takes the consecutive entries of one address as one patch site
# (analyze_patch_site: the group's largest instrlen, the last entry whose feature test
# passes; prep_patch_site: that one's replacement, or the original bytes; patch_site:
# optimize_nops once). 544b4e15ed10, a4233c21e773 (pull x86_alternatives_for_v7.0_rc1);
# read in Debian 7.3.4's arch/x86/kernel/alternative.c.
GROUPED_SITES_FROM = (7, 0)


def is_nop(code: bytes) -> bool:
    """``insn_is_nop()``: NOP (0x90, but not REP NOP) or NOPL (0f 1f), after prefixes."""
    i, rep = 0, False
    while i < len(code) and (code[i] in _PREFIXES or 0x40 <= code[i] <= 0x4F):
        rep |= code[i] == 0xF3
        i += 1
    rest = code[i:]
    return (rest[:1] == b"\x90" and not rep) or rest[:2] == b"\x0f\x1f"


def add_nop(length: int, nops: NopTable) -> bytes:
    """``add_nop()``: one NOP of ``length`` bytes, or a jump over int3 padding if too long."""
    if length <= nops.max:
        return nops.seqs[length - 1] if length else b""
    if length < 128:
        return bytes([JMP8, length - 2]) + bytes([INT3]) * (length - 2)
    return bytes([JMP32]) + (length - 5).to_bytes(4, "little") + bytes([INT3]) * (length - 5)


def _skip_nops(buf: bytearray, offset: int, bits: int) -> int:
    while offset < len(buf):
        size = first_length(bytes(buf[offset:]), bits)
        if size is None or not is_nop(bytes(buf[offset:offset + size])):
            break
        offset += size
    return offset


def optimize_nops(buf: bytearray, bits: int, nops: NopTable) -> None:
    """``optimize_nops()`` of 6.12: every NOP run becomes one NOP, unless it ends the buffer.

    The walk never looks back, so a leading call/jmp rel32 (a direct-call site's ``call
    target``, whose displacement differs at every site) is kept as it is and only the rest
    goes through the cache."""
    code = bytes(buf)
    head = _branch_head(code)
    buf[:] = code[:head] + _optimized(code[head:], bits, nops)


def _branch_head(code: bytes) -> int:
    """5 when ``code`` starts with a whole call/jmp rel32 (walked over as it is), else 0."""
    return 5 if len(code) >= 5 and code[0] in (CALL, JMP32) else 0


@lru_cache(maxsize=4096)
def _optimized(code: bytes, bits: int, nops: NopTable) -> bytes:
    """optimize_nops on bytes. Cached: the result depends on the bytes alone, and ~7000
    entries of a 6.12 kernel hold a few dozen distinct byte strings."""
    buf = bytearray(code)
    i = 0
    while i < len(buf):
        size = first_length(bytes(buf[i:]), bits)
        if size is None:  # insn_decode_kernel() failed
            break
        nxt = i + size
        if is_nop(bytes(buf[i:nxt])):
            if nxt == len(buf):  # "Has the NOP already been optimized?"
                break
            nxt = _skip_nops(buf, nxt, bits)
            buf[i:nxt] = add_nop(nxt - i, nops)
        i = nxt
    return bytes(buf)


def apply_relocation(buf: bytearray, instr: int, repl: int, repl_len: int, bits: int) -> None:
    """``__apply_relocation()``: relative branches and RIP-relative operands that point out
    of the replacement move with it; a jmp.d32 that then reaches becomes jmp.d8 + int3."""
    shift = repl - instr
    code = bytes(buf)
    head = _branch_head(code)
    shapes = ((0, 5, 1, 4, None),) if head else ()
    shapes += tuple((i + head, *rest) for i, *rest in _shapes(code[head:], bits))
    for i, size, imm_offset, imm_size, rip_disp in shapes:
        nxt, op = i + size, buf[i]
        relative = op in (CALL, JMP32, JMP8) or 0x70 <= op <= 0x7F or \
            (op == 0x0F and nxt - i > 1 and 0x80 <= buf[i + 1] <= 0x8F)
        if relative and imm_size:
            imm_at = i + imm_offset
            original = int.from_bytes(buf[imm_at:imm_at + imm_size], "little", signed=True)
            _reloc_field(buf, imm_at, imm_size, nxt - i, repl_len, shift)
            short = original + shift + 3  # the kernel's JMP.d32 → JMP.d8 test
            if op == JMP32 and -128 <= short <= 127:
                buf[i:nxt] = bytes([JMP8, short & 0xFF]) + bytes([INT3]) * (nxt - i - 2)
        if rip_disp is not None:
            _reloc_field(buf, i + rip_disp[0], rip_disp[1], nxt - i, repl_len, shift)


@lru_cache(maxsize=4096)
def _shapes(code: bytes, bits: int) -> tuple[tuple[int, int, int, int, tuple[int, int] | None],
                                             ...]:
    """(offset, size, immediate offset, immediate size, RIP displacement) of each instruction
    of ``code``, up to the first that does not decode. Rewriting one instruction never moves
    the next, so the walk is a function of the bytes: cached, as entries share a few."""
    out = []
    i = 0
    while i < len(code):
        shape = _reloc_shape(code, i, bits)
        if shape is None:
            break
        out.append((i, *shape))
        i += shape[0]
    return tuple(out)


# (size, immediate's size) of the fixed-length opcodes (disasm.FIXED_LENGTH) that need no
# decoder: the branches carry their displacement right after the opcode, nop/int3 nothing.
_FIXED_SHAPE = {NOP1: (1, 0), INT3: (1, 0), CALL: (5, 4), JMP32: (5, 4), JMP8: (2, 1)}


def _reloc_shape(buf: bytes | bytearray, i: int,
                 bits: int) -> tuple[int, int, int, tuple[int, int] | None] | None:
    """(size, immediate offset, immediate size, (offset, size) of a RIP-relative displacement
    or None) of the instruction at ``i``; None when it does not decode."""
    fixed = _FIXED_SHAPE.get(buf[i])
    if fixed is not None and i + fixed[0] <= len(buf):
        return fixed[0], 1, fixed[1], None
    from pvpatch.disasm import _capstone, _decoder

    _, X = _capstone()
    insns = list(_decoder(bits).disasm(bytes(buf[i:]), 0, 1))
    if not insns:
        return None
    insn = insns[0]
    rip = insn.disp_size and any(o.type == X.X86_OP_MEM and o.mem.base == X.X86_REG_RIP
                                 for o in insn.operands)
    return (insn.size, insn.imm_offset, insn.imm_size,
            (insn.disp_offset, insn.disp_size) if rip else None)


def _reloc_field(buf: bytearray, at: int, size: int, nxt: int, repl_len: int,
                 shift: int) -> None:
    """``need_reloc()`` + ``apply_reloc()``; ``nxt`` is the next instruction's offset."""
    value = int.from_bytes(buf[at:at + size], "little", signed=True)
    target = nxt + value  # relative to the replacement's start
    if 0 <= target <= repl_len:  # inside the block: moves with it
        return
    buf[at:at + size] = ((value + shift) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def alt_replace_call(buf: bytearray, entry: AltEntry, slot_value: int, bug_fn: int,
                     nop_fn: int | None) -> int:
    """``alt_replace_call()``: the placeholder ``call BUG_func`` now calls the slot's target."""
    target = slot_value or bug_fn
    rel = int.from_bytes(buf[1:5], "little", signed=True) + (target - bug_fn)
    buf[1:5] = (rel & 0xFFFFFFFF).to_bytes(4, "little")
    return 0 if target == nop_fn else 5


def patcher_functions(model: KernelModel) -> tuple[int, int | None]:
    """(BUG_func, nop_func): what alt_replace_call() writes for NULL and no-op slots; an
    image without BUG_func cannot be patched at all."""
    image, era = model.image, ERA_6_8_PLUS
    bug_fn = image.symbols.address(era.bug_function)
    if bug_fn is None:
        raise InputError(f"no {era.bug_function} symbol: cannot patch DIRECT_CALL sites",
                         image.path)
    return bug_fn, image.symbols.address(era.nop_function)


def plan_direct_calls(model: KernelModel, backend: Backend, alts: AltTable,
                      nops: NopTable) -> PatchPlan:
    """Every pv site as 6.8+ apply_alternatives() leaves it, entries in table order."""
    from pvpatch.patch.plan import PatchPlan, SitePatch

    image, era = model.image, ERA_6_8_PLUS
    bug_fn, nop_fn = patcher_functions(model)
    patches = [SitePatch(s, code, code, "unpatched", reason="no alternative applied")
               for s in model.sites.sites for code in [site_bytes(image, s)]]
    by_addr = {p.site.address: p for p in patches}
    v = model.version
    grouped = v.major is not None and (v.major, v.minor or 0) >= GROUPED_SITES_FROM
    used = 0
    if grouped:
        for group in _consecutive_groups(alts.entries):
            sp = by_addr.get(group[0].instr)
            if sp is None:
                continue
            used += len(group)
            _apply_group(model, backend, group, sp, nops, bug_fn, nop_fn)
    else:
        lengths = _nested_instrlens(alts.entries)
        for e in alts.entries:
            sp = by_addr.get(e.instr)
            if sp is None:
                continue
            used += 1
            _apply_entry(model, backend, e, lengths[e.instr], sp, nops, bug_fn, nop_fn)
    out = PatchPlan(backend, nops, era.bug_function, patches, used, len(alts.entries) - used,
                    era="G6")
    out.notes.append("alternatives applied one patch site at a time (7.0+: the last eligible "
                     "entry of each address)" if grouped else
                     "alternatives applied entry by entry (6.8–6.x)")
    return out


def _consecutive_groups(entries: list[AltEntry]) -> list[list[AltEntry]]:
    """analyze_patch_site(): runs of consecutive entries for the same address."""
    groups: list[list[AltEntry]] = []
    for e in entries:
        if groups and groups[-1][0].instr == e.instr:
            groups[-1].append(e)
        else:
            groups.append([e])
    return groups


def _apply_group(model: KernelModel, backend: Backend, group: list[AltEntry], sp: SitePatch,
                 nops: NopTable, bug_fn: int, nop_fn: int | None) -> None:
    """7.0+: one patch per site, from the last entry whose feature test passes."""
    instrlen = max(e.instrlen for e in group)
    sp.alternatives.extend(group)
    if instrlen != sp.site.length:
        sp.problems.append(f"alternatives #{group[0].index}… are {instrlen} bytes, the site "
                           f"{sp.site.length}: not modelled")
        return
    chosen = None
    for e in group:
        applies, blocker = decide(e, instrlen, backend)
        if blocker:
            sp.problems.append(blocker)
            return
        if applies:
            chosen = e
    if chosen is None:
        buf = bytearray(sp.after)
        optimize_nops(buf, model.image.bits, nops)
        sp.after = bytes(buf)
        return
    _patch_with(model, backend, chosen, instrlen, sp, nops, bug_fn, nop_fn)


def _nested_instrlens(entries: list[AltEntry]) -> dict[int, int]:
    """Nested ALTERNATIVEs: consecutive entries of one address share the largest instrlen."""
    out: dict[int, int] = {}
    for e in entries:
        out[e.instr] = max(out.get(e.instr, 0), e.instrlen)
    return out


def _apply_entry(model: KernelModel, backend: Backend, e: AltEntry, instrlen: int,
                 sp: SitePatch, nops: NopTable, bug_fn: int, nop_fn: int | None) -> None:
    bits = model.image.bits
    sp.alternatives.append(e)
    if instrlen != sp.site.length:
        sp.problems.append(f"alternative #{e.index} is {instrlen} bytes, the site "
                           f"{sp.site.length}: not modelled")
        return
    applies, blocker = decide(e, instrlen, backend)
    if blocker:
        sp.problems.append(blocker)
        return
    if not applies:
        buf = bytearray(sp.after)
        optimize_nops(buf, bits, nops)
        sp.after = bytes(buf)
        return
    _patch_with(model, backend, e, instrlen, sp, nops, bug_fn, nop_fn)


def _patch_with(model: KernelModel, backend: Backend, e: AltEntry, instrlen: int,
                sp: SitePatch, nops: NopTable, bug_fn: int, nop_fn: int | None) -> None:
    """prep_patch_site() + patch_site(): ``e``'s replacement, padded, relocated, NOPs
    optimised."""
    bits = model.image.bits
    buf = bytearray(model.image.read(e.replacement, e.replacementlen))
    used = len(buf)
    if e.direct_call:
        res = backend.resolution(sp.site.type)
        if res is None or res.value is None:
            sp.problems.append(res.reason if res else "the call reads no pv_ops slot")
            return
        used = alt_replace_call(buf, e, res.value, bug_fn, nop_fn)
        _classify_call(sp, res.value, res.name, res.reason, bug_fn, nop_fn)
    else:
        sp.outcome, sp.target, sp.target_name = "inline-native", None, None
        sp.reason = f"alternative #{e.index} ({feature_text(e)}) replaced it"
    buf = buf[:used] + bytes([NOP1]) * (instrlen - used)
    apply_relocation(buf, e.instr, e.replacement, e.replacementlen, bits)
    optimize_nops(buf, bits, nops)
    sp.after = bytes(buf)


def _classify_call(sp: SitePatch, value: int, name: str | None, reason: str, bug_fn: int,
                   nop_fn: int | None) -> None:
    if value == 0:
        sp.outcome, sp.target, sp.target_name = "bug-call", bug_fn, ERA_6_8_PLUS.bug_function
        sp.reason = f"slot is NULL ({reason}): call {ERA_6_8_PLUS.bug_function}"
    elif value == nop_fn:
        sp.outcome, sp.target, sp.target_name = "nop", None, None
        sp.reason = f"slot is {ERA_6_8_PLUS.nop_function} ({reason})"
    else:
        sp.outcome, sp.target, sp.target_name = "direct-call", value, name
        sp.reason = f"slot holds {name} ({reason})"
