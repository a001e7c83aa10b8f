"""BTF reader: layouts from hand-built blobs, lying blobs, and the real Debian 6.1 kernel."""

from __future__ import annotations

import struct
import time

import pytest
from btfwriter import BtfWriter
from conftest import real_kernel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.types.btf import KINDS, BtfTypes
from pvpatch.types.model import Field, StructLayout

LABEL = "vmlinux"


def kernel_like() -> BtfWriter:
    """Structs shaped like paravirt_types.h, with every BTF kind somewhere in the blob."""
    w = BtfWriter()
    void_fn = w.func_proto(0, [])
    fnptr = w.ptr(void_fn)
    u8 = w.typedef("u8", w.typedef("__u8", w.int_("unsigned char", 1)))
    uint = w.int_("unsigned int", 4)
    u64 = w.typedef("u64", w.int_("long long unsigned int", 8))
    cu8 = w.ref("CONST", w.ref("VOLATILE", u8))  # const volatile u8
    # every remaining kind, so a wrong record length would derail the ids after them
    w.enum("pv_mode", [("A", 0), ("B", 1)])
    w.enum64("big", [("X", 1 << 40)])
    w.fwd("opaque")
    w.func("native_io_delay", void_fn)
    w.var("pv_info", uint)
    w.datasec(".data", [(w.next_id - 1, 0, 4)], 4)
    w.float_("double", 8)
    w.decl_tag("tag", uint, -1)
    tagged = w.ref("TYPE_TAG", w.ref("RESTRICT", fnptr), "user")
    w.array(u8, uint, 0)

    callee = w.struct("paravirt_callee_save", 8, [("func", w.ptr(0), 0, 0)])
    cpu = w.struct("pv_cpu_ops", 16, [("io_delay", fnptr, 0, 0), ("read_cr0", tagged, 64, 0)])
    irq = w.struct("pv_irq_ops", 16, [("save_fl", callee, 0, 0), ("restore_fl", callee, 64, 0)])
    lazy = w.struct("pv_lazy_ops", 16, [("enter", fnptr, 0, 0), ("leave", fnptr, 64, 0)])
    halves = w.struct("", 4, [("lo", w.int_("short unsigned int", 2), 0, 0),
                              ("hi", w.next_id - 1, 16, 0)])
    anon_union = w.struct("", 8, [("raw", u64, 0, 0), ("", halves, 0, 0)], union=True)
    mmu = w.struct("pv_mmu_ops", 32, [
        ("lazy_mode", lazy, 0, 0),
        ("", anon_union, 128, 0),
        ("flags", uint, 192, 3),
        ("mode", uint, 195, 5),
        ("tail", w.array(cu8, uint, 3), 200, 0),
    ])
    w.struct("paravirt_patch_template", 64, [("cpu", cpu, 0, 0), ("irq", irq, 128, 0),
                                             ("mmu", mmu, 256, 0)])
    w.struct("paravirt_patch_site", 16, [("instr", w.ptr(u8), 0, 0), ("type", u8, 64, 0),
                                         ("len", u8, 72, 0)])
    anon = w.struct("", 8, [("a", uint, 0, 0), ("b", u8, 32, 0)])
    w.typedef("anon_t", anon)
    w.struct("pair", 8, [("a", uint, 0, 0), ("b", uint, 32, 0)], union=True)
    return w


def types_of(w: BtfWriter, **lies: int) -> BtfTypes:
    return BtfTypes(w.blob(**lies), LABEL)


def fields(layout: StructLayout | None) -> list[tuple[str, int, Field]]:
    assert layout is not None
    return list(layout.leaves())


# -- good BTF ------------------------------------------------------------------------------

def test_template_expands_nested_structs_unions_and_bitfields():
    t = types_of(kernel_like())
    tpl = t.struct("paravirt_patch_template")
    assert tpl is not None and (tpl.name, tpl.size, tpl.kind) == ("paravirt_patch_template", 64,
                                                                    "struct")
    assert [(f.name, f.offset, f.size, f.type_name) for f in tpl.fields] == [
        ("cpu", 0, 16, "pv_cpu_ops"), ("irq", 16, 16, "pv_irq_ops"), ("mmu", 32, 32, "pv_mmu_ops")]
    assert [(p, o) for p, o, _f in fields(tpl)] == [
        ("cpu.io_delay", 0), ("cpu.read_cr0", 8), ("irq.save_fl.func", 16),
        ("irq.restore_fl.func", 24), ("mmu.lazy_mode.enter", 32), ("mmu.lazy_mode.leave", 40),
        ("mmu.raw", 48), ("mmu.lo", 48), ("mmu.hi", 50), ("mmu.flags", 56), ("mmu.mode", 56),
        ("mmu.tail", 57)]
    by_path = {p: f for p, _o, f in fields(tpl)}
    assert by_path["cpu.read_cr0"].kind == "ptr"  # through type_tag and restrict
    assert by_path["cpu.read_cr0"].type_name is None
    assert by_path["mmu.flags"] == Field("flags", 24, 4, "int", "unsigned int", 3)
    assert by_path["mmu.mode"].bit_size == 5 and by_path["mmu.mode"].offset == 24
    assert by_path["mmu.tail"] == Field("tail", 25, 3, "array", None)
    assert by_path["mmu.raw"].type_name == "u64"


