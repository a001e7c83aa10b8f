#!/usr/bin/env python3
"""Boot a kernel under QEMU (TCG) and save the ``.text`` it runs with, after it patched itself.

Modes:
  native  bare QEMU: -kernel vmlinuz -initrd initramfs, "nokaslr"; the kernel runs at its link
          address, so .text is at the physical address its PT_LOAD's p_paddr gives; that range
          is saved with pmemsave.
  xen1    Xen PV dom0 with 1 vCPU (dom0_max_vcpus=1), xen2 with 2: Xen is QEMU's multiboot
          kernel, vmlinuz and the initramfs its modules. Guest RAM is saved whole and the
          dom0's .text found in it page by page (locate.py).
  kaslr   bare QEMU as native, but with KASLR (no "nokaslr") and -device vmcoreinfo; all guest
          RAM is saved with dump-guest-memory as an ELF core (physical addresses), as
          `virsh dump --memory-only` writes one: <mode>.core, for `pvpatch verify` to place.
  kcore   as kaslr, but the guest's /init copies its own /proc/kcore out (head and kernel
          image, through QEMU's debugcon; kcore.py): kcore.core, what `pvpatch verify VMLINUX
          /proc/kcore` would read inside the guest.

The guest is done patching when /init prints its marker. Results go to
<cache>/boot/<release>/<mode>.text.bin (the .text image, starting at the .text link address),
<mode>.json (metadata) and <mode>.serial.log; they are reused unless --refresh. A QEMU -cpu
other than the mode's default (qemu64 native, max,-smap,-smep under Xen) is part of the name:
<mode>@<cpu>.text.bin. The metadata records the CPU the guest was shown (vendor, family,
model, read from QEMU) and the matching `pvpatch --cpu`, which kernels before 5.13 need.

    scripts/boottest/boot.py --flavour amd64 --mode xen2 [--refresh]
    scripts/boottest/boot.py --vmlinux V --vmlinuz Z --mode native
    scripts/boottest/boot.py --vmlinux V --vmlinuz Z --mode native --cpu EPYC
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boottest.common import (BOOT_CACHE, BootError, Kernel, ensure_tools, fetch_kernel,  # noqa: I001
                             find_xen_gz, kernel_from_paths, now_iso, read_text, say, text_layout,
                             text_sites, text_static_calls, tool_versions, write_json)
from boottest.initramfs import MARKER, build_initramfs
from boottest.kcore import reassemble
from boottest.locate import locate_text
from boottest.masks import account, build_mask
from boottest.qemu import Qemu
from pvpatch.cpu import BY_CPUID

SCHEMA = "pvpatch.boottest/1"
MODES = ("native", "xen1", "xen2", "kaslr", "kcore")
NATIVE_CMDLINE = "nokaslr console=ttyS0 panic=-1"
KASLR_CMDLINE = "console=ttyS0 panic=-1"
DOM0_CMDLINE = "console=hvc0 earlyprintk=xen nokaslr"
XEN_CMDLINE = "console=com1 com1=115200,8n1 dom0_mem=512M dom0_max_vcpus={vcpus} noreboot"
GUEST_MB = 1024
SMP = 2
XEN_CPU = "max,-smap,-smep"  # Xen under TCG needs SMAP/SMEP off (see docs)
DEFAULT_CPU = {"native": "qemu64", "xen1": XEN_CPU, "xen2": XEN_CPU, "kaslr": "qemu64",
               "kcore": "qemu64"}


def xen_image() -> Path:
    """QEMU's multiboot loader cannot read xen.gz: decompress it once into the cache."""
    gz = find_xen_gz()
    if gz is None:
        raise BootError("no /boot/xen-*-amd64.gz")
    out = BOOT_CACHE / "xen" / gz.name.removesuffix(".gz")
    if out.is_file() and out.stat().st_mtime >= gz.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with gzip.open(gz) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp, out)
    return out


