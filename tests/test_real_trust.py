"""Real-kernel tier: inputs of another build refused, already-patched images recognised.

Across Debian's 6.1 and 6.12 kernels: another kernel's image (diff), BTF (--btf) and System.map
(--system-map, made with nm from its .symtab) and an earlier series as --baseline are each one
line on stderr and exit status 2; a copy patched by `pvpatch apply` (300–600 MB, written to
tmp_path and deleted by the test that made it) is refused by apply, one finding in check, and
said by inspect. The inputs' sha256 never changes. Facts of the images are read from them (or
from binutils), never written here.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import one_line_error, pvpatch, real_kernel, sha256

pytestmark = pytest.mark.realkernel


SEEN: dict[Path, str] = {}  # every real input a test used → its sha256 before first use


def kernel(flavour: str, series: str, kind: str = "vmlinux") -> Path:
    """``conftest.real_kernel``, remembering the file's digest for :func:`inputs_untouched`."""
    path = real_kernel(flavour, series, kind)
    if path not in SEEN:
        SEEN[path] = sha256(path)
    return path


@pytest.fixture(autouse=True)
def inputs_untouched() -> Iterator[None]:
    """After each test, every real input any test used is still byte for byte the same."""
    yield
    for path, digest in SEEN.items():
        assert sha256(path) == digest, f"{path} changed"


@pytest.fixture(scope="module")
def k61() -> Path:
    return kernel("cloud-amd64", "6.1")


@pytest.fixture(scope="module")
def k612() -> Path:
    return kernel("cloud-amd64", "6.12")


@contextlib.contextmanager
def patched_copy(kernel: Path, tmp_path: Path, *options: str) -> Iterator[Path]:
    """`pvpatch apply`'s output for ``kernel``, removed afterwards whatever happens."""
    out = tmp_path / f"{kernel.name}.patched"
    try:
        r = pvpatch("apply", str(kernel), "-o", str(out), *options)
        assert r.returncode == 0, r.stderr
        yield out
    finally:
        out.unlink(missing_ok=True)


def readelf_build_id(path: Path) -> str | None:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True).stdout
    m = re.search(r"Build ID: ([0-9a-f]+)", out)
    return m.group(1) if m else None


# -- the build-id ------------------------------------------------------------------------------

@pytest.mark.parametrize("flavour,series", [("cloud-amd64", "6.1"), ("cloud-amd64", "6.12"),
                                            ("686-pae", "6.1")])
def test_vmlinux_and_vmlinuz_of_one_build_share_the_build_id(flavour, series):
    vmlinux = kernel(flavour, series)
    vmlinuz = kernel(flavour, series, "vmlinuz")
    want = readelf_build_id(vmlinux)
    assert want
    for path in (vmlinux, vmlinuz):
        d = json.loads(pvpatch("inspect", str(path), "--json").stdout)
        assert d["build_id"] == want, path
    assert pvpatch("diff", str(vmlinux), str(vmlinuz)).returncode == 0


# -- another build -------------------------------------------------------------------------------

def test_diff_of_two_kernels_is_refused(k61, k612):
    for a, b in ((k61, k612), (k612, k61)):
        one_line_error(pvpatch("diff", str(a), str(b)), str(a), str(b), "build-id",
                       readelf_build_id(a), readelf_build_id(b))


def test_diff_of_two_builds_of_one_series_is_refused(k61):
    other = kernel("amd64", "6.1")  # the generic flavour: another build of 6.1
    one_line_error(pvpatch("diff", str(k61), str(other)), str(k61), str(other), "build-id")


def _raw_btf(kernel: Path, dest: Path) -> Path:
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.BTF", str(kernel), str(dest)],
                   check=True)
    return dest


@pytest.mark.parametrize("cmd", ["inspect", "check", "apply"])
def test_btf_of_another_kernel_is_refused(k61, k612, tmp_path, cmd):
    btf = _raw_btf(k612, tmp_path / "btf-6.12")
    extra = ["--dry-run"] if cmd == "apply" else []
    for image in (k61, kernel("cloud-amd64", "6.1", "vmlinuz")):
        one_line_error(pvpatch(cmd, str(image), "--btf", str(btf), *extra), str(btf),
                       str(image), "does not describe")


def test_btf_of_the_same_kernel_is_taken(k61, tmp_path):
    btf = _raw_btf(k61, tmp_path / "btf-6.1")
    own = json.loads(pvpatch("inspect", str(k61), "--json").stdout)
    r = pvpatch("inspect", str(k61), "--json", "--btf", str(btf))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ops"] == own["ops"]


