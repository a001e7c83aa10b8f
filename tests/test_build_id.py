"""The GNU build-id: read from the image, shown by inspect and in every JSON report."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import assemble, pvpatch, sha256

from pvpatch.image.elf import ElfImage


@pytest.fixture(scope="module")
def with_id() -> str:
    return str(assemble("pv_kernel61.S", 64, defsyms={"XEN_NOTES": 1},
                        ld_args=("--build-id=sha1",), name="pv_kernel61-buildid"))


@pytest.fixture(scope="module")
def without_id() -> str:
    return str(assemble("pv_kernel61.S", 64, defsyms={"XEN_NOTES": 1}))


def readelf_build_id(path: str) -> str | None:
    """binutils' reading, the reference."""
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
    m = re.search(r"Build ID: ([0-9a-f]+)", out)
    return m.group(1) if m else None


def test_read_as_readelf_reads_it(with_id, without_id):
    want = readelf_build_id(with_id)
    assert want and len(want) == 40
    with ElfImage(with_id) as image:
        assert image.build_id == want
    with ElfImage(without_id) as image:
        assert image.build_id is None and readelf_build_id(without_id) is None


def test_inspect_text_shows_it(with_id, without_id):
    assert f"build-id  {readelf_build_id(with_id)}" in pvpatch("inspect", with_id).stdout
    assert "build-id  none" in pvpatch("inspect", without_id).stdout


def _reports(path: str, tmp_path) -> dict[str, dict]:
    """Every command's JSON document for ``path``."""
    out = {}
    for name, argv in {
        "inspect": ("inspect", path, "--json"),
        "notes": ("notes", path, "--json"),
        "apply": ("apply", path, "--dry-run", "--json"),
        "check": ("check", path, "--json"),
        "diff": ("diff", path, path, "--json"),
        "extract": ("extract", path, "--json", "-o", str(tmp_path / "x.elf")),
    }.items():
        r = pvpatch(*argv)
        assert r.returncode in (0, 1), (name, r.stderr)
        out[name] = json.loads(r.stdout)
    return out


def test_every_json_report_carries_it(with_id, without_id, tmp_path):
    before = sha256(with_id), sha256(without_id)
    want = readelf_build_id(with_id)
    for name, doc in _reports(with_id, tmp_path).items():
        assert doc["build_id"] == want, name
    assert _reports(with_id, tmp_path)["diff"]["patched_build_id"] == want
    for name, doc in _reports(without_id, tmp_path).items():
        assert "build_id" in doc and doc["build_id"] is None, name
    assert (sha256(with_id), sha256(without_id)) == before
