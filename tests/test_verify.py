"""`pvpatch verify` on fixture kernels: memory images built here from what `pvpatch apply` writes.

A fixture "boot" is the image `apply` writes for a configuration; its memory is laid out as a
raw .text dump, QEMU's dump-guest-memory (physical addresses, a VMCOREINFO note or none), or a
kcore-like core (virtual addresses), with a fake KASLR slide. verify must name the
configuration, place the kernel where it was put, apply the slide to the absolute operand of a
site left as built (with the image's relocations and without), name exactly the site changed in
a tampered copy, and refuse another build.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assemble, one_line_error
from corewriter import NO_ADDRESS, Segment, vmcoreinfo, write_core
from legacy_fixtures import legacy_kernel

from pvpatch.image.elf import ElfImage

SLIDE = 0x4000000  # a KASLR slide: a multiple of 2 MiB
PHYS_BASE = 0x1600000
CONFIGS = {"native": ["--backend", "native"], "xen:1": ["--backend", "xen", "--vcpus", "1"],
           "xen:2": ["--backend", "xen", "--vcpus", "2"]}


def pvpatch(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def verify(*args: object) -> tuple[int, dict | None, str]:
    r = pvpatch("verify", *args, "--json")
    return r.returncode, json.loads(r.stdout) if r.returncode in (0, 1) else None, r.stderr


def text_of(elf: Path) -> tuple[int, bytes]:
    with ElfImage(elf) as im:
        sec = im.section(".text")
        return sec.addr, bytes(im.section_data(sec))


def loads(elf: Path) -> list[tuple[int, bytes]]:
    """(vaddr, bytes) of every PT_LOAD with file data: the whole image as booted."""
    with ElfImage(elf) as im:
        return [(p.vaddr, bytes(im.data[p.offset:p.offset + p.filesz]))
                for p in im.segments if p.type == 1 and p.filesz]


def build_id_of(elf: Path) -> str:
    with ElfImage(elf) as im:
        return bytes(im.section_data(im.section(".note.gnu.build-id")))[16:].hex()


def apply(kernel: Path, out: Path, *args: str) -> Path:
    r = pvpatch("apply", kernel, "-o", out, *args)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 6.1-shaped fixture whose start-up code installs Xen's values, with a build-id."""
    path = tmp_path_factory.mktemp("verify") / "vmlinux-fixture"
    shutil.copy(assemble("pv_kernel61.S", 64, defsyms={"XEN_CODE": 1},
                         ld_args=("--build-id",)), path)
    return path


@pytest.fixture(scope="module")
def booted(kernel: Path) -> dict[str, Path]:
    """What each configuration's boot leaves: apply's image for it."""
    return {key: apply(kernel, kernel.with_name(f"booted-{key.replace(':', '')}"), *args)
            for key, args in CONFIGS.items()}


def raw_dump(tmp: Path, elf: Path, name: str = "text.bin") -> tuple[Path, int]:
    addr, code = text_of(elf)
    (tmp / name).write_bytes(code)
    return tmp / name, addr


@pytest.mark.parametrize("key", CONFIGS)
def test_a_raw_text_dump_names_its_configuration(kernel, booted, tmp_path, key):
    dump, addr = raw_dump(tmp_path, booted[key])
    rc, doc, err = verify(kernel, dump, "--raw-start", hex(addr))
    assert rc == 0, err
    assert doc["schema"] == "pvpatch.verify/1"
    assert doc["verdict"]["key"] == key and doc["verdict"]["every_place"]
    assert doc["unexpected"] == [] and doc["placement"]["slide"] == "0x0"
    assert not [c for c in doc["configurations"] if c["key"] != key and c["every_place"]]
    assert doc["places"] == {"pv_site": 13, "trampoline": 1} and doc["freed"] == {}