def stem(mode: str, cpu: str | None = None) -> str:
    """``native``, or ``native@EPYC`` for a boot on another QEMU CPU model."""
    if cpu is None or cpu == DEFAULT_CPU[mode]:
        return mode
    return f"{mode}@{re.sub(r'[^A-Za-z0-9.+_-]', '_', cpu)}"


def paths(kernel: Kernel, mode: str, cpu: str | None = None) -> tuple[Path, Path, Path]:
    """The dump (``.text.bin``; a kaslr boot's ``.core``), its metadata and serial log."""
    d, name = kernel.boot_dir, stem(mode, cpu)
    dump = d / (f"{name}.core" if mode in ("kaslr", "kcore") else f"{name}.text.bin")
    return dump, d / f"{name}.json", d / f"{name}.serial.log"


def cached(kernel: Kernel, mode: str, cpu: str | None = None) -> dict | None:
    image, meta_path, _ = paths(kernel, mode, cpu)
    if not (image.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if meta.get("schema") != SCHEMA or meta.get("vmlinux_size") != kernel.vmlinux.stat().st_size:
        return None
    if meta.get("cpu") != (cpu or DEFAULT_CPU[mode]):  # made by a harness without per-CPU names
        return None
    return meta


def guest_cpu(q: Qemu) -> dict:
    """What CPUID shows the guest, asked of QEMU (a Xen PV dom0 logs none of it), and the
    ``pvpatch --cpu`` that names it."""
    path = q.qmp("query-cpus-fast")[0]["qom-path"]
    got = {p: q.qmp("qom-get", path=path, property=p)
           for p in ("vendor", "family", "model", "stepping", "model-id")}
    info = BY_CPUID.get(str(got["vendor"]).strip())
    got["pvpatch_cpu"] = None if info is None else f"{info.name}:{got['family']}:{got['model']}"
    return got


def qemu_args(kernel: Kernel, mode: str, initrd: Path, cpu: str | None) -> tuple[list[str], dict]:
    common = ["-machine", "q35", "-accel", "tcg", "-m", str(GUEST_MB), "-smp", str(SMP)]
    cpu = cpu or DEFAULT_CPU[mode]
    if mode == "native":
        return ([*common, "-cpu", cpu, "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
                 "-append", NATIVE_CMDLINE],
                {"cpu": cpu, "kernel_cmdline": NATIVE_CMDLINE})
    if mode in ("kaslr", "kcore"):
        extra = ["-debugcon", f"file:{kernel.boot_dir / 'kcore.stream'}"] if mode == "kcore" \
            else []
        return ([*common, "-cpu", cpu, "-device", "vmcoreinfo", *extra,
                 "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
                 "-append", KASLR_CMDLINE],
                {"cpu": cpu, "kernel_cmdline": KASLR_CMDLINE})
    vcpus = int(mode.removeprefix("xen"))
    xen_cmd = XEN_CMDLINE.format(vcpus=vcpus)
    for p in (kernel.vmlinuz, initrd):
        if "," in str(p) or " " in str(p):
            raise BootError(f"{p}: QEMU's multiboot module list cannot take ',' or ' ' in paths")
    modules = f"{kernel.vmlinuz} {DOM0_CMDLINE},{initrd}"
    return ([*common, "-cpu", cpu, "-kernel", str(xen_image()), "-append", xen_cmd,
             "-initrd", modules],
            {"cpu": cpu, "xen_cmdline": xen_cmd, "kernel_cmdline": DOM0_CMDLINE,
             "dom0_vcpus": vcpus})


def boot(kernel: Kernel, mode: str, *, refresh: bool = False, timeout: float = 300,
         keep_ram: bool = False, cpu: str | None = None) -> dict:
    """Boot, dump and save one mode; return its metadata (from the cache unless ``refresh``)."""
    if mode not in MODES:
        raise BootError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    name = stem(mode, cpu)
    if not refresh and (meta := cached(kernel, mode, cpu)):
        say(f"{kernel.release} {name}: cached ({meta['date']}; --refresh reboots)")
        return meta
    ensure_tools(xen=mode.startswith("xen"))
    image_path, meta_path, log_path = paths(kernel, mode, cpu)
    text = text_layout(kernel.vmlinux)
    with open(kernel.vmlinux, "rb") as f:
        bits = 32 if f.read(5)[4] == 1 else 64  # e_ident[EI_CLASS]
    initrd = build_initramfs(bits, kcore=mode == "kcore")
    args, info = qemu_args(kernel, mode, initrd, cpu)
    ram_path = kernel.boot_dir / f"{name}.ram.bin"
    t0 = time.monotonic()
    with Qemu(args, log_path) as q:
        info["guest_cpu"] = guest_cpu(q)
        boot_s = q.wait_for(MARKER, timeout)
        say(f"{kernel.release} {name}: {MARKER} after {boot_s:.1f} s")
        t1 = time.monotonic()
        if mode == "native":
            q.pmemsave(text.paddr, text.size, image_path.with_suffix(".tmp"))
            how = (f"pmemsave of guest-physical {text.paddr:#x}+{text.size:#x} (.text's "
                   f"PT_LOAD p_paddr; nokaslr)")
        elif mode == "kaslr":
            q.qmp("stop")
            info["registers"] = q.registers()  # the idle vCPUs' RIP: the slide, independently
            q.dump_guest_memory(image_path.with_suffix(".tmp"))
            how = ("dump-guest-memory of all guest RAM (ELF core, physical addresses, no "
                   "paging); KASLR on, -device vmcoreinfo")
        elif mode == "kcore":
            q.qmp("stop")
            info["registers"] = q.registers()
            stream = kernel.boot_dir / "kcore.stream"
            info["kcore"] = reassemble(stream.read_bytes(), image_path.with_suffix(".tmp"))
            stream.unlink()
            how = ("the guest's /proc/kcore (its head and kernel-image segment), copied out "
                   "by /init through debugcon; KASLR on")
        else:
            q.pmemsave(0, GUEST_MB << 20, ram_path)
            how = f"pmemsave of guest RAM 0+{GUEST_MB << 20:#x}, .text located by content"
        dump_s = time.monotonic() - t1
    meta = {"schema": SCHEMA, "release": kernel.release, "flavour": kernel.flavour,
            "mode": mode, "vmlinux": str(kernel.vmlinux),
            "vmlinux_size": kernel.vmlinux.stat().st_size, "vmlinuz": str(kernel.vmlinuz),
            "initrd": str(initrd), "marker": MARKER,
            "text": {"vaddr": hex(text.vaddr), "size": text.size, "paddr": hex(text.paddr)},
            "how": how, "date": now_iso(), "qemu_command": q.argv,
            **info, "tools": tool_versions(), "boot_seconds": round(boot_s, 1),
            "dump_seconds": round(dump_s, 1)}
    if mode in ("native", "kaslr", "kcore"):
        image_path.with_suffix(".tmp").replace(image_path)
    else:
        t2 = time.monotonic()
        try:
            meta["location"] = locate_text(kernel.vmlinux, ram_path, image_path)
        finally:
            if not keep_ram:
                ram_path.unlink(missing_ok=True)
        meta["locate_seconds"] = round(time.monotonic() - t2, 1)
        if keep_ram:
            meta["ram_dump"] = str(ram_path)
        if meta["location"]["missing_pages"]:
            say(f"{kernel.release} {name}: {len(meta['location']['missing_pages'])} .text "
                f"pages not found in guest RAM (zero-filled; listed in {meta_path})")
    if mode in ("kaslr", "kcore"):
        meta["placement"] = place_core(kernel, image_path)
    else:
        meta["changes"] = sanity_check(kernel, image_path, meta)
    meta["total_seconds"] = round(time.monotonic() - t0, 1)
    write_json(meta_path, meta)
    say(f"{kernel.release} {name}: saved {image_path} ({meta['total_seconds']} s in all)")
    return meta


def place_core(kernel: Kernel, core: Path) -> dict:
    """Where pvpatch finds the kernel in the core (the library's placement: the accounting of
    sanity_check knows nothing of the slide's relocations); refuses a core that is not this
    kernel, as sanity_check does."""
    from pvpatch.errors import InputError
    from pvpatch.image.memory import open_memory
    from pvpatch.kernel.model import KernelModel
    from pvpatch.verify.place import place

    try:
        with KernelModel.open(str(kernel.vmlinux)) as model, open_memory(str(core)) as mem:
            p = place(model, mem)
    except InputError as e:
        raise BootError(f"{core}: {e}") from None
    out = p.outside
    return {"slide": hex(p.slide), "slide_how": p.slide_how, "space": p.space,
            "text_at": None if p.text_at is None else hex(p.text_at), "text_how": p.text_how,
            "vmcoreinfo_note": mem.vmcoreinfo is not None, "identity": p.identity,
            "outside_differing": None if out is None else out.differing}


def sanity_check(kernel: Kernel, image_path: Path, meta: dict) -> dict:
    """Account for every byte boot changed; refuse a dump that is not this kernel, patched."""
    text = text_layout(kernel.vmlinux)
    sites = text_sites(kernel.vmlinux)
    orig = read_text(kernel.vmlinux)
    boot_img = image_path.read_bytes()
    missing = {int(p["page"]) for p in meta.get("location", {}).get("missing_pages", [])}
    mask = build_mask(kernel.vmlinux, text, sites, text_static_calls(kernel.vmlinux))
    changes = account(orig, boot_img, mask,
                      (lambda off: off // 4096 not in missing) if missing else None)
    runs = changes.pop("unexplained_runs")
    changes["unexplained_runs"] = [{"vaddr": hex(text.vaddr + off), "bytes": n}
                                   for off, n in runs[:200]]
    offs = [(s["addr"] - text.vaddr, s["length"]) for s in sites]
    same = sum(1 for o, n in offs if orig[o:o + n] == boot_img[o:o + n])
    changes["pv_sites_unchanged_by_boot"] = same
    if changes["unexplained_bytes"] > max(4096, text.size // 100):
        raise BootError(f"{image_path}: {changes['unexplained_bytes']} bytes differ from the "
                        f"vmlinux outside every patch table: not this kernel's .text?")
    if sites and same == len(sites):
        raise BootError(f"{image_path}: no pv site was patched: not a booted kernel?")
    return changes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--flavour", help="Debian [SUITE:]FLAVOUR to fetch (amd64, cloud-amd64, "
                    "bullseye:amd64, trixie-backports:amd64; see scripts/fetch-kernel.sh)")
    ap.add_argument("--vmlinux", type=Path, help="a debug vmlinux (instead of --flavour)")
    ap.add_argument("--vmlinuz", type=Path, help="its bootable image (default: next to it)")
    ap.add_argument("--mode", choices=MODES, action="append", required=True,
                    help="repeatable")
    ap.add_argument("--refresh", action="store_true", help="reboot even if cached")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the marker")
    ap.add_argument("--keep-ram", action="store_true", help="keep Xen guests' raw RAM dumps")
    ap.add_argument("--cpu", help="QEMU -cpu (default qemu64 native, max,-smap,-smep Xen); "
                    "another CPU is cached as <mode>@<cpu>")
    a = ap.parse_args()
    try:
        if a.vmlinux:
            kernel = kernel_from_paths(a.vmlinux, a.vmlinuz)
        elif a.flavour:
            kernel = fetch_kernel(a.flavour)
        else:
            ap.error("give --flavour or --vmlinux")
        for mode in a.mode:
            meta = boot(kernel, mode, refresh=a.refresh, timeout=a.timeout,
                        keep_ram=a.keep_ram, cpu=a.cpu)
            print(paths(kernel, mode, a.cpu)[0], f"boot {meta['boot_seconds']} s; guest CPU "
                  f"{meta.get('guest_cpu', {}).get('pvpatch_cpu')}")
    except BootError as e:
        print(f"boot: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