def _system_map(kernel: Path, dest: Path) -> Path:
    """A System.map as scripts/mksysmap makes it: nm of the .symtab."""
    dest.write_text(subprocess.run(["nm", "-n", str(kernel)], check=True, capture_output=True,
                                   text=True).stdout)
    return dest


def test_system_map_of_another_kernel_is_refused(k61, k612, tmp_path):
    smap = _system_map(k612, tmp_path / "System.map-6.12")
    for image in (k61, kernel("cloud-amd64", "6.1", "vmlinuz")):
        for cmd in ("inspect", "notes"):
            one_line_error(pvpatch(cmd, str(image), "--system-map", str(smap)), str(smap),
                           str(image), "does not match")


def test_system_map_of_the_same_kernel_is_taken(k61, tmp_path):
    smap = _system_map(k61, tmp_path / "System.map-6.1")
    vmlinuz = kernel("cloud-amd64", "6.1", "vmlinuz")
    r = pvpatch("inspect", str(vmlinuz), "--json", "--system-map", str(smap))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["input"]["symbols"] == "System.map"


def test_baseline_of_another_series_is_refused(k61, k612):
    one_line_error(pvpatch("check", str(k61), "--baseline", str(k612)), str(k612), "series")


# -- already patched -----------------------------------------------------------------------------

@pytest.mark.parametrize("series,options", [
    ("6.1", ("--backend", "xen", "--vcpus", "2")), ("6.1", ("--backend", "native")),
    ("6.12", ("--backend", "xen", "--vcpus", "1")), ("6.12", ("--backend", "native"))])
def test_an_apply_output_is_recognised_by_every_command(tmp_path, series, options):
    original = kernel("cloud-amd64", series)
    with patched_copy(original, tmp_path, *options) as out:
        before = sha256(out)
        said = " ".join(options)
        one_line_error(pvpatch("apply", str(out), "-o", str(tmp_path / "again")),
                       f"{out} was already patched by pvpatch apply (it matches {said}); "
                       "apply needs the unpatched vmlinux")
        assert not (tmp_path / "again").exists()
        r = pvpatch("check", str(out), "--json")
        assert r.returncode == 1, r.stderr
        sited = [f["check"] for f in json.loads(r.stdout)["findings"] if f["family"] != "xen"]
        assert sited == ["image.already-patched"]
        d = json.loads(pvpatch("inspect", str(out), "--json").stdout)
        assert [m["options"] for m in d["already_patched"]["matches"]] == [said]
        assert d["problems"] == 0
        one_line_error(pvpatch("diff", str(out), str(original)), "diff needs the unpatched")
        assert pvpatch("diff", str(original), str(out)).returncode == 0
        assert sha256(out) == before


@pytest.mark.parametrize("kind", ["vmlinux", "vmlinuz"])
def test_a_32_bit_image_patched_in_place_stays_readable(tmp_path, kind):
    """The 686-pae debug vmlinux (DWARF types) and the vmlinux inside its vmlinuz (no types,
    no pv_ops symbol): one `apply --in-place`, then every command still reads it."""
    source = kernel("686-pae", "6.1", kind)
    image = tmp_path / "vmlinux"
    try:
        if kind == "vmlinuz":
            assert pvpatch("extract", str(source), "-o", str(image)).returncode == 0
        else:
            shutil.copyfile(source, image)
        assert pvpatch("apply", str(image), "--in-place").returncode == 0
        before = sha256(image)
        r = pvpatch("inspect", str(image), "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert [m["options"] for m in d["already_patched"]["matches"]] == ["--backend native"]
        assert d["problems"] == 0
        r = pvpatch("check", str(image), "--json")
        assert r.returncode == 1, r.stderr
        assert [f["check"] for f in json.loads(r.stdout)["findings"]
                if f["family"] != "xen"] == ["image.already-patched"]
        one_line_error(pvpatch("apply", str(image), "--dry-run"), "already patched")
        assert sha256(image) == before
    finally:
        image.unlink(missing_ok=True)


@pytest.mark.parametrize("flavour,series", [("cloud-amd64", "6.1"), ("amd64", "6.12"),
                                            ("686-pae", "6.1")])
def test_a_pristine_kernel_is_not_patched(flavour, series):
    d = json.loads(pvpatch("inspect", str(kernel(flavour, series)), "--json").stdout)
    assert d["already_patched"] is None and d["problems"] == 0
