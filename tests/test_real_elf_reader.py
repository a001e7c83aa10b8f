"""Real-kernel tier: pvpatch's hand-written ELF reader against an independent one, LIEF.

pvpatch reads section and program headers, the symbol table and notes by hand, through
declared layouts, because generic readers are too slow on a 600 MB, 200k-symbol vmlinux. As
pyelftools holds itself to readelf, these tests hold pvpatch to LIEF on Debian's kernels:
every section (name, address, size, offset, flags, type), every segment, the symbol counts and
a large, evenly spread sample of records, and every note (Xen's and GNU's build-id among them).
The ELF inside a vmlinuz is compared too, from the bytes pvpatch inflated.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import real_kernel

from pvpatch.image import layouts as L
from pvpatch.image.loader import open_image
from pvpatch.image.notes import iter_notes, note_areas
from pvpatch.kernel.xen_notes import read_xen_notes

lief = pytest.importorskip("lief", reason="LIEF (pip install lief, in the dev extra) is the "
                                          "reference reader")
pytestmark = pytest.mark.realkernel

KERNELS = [("cloud-amd64", "6.1", "vmlinux"), ("amd64", "6.12", "vmlinux"),
           ("686-pae", "6.1", "vmlinux"), ("cloud-amd64", "6.1", "vmlinuz")]
SAMPLE = 20_000  # symbol records compared one by one, spread over the whole table


@pytest.fixture(scope="module", params=KERNELS, ids=lambda k: "-".join(k))
def pair(request, tmp_path_factory):
    """(pvpatch's image, LIEF's binary) of one kernel; a vmlinuz's ELF goes to LIEF as a file
    of the bytes pvpatch decompressed."""
    flavour, series, kind = request.param
    path = str(real_kernel(flavour, series, kind))
    config = lief.ELF.ParserConfig()
    config.parse_relocations = False
    with open_image(path) as image:
        elf = path
        if kind == "vmlinuz":
            elf = str(tmp_path_factory.mktemp("inflated") / "vmlinux")
            with open(elf, "wb") as f:
                f.write(image.data)
        theirs = lief.ELF.parse(elf, config)
        assert theirs is not None, f"LIEF cannot read {elf}"
        yield image, theirs
        if elf != path:
            Path(elf).unlink()


def test_sections(pair):
    ours, theirs = pair
    want = [(s.name, s.virtual_address, s.size, s.offset, int(s.flags), int(s.type))
            for s in theirs.sections]
    got = [(s.name, s.addr, s.size, s.offset, s.flags, s.type) for s in ours.sections]
    assert len(got) == len(want) > 20
    assert got == want


def test_segments(pair):
    ours, theirs = pair
    want = [(int(p.type), int(p.flags), p.file_offset, p.virtual_address, p.physical_address,
             p.physical_size, p.virtual_size, p.alignment) for p in theirs.segments]
    got = [(p.type, p.flags, p.offset, p.vaddr, p.paddr, p.filesz, p.memsz, p.align)
           for p in ours.segments]
    assert got == want and any(p[0] == L.PT_LOAD for p in got)
    assert ours.entry == theirs.header.entrypoint


def test_symbol_counts_and_a_large_sample(pair):
    ours, theirs = pair
    table = ours.symbols
    if table.source != ".symtab":
        assert len(theirs.symtab_symbols) == 0  # stripped: pvpatch read kallsyms instead
        pytest.skip(f"no .symtab in this image (symbols from {table.source})")
    want = list(theirs.symtab_symbols)
    assert len(table) == len(want) > 50_000
    kinds = Counter(int(s.type) for s in want)
    assert Counter(table.record(i).type for i in range(len(table))) == kinds
    step = max(1, len(want) // SAMPLE)
    for i in range(0, len(want), step):
        mine, theirs_ = table.record(i), want[i]
        assert (mine.name, mine.value, mine.size, mine.type, mine.bind, mine.shndx) == \
            (theirs_.name, theirs_.value, theirs_.size, int(theirs_.type),
             int(theirs_.binding), theirs_.shndx), i


def test_symbol_lookups_by_name(pair):
    """pvpatch finds names by searching the raw string table; LIEF's records say where."""
    ours, theirs = pair
    if ours.symbols.source != ".symtab":
        pytest.skip("no .symtab in this image")
    globals_ = [s for s in theirs.symtab_symbols
                if int(s.binding) == 1 and int(s.type) in (1, 2) and s.shndx]
    step = max(1, len(globals_) // 2000)
    for s in globals_[::step]:
        found = ours.symbols.lookup(s.name)
        assert s.value in {x.value for x in found}, s.name


def _lief_notes(theirs) -> list[tuple[str, int, bytes]]:
    """(owner, type, descriptor with its padding): LIEF keeps a name's NUL when namesz counts
    it and reads the descriptor to its 4-byte boundary."""
    return [(n.name.rstrip("\0"), n.original_type, bytes(n.description)) for n in theirs.notes]


def test_notes(pair):
    ours, theirs = pair
    got = [(n.name, n.type, n.padded_desc) for area in note_areas(ours, "segments")
           for n in iter_notes(ours, area)]
    assert got == _lief_notes(theirs) and got


def test_xen_notes_and_build_id(pair):
    ours, theirs = pair
    want = _lief_notes(theirs)
    xen = read_xen_notes(ours)
    theirs_xen = [(t, d) for name, t, d in want if name == "Xen"]
    assert len(xen.notes) == len(theirs_xen) > 10
    for n, (t, d) in zip(xen.notes, theirs_xen, strict=True):
        assert (n.type, n.raw) == (t, d[:n.descsz])
        if isinstance(n.value, int) and n.descsz in (1, 2, 4, 8):
            assert n.value == int.from_bytes(d[:n.descsz], "little"), n.type
        elif isinstance(n.value, str):
            assert n.value == d.split(b"\0", 1)[0].decode("latin-1"), n.type
    gnu = [d for name, t, d in want if name == "GNU" and t == 3]
    assert ours.build_id == gnu[0].hex()
