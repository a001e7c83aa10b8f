"""`pvpatch inspect` as a user runs it: output, filters, JSON, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assemble, one_line_error


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def fixture64() -> str:
    return str(assemble("pv_sites.S", 64))


def test_summary_names_layout_and_ops(fixture64):
    r = run("inspect", fixture64)
    assert r.returncode == 0, r.stderr
    assert "layout x86_64+stale-clobbers" in r.stdout
    assert "sites     8: .text 8" in r.stdout
    assert "native_io_delay" in r.stdout and "NULL" in r.stdout


def test_sites_listing_with_filters(fixture64):
    r = run("inspect", fixture64, "--sites", "--function", "helper")
    assert r.returncode == 0
    listing = r.stdout.split("\naddress", 1)[1].splitlines()[1:]
    assert len(listing) == 1 and listing[0].split()[2] == "helper"
    r = run("inspect", fixture64, "--json", "--sites", "--op", "pv_ops+0x8")
    d = json.loads(r.stdout)
    assert d["selected"] == 2 and d["site_count"] == 8
    assert {s["native_target"] for s in d["sites"]} == {"native_save_fl"}


def test_json_document(fixture64):
    d = json.loads(run("inspect", fixture64, "--json", "--sites").stdout)
    assert d["schema"] == "pvpatch.inspect/1"
    assert d["layout"]["name"] == "x86_64+stale-clobbers" and d["layout"]["record_size"] == 16
    assert d["kernel"]["release"] == "6.1.0-fixture"
    site = d["sites"][0]
    assert site["bytes"].startswith("ff15") and site["length"] == 6
    assert site["clobber_regs"][0] == "rax"
    ops = {o["op"]: o for o in d["ops"]}
    assert ops["pv_ops+0x28"]["native_target"] == "NULL"


def test_not_an_elf(tmp_path: Path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not a kernel\n")
    one_line_error(run("inspect", str(p)), str(p), "not an ELF file")


def test_missing_file(tmp_path: Path):
    one_line_error(run("inspect", str(tmp_path / "nope")), "cannot open")


def test_truncated(tmp_path: Path, fixture64):
    p = tmp_path / "trunc"
    p.write_bytes(Path(fixture64).read_bytes()[:3000])
    one_line_error(run("inspect", str(p)), str(p), "outside the file")


def test_wrong_machine(tmp_path: Path, fixture64):
    raw = bytearray(Path(fixture64).read_bytes())
    raw[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    p = tmp_path / "arm64"
    p.write_bytes(bytes(raw))
    one_line_error(run("inspect", str(p)), "ELF machine 183 is not x86")


def test_section_size_fits_no_layout():
    p = str(assemble("pv_sites.S", 64, defsyms={"BAD_SIZE": 1}))
    one_line_error(run("inspect", p), "not a multiple of any known record size (8, 16)")


def test_help_teaches():
    r = run("inspect", "--help")
    assert r.returncode == 0 and "Examples:" in r.stdout and "--op" in r.stdout


@pytest.mark.parametrize("argv", [
    # the unknown name was echoed as typed, its newline and all
    ("--backend", "kvm", "--kvm-features", "steal_time,foo\nbar"),
    ("--backend", "vmware", "--vmware-features", "tsc_freq,red\r\x1b[31mred"),
])
def test_an_error_is_one_line_whatever_the_input_holds(argv):
    kernel = str(assemble("pv_kernel61.S", 64, defsyms={"STATIC_CALLS": 1, "GUEST_CODE": 1}))
    r = run("inspect", kernel, *argv)
    one_line_error(r, "unknown")
    assert "\\n" in r.stderr or "\\r\\x1b" in r.stderr  # written as escapes, not dropped


def test_a_file_name_with_a_newline_is_one_line_too(tmp_path: Path):
    one_line_error(run("inspect", str(tmp_path / "a\nb")), "cannot open", "a\\nb")
