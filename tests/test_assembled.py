"""Every inline table pvpatch writes into a site, assembled from its source text (keystone).

The native patcher's instructions (patch/native_tables.py: INLINE, G1_INLINE, IDENTS, UD2),
the NOP tables (patch/nops.py), the static-call inline forms and retinsn
(patch/static_calls.py) and the backend patchers' templates (patch/templates.py: xen_patch,
lguest_patch) each keep their bytes as data next to the assembly text the kernel source
writes; here an assembler turns the text into bytes and they must be the data's.

keystone 0.9 differs from GNU as in a few encodings of the same instruction, listed in
KEYSTONE_PICKS_ANOTHER with the reason: it drops a zero displacement (the kernel's NOPs keep
one to reach their length), it encodes `nopl` as 0f 18 (a prefetch hint), it rejects
`data16` before `nop`, and it picks 89 for a register move the kernel writes as 8b. Those
entries are checked by disassembly instead: capstone must read the data's bytes as the text's
instructions, one for one.
"""

from __future__ import annotations

import re

import pytest

from pvpatch.patch import native_tables as T
from pvpatch.patch.nops import NOP_TABLES
from pvpatch.patch.static_calls import INLINE_FORMS, RETINSN, RETINSN_TEXT
from pvpatch.patch.templates import AT, TEMPLATES

keystone = pytest.importorskip("keystone", reason="keystone-engine is in the dev extra")
capstone = pytest.importorskip("capstone")


def assemble(text: str, bits: int, at: int = 0) -> bytes:
    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_32 if bits == 32 else
                     keystone.KS_MODE_64)
    ks.syntax = keystone.KS_OPT_SYNTAX_ATT
    encoding, _ = ks.asm(text, at)
    return bytes(encoding or b"")


def mnemonics(code: bytes, bits: int) -> list[str]:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32 if bits == 32 else
                     capstone.CS_MODE_64)
    md.syntax = capstone.CS_OPT_SYNTAX_ATT
    out = [i.mnemonic for i in md.disasm(code, 0)]
    assert sum(i.size for i in md.disasm(code, 0)) == len(code)
    return out


def text_mnemonics(text: str) -> list[str]:
    """The instructions of ``a; b; c``, each prefix folded into the instruction after it."""
    out, prefix = [], []
    for part in (p.strip() for p in text.split(";")):
        word = part.split()[0]
        if word in ("cs", "ds", "data16"):
            prefix.append(word)
            continue
        out.append(" ".join([*prefix, word]))
        prefix = []
    return out


# (table, entry) → why keystone's encoding differs from the kernel's for the same text
KEYSTONE_PICKS_ANOTHER = {
    **{("p6", n): "nopl/nopw: keystone emits 0f 18 (prefetch)" for n in range(3, 9)},
    **{("p6-11", n): "nopl/nopw: keystone emits 0f 18 (prefetch)" for n in range(3, 12)},
    **{("k8", n): "data16 prefixes before nop: keystone rejects the spelling"
       for n in range(2, 9)},
    **{("generic32", n): "a zero displacement kept by the kernel, dropped by keystone"
       for n in (3, 4, 5, 6, 7, 8)},
    **{("intel", n): "a zero displacement kept by the kernel, dropped by keystone"
       for n in (3, 4, 5, 6, 7, 8)},
    **{("k7", n): "a zero displacement kept by the kernel, dropped by keystone"
       for n in (4, 5, 6, 7, 8)},
    ("k7", 2): "movl %eax,%eax in its 8b form; assemblers pick 89",
}


def check(text: str, code: bytes, bits: int, key: tuple[str, object] | None = None,
          at: int = 0) -> None:
    if key in KEYSTONE_PICKS_ANOTHER:
        folded = [m.replace("data16 ", "").replace("cs ", "") for m in mnemonics(code, bits)]
        want = [re.sub(r"^(cs|ds|data16) ", "", m).replace("data16 ", "").replace("cs ", "")
                for m in text_mnemonics(text)]
        assert [m.rstrip("lwq") for m in folded] == [m.rstrip("lwq") for m in want], key
        return
    assert assemble(text, bits, at).hex() == code.hex(), (key, text)


@pytest.mark.parametrize("ins", [i for i in T.INLINE if i.code is not None],
                         ids=lambda i: f"{i.op}-{i.bits}-{i.span.first[0]}.{i.span.first[1]}")
def test_native_inline_replacements(ins):
    check(ins.text, ins.code, ins.bits)


def test_the_other_native_tables():
    for ins in T.G1_INLINE.values():
        check(ins.text, ins.code, 32)
    for ident in T.IDENTS:
        for bits, code in ident.code.items():
            assert assemble(ident.text[bits], bits) == code, ident.symbol
    check(T.UD2_TEXT, T.UD2, 32)
    check(T.UD2_TEXT, T.UD2, 64)


@pytest.mark.parametrize("table", sorted(NOP_TABLES), ids=str)
def test_nop_tables(table):
    t = NOP_TABLES[table]
    bits = 32 if table in ("generic32", "k7", "intel") else 64
    assert len(t.texts) == len(t.seqs)
    for n, (text, code) in enumerate(zip(t.texts, t.seqs, strict=True), 1):
        assert len(code) == n
        check(text, code, bits, (table, n))


def test_static_call_inline_forms():
    for form in INLINE_FORMS:
        check(form.text, form.code, 64)
    check(RETINSN_TEXT, RETINSN, 64)


@pytest.mark.parametrize("tpl", TEMPLATES, ids=lambda t: f"{t.symbol}-{t.bits}-{t.span.first}")
def test_backend_templates(tpl):
    """The example layout: the template at AT (0x1000), check_events at 0x2000."""
    check(tpl.asm, tpl.code, tpl.bits, at=AT)
