"""Symbols of a stripped kernel from its own kallsyms tables, one synthetic layout per era."""

from __future__ import annotations

import struct

import pytest
from click.testing import CliRunner
from kallsyms_tables import (
    ERAS,
    ONLY_32,
    TEXT32,
    TEXT64,
    Sym,
    kernel_with_kallsyms,
    symbols,
    write_elf,
)

from pvpatch.cli import cli
from pvpatch.image import layouts as L
from pvpatch.image.elf import ElfImage
from pvpatch.image.kallsyms import find_kallsyms

EXPECTED_LAYOUT = {"absolute": "legacy", "relative": "legacy", "big-names": "legacy",
                   "seqs": "seqs", "names-first": "names-first", "pc-relative": "names-first",
                   "absolute-7.0": "names-first"}
# every era on both word sizes (some only exist on 32-bit), and the 7.0+ tables at an
# 8-aligned address too: their labels are 4-aligned, not ALGN, on 64-bit as well
CASES = [(era, shift, bits) for bits in (64, 32) for era in ERAS
         for shift in ((0, 4) if ERAS[era].align == 4 else (0,))
         if bits == 32 or era not in ONLY_32]


@pytest.mark.parametrize(("era", "shift", "bits"), CASES,
                         ids=[f"{e}+{s}-{b}" for e, s, b in CASES])
def test_every_symbol_is_recovered(tmp_path, era, shift, bits):
    path = tmp_path / "vmlinux"
    syms, labels = kernel_with_kallsyms(str(path), bits, era, shift=shift)
    e = ERAS[era]
    with ElfImage(path) as image:
        assert image.section(".symtab") is None
        table = image.symbols
        assert table.source == "kallsyms" and len(table) == len(syms)
        found = table.kallsyms
        assert found.layout == EXPECTED_LAYOUT[era]
        assert found.num_syms == len(syms)
        assert found.names == labels["kallsyms_names"]
        assert found.token_table == labels["kallsyms_token_table"]
        assert found.addresses == labels.get("kallsyms_offsets", labels.get("kallsyms_addresses"))
        assert found.addressing == e.addressing
        assert found.label_align == (4 if e.align == 4 or bits == 32 else 8)
        assert (found.relative_base is not None) == (e.addressing == "base-relative")
        assert found.absolute_percpu == (bits == 64 and e.percpu)
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


def pc_relative_kernel(path, bits: int = 64) -> tuple[list[Sym], dict[str, int]]:
    """7.0+ tables as a real kernel has them: several symbols at one address (_text, _stext…)."""
    syms = symbols(bits)
    first = next(s for s in syms if s.type in "Tt")
    syms += [Sym(name, first.addr, "T") for name in ("_text", "_stext", "startup_64")]
    return kernel_with_kallsyms(str(path), bits, "pc-relative",
                                sorted(syms, key=lambda s: s.addr))


@pytest.mark.parametrize("bits", [64, 32])
def test_pc_relative_with_aliases(tmp_path, bits):
    syms, _labels = pc_relative_kernel(tmp_path / "k", bits)
    with ElfImage(tmp_path / "k") as image:
        found = find_kallsyms(image)
        assert found is not None and found.addressing == "pc-relative"
        assert [a for _n, a, _t in found.symbols] == [s.addr for s in syms if s.type != "A"]
        assert image.symbols.get("_stext").value == image.section(".text").addr


def test_pc_relative_32_bit_code_only(tmp_path):
    """32-bit, only code symbols, all below the table and 4+ bytes apart: read as absolute
    u32s the offsets (all negative) come out sorted too; the place-relative reading, whose
    addresses land in the image, is tried first and is the one taken."""
    syms = [s for s in symbols(32) if s.addr < TEXT32 + 0x100000]
    kernel_with_kallsyms(str(tmp_path / "k"), 32, "pc-relative", syms)
    with ElfImage(tmp_path / "k") as image:
        found = find_kallsyms(image)
        assert found is not None and found.addressing == "pc-relative"
        assert found.addrs == [s.addr for s in syms]


def change_offset(path, labels: dict[str, int], index: int, delta: int) -> None:
    """Add ``delta`` to entry ``index`` of kallsyms_offsets, in the file."""
    with ElfImage(path) as image:
        off = image.offset_of(labels["kallsyms_offsets"] + 4 * index)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<i", raw, off, struct.unpack_from("<i", raw, off)[0] + delta)
    path.write_bytes(bytes(raw))


def test_pc_relative_entry_out_of_order_means_no_symbols(tmp_path):
    path = tmp_path / "vmlinux"
    _syms, labels = pc_relative_kernel(path)
    change_offset(path, labels, 100, 0x100000)
    with ElfImage(path) as image:
        assert find_kallsyms(image) is None
    # the table's only symbols are lost, so nothing else says "kernel": one line, status 2
    r = CliRunner().invoke(cli, ["inspect", str(path)], catch_exceptions=False)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "not a Linux kernel" in r.output and len(r.output.strip().splitlines()) == 1


def test_pc_relative_pointing_outside_the_image_means_no_symbols(tmp_path):
    """Offsets that stay sorted but name addresses past the image are not the table."""
    path = tmp_path / "vmlinux"
    syms, labels = pc_relative_kernel(path)
    change_offset(path, labels, len(syms) - 1, 0x10000000)
    with ElfImage(path) as image:
        assert find_kallsyms(image) is None


def test_truncated_pc_relative_tables(tmp_path):
    """.rodata ending inside kallsyms_offsets: no symbols; the file cut there: one line."""
    path = tmp_path / "vmlinux"
    syms, labels = pc_relative_kernel(path)
    with ElfImage(path) as image:
        rodata = image.section(".rodata")
        cut = labels["kallsyms_offsets"] + 2 * len(syms) - rodata.addr
        short = bytes(image.section_data(rodata))[:cut]
        text = bytes(image.section_data(image.section(".text")))
        data = bytes(image.section_data(image.section(".data")))
        file_cut = image.offset_of(labels["kallsyms_offsets"] + 2 * len(syms))
    inner = tmp_path / "short-rodata"
    write_elf(str(inner), 64, [(".text", 6, TEXT64, text), (".rodata", 2, rodata.addr, short),
                               (".data", 3, TEXT64 + 0x200000, data)])
    with ElfImage(inner) as image:
        assert find_kallsyms(image) is None and image.symbols.source == "none"
    cut_file = tmp_path / "cut"
    cut_file.write_bytes(path.read_bytes()[:file_cut])
    r = CliRunner().invoke(cli, ["inspect", str(cut_file)], catch_exceptions=False)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_symtab_wins_over_kallsyms(tmp_path):
    from conftest import assemble

    with ElfImage(assemble("pv_kernel61.S", 64)) as image:
        assert image.symbols.source == ".symtab"