def test_a_qemu_core_with_vmcoreinfo_places_a_randomised_kernel(kernel, booted, tmp_path):
    """QEMU's dump-guest-memory (physical addresses only) of a guest that handed over its
    VMCOREINFO: KERNELOFFSET is the slide, phys_base where the image lies."""
    segs = [Segment(0, va + SLIDE + PHYS_BASE, data) for va, data in loads(booted["xen:2"])]
    info = vmcoreinfo(OSRELEASE="6.1.0-fixture", **{"BUILD-ID": build_id_of(kernel),
                      "KERNELOFFSET": f"{SLIDE:x}", "NUMBER(phys_base)": f"{PHYS_BASE:x}"})
    rc, doc, err = verify(kernel, write_core(tmp_path / "guest.core", segs, info))
    assert rc == 0, err
    p = doc["placement"]
    assert (p["space"], p["slide"]) == ("physical", hex(SLIDE)) and "KERNELOFFSET" in p["slide_how"]
    assert p["text_at"] == hex(text_of(kernel)[0] + SLIDE + PHYS_BASE)
    assert doc["verdict"]["key"] == "xen:2"
    assert any("build-id" in line for line in doc["identity"])
    assert any("linux_banner" in line for line in doc["identity"])


def test_a_kcore_like_core_gives_the_slide_by_where_text_is(kernel, booted, tmp_path):
    """Virtual addresses and no note (a kcore before 4.19): .text is found at link + slide."""
    segs = [Segment(va + SLIDE, NO_ADDRESS, data) for va, data in loads(booted["native"])]
    rc, doc, err = verify(kernel, write_core(tmp_path / "kcore", segs))
    assert rc == 0, err
    p = doc["placement"]
    assert (p["space"], p["slide"]) == ("virtual", hex(SLIDE)) and doc["verdict"]["key"] == "native"


def test_a_vmcore_is_read_at_the_run_time_addresses_its_note_gives(kernel, booted, tmp_path):
    """A kdump vmcore: the image's ranges with virtual and physical addresses, VMCOREINFO."""
    segs = [Segment(va + SLIDE, va + SLIDE + PHYS_BASE, data)
            for va, data in loads(booted["xen:1"])]
    info = vmcoreinfo(OSRELEASE="6.1.0-fixture", **{"BUILD-ID": build_id_of(kernel),
                      "KERNELOFFSET": f"{SLIDE:x}", "NUMBER(phys_base)": f"{PHYS_BASE:x}"})
    rc, doc, err = verify(kernel, write_core(tmp_path / "vmcore", segs, info))
    assert rc == 0, err
    assert doc["memory_format"].startswith("vmcore")
    assert (doc["placement"]["space"], doc["placement"]["slide"]) == ("virtual", hex(SLIDE))
    assert doc["verdict"]["key"] == "xen:1"


def first_site(kernel: Path) -> dict:
    r = pvpatch("inspect", kernel, "--json", "--sites")
    return next(s for s in json.loads(r.stdout)["sites"] if s["section"] == ".text")


def test_a_tampered_site_is_named_and_nothing_else(kernel, booted, tmp_path):
    dump, addr = raw_dump(tmp_path, booted["xen:2"])
    site = first_site(kernel)
    data = bytearray(dump.read_bytes())
    at = int(site["address"], 16) - addr
    data[at:at + site["length"]] = b"\xcc" * site["length"]
    dump.write_bytes(bytes(data))
    rc, doc, _ = verify(kernel, dump, "--raw-start", hex(addr))
    assert rc == 1 and doc["verdict"]["key"] == "xen:2"
    assert [u["address"] for u in doc["unexpected"]] == [site["address"]]
    u = doc["unexpected"][0]
    assert u["found"] == "cc" * site["length"] and u["op"] == site["op"]
    assert u["expected_text"] and u["found_text"].startswith("int3")


