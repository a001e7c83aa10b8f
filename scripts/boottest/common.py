"""Shared pieces of the boot test: cache layout, tools, kernels, the vmlinux's .text and sites."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CACHE = Path(os.environ.get("PVPATCH_CACHE", Path.home() / ".cache" / "pvpatch"))
BOOT_CACHE = CACHE / "boot"
PAGE = 4096

# The Debian packages the boot test installs when their files are missing.
QEMU_PACKAGE = "qemu-system-x86"
XEN_PACKAGE = os.environ.get("PVPATCH_XEN_PACKAGE", "xen-hypervisor-4.17-amd64")


class BootError(Exception):
    """A step of the boot test failed; the message says which and why."""


def say(message: str) -> None:
    print(f"boot-test: {message}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# -- tools -----------------------------------------------------------------------------------


def _apt_install(packages: list[str]) -> None:
    if not packages:
        return
    if os.geteuid() != 0:
        raise BootError(f"missing {', '.join(packages)}; install them as root: apt-get install "
                        f"-y --no-install-recommends {' '.join(packages)}")
    say(f"installing {', '.join(packages)} (apt-get install -y --no-install-recommends)")
    r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise BootError(f"apt-get install {' '.join(packages)} failed:\n{r.stderr[-2000:]}")


def find_xen_gz() -> Path | None:
    """The packaged hypervisor, /boot/xen-<ver>-amd64.gz (the newest if several)."""
    found = sorted(glob.glob("/boot/xen-*-amd64.gz"))
    return Path(found[-1]) if found else None


def ensure_tools(*, xen: bool) -> None:
    """Install QEMU (and the Xen hypervisor, a C compiler) when they are missing."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append(QEMU_PACKAGE)
    if xen and find_xen_gz() is None:
        missing.append(XEN_PACKAGE)
    if shutil.which("gcc") is None:
        missing.append("gcc")
    _apt_install(missing)
    if shutil.which("qemu-system-x86_64") is None:
        raise BootError("qemu-system-x86_64 still not found after installing qemu-system-x86")
    if xen and find_xen_gz() is None:
        raise BootError(f"no /boot/xen-*-amd64.gz after installing {XEN_PACKAGE}")


def tool_versions() -> dict[str, str]:
    out = {}
    try:
        r = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
        out["qemu"] = r.stdout.splitlines()[0] if r.stdout else "?"
    except OSError:
        out["qemu"] = "not installed"
    xen = find_xen_gz()
    out["xen"] = str(xen) if xen else "not installed"
    return out


# -- kernels ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    flavour: str
    release: str
    vmlinux: Path
    vmlinuz: Path

    @property
    def boot_dir(self) -> Path:
        d = BOOT_CACHE / self.release
        d.mkdir(parents=True, exist_ok=True)
        return d


def fetch_kernel(flavour: str) -> Kernel:
    """scripts/fetch-kernel.sh FLAVOUR --with-vmlinuz: the debug vmlinux and bootable vmlinuz.

    FLAVOUR is the script's ``[SUITE:]FLAVOUR``: ``amd64`` (bookworm, as always),
    ``bullseye:amd64``, ``trixie-backports:amd64``, ...; it is kept as given in the boot records.
    """
    r = subprocess.run([str(REPO / "scripts" / "fetch-kernel.sh"), flavour, "--with-vmlinuz"],
                       stdout=subprocess.PIPE, text=True)
    if r.returncode == 3:
        raise BootError(f"no {flavour} kernel: Debian's registry is unreachable or has no such "
                        "package (scripts/fetch-kernel.sh exit 3; see above)")
    if r.returncode or not r.stdout.strip():
        raise BootError(f"scripts/fetch-kernel.sh {flavour} --with-vmlinuz failed "
                        f"(exit {r.returncode}; see above)")
    vmlinux = Path(r.stdout.strip().splitlines()[-1])
    release = release_of(vmlinux)
    vmlinuz = vmlinux.with_name(f"vmlinuz-{release}")
    if not vmlinuz.is_file():
        raise BootError(f"fetch-kernel.sh did not leave {vmlinuz}")
    return Kernel(flavour, release, vmlinux, vmlinuz)


def kernel_from_paths(vmlinux: Path, vmlinuz: Path | None) -> Kernel:
    release = release_of(vmlinux)
    vmlinuz = vmlinuz or vmlinux.with_name(f"vmlinuz-{release}")
    if not vmlinuz.is_file():
        raise BootError(f"no bootable kernel {vmlinuz} (give --vmlinuz)")
    return Kernel("", release, vmlinux, vmlinuz)


