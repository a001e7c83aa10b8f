"""The clobber analyzer on inline code: NOPs that name a register write nothing."""

from __future__ import annotations

import pytest
from conftest import assemble

from pvpatch.image.elf import ElfImage
from pvpatch.patch.clobbers import ClobberAnalyzer
from pvpatch.patch.nops import GENERIC_32, INTEL, K7, P6_64_LONG


def analyzer(bits: int) -> ClobberAnalyzer:
    defsyms = {"I386": 1} if bits == 32 else {}
    return ClobberAnalyzer(ElfImage(assemble("pv_sites.S", bits, defsyms=defsyms)))


@pytest.mark.parametrize(("bits", "table"), [(32, GENERIC_32), (32, K7), (32, INTEL),
                                             (64, P6_64_LONG)], ids=lambda x: getattr(x, "name", x))
def test_every_kernel_nop_writes_nothing(bits, table):
    a = analyzer(bits)
    for seq in table.seqs:
        assert a.inline(seq, 0x1000).regs == frozenset(), seq.hex()


def test_inline_native_unlock_on_i386_writes_nothing_but_memory():
    # 6.1 686-pae: `movb $0,(%eax)` then the 3-byte GENERIC NOP, in a 6-byte site
    assert analyzer(32).inline(bytes.fromhex("c600008d7600"), 0x1000).regs == frozenset()


@pytest.mark.parametrize(("code", "reg"), [
    ("89f6", "rsi"),  # mov %esi,%esi zero-extends rsi on x86-64
    ("8d7600", "rsi"),  # lea 0(%rsi),%esi likewise
    ("8d7601", "rsi"),  # a displacement changes the value
    ("89c6", "rsi"),  # another register
])
def test_value_changing_forms_still_count_on_x86_64(code, reg):
    assert reg in analyzer(64).inline(bytes.fromhex(code), 0x1000).regs


def test_value_changing_forms_still_count_on_i386():
    a = analyzer(32)
    assert "rsi" in a.inline(bytes.fromhex("8d7601"), 0x1000).regs
    assert "rax" in a.inline(bytes.fromhex("8d0430"), 0x1000).regs  # lea (%eax,%esi),%eax