def test_the_slide_is_applied_in_a_tampered_kaslr_core_too(kernel, booted, tmp_path):
    segs = [Segment(va + SLIDE, NO_ADDRESS, data) for va, data in loads(booted["native"])]
    site = first_site(kernel)
    for i, (va, data) in enumerate(loads(booted["native"])):
        off = int(site["address"], 16) - va
        if 0 <= off < len(data):
            patched = bytearray(data)
            patched[off] ^= 0xFF
            segs[i] = Segment(va + SLIDE, NO_ADDRESS, bytes(patched))
    rc, doc, _ = verify(kernel, write_core(tmp_path / "kcore", segs))
    assert rc == 1
    assert [(u["address"], u["link_address"]) for u in doc["unexpected"]] == \
        [(hex(int(site["address"], 16) + SLIDE), site["address"])]


@pytest.mark.parametrize("fields,words", [
    ({"BUILD-ID": "00" * 20}, "another build"),
    ({"OSRELEASE": "6.1.0-other"}, "another kernel")])
def test_a_core_of_another_build_is_refused(kernel, booted, tmp_path, fields, words):
    segs = [Segment(0, va, data) for va, data in loads(booted["native"])]
    info = vmcoreinfo(**{"OSRELEASE": "6.1.0-fixture", "KERNELOFFSET": "0",
                         "NUMBER(phys_base)": "0", **fields})
    r = pvpatch("verify", kernel, write_core(tmp_path / "core", segs, info))
    one_line_error(r, words)


def test_another_kernels_text_is_refused(kernel, tmp_path):
    other = assemble("pv_sites.S", 64, defsyms={"PATCHER": 1})
    dump, addr = raw_dump(tmp_path, apply(Path(other), tmp_path / "other"))
    r = pvpatch("verify", kernel, dump, "--raw-start", hex(addr))
    one_line_error(r, "nowhere in this memory image")


@pytest.mark.parametrize("emit_relocs", [True, False])
def test_a_fake_slide_moves_the_operand_of_a_site_left_as_built(tmp_path, emit_relocs):
    """4.18: the clobber check leaves a pv-thunk call of queued_spin_unlock as built, so its
    `ff 14 25 abs32` holds link + slide in memory; told by .rela.text, or by its form."""
    kernel = Path(legacy_kernel(3, 64, 41800, ("--emit-relocs",) if emit_relocs else (),
                                PV_UNLOCK=1))
    booted = apply(kernel, tmp_path / "booted")
    addr, code = text_of(booted)
    report = json.loads(pvpatch("apply", kernel, "--dry-run", "--json").stdout)
    kept = [s for s in report["sites"] if s["before"] == s["after"]
            and s["before"].startswith("ff1425")]
    assert len(kept) == 1
    off = int(kept[0]["address"], 16) - addr + 3
    moved = bytearray(code)
    moved[off:off + 4] = ((int.from_bytes(code[off:off + 4], "little") + SLIDE)
                          & 0xFFFFFFFF).to_bytes(4, "little")
    (tmp_path / "moved.bin").write_bytes(bytes(moved))
    rc, doc, err = verify(kernel, tmp_path / "moved.bin", "--raw-start", hex(addr + SLIDE))
    assert rc == 0, (err, doc and doc["unexpected"])
    assert doc["placement"]["slide"] == hex(SLIDE)
    by_form = any("known site forms" in n for n in doc["notes"])
    assert by_form is not emit_relocs
    (tmp_path / "unmoved.bin").write_bytes(code)  # the slide not applied: that site differs
    rc, doc, _ = verify(kernel, tmp_path / "unmoved.bin", "--raw-start", hex(addr + SLIDE))
    assert rc == 1 and [u["link_address"] for u in doc["unexpected"]] == [kept[0]["address"]]


def test_before_5_13_the_cpu_class_is_found(tmp_path):
    """5.10 pads with the boot CPU's NOPs: a boot on a K8 is told from one on a P6."""
    kernel = Path(legacy_kernel(4, 64, 51000))
    dump, addr = raw_dump(tmp_path, apply(kernel, tmp_path / "k8", "--cpu", "amd:15:107"))
    rc, doc, err = verify(kernel, dump, "--raw-start", hex(addr))
    assert rc == 0, err
    assert doc["verdict"]["key"] == "native@k8"
    assert {c["cpu_class"] for c in doc["configurations"]} == {"p6", "k8"}
    rc, doc, _ = verify(kernel, dump, "--raw-start", hex(addr), "--cpu", "amd:15:107")
    assert rc == 0 and doc["verdict"]["key"] == "native"
    assert verify(kernel, dump, "--raw-start", hex(addr), "--cpu", "intel:6:94")[0] == 1


