"""Era detection: which boot-patching algorithm an image runs, read from the image itself."""

from __future__ import annotations

from conftest import assemble

from pvpatch.kernel.model import KernelModel


def test_btf_without_init_member_is_5_13_to_6_7():
    with KernelModel.open(str(assemble("pv_kernel61.S", 64))) as m:
        assert m.era.era.key == "G5" and m.era.evidence == "pv_ops has no init member (btf)"
        assert m.era.conflict is None


def test_no_parainstructions_is_6_8_plus():
    with KernelModel.open(str(assemble("pv_kernel61.S", 64, defsyms={"ERA612": 1}))) as m:
        assert m.era.era.key == "G6"


def test_banner_decides_only_when_the_image_is_silent():
    # pv_sites.S: pv_ops without types or patcher symbols; its banner says 6.1
    with KernelModel.open(str(assemble("pv_sites.S", 64))) as m:
        assert m.era.era.key == "G5" and m.era.evidence == "linux_banner version 6.1"
    with KernelModel.open(str(assemble("pv_sites.S", 64, defsyms={"NO_BANNER": 1}))) as m:
        assert m.era is None


def test_a_huge_split_table_symbol_size_costs_nothing(tmp_path):
    """Found by the fuzzer: without types, 2.6.24–4.19 slots are laid out from the pv_*_ops
    symbol sizes; a size of 2 GiB must not be walked (a u8 type reaches 256 slots)."""
    import time

    from legacy_fixtures import BANNER

    from pvpatch.image import layouts as L
    from pvpatch.image.elf import ElfImage

    path = assemble("pv_legacy.S", 64, defsyms={"ERA": 3, "VER": BANNER[3]})
    data = bytearray(path.read_bytes())
    with ElfImage(str(path)) as im:
        symtab = next(s for s in im.sections if s.type == L.SHT_SYMTAB)
        row = im.symbols._indexes("pv_cpu_ops")[0]
    data[symtab.offset + 24 * row + 16:symtab.offset + 24 * row + 24] = \
        (0x7FFFFFFF).to_bytes(8, "little")  # Elf64_Sym.st_size
    bad = tmp_path / "vmlinux"
    bad.write_bytes(bytes(data))
    start = time.monotonic()
    with KernelModel.open(str(bad)) as m:
        assert len(m.pvops.slots) <= 256
    assert time.monotonic() - start < 5
