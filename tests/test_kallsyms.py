"""Symbols of a stripped kernel from its own kallsyms tables, one synthetic layout per era."""

from __future__ import annotations

import pytest
from kallsyms_tables import ERAS, kernel_with_kallsyms

from pvpatch.image import layouts as L
from pvpatch.image.elf import ElfImage
from pvpatch.image.kallsyms import find_kallsyms

EXPECTED_LAYOUT = {"absolute": "legacy", "relative": "legacy", "big-names": "legacy",
                   "seqs": "seqs", "names-first": "names-first"}


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("era", list(ERAS))
def test_every_symbol_is_recovered(tmp_path, era, bits):
    path = tmp_path / "vmlinux"
    syms, labels = kernel_with_kallsyms(str(path), bits, era)
    with ElfImage(path) as image:
        assert image.section(".symtab") is None
        table = image.symbols
        assert table.source == "kallsyms" and len(table) == len(syms)
        found = table.kallsyms
        assert found.layout == EXPECTED_LAYOUT[era]
        assert found.num_syms == len(syms)
        assert found.names == labels["kallsyms_names"]
        assert found.token_table == labels["kallsyms_token_table"]
        assert found.relative_base is None if era == "absolute" else found.relative_base
        assert found.absolute_percpu == (bits == 64 and ERAS[era][2])
        for s in syms:
            got = table.get(s.name)
            assert got is not None and got.value == s.addr, s.name
            if s.type in "Tt":
                assert got.type == L.STT_FUNC and got.bind == (s.type == "T")
        # sizes reach the next symbol, so addresses inside a function are named from it
        first = next(s for s in syms if s.type in "Tt")
        assert table.describe(first.addr + 0x10) == f"{first.name}+0x10"


def test_big_names_need_two_byte_lengths(tmp_path):
    syms, _ = kernel_with_kallsyms(str(tmp_path / "k"), 64, "big-names")
    longest = max(syms, key=lambda s: len(s.name))
    assert len(longest.name) > 200
    with ElfImage(tmp_path / "k") as image:
        assert image.symbols.get(longest.name).value == longest.addr


def test_damaged_token_index_means_no_symbols(tmp_path):
    path = tmp_path / "vmlinux"
    _syms, labels = kernel_with_kallsyms(str(path), 64, "seqs")
    data = bytearray(path.read_bytes())
    with ElfImage(path) as image:
        off = image.offset_of(labels["kallsyms_token_index"] + 2 * 0x41)
    data[off:off + 2] = b"\xff\xff"  # token 'A' points past the table
    path.write_bytes(bytes(data))
    with ElfImage(path) as image:
        assert find_kallsyms(image) is None
        assert image.symbols.source == "none" and len(image.symbols) == 0


def test_symtab_wins_over_kallsyms(tmp_path):
    from conftest import assemble

    with ElfImage(assemble("pv_kernel61.S", 64)) as image:
        assert image.symbols.source == ".symtab"