def test_static_call_sites_and_trampolines_are_compared(tmp_path):
    kernel = assemble("pv_kernel61.S", 64, defsyms={"STATIC_CALLS": 1})
    dump, addr = raw_dump(tmp_path, apply(kernel, tmp_path / "booted"))
    rc, doc, err = verify(kernel, dump, "--raw-start", hex(addr), "--backend", "native")
    assert rc == 0, err
    assert doc["places"] == {"pv_site": 13, "static_call_site": 6, "trampoline": 5}
    assert doc["freed"] == {"static_call_site": {".init.text": 1}}
    report = json.loads(pvpatch("inspect", kernel, "--json").stdout)
    tramp = int(report["static_calls"]["keys"][0]["trampoline"], 16)
    data = bytearray(dump.read_bytes())
    data[tramp - addr] = 0xCC
    dump.write_bytes(bytes(data))
    rc, doc, _ = verify(kernel, dump, "--raw-start", hex(addr), "--backend", "native")
    assert rc == 1 and [(u["kind"], u["link_address"]) for u in doc["unexpected"]] == \
        [("trampoline", hex(tramp))]


def test_text_compares_the_bytes_no_table_names(kernel, booted, tmp_path):
    from pvpatch.kernel.model import KernelModel

    with KernelModel.open(str(kernel)) as m:
        clean = m.boot_writes.mask.find(0, 8)  # a byte of .text no patch table names
    dump, addr = raw_dump(tmp_path, booted["native"])
    data = bytearray(dump.read_bytes())
    data[clean] ^= 0xFF
    dump.write_bytes(bytes(data))
    rc, doc, _ = verify(kernel, dump, "--raw-start", hex(addr), "--text")
    assert rc == 0  # the pv places all match; the changed byte is reported beside them
    assert doc["outside"]["differing"] == 1
    assert doc["outside"]["runs"][0]["link_address"] == hex(addr + clean)
    rc, doc, _ = verify(kernel, dump, "--raw-start", hex(addr))
    assert rc == 0 and doc["outside"] is None


def test_the_text_report(kernel, booted, tmp_path):
    dump, addr = raw_dump(tmp_path, booted["xen:1"])
    r = pvpatch("verify", kernel, dump, "--raw-start", hex(addr), "--sites")
    assert r.returncode == 0, r.stderr
    assert "verdict   xen, 1 vCPU: matches every place (14 of 14)" in r.stdout
    assert "← verdict, every place" in r.stdout
    assert sum(line.endswith(" matched") for line in r.stdout.splitlines()) == 14


@pytest.mark.parametrize("make,args,words", [
    (lambda p: p.write_bytes(b"\0" * 64), (), "--raw-start"),
    (lambda p: p.write_bytes(b"KDUMP   " + bytes(4096)), (), "makedumpfile -E"),
    (lambda p: p.write_bytes(b"\0" * 64), ("--raw-start", "xyz"), "hex address"),
    (lambda p: None, (), "cannot open"),
])
def test_bad_memory_is_one_line_and_status_2(kernel, tmp_path, make, args, words):
    path = tmp_path / "memory"
    make(path)
    one_line_error(pvpatch("verify", kernel, path, *args), words)


def test_a_vmlinux_given_as_memory_or_a_core_with_raw_start(kernel, booted, tmp_path):
    one_line_error(pvpatch("verify", kernel, booted["native"]), "not a memory image")
    core = write_core(tmp_path / "core", [Segment(0, 0, b"\0" * 4096)])
    one_line_error(pvpatch("verify", kernel, core, "--raw-start", "0x1000"), "raw images only")