def test_anonymous_members_have_no_name_and_no_path_component():
    mmu = types_of(kernel_like()).struct("pv_mmu_ops")
    assert mmu is not None
    anon = mmu.fields[1]
    assert (anon.name, anon.offset, anon.kind, anon.type_name) == ("", 16, "union", None)
    assert anon.layout is not None and anon.layout.name is None
    assert anon.layout.fields[1].layout is not None
    assert [f.name for f in anon.layout.fields[1].layout.fields] == ["lo", "hi"]


def test_typedef_chain_gives_first_typedef_name_and_real_kind():
    site = types_of(kernel_like()).struct("paravirt_patch_site")
    assert site == StructLayout("paravirt_patch_site", 16, "struct", (
        Field("instr", 0, 8, "ptr", None), Field("type", 8, 1, "int", "u8"),
        Field("len", 9, 1, "int", "u8")))


def test_unions_and_typedefd_anonymous_structs_by_name():
    t = types_of(kernel_like())
    pair = t.struct("pair")
    assert pair is not None and pair.kind == "union" and pair.size == 8
    anon = t.struct("anon_t")
    assert anon is not None and anon.name == "anon_t"
    assert [(f.name, f.offset, f.type_name) for f in anon.fields] == [("a", 0, "unsigned int"),
                                                                      ("b", 4, "u8")]


def test_missing_and_non_struct_names_are_none():
    t = types_of(kernel_like())
    assert t.struct("no_such_struct") is None
    assert t.struct("u8") is None  # a typedef, but of an int
    assert t.struct("native_io_delay") is None  # a FUNC
    assert t.struct("opaque") is None  # only forward-declared
    assert t.struct("") is None


def test_old_style_bitfields_come_from_the_int_encoding():
    w = BtfWriter()
    three = w.int_("unsigned int", 4, bits=3)
    w.struct("s", 4, [("a", three, 0, 0), ("b", three, 3, 0)], kind_flag=False)
    s = types_of(w).struct("s")
    assert s is not None
    assert [(f.name, f.offset, f.bit_size) for f in s.fields] == [("a", 0, 3), ("b", 0, 3)]


def test_shared_string_suffixes_still_match():
    w = BtfWriter()
    w.struct("__pv_s", 4, [("x", w.int_("int", 4), 0, 0)])
    w.raw("STRUCT", w.string("__pv_s") + 2, 0, 8)  # "pv_s" stored inside "__pv_s"
    s = types_of(w).struct("pv_s")
    assert s is not None and (s.name, s.size) == ("pv_s", 8)


def test_ptr_size_follows_the_image():
    w = BtfWriter()
    w.struct("p", 4, [("ptr", w.ptr(0), 0, 0)])
    s = BtfTypes(w.blob(), LABEL, ptr_size=4).struct("p")
    assert s is not None and s.fields[0].size == 4


def test_kind_table_covers_every_kind():
    assert sorted(KINDS) == list(range(1, 20))


# -- lying BTF -----------------------------------------------------------------------------

