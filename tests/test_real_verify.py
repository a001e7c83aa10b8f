"""Real-kernel tier: `pvpatch verify` against real boots of Debian 5.10, 6.1, 6.12 and 7.3.

The boots are the boot test's (scripts/boottest/boot.py, docs/boot-test.md), cached per
release under <cache>/boot/<release>/, outside git:

- ``kaslr.core``: a native boot with KASLR and ``-device vmcoreinfo``, all 1 GiB of guest RAM
  saved by QEMU's dump-guest-memory (ELF, physical addresses); ``kaslr.json`` holds the vCPUs'
  RIPs, an independent witness of the slide (``boot.py --mode kaslr``);
- ``xen1.text.bin``, ``xen2.text.bin``: a Xen PV dom0's .text with 1 and 2 vCPUs, located page
  by page in machine memory, starting at the .text link address (``--mode xen1/xen2``);
- ``kcore.core``: the head and kernel-image segment of a KASLR guest's own /proc/kcore, copied
  out by its /init (``--mode kcore``).

Each verdict must be the boot it was; a copy with one site overwritten must name exactly that
site; another kernel's dump must be refused. A missing dump skips loudly, saying how to make it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE, one_line_error, real_kernel
from corewriter import Segment, write_core

from pvpatch.image.elf import ElfImage
from pvpatch.kernel.model import KernelModel

pytestmark = pytest.mark.realkernel
SERIES = ("5.10", "6.1", "6.12", "7.3")
FIXED_NOPS = {"6.1", "6.12", "7.3"}  # 5.13+: the CPU does not choose the NOPs


def pvpatch(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def verify(*args: object) -> tuple[int, dict | None, str]:
    r = pvpatch("verify", *args, "--json")
    return r.returncode, json.loads(r.stdout) if r.returncode in (0, 1) else None, r.stderr


def dump(series: str, name: str) -> tuple[Path, Path, dict]:
    """(vmlinux, the dump, its boot metadata), or skip loudly."""
    vmlinux = real_kernel("amd64", series)
    release = vmlinux.name.removeprefix("vmlinux-")
    path = CACHE / "boot" / release / name
    meta_path = path.with_name(name.split(".", 1)[0] + ".json")
    if not path.is_file() or not meta_path.is_file():
        mode = name.split(".", 1)[0]
        pytest.skip(f"REAL-BOOT TIER SKIPPED: no {path} (make it with scripts/boottest/boot.py "
                    f"--vmlinux {vmlinux} --mode {mode}; PVPATCH_CACHE picks the cache)")
    return vmlinux, path, json.loads(meta_path.read_text())


def cpu_of(meta: dict) -> list[str]:
    """``--cpu`` for the CPU QEMU showed the guest (older boot records lack it: 5.13+ only)."""
    cpu = meta.get("guest_cpu", {}).get("pvpatch_cpu")
    return ["--cpu", cpu] if cpu else []


def nth_text_site(vmlinux: Path, n: int) -> tuple[int, int, str]:
    with KernelModel.open(str(vmlinux)) as m:
        s = [s for s in m.sites.sites if s.section == ".text"][n]
        return s.address, s.length, s.op


@pytest.mark.parametrize("series", SERIES)
def test_a_kaslr_core_is_native_at_the_slide_its_rips_show(series):
    vmlinux, core, meta = dump(series, "kaslr.core")
    rc, doc, err = verify(vmlinux, core)
    assert rc == 0, err
    v, p = doc["verdict"], doc["placement"]
    assert v["every_place"] and v["key"] == ("native" if series in FIXED_NOPS else "native@k8")
    slide = int(p["slide"], 16)
    assert slide and slide % (2 << 20) == 0 and p["space"] == "physical"
    with ElfImage(vmlinux) as im:  # a vCPU sits in the idle loop: its RIP, less the slide
        where = [im.symbols.describe(int(r["RIP"], 16) - slide) for r in meta["registers"]]
    assert any("halt" in w or "idle" in w for w in where), where
    assert any(line.startswith("build-id ") for line in doc["identity"])


@pytest.mark.parametrize("series", SERIES)
def test_a_guests_own_proc_kcore_is_native_at_its_noted_slide(series):
    """What `pvpatch verify VMLINUX /proc/kcore` reads inside the guest, copied out by its
    /init (boot.py --mode kcore): the note's KERNELOFFSET, the text at its runtime address."""
    vmlinux, core, meta = dump(series, "kcore.core")
    rc, doc, err = verify(vmlinux, core)
    assert rc == 0, err
    p = doc["placement"]
    assert doc["memory_format"].startswith("a copy of /proc/kcore")
    assert p["space"] == "virtual" and "VMCOREINFO note" in p["slide_how"]
    assert doc["verdict"]["key"] == ("native" if series in FIXED_NOPS else "native@k8")
    slide = int(p["slide"], 16)
    with ElfImage(vmlinux) as im:
        where = [im.symbols.describe(int(r["RIP"], 16) - slide) for r in meta["registers"]]
    assert any("halt" in w or "idle" in w for w in where), where


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("mode", ["xen1", "xen2"])
def test_a_xen_dom0_dump_is_xen_with_its_vcpus(series, mode):
    vmlinux, text, meta = dump(series, f"{mode}.text.bin")
    start = meta["text"]["vaddr"]
    rc, doc, err = verify(vmlinux, text, "--raw-start", start, *cpu_of(meta))
    assert rc == 0, err
    assert doc["verdict"]["key"] == f"xen:{mode[-1]}" and doc["verdict"]["every_place"]
    if series not in FIXED_NOPS:  # without --cpu the K8 class is found
        rc, doc, err = verify(vmlinux, text, "--raw-start", start)
        assert rc == 0 and doc["verdict"]["key"] == f"xen:{mode[-1]}@k8", err


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("mode", ["xen1", "xen2"])
def test_a_tampered_xen_dump_names_that_site_and_nothing_else(series, mode, tmp_path):
    vmlinux, text, meta = dump(series, f"{mode}.text.bin")
    start = int(meta["text"]["vaddr"], 16)
    addr, length, op = nth_text_site(vmlinux, 500)
    copy = tmp_path / f"{mode}.text.bin"
    data = bytearray(text.read_bytes())
    data[addr - start:addr - start + length] = b"\xcc" * length
    copy.write_bytes(bytes(data))
    rc, doc, _ = verify(vmlinux, copy, "--raw-start", hex(start), *cpu_of(meta))
    assert rc == 1 and doc["verdict"]["key"] == f"xen:{mode[-1]}"
    assert [(u["address"], u["op"]) for u in doc["unexpected"]] == [(hex(addr), op)]


