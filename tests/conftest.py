"""Shared test helpers: build fixtures from assembly, find real kernels.

Fixtures are assembled at test time from ``fixtures/*.S`` with GNU as/ld, so no binary blobs are
committed and every fixture's bytes can be read in its source.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
BUILD = FIXTURES / "build"
CACHE = Path(os.environ.get("PVPATCH_CACHE", Path.home() / ".cache" / "pvpatch"))


def assemble(source: str, bits: int = 64, *, ld_args: tuple[str, ...] = (),
             defsyms: dict[str, int] | None = None, link: bool = True,
             name: str | None = None) -> Path:
    """Assemble (and link) ``fixtures/<source>`` for i386 or x86-64; cached by content.

    ``defsyms`` become ``--defsym`` assembler options so one source yields several variants.
    """
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("GNU as/ld not installed: cannot build assembly fixtures")
    src = FIXTURES / source
    args = [f"--{bits}"] + [f"--defsym={k}={v}" for k, v in sorted((defsyms or {}).items())]
    included = b"".join(p.read_bytes() for p in sorted(FIXTURES.glob("*.S")) if p != src)
    key = hashlib.sha256(src.read_bytes() + included + repr((args, ld_args, link)).encode()
                         ).hexdigest()[:12]  # the other sources too: a fixture may .include them
    BUILD.mkdir(parents=True, exist_ok=True)
    out = BUILD / f"{name or src.stem}-{bits}-{key}{'' if link else '.o'}"
    if out.exists():
        return out
    obj = out.with_suffix(".o.tmp")
    subprocess.run(["as", *args, "-I", str(FIXTURES), "-o", str(obj), str(src)], check=True)
    if link:
        emul = "elf_i386" if bits == 32 else "elf_x86_64"
        tmp = out.with_suffix(".tmp")
        subprocess.run(["ld", "-m", emul, "-static", "--no-warn-rwx-segments", *ld_args,
                        "-o", str(tmp), str(obj)], check=True)
        tmp.rename(out)
        obj.unlink()
    else:
        obj.rename(out)
    return out


# the release without its flavour: 5.10.0-32, 6.1.0-56, 6.12.117+deb12, 7.3.4+deb13, 6.12.9+bpo
_RELEASE_BASE = re.compile(r"^(\d+\.\d+)[\d.]*(-\d+|\+[a-z]+\d*)$")


def _release_order(base: str) -> tuple[int, ...]:
    """Numeric order, so that 6.1.0-57 is newer than 6.1.0-9."""
    return tuple(int(n) for n in re.findall(r"\d+", base))


def real_kernel(flavour: str = "cloud-amd64", series: str = "6.1", kind: str = "vmlinux") -> Path:
    """A fetched Debian kernel of exactly this flavour and series, or skip loudly.

    ``vmlinux-6.1.0-56-amd64`` is flavour ``amd64`` of series ``6.1``, and so are
    ``vmlinux-5.10.0-32-amd64`` of ``5.10`` and ``vmlinux-7.3.4+deb13-amd64`` of ``7.3``; the
    cloud kernel is not an ``amd64`` one, and 6.12 is not 6.1. ``kind`` is ``vmlinux`` or
    ``vmlinuz``. Of several releases, the newest.
    """
    found = cached_kernels(flavour, kind).get(series)
    if not found:
        pytest.skip(f"REAL-KERNEL TIER SKIPPED: no Debian {series} {flavour} {kind} in "
                    f"{CACHE / 'kernels'} (run `make fetch` with access to Debian's package "
                    "registry)")
    return found[0]


def cached_kernels(flavour: str = "amd64", kind: str = "vmlinux") -> dict[str, list[Path]]:
    """Every cached kernel of exactly this flavour, by series, newest first (no skip: for
    tests that also judge whatever other releases a cache happens to hold)."""
    kdir = CACHE / "kernels"
    found: dict[str, list[tuple[tuple[int, ...], Path]]] = {}
    for path in kdir.glob(f"{kind}-*-{flavour}") if kdir.is_dir() else []:
        base = path.name[len(kind) + 1:-len(flavour) - 1]
        m = _RELEASE_BASE.match(base)
        if m:
            found.setdefault(m.group(1), []).append((_release_order(base), path))
    return {series: [p for _o, p in sorted(paths, reverse=True)]
            for series, paths in found.items()}


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    """The bad-input contract: exit status 2, one line on stderr naming the problem."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0]


def sha256(path: str | Path) -> str:
    """The file's digest: what every "the input is never modified" test compares."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pvpatch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """The installed command line, in a process of its own (exit status and stderr as a user
    sees them)."""
    import sys

    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=timeout)
