"""x86 decoding through capstone, kept behind a tiny interface.

capstone is the decoder because it is maintained, exact for every prefix and addressing form,
and gives operand details (base register, displacement) needed to find a call's memory slot.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import capstone


class Insn(NamedTuple):
    """One decoded instruction (a tuple: thousands are made per command)."""

    address: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes
    mem_target: int | None  # absolute address of the memory operand of an indirect call/jmp
    is_indirect_branch: bool

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


@cache
def _capstone():  # the module, imported on first use: it costs ~80 ms of start-up
    import capstone
    from capstone import x86_const

    return capstone, x86_const


@cache
def _decoder(bits: int) -> capstone.Cs:
    capstone, _ = _capstone()
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64 else
                     capstone.CS_MODE_32)
    md.syntax = capstone.CS_OPT_SYNTAX_ATT  # what objdump and kernel engineers read
    md.detail = True
    return md


def preload(bits: int) -> None:
    """Load capstone and its decoders now: before forking workers that all decode, so that
    each does not load it again."""
    _decoder(bits)
    _lite(bits)


# ModRM bytes of the indirect call/jmp forms pv sites use: (mnemonic stem, SIB byte follows)
_FAST_FORMS = {0x15: ("call", False), 0x25: ("jmp", False), 0x14: ("call", True),
               0x24: ("jmp", True)}


def _indirect_call(code: bytes, address: int, bits: int) -> Insn | None:
    """Fast path for the encodings nearly every pv site uses: ``ff 15 disp32`` (5.18+;
    i386 always), ``ff 14 25 abs32`` (2.6.30–5.17 x86-64) and their ``jmp`` twins.

    Decoding thousands of sites through capstone's detail mode costs more than the rest of
    ``inspect``; this produces exactly capstone's AT&T text (a test holds it to that).
    """
    if len(code) < 6 or code[0] != 0xFF or code[1] not in _FAST_FORMS:
        return None
    stem, sib = _FAST_FORMS[code[1]]
    size = 7 if sib else 6
    if len(code) != size or (sib and (code[2] != 0x25 or bits != 64)):
        return None  # (capstone words a 32-bit SIB displacement its own way: no fast path)
    disp = int.from_bytes(code[size - 4:size], "little", signed=True)
    mnemonic = stem + ("q" if bits == 64 else "l")
    if bits == 64 and not sib:
        sign = "-" if disp < 0 else ""
        return Insn(address, 6, mnemonic, f"*{sign}{abs(disp):#x}(%rip)", code,
                    (address + 6 + disp) & 0xFFFFFFFFFFFFFFFF, True)
    target = disp & ((1 << bits) - 1)
    return Insn(address, size, mnemonic, _absolute(target), code, target, True)


@lru_cache(maxsize=4096)
def _absolute(target: int) -> str:
    """``*0x…``: a few hundred slots serve thousands of sites."""
    return f"*{target:#x}"


_JCC = ("jo", "jno", "jb", "jae", "je", "jne", "jbe", "ja", "js", "jns", "jp", "jnp", "jl",
        "jge", "jle", "jg")


def _rel32_branch(code: bytes, address: int, bits: int) -> Insn | None:
    """Fast path for one ``call``/``jmp rel32`` or ``jcc rel32``: every static-call site.

    Importing capstone costs ~0.5 s, more than reading a kernel's static calls; this produces
    exactly capstone's AT&T text (a test holds it to that)."""
    if len(code) == 5 and code[0] in (0xE8, 0xE9):
        mnemonic = ("callq" if bits == 64 else "calll") if code[0] == 0xE8 else "jmp"
    elif len(code) == 6 and code[0] == 0x0F and code[1] & 0xF0 == 0x80:
        mnemonic = _JCC[code[1] & 0xF]
    else:
        return None
    rel = int.from_bytes(code[-4:], "little", signed=True)
    target = (address + len(code) + rel) & ((1 << bits) - 1)
    return Insn(address, len(code), mnemonic, f"{target:#x}", code, None, False)


def decode(code: bytes, address: int, bits: int) -> list[Insn]:
    """Decode all of ``code``; stops early at bytes capstone cannot decode."""
    fast = _indirect_call(code, address, bits) or _rel32_branch(code, address, bits)
    if fast is not None:
        return [fast]
    return decode_slow(code, address, bits)


def decode_slow(code: bytes, address: int, bits: int) -> list[Insn]:
    """Decode through capstone, always."""
    _, X = _capstone()
    branches = {X.X86_INS_CALL, X.X86_INS_JMP, X.X86_INS_LCALL, X.X86_INS_LJMP}
    mask = (1 << bits) - 1
    out = []
    for i in _decoder(bits).disasm(code, address):
        target = None
        indirect = False
        if i.id in branches and i.operands:
            op = i.operands[0]
            if op.type == X.X86_OP_MEM:
                indirect = True
                m = op.mem
                if m.base == X.X86_REG_RIP and m.index == 0:
                    target = (i.address + i.size + m.disp) & mask
                elif m.base == 0 and m.index == 0:
                    target = m.disp & mask
            elif op.type == X.X86_OP_REG:
                indirect = True
        out.append(Insn(i.address, i.size, i.mnemonic, i.op_str, bytes(i.bytes), target,
                        indirect))
    return out


@cache
def _lite(bits: int) -> capstone.Cs:
    capstone, _ = _capstone()
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64 else
                       capstone.CS_MODE_32)


# Opcodes whose length does not depend on what follows, in 32- and 64-bit code: nop, int3,
# call/jmp rel32, jmp rel8. They are most of what the NOP optimiser and the relocation pass
# walk over (thousands of sites per plan), so capstone is asked only about the rest.
FIXED_LENGTH = {0x90: 1, 0xCC: 1, 0xE8: 5, 0xE9: 5, 0xEB: 2}


def first_length(code: bytes, bits: int) -> int | None:
    """Length of the first instruction of ``code`` (None if it does not decode): cheap."""
    size = FIXED_LENGTH.get(code[0]) if code else None
    if size is not None:
        return size if len(code) >= size else None
    for _addr, size, _mn, _op in _lite(bits).disasm_lite(code, 0, 1):
        return size
    return None


def text_of(insns: list[Insn]) -> str:
    return "; ".join(i.text for i in insns)