@pytest.mark.parametrize("series", SERIES)
def test_a_tampered_kaslr_core_names_that_site_at_its_runtime_address(series, tmp_path):
    vmlinux, core, _meta = dump(series, "kaslr.core")
    rc, doc, err = verify(vmlinux, core)
    assert rc == 0, err
    slide, text_at = int(doc["placement"]["slide"], 16), int(doc["placement"]["text_at"], 16)
    addr, length, op = nth_text_site(vmlinux, 1000)
    with ElfImage(vmlinux) as im:
        phys = text_at + addr - im.section(".text").addr
    copy = tmp_path / "kaslr.core"
    try:
        shutil.copyfile(core, copy)
        offset = _file_offset(copy, phys)
        with open(copy, "r+b") as f:
            f.seek(offset)
            f.write(b"\xcc" * length)
        rc, doc, _ = verify(vmlinux, copy)
        assert rc == 1
        assert [(u["address"], u["link_address"], u["op"]) for u in doc["unexpected"]] == \
            [(hex(addr + slide), hex(addr), op)]
    finally:
        copy.unlink(missing_ok=True)


def _file_offset(core: Path, phys: int) -> int:
    from pvpatch.image.memory import open_memory

    with open_memory(str(core)) as mem:
        off = mem.physical.locate(phys)
    assert off is not None
    return off


def test_another_kernels_dumps_are_refused():
    vmlinux, core, _ = dump("6.1", "kaslr.core")
    other = real_kernel("amd64", "6.12")
    one_line_error(pvpatch("verify", other, core), "another build")
    old = sorted((CACHE / "boot").glob("6.1.0-*-amd64/native.text.bin"))
    old = [p for p in old if p.parent.name != vmlinux.name.removeprefix("vmlinux-")]
    if not old:
        pytest.skip(f"REAL-BOOT TIER SKIPPED: no other 6.1 release's native.text.bin under "
                    f"{CACHE / 'boot'}")
    one_line_error(pvpatch("verify", vmlinux, old[0], "--raw-start", "0xffffffff81000000"),
                   "nowhere in this memory image")


def test_xen_machine_memory_in_no_order_is_located_page_by_page(tmp_path):
    """A dom0's .text in two pieces, swapped, amid noise, as one physical range of a core
    (with its linux_banner, which the kernel's memory holds somewhere)."""
    vmlinux, text, _meta = dump("6.1", "xen1.text.bin")
    code = text.read_bytes()
    half = len(code) // 2 // 4096 * 4096
    ram = bytearray(os.urandom(48 << 20))
    ram[0x100000:0x100000 + len(code) - half] = code[half:]
    ram[0x1A00000:0x1A00000 + half] = code[:half]
    with KernelModel.open(str(vmlinux)) as m:
        banner = m.version.banner.encode()
    ram[0x2F00000:0x2F00000 + len(banner)] = banner
    core = write_core(tmp_path / "machine.core", [Segment(0, 0, bytes(ram))])
    rc, doc, err = verify(vmlinux, core, "--backend", "xen", "--vcpus", "1")
    assert rc == 0, err
    assert doc["placement"]["space"] == "machine frames" and doc["verdict"]["key"] == "xen:1"
