"""DWARF reader: layouts from gcc-built objects (DWARF 2, 4, 5), and agreement with BTF on the
real Debian 6.1 kernel."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import assemble, real_kernel

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.types.btf import BtfTypes
from pvpatch.types.dwarf import DwarfTypes
from pvpatch.types.loader import KNOWN_CU_HINTS, load_types
from pvpatch.types.model import Field, StructLayout

SOURCE = r"""
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned long u64;
typedef u8 byte_t;
typedef const volatile byte_t cv_byte;

struct paravirt_callee_save { void *func; };
struct pv_cpu_ops {
    void (*io_delay)(void);
    u64 (*read_cr0)(void);
    void (*write_cr0)(u64);
};
struct pv_irq_ops {
    struct paravirt_callee_save save_fl;
    struct paravirt_callee_save restore_fl;
    void (*safe_halt)(void);
};
struct pv_lazy_ops { void (*enter)(void); void (*leave)(void); };
struct pv_mmu_ops {
    void (*flush_tlb_user)(void);
    struct pv_lazy_ops lazy_mode;
    union { u64 raw; struct { u16 lo; u16 hi; }; } u;
    unsigned int flags : 3;
    unsigned int mode : 5;
    cv_byte tail[3];
};
struct paravirt_patch_template {
    struct pv_cpu_ops cpu;
    struct pv_irq_ops irq;
    struct pv_mmu_ops mmu;
};
struct paravirt_patch_site { u8 *instr; u8 type; u8 len; };
typedef struct { int a; char b; } anon_t;
typedef union { int i; float f; } pun_t;
struct declared_only;

