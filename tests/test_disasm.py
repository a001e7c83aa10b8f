"""The fast path for `call *disp(%rip)` / `call *abs32` must read exactly like capstone."""

from __future__ import annotations

import random

import pytest

from pvpatch.disasm import decode, decode_slow


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("head", ["ff15", "ff25", "ff1425", "ff2425"])
def test_fast_path_matches_capstone(bits, head):
    rng = random.Random(1234)
    for _ in range(2000):  # (32-bit SIB forms are no fast path: they must still agree)
        code = bytes.fromhex(head) + rng.randbytes(4)
        addr = rng.choice([0x401000, 0xFFFFFFFF81000000]) if bits == 64 else 0x8049000
        addr += rng.randrange(0, 1 << 24)
        fast, slow = decode(code, addr, bits), decode_slow(code, addr, bits)
        assert [(i.size, i.text, i.mem_target, i.is_indirect_branch) for i in fast] == \
            [(i.size, i.text, i.mem_target, i.is_indirect_branch) for i in slow], code.hex()


@pytest.mark.parametrize("bits", [64, 32])
def test_rel32_branch_fast_path_matches_capstone(bits):
    """call/jmp rel32 and jcc rel32, the static-call sites' forms, read as capstone reads them."""
    rng = random.Random(99)
    opcodes = [b"\xe8", b"\xe9"] + [bytes([0x0F, 0x80 + cc]) for cc in range(16)]
    for _ in range(2000):
        code = rng.choice(opcodes) + rng.randbytes(4)
        addr = (0xFFFFFFFF81000000 if bits == 64 else 0xC1000000) + rng.randrange(1 << 24)
        fast, slow = decode(code, addr, bits), decode_slow(code, addr, bits)
        assert [(i.size, i.text, i.is_indirect_branch) for i in fast] == \
            [(i.size, i.text, i.is_indirect_branch) for i in slow], code.hex()


def test_the_2_6_30_to_5_17_form_reads_its_absolute_slot():
    code = bytes.fromhex("ff1425a89aa382")  # call *0xffffffff82a39aa8 (2.6.30–5.17 form)
    (insn,) = decode(code, 0xFFFFFFFF81000000, 64)
    assert insn.size == 7 and insn.mem_target == 0xFFFFFFFF82A39AA8


def test_other_encodings_go_through_capstone():
    code = bytes.fromhex("ff542500")  # call *(%rsp): no fast form
    (insn,) = decode(code, 0xFFFFFFFF81000000, 64)
    assert insn.size == 4 and insn.mem_target is None and insn.is_indirect_branch


@pytest.mark.parametrize("bits", [32, 64])
def test_fixed_length_opcodes_agree_with_capstone(bits):
    """first_length answers nop/int3/call/jmp without capstone: it must say what capstone
    says, whatever bytes follow, and nothing for a truncated one."""
    from pvpatch.disasm import FIXED_LENGTH, _lite, first_length

    rng = random.Random(5)
    for opcode, size in FIXED_LENGTH.items():
        for _ in range(50):
            code = bytes([opcode]) + rng.randbytes(rng.randrange(0, 8))
            expect = next((s for _a, s, _m, _o in _lite(bits).disasm_lite(code, 0, 1)), None)
            assert first_length(code, bits) == expect, (code.hex(), bits)
        assert size >= 1
