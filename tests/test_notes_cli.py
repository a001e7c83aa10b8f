"""`pvpatch notes` as a user runs it: the table, --check verdicts, --json, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES, assemble, one_line_error, real_kernel

from pvpatch.cli import cli

LD = ("-T", str(FIXTURES / "xen_notes.ld"))


def build(source: str = "xen_notes.S", bits: int = 64, **variants: int) -> str:
    defs = dict(variants, **({"I386": 1} if bits == 32 else {}))
    return str(assemble(source, bits, ld_args=LD, defsyms=defs))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", "notes", *args],
                          capture_output=True, text=True, timeout=120)


def rows(stdout: str) -> dict[str, str]:
    """Table rows keyed by note name: the rest of the line after the size column."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[1].startswith("XEN_ELFNOTE_"):
            out[parts[1]] = parts[3]
    return out


def test_table_names_and_resolves():
    r = run(build())
    assert r.returncode == 0, r.stderr
    assert "Xen notes: 26 from PT_NOTE segments (PT_NOTE[2])" in r.stdout
    t = rows(r.stdout)
    assert t["XEN_ELFNOTE_ENTRY"] == "0xffffffff81000001 (startup_xen)"
    assert t["XEN_ELFNOTE_HYPERCALL_PAGE"] == "0xffffffff81001000 (hypercall_page)"
    assert t["XEN_ELFNOTE_PHYS32_ENTRY"] == \
        "0x1000003 (pvh_start_xen, virtual 0xffffffff81000003)"
    assert t["XEN_ELFNOTE_FEATURES"] == ('"!writable_page_tables|pae_pgdir_above_4gb" → '
                                         "required: writable_page_tables; supported: "
                                         "pae_pgdir_above_4gb")
    assert t["XEN_ELFNOTE_SUPPORTED_FEATURES"] == \
        "0x8801 = writable_page_tables|dom0|linux_rsdp_unrestricted"
    assert t["XEN_ELFNOTE_PHYS32_RELOC"] == "align 0x200000, min 0x1000000, max 0x3fffffff"
    assert t["XEN_ELFNOTE_L1_MFN_VALID"] == "mask 0x1 value 0x1"
    assert t["XEN_ELFNOTE_PAE_MODE"] == '"yes" → PAE yes (extended-cr3)'
    assert "XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION" in t and "Checks of" not in r.stdout
    assert "XEN_ELFNOTE_FEATURES: no NUL inside descsz (41 bytes)" in r.stdout


def test_odd_size_shows_raw_bytes():
    t = rows(run(build(ODD_SIZE=1)).stdout)
    assert t["XEN_ELFNOTE_MOD_START_PFN"] == "raw 01 00 00 → libelf reads 0"


def test_check_passes_and_prints_verdicts():
    r = run(build(bits=32), "--check")
    assert r.returncode == 0, r.stderr
    assert "  PASS  pv.bounds" in r.stdout and "  n/a   pv-dom0.hypercall-page" not in r.stdout
    verdict = r.stdout.split("Verdict:\n", 1)[1].splitlines()
    assert verdict == ["  PV domU   loads", "  PV dom0   loads", "  PVH domU  loads",
                       "  PVH dom0  loads"]


def test_check_refusal_of_one_kind_still_exits_zero():
    r = run(build(NO_DOM0=1), "--check")
    assert r.returncode == 0
    assert "  FAIL  pv-dom0.dom0-feature" in r.stdout
    assert ("  PV dom0   refused: pv-dom0.dom0-feature (Kernel does not support Dom0 "
            "operation)") in r.stdout


@pytest.mark.parametrize("variant", [{"BOGUS_FEATURE": 1}, {"BAD_ENTRY": 1, "NO_PVH": 1}])
def test_check_exits_one_when_nothing_loads(variant):
    r = run(build(**variant), "--check")
    assert r.returncode == 1, r.stdout
    assert "Xen would load this image as no kind of guest" in r.stdout


def test_no_xen_notes_said_clearly():
    path = build(NO_XEN=1)
    r = run(path)
    assert r.returncode == 0
    assert "No Xen ELF notes (walked: PT_NOTE[2], section .notes)" in r.stdout
    assert "not a Xen-ELF image" in r.stdout
    r = run(path, "--check")
    assert r.returncode == 1
    assert "  FAIL  pv.xen-elf" in r.stdout and "  FAIL  pvh.xen-elf" in r.stdout