struct paravirt_patch_template pv_ops;
struct paravirt_patch_site site;
anon_t anon;
pun_t pun;
struct declared_only *opaque;
void _start(void) {}
"""


def build(tmp_path: Path, dwarf: int, link: bool, compress: bool = False) -> Path:
    """Compile SOURCE for x86-64 with ``-gdwarf-<dwarf>``; ``link`` gives an ET_EXEC.

    Objects (ET_REL) and compressed sections take pyelftools' relocating loader; linked,
    uncompressed files the zero-copy one that debug kernels use.
    """
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: cannot build the DWARF fixture objects")
    src = tmp_path / "arch" / "x86" / "kernel" / "paravirt.c"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(SOURCE)
    out = tmp_path / ("pv" if link else "pv.o")
    cmd = ["gcc", "-m64", f"-gdwarf-{dwarf}", "-O0", "-fno-eliminate-unused-debug-types"]
    cmd += ["-gz=zlib"] if compress else []
    cmd += ["-nostdlib", "-static", "-o", str(out)] if link else ["-c", "-o", str(out)]
    done = subprocess.run([*cmd, "arch/x86/kernel/paravirt.c"], cwd=tmp_path,
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"gcc could not build the DWARF fixture: {done.stderr.strip()[:200]}")
    return out


@pytest.fixture(params=[(5, False, False), (4, False, False), (2, False, False),
                        (5, True, False), (4, True, False), (5, True, True)],
                ids=["dwarf5-obj", "dwarf4-obj", "dwarf2-obj", "dwarf5-exec", "dwarf4-exec",
                     "dwarf5-exec-compressed"])
def types(request: pytest.FixtureRequest, tmp_path: Path):
    with ElfImage(build(tmp_path, *request.param)) as image:
        found = load_types(image)
        assert isinstance(found, DwarfTypes)
        yield found


def test_template_layout(types: DwarfTypes):
    tpl = types.struct("paravirt_patch_template")
    assert tpl is not None and (tpl.name, tpl.size) == ("paravirt_patch_template", 88)
    assert [(f.name, f.offset, f.size, f.kind, f.type_name) for f in tpl.fields] == [
        ("cpu", 0, 24, "struct", "pv_cpu_ops"), ("irq", 24, 24, "struct", "pv_irq_ops"),
        ("mmu", 48, 40, "struct", "pv_mmu_ops")]
    assert [(p, o, f.size, f.kind, f.bit_size) for p, o, f in tpl.leaves()] == [
        ("cpu.io_delay", 0, 8, "ptr", 0), ("cpu.read_cr0", 8, 8, "ptr", 0),
        ("cpu.write_cr0", 16, 8, "ptr", 0), ("irq.save_fl.func", 24, 8, "ptr", 0),
        ("irq.restore_fl.func", 32, 8, "ptr", 0), ("irq.safe_halt", 40, 8, "ptr", 0),
        ("mmu.flush_tlb_user", 48, 8, "ptr", 0), ("mmu.lazy_mode.enter", 56, 8, "ptr", 0),
        ("mmu.lazy_mode.leave", 64, 8, "ptr", 0), ("mmu.u.raw", 72, 8, "int", 0),
        ("mmu.u.lo", 72, 2, "int", 0), ("mmu.u.hi", 74, 2, "int", 0),
        ("mmu.flags", 80, 4, "int", 3), ("mmu.mode", 80, 4, "int", 5),
        ("mmu.tail", 81, 3, "array", 0)]


def test_unions_anonymous_members_and_typedef_names(types: DwarfTypes):
    mmu = types.struct("pv_mmu_ops")
    assert mmu is not None
    u = mmu.field("u")
    assert u is not None and u.kind == "union" and u.type_name is None and u.layout is not None
    anon = u.layout.fields[1]
    assert (anon.name, anon.kind, anon.offset) == ("", "struct", 0)
    assert [(f.name, f.type_name) for f in anon.layout.fields] == [("lo", "u16"), ("hi", "u16")]
    assert mmu.field("flags") == Field("flags", 32, 4, "int", "unsigned int", 3)


def test_site_layout(types: DwarfTypes):
    expected = StructLayout("paravirt_patch_site", 16, "struct", (
        Field("instr", 0, 8, "ptr", None), Field("type", 8, 1, "int", "u8"),
        Field("len", 9, 1, "int", "u8")))
    assert types.struct("paravirt_patch_site") == expected


def test_typedefd_anonymous_aggregates_and_missing_names(types: DwarfTypes):
    anon = types.struct("anon_t")
    assert anon is not None and (anon.name, anon.size) == ("anon_t", 8)
    assert [(f.name, f.offset, f.type_name) for f in anon.fields] == [("a", 0, "int"),
                                                                      ("b", 4, "char")]
    pun = types.struct("pun_t")
    assert pun is not None and pun.kind == "union"
    assert pun.field("f") == Field("f", 0, 4, "float", "float")
    assert types.struct("declared_only") is None
    assert types.struct("u8") is None
    assert types.struct("no_such_struct") is None


def test_unit_names_and_hints(types: DwarfTypes):
    assert [name for _off, name in types.units()] == ["arch/x86/kernel/paravirt.c"]
    assert types.struct("paravirt_patch_site", hint_cus=("no/such/file.c",)) is not None
    types.max_fallback_cus = 0
    assert types.struct("pv_cpu_ops", hint_cus=("no/such/file.c",)) is None  # bounded search
    assert types.struct("pv_irq_ops", hint_cus=("arch/x86/kernel/paravirt.c",)) is not None


def test_no_debug_info_means_no_types():
    with ElfImage(assemble("pv_sites.S")) as image:
        assert DwarfTypes.from_image(image) is None
        assert load_types(image) is None


@pytest.mark.parametrize("link", [False, True], ids=["obj", "exec"])
def test_corrupted_dwarf_is_an_input_error_or_a_layout(tmp_path: Path, link: bool):
    """Scribbling on .debug_info/.debug_abbrev never escapes as another exception or hangs."""
    good = build(tmp_path, 5, link)
    with ElfImage(good) as image:
        spans = [(s.offset, s.size) for s in image.sections
                 if s.name in (".debug_info", ".debug_abbrev")]
    data, rng, outcomes = good.read_bytes(), random.Random(1), set()
    bad = tmp_path / "bad"
    start = time.perf_counter()
    for _ in range(150):
        blob = bytearray(data)
        off, size = rng.choice(spans)
        for _ in range(rng.randint(1, 6)):
            blob[off + rng.randrange(size)] = rng.randrange(256)
        bad.write_bytes(blob)
        try:
            with ElfImage(bad) as image:
                types = DwarfTypes.from_image(image)
                assert types is not None
                for name in ("paravirt_patch_template", "anon_t", "missing"):
                    layout = types.struct(name)
                    if layout is not None:
                        list(layout.leaves())
            outcomes.add("read")
        except InputError as e:
            assert "\n" not in str(e) and str(e).startswith(f"{bad}: ")
            outcomes.add("error")
    assert outcomes == {"read", "error"}
    assert time.perf_counter() - start < 30


# -- the real kernel -----------------------------------------------------------------------

@pytest.mark.realkernel
def test_real_kernel_dwarf_agrees_with_btf():
    path = real_kernel()
    with ElfImage(path) as image:
        assert isinstance(load_types(image), BtfTypes)  # BTF wins when present
        start = time.perf_counter()
        dwarf = DwarfTypes.from_image(image, cu_hints=KNOWN_CU_HINTS)
        assert dwarf is not None
        tpl = dwarf.struct("paravirt_patch_template")
        elapsed = time.perf_counter() - start
        btf = BtfTypes.from_image(image)
        assert btf is not None and tpl is not None and tpl.size == 672
        btf_tpl = btf.struct("paravirt_patch_template")
        assert btf_tpl is not None
        assert list(tpl.leaves()) == list(btf_tpl.leaves())
        assert tpl == btf_tpl
        for name in ("paravirt_patch_site", "alt_instr"):
            assert dwarf.struct(name) == btf.struct(name), name
    assert elapsed < 5.0, f"DWARF lookup took {elapsed:.2f}s"
