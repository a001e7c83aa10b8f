"""Which registers a site's replacement may clobber, checked against the site's clobber mask.

Inline code: the registers its instructions write (capstone's access lists). A direct call:
the target's code is read, not its name trusted. A register pushed and popped anywhere in the
function counts as saved (compiled code saves after ENDBR and ftrace's call; asm thunks save
around their call); calls inside it contribute their own clobbers, followed two levels deep,
then the C ABI. Callee-saved registers (rbx, rbp, r12–r15) are trusted to be preserved, as
the ABI requires. A function whose code cannot be read is assumed to follow the C ABI.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from pvpatch.disasm import _capstone
from pvpatch.image.elf import ElfImage

if TYPE_CHECKING:
    import capstone

GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_ALIASES = {
    "rax": "al ah ax eax", "rcx": "cl ch cx ecx", "rdx": "dl dh dx edx", "rbx": "bl bh bx ebx",
    "rsp": "spl sp esp", "rbp": "bpl bp ebp", "rsi": "sil si esi", "rdi": "dil di edi",
}
FAMILY = {r: r for r in GPR64}
for _full, _names in _ALIASES.items():
    FAMILY.update({n: _full for n in _names.split()})
for _n in range(8, 16):
    FAMILY.update({f"r{_n}{s}": f"r{_n}" for s in ("b", "w", "d")})

# Registers a C function may clobber (System V x86-64 / kernel i386 regparm ABIs).
C_ABI = {64: frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"}),
         32: frozenset({"rax", "rcx", "rdx"})}
RETURN_THUNKS = ("__x86_return_thunk", "__x86_return_skl")
MAX_FUNCTION = 4096  # bytes of a target read for analysis
MAX_DEPTH = 2


@dataclass(frozen=True)
class Clobbers:
    regs: frozenset[str]
    how: str  # "inline code", "code of X", "C ABI (…)"


class ClobberAnalyzer:
    def __init__(self, image: ElfImage) -> None:
        capstone, _ = _capstone()
        self.image = image
        self.bits = image.bits
        self._md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if self.bits == 64
                               else capstone.CS_MODE_32)
        self._md.detail = True
        self.function = lru_cache(maxsize=None)(self._function)
        self._inline: dict[bytes, Clobbers] = {}

    def inline(self, code: bytes, address: int) -> Clobbers:
        """What inline code writes; cached by bytes (~10 distinct sequences over 4000 sites),
        as the registers an instruction writes do not depend on where it sits."""
        if code not in self._inline:
            self._inline[code] = self._inline_code(code, address)
        return self._inline[code]

    def _inline_code(self, code: bytes, address: int) -> Clobbers:
        written: set[str] = set()
        for insn in self._md.disasm(code, address):
            if not self._keeps_value(insn):
                written |= self._writes(insn)
        return Clobbers(frozenset(written - {"rsp"}), "inline code")

    def _keeps_value(self, insn: capstone.CsInsn) -> bool:
        """A register "written" with its own value: the 32-bit NOPs of nops.h (GENERIC, K7:
        ``mov %esi,%esi``, ``lea 0(%esi,%eiz,1),%esi``, ``lea 0(,%eax,1),%eax``) and the
        same forms on 64-bit registers.

        Only at the mode's full register width: on x86-64 ``mov %esi,%esi`` zero-extends rsi.
        """
        _, X = _capstone()
        if insn.id not in (X.X86_INS_MOV, X.X86_INS_LEA) or len(insn.operands) != 2:
            return False
        dst, src = insn.operands
        if dst.type != X.X86_OP_REG or dst.size * 8 != self.bits:
            return False
        if insn.id == X.X86_INS_MOV:
            return src.type == X.X86_OP_REG and src.reg == dst.reg
        if src.type != X.X86_OP_MEM or src.mem.disp:
            return False
        base, index = src.mem.base, src.mem.index
        if index in (X.X86_REG_EIZ, X.X86_REG_RIZ):
            index = 0
        return (base, index) == (dst.reg, 0) or \
            ((base, index) == (0, dst.reg) and src.mem.scale == 1)  # K7: lea 0(,%eax,1),%eax

    def _writes(self, insn: capstone.CsInsn) -> set[str]:
        capstone, _ = _capstone()
        try:
            _read, write = insn.regs_access()
        except capstone.CsError:
            return set()
        return {FAMILY[n] for n in (insn.reg_name(r) for r in write) if n in FAMILY}

    def _function(self, address: int, depth: int = 0) -> Clobbers:
        _, X = _capstone()
        syms = self.image.symbols
        sym = syms.at(address)
        abi = C_ABI[self.bits]
        if sym is None or not sym.size or sym.size > MAX_FUNCTION:
            return Clobbers(abi, "C ABI (no sized symbol to read)")
        code = self.image.try_read(address, sym.size)
        if code is None:
            return Clobbers(abi, f"C ABI ({sym.name} not in the file)")
        insns = list(self._md.disasm(code, address))
        if sum(i.size for i in insns) < len(code.rstrip(b"\xcc")):
            return Clobbers(abi, f"C ABI ({sym.name} does not decode)")
        saved = self._pushed(insns)
        restored = {FAMILY[i.reg_name(i.operands[0].reg)] for i in insns
                    if i.id == X.X86_INS_POP and i.operands and
                    i.operands[0].type == X.X86_OP_REG}
        if any(i.id == X.X86_INS_LEAVE for i in insns):
            restored.add("rbp")
        written: set[str] = set()
        for insn in insns:
            if insn.id in (X.X86_INS_PUSH, X.X86_INS_POP, X.X86_INS_LEAVE):
                continue
            if insn.id in (X.X86_INS_CALL, X.X86_INS_JMP):
                written |= self._callee(insn, depth)
            else:
                written |= self._writes(insn)
        preserved = saved & restored
        # Callee-saved registers are trusted to follow the ABI: the question a clobber mask
        # asks is which caller-saved registers a callee-save target really touches.
        return Clobbers(frozenset((written - preserved) & abi), f"code of {sym.name}")

    @staticmethod
    def _pushed(insns: list[capstone.CsInsn]) -> set[str]:
        """Registers the function saves with push (and, below, restores with pop).

        Compiled functions save callee-saved registers after ENDBR, the ftrace call and the
        frame setup, and asm thunks save caller-saved ones around their call, so any push
        that is matched by a pop counts as a save.
        """
        _, X = _capstone()
        return {FAMILY[i.reg_name(i.operands[0].reg)] for i in insns
                if i.id == X.X86_INS_PUSH and i.operands and i.operands[0].type == X.X86_OP_REG}

    def _callee(self, insn: capstone.CsInsn, depth: int) -> set[str]:
        _, X = _capstone()
        op = insn.operands[0] if insn.operands else None
        if op is None or op.type != X.X86_OP_IMM:
            return set(C_ABI[self.bits]) if insn.id == X.X86_INS_CALL else set()
        target = op.imm & ((1 << self.bits) - 1)  # capstone reports it signed
        sym = self.image.symbols.at(target)
        if insn.id == X.X86_INS_JMP:
            if sym is None or sym.name in RETURN_THUNKS:
                return set()  # a branch inside the function, or `ret` through the thunk
            own = self.image.symbols.containing(insn.address)
            if own and own[0].value <= target < own[0].value + (own[0].size or 0):
                return set()
        if depth >= MAX_DEPTH:
            return set(C_ABI[self.bits])
        return set(self.function(target, depth + 1).regs)

    def for_target(self, address: int) -> Clobbers:
        return self.function(address, 0)