def test_legacy_guest_table():
    r = run(build("xen_guest_legacy.S", 32), "--check")
    assert r.returncode == 0, r.stderr
    assert "the legacy __xen_guest string stands in (PV guests only)" in r.stdout
    assert "page 0x1001 → 0xc1001000 (hypercall_page)" in r.stdout
    assert "  PVH domU  refused: pvh.xen-elf" in r.stdout


def test_json_document():
    d = json.loads(run(build(), "--json").stdout)
    assert d["schema"] == "pvpatch.notes/1" and d["source"] == "PT_NOTE"
    assert d["checks"] is None and d["verdicts"] is None and d["loads"] is None
    assert d["elf"] == {"class": 64, "machine": "x86_64", "e_entry": "0xffffffff81000000",
                        "e_entry_symbol": "_start"}
    notes = {n["name"]: n for n in d["notes"]}
    entry = notes["XEN_ELFNOTE_ENTRY"]
    assert entry["value"] == "0xffffffff81000001" and entry["symbol"] == "startup_xen"
    assert entry["libelf"] == "int" and entry["descsz"] == 8
    feat = notes["XEN_ELFNOTE_FEATURES"]
    assert feat["decoded"]["required"] == ["writable_page_tables"]
    assert feat["observations"][0].startswith("no NUL inside descsz")
    assert notes["XEN_ELFNOTE_PAE_MODE"]["decoded"] == {"pae": "extended-cr3"}
    assert notes["XEN_ELFNOTE_CRASH_INFO"]["libelf"] == "ignored"
    assert d["load_span"] == {"pstart": "0x1000000", "pend": "0x1003004", "max_align": "0x1000",
                              "segments": 2}


def test_json_with_check():
    r = run(build(BOGUS_FEATURE=1), "--check", "--json")
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert d["loads"] is False
    checks = {c["id"]: c for c in d["checks"]}
    assert checks["parse.features"]["status"] == "fail"
    assert checks["parse.features"]["source"].startswith("xen/common/libelf/libelf-dominfo.c")
    assert all(v["failed"][0] == "parse.features" for v in d["verdicts"])


def test_help_teaches():
    r = CliRunner().invoke(cli, ["notes", "--help"])
    assert r.exit_code == 0
    assert "Examples:" in r.output and "pvpatch notes vmlinux --check" in r.output
    assert "1  with --check: it loads as no kind of guest" in r.output


def test_bad_input(tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF at all, just words\n")
    one_line_error(run(str(text)), "not an ELF file")
    good = Path(build()).read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(good[:0x2100])  # the section headers are at the end of the file
    one_line_error(run(str(cut), "--check"), "section header table", "lies outside the file")
    cut.write_bytes(good[:40])
    one_line_error(run(str(cut)), "truncated: 40 bytes, the ELF header needs 64")
    one_line_error(run(str(tmp_path / "missing")), "cannot open")


@pytest.mark.realkernel
@pytest.mark.parametrize("flavour", ["cloud-amd64", "amd64"])
def test_real_kernel_check(flavour):
    r = run(str(real_kernel(flavour)), "--check")
    assert r.returncode == 0, r.stdout
    t = rows(r.stdout)
    assert t["XEN_ELFNOTE_GUEST_OS"] == '"linux"'
    assert t["XEN_ELFNOTE_XEN_VERSION"] == '"xen-3.0"'
    assert t["XEN_ELFNOTE_LOADER"] == '"generic"'
    assert t["XEN_ELFNOTE_ENTRY"].endswith("(startup_xen)")
    assert "required: writable_page_tables" in t["XEN_ELFNOTE_FEATURES"]
    assert "  FAIL  " not in r.stdout
    d = json.loads(run(str(real_kernel(flavour)), "--check", "--json").stdout)
    assert d["loads"] is True and all(v["loads"] for v in d["verdicts"])
    sup = next(n for n in d["notes"] if n["name"] == "XEN_ELFNOTE_SUPPORTED_FEATURES")
    if flavour == "amd64":
        assert "dom0" in sup["decoded"]["names"]