def release_of(vmlinux: Path) -> str:
    """The release a kernel file is named for: ``vmlinux-5.10.0-32-amd64``,
    ``vmlinuz-7.3.4+deb13-amd64``, or 7.x's in-package ``.../modules/7.3.4+deb13-amd64/vmlinux``
    (the release is the directory); any other name is its own release."""
    name = vmlinux.name
    for prefix in ("vmlinux-", "vmlinuz-"):
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    if name in ("vmlinux", "vmlinuz", "vmlinuz.unsigned") and vmlinux.parent.name[:1].isdigit():
        return vmlinux.parent.name
    return name


# -- the vmlinux -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TextLayout:
    vaddr: int  # .text start (link address)
    size: int
    paddr: int  # where a nokaslr native boot puts it (from the PT_LOAD's p_paddr)
    offset: int  # file offset


def text_layout(vmlinux: Path) -> TextLayout:
    from pvpatch.image.elf import ElfImage

    with ElfImage(vmlinux) as im:
        sec = im.section(".text")
        if sec is None:
            raise BootError(f"{vmlinux}: no .text section")
        for p in im.segments:
            if p.type == 1 and p.vaddr <= sec.addr and sec.addr + sec.size <= p.vaddr + p.memsz:
                return TextLayout(sec.addr, sec.size, p.paddr + (sec.addr - p.vaddr), sec.offset)
    raise BootError(f"{vmlinux}: no PT_LOAD segment holds .text")


def read_text(vmlinux: Path) -> bytes:
    from pvpatch.image.elf import ElfImage

    with ElfImage(vmlinux) as im:
        return bytes(im.section_data(im.section(".text")))


def _pvpatch_stamp() -> list[tuple[str, int, int]]:
    """The identity of the pvpatch sources (path, size, mtime): a cached inspect report of an
    older pvpatch lacks what a newer one adds (the static calls), so it must not be reused."""
    src = REPO / "src" / "pvpatch"
    return [(str(p.relative_to(src)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(src.rglob("*.py"))]


def load_sites(vmlinux: Path) -> dict:
    """``pvpatch inspect VMLINUX --json``, cached by the file's identity (path, size, mtime)
    and the pvpatch sources'."""
    st = vmlinux.stat()
    key = hashlib.sha256(repr((str(vmlinux.resolve()), st.st_size, st.st_mtime_ns,
                               _pvpatch_stamp())).encode())
    path = BOOT_CACHE / "sites" / f"{release_of(vmlinux)}-{key.hexdigest()[:12]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    say(f"pvpatch inspect {vmlinux} --json")
    r = subprocess.run([sys.executable, "-m", "pvpatch", "inspect", str(vmlinux), "--json",
                        "--sites"],
                       stdout=subprocess.PIPE, text=True, cwd=REPO)
    if r.returncode:
        raise BootError(f"pvpatch inspect {vmlinux} --json failed (exit {r.returncode})")
    data = json.loads(r.stdout)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return data


def text_sites(vmlinux: Path) -> list[dict]:
    """The .text pv sites, each with an int ``addr``, in address order."""
    sites = [dict(s, addr=int(s["address"], 16)) for s in load_sites(vmlinux)["sites"]
             if s["section"] == ".text"]
    return sorted(sites, key=lambda s: s["addr"])


def text_static_calls(vmlinux: Path) -> list[dict]:
    """The .text pv static-call sites and pv trampolines (``static_calls`` of the inspect
    report), each with an int ``addr``, a ``length``, an ``op`` naming its key and a
    ``kind`` (``site`` or ``trampoline``), in address order."""
    report = load_sites(vmlinux).get("static_calls") or {}
    text = text_layout(vmlinux)
    out = [dict(s, addr=int(s["address"], 16), op=f"static_call.{s['key']}", kind="site")
           for s in report.get("sites", []) if s["section"] == ".text"]
    for k in report.get("keys", []):
        addr = int(k["trampoline"], 16) if k.get("trampoline") else None
        if addr is not None and text.vaddr <= addr < text.vaddr + text.size:
            out.append({"addr": addr, "length": k["trampoline_size"], "kind": "trampoline",
                        "op": f"static_call_trampoline.{k['name']}",
                        "function": f"__SCT__{k['name']}"})
    return sorted(out, key=lambda s: s["addr"])