def lies() -> list[tuple[str, bytes, str]]:
    """(case, blob, expected message fragment)."""
    good = kernel_like()
    blob = good.blob()
    cases = [
        ("bad magic", good.blob(magic=0x1234), "magic is 0x1234"),
        ("big-endian", good.blob(magic=0x9FEB), "big-endian"),
        ("version", good.blob(version=2), "version 2"),
        ("short header", blob[:10], "too short"),
        ("header length", good.blob(hdr_len=8), "header length 0x8"),
        ("header past end", struct.pack("<HBBI", 0xEB9F, 1, 0, 0x1000) + b"\0" * 20,
         "header length 0x1000"),
        ("type past end", good.blob(type_len=0x4000000),
         ".BTF type section (off 0x0, len 0x4000000) runs past the section end"),
        ("strings past end", good.blob(str_len=0x100000), ".BTF string section"),
        ("type len not words", good.blob(type_len=len(b"".join(good.records)) - 2),
         "not a multiple of 4"),
        ("strings not NUL-ended", blob[:-1] + b"x", "NUL"),
    ]
    w = BtfWriter()
    w.raw(31, "", 0, 0)
    cases.append(("unknown kind", w.blob(), "unknown kind 31"))
    w = BtfWriter()
    w.int_("int", 4)
    w.raw("STRUCT", "s", 50, 4, b"\0" * 12)  # claims 50 members, holds 1
    cases.append(("vlen past end", w.blob(), "runs past the type section end"))
    w = BtfWriter()
    w.struct("s", 4, [("m", 99, 0, 0)])
    cases.append(("member type id", w.blob(), "refers to type id 99, but ids run from 1 to 1"))
    w = BtfWriter()
    w.struct("s", 4, [(0x7FFF, 0, 0, 0)])
    cases.append(("member name offset", w.blob(), "name offset 0x7fff, outside the string"))
    w = BtfWriter()
    a = w.typedef("loop_a", w.next_id + 1)
    w.typedef("loop_b", a)
    w.struct("s", 4, [("m", a, 0, 0)])
    cases.append(("typedef cycle in member", w.blob(), "chain longer than 64"))
    w = BtfWriter()
    a = w.typedef("self_t", w.next_id)  # points at itself
    cases.append(("typedef self cycle", w.blob(), "chain longer than 64"))
    w = BtfWriter()
    w.struct("s", 4, [("again", 1, 0, 0)])  # a struct containing itself by value
    cases.append(("struct cycle", w.blob(), "nested deeper than"))
    w = BtfWriter()
    w.array(1, 1, 2)  # an array of itself
    w.struct("s", 4, [("arr", 1, 0, 0)])
    cases.append(("array cycle", w.blob(), "nested deeper than"))
    return cases


@pytest.mark.parametrize("case,blob,message", lies(), ids=[c[0] for c in lies()])
def test_lying_btf_is_an_input_error(case: str, blob: bytes, message: str):
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        t = BtfTypes(blob, LABEL)
        for name in ("s", "self_t", "loop_a", "paravirt_patch_template"):
            t.struct(name)
    assert time.perf_counter() - start < 1.0
    text = str(err.value)
    assert text.startswith(f"{LABEL}: ") and "\n" not in text
    assert message in text, text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_btf_never_escapes_as_another_error(data: st.DataObject):
    blob = bytearray(kernel_like().blob())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        t = BtfTypes(bytes(blob[:cut] if data.draw(st.booleans()) else blob), LABEL)
        for name in ("paravirt_patch_template", "paravirt_patch_site", "anon_t", "pair"):
            layout = t.struct(name)
            if layout is not None:
                list(layout.leaves())
    except InputError:
        pass


# -- the real kernel -----------------------------------------------------------------------

@pytest.mark.realkernel
def test_real_kernel_btf_layouts():
    path = real_kernel()
    start = time.perf_counter()
    with ElfImage(path) as image:
        t = BtfTypes.from_image(image)
        assert t is not None
        tpl = t.struct("paravirt_patch_template")
        elapsed = time.perf_counter() - start
        assert tpl is not None and tpl.size == 672
        assert [(f.name, f.offset) for f in tpl.fields] == [("cpu", 0), ("irq", 240),
                                                            ("mmu", 280), ("lock", 632)]
        leaves = {p: o for p, o, _f in tpl.leaves()}
        assert leaves["irq.save_fl.func"] == 240  # pvops folds the wrapper to "irq.save_fl"
        assert leaves["mmu.lazy_mode.enter"] == 280 + tpl.field("mmu").layout.field(  # type: ignore[union-attr]
            "lazy_mode").offset
        assert all(f.kind == "ptr" and f.size == 8 for _p, _o, f in tpl.leaves())
        site = t.struct("paravirt_patch_site")
        assert site is not None and site.size == 16
        assert [(f.name, f.offset, f.size) for f in site.fields] == [("instr", 0, 8),
                                                                     ("type", 8, 1),
                                                                     ("len", 9, 1)]
        alt = t.struct("alt_instr")
        assert alt is not None and alt.size == 12
    assert elapsed < 1.0, f"BTF lookup took {elapsed:.2f}s"


def test_an_empty_type_section_has_no_types_and_is_no_crash():
    """Found by the fuzzer: type_len 0 (and the string section at offset 0) left no record
    for the index's placeholder to read."""
    good = kernel_like()
    btf = BtfTypes(good.blob(type_len=0, str_off=0), "vmlinux")
    assert btf.count == 0
    assert btf.struct("paravirt_patch_template") is None
