"""`pvpatch check`: each defect class seeded in a fixture and named precisely; the CLI's exit
codes, formats and --baseline; the real Debian 6.1 kernels checking clean.

Fixtures are fixtures/pv_kernel61.S variants (see its header). ``XEN_NOTES=1`` gives the clean
image: 6.1-shaped pv sites plus Xen notes as Debian 6.1 has them. Its one standing finding is
what the real kernel also has: under Xen, ``mmu.alloc_p4d`` stays NULL and its site becomes
``call paravirt_BUG`` (a warning).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import assemble, real_kernel

from pvpatch.checks.baseline import load_baseline
from pvpatch.checks.model import BY_ID, CHECKS, ERROR, WARNING
from pvpatch.checks.runner import parse_backends, run_checks
from pvpatch.checks.slots import target_problem
from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.kernel.model import KernelModel

STANDING = ("slot.null", "xen", "_start+0x36", "mmu.alloc_p4d")
Row = tuple[str, str | None, str, str]


def build(**defects: int) -> str:
    return str(assemble("pv_kernel61.S", 64, defsyms={"XEN_NOTES": 1, **defects}))


def rows(path: str, backends: tuple[str, ...] = ("native", "xen")) -> list[Row]:
    """(check, backend, function, op) of every finding but the standing one, in report order."""
    with KernelModel.open(path) as model:
        found = run_checks(model, backends, 2).findings
    return [r for f in found if (r := (f.check, f.backend, f.function, f.op)) != STANDING]


def messages(path: str, check: str) -> list[str]:
    with KernelModel.open(path) as model:
        return [f.message for f in run_checks(model, ("native", "xen"), 2).findings
                if f.check == check]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", "check", *args],
                          capture_output=True, text=True, timeout=300)


# -- each defect class, exactly --------------------------------------------------------------

DEFECTS: dict[str, tuple[list[Row], str]] = {
    # variant: (expected findings, a phrase of the first one's message)
    "SITE_NOT_CALL": ([("site.not-indirect-call", None, "bad_record_fn", "cpu.io_delay")],
                      "no indirect call or jump in the bytes: nopw"),
    "SITE_IN_DATA": ([("site.not-code", None, "data_site", "cpu.cpuid")],
                     "is in section .rodata, not executable code"),
    "SITE_OVERLAP": ([("site.overlap", None, "_start", "cpu.io_delay"),
                      ("site.overlap", None, "_start+0x6", "cpu.cpuid")],
                     "12-byte site overlaps the 6-byte cpu.io_delay site"),
    "WRONG_SLOT": ([("site.wrong-slot", None, "wrong_slot_fn", "irq.irq_enable")],
                   "names irq.irq_enable (0x"),
    "UNKNOWN_TYPE": ([("site.unknown-type", None, "unknown_type_fn", "type 40")],
                     "type 40 indexes no slot of pv_ops"),
    "BAD_LENGTH": ([("site.length", None, "bad_length_fn", "cpu.io_delay")],
                   "record length 40 is outside 1..32"),
    "CLOBBER_BITS": ([("site.clobber-mask", None, "clobber_bits_fn", "cpu.io_delay")],
                     "clobber mask 0x8001 has bits 0x8000"),
    "NATIVE_NULL": ([("slot.null", "native", "_start+0x6", "cpu.cpuid")],
                    "slot is NULL (pv_ops initialiser): the kernel patches in `call paravirt_BUG`"),
    "SLOT_NOT_FUNC": ([("slot.not-function", "native", "_start", "cpu.io_delay")],
                      "slot holds not_a_function (pv_ops initialiser), which is in .data"),
    "SHORT_SITE": ([("fit.call-too-long", "native", "short_site_fn", "cpu.cpuid"),
                    ("fit.call-too-long", "xen", "short_site_fn", "cpu.cpuid")],
                   "a 5-byte call to native_cpuid does not fit the 2-byte site"),
    "LONG_ALT": ([("fit.alt-too-long", "native", "_start+0x2a", "mmu.write_cr3")],
                 "its 7-byte replacement is longer than the 6 bytes it replaces"),
    "BAD_INLINE": ([("clobber.violation", "native", "_start+0xc", "irq.save_fl")],
                   "inline-native code writes rcx, outside the mask 0x1 (rax)"),
    "BAD_CLOBBER": ([("clobber.violation", "xen", "_start+0xc", "irq.save_fl")],
                    "call xen_save_fl_direct writes rcx, outside the mask 0x1 (rax); from code "
                    "of xen_save_fl_direct"),
    "ALT_MISALIGNED": ([("alt.misaligned", None, "_start+0x30", "mmu.set_pte")],
                       "covers 0x401030+5, the site is 0x401030+6"),
    "ALT_UNDECIDABLE": ([("alt.undecidable", "native", "_start+0x30", "mmu.set_pte"),
                         ("alt.undecidable", "xen", "_start+0x30", "mmu.set_pte")],
                        "tests feature 9*32+20, which native does not decide"),
    "DOM0_UNDECLARED": ([("xen.dom0-undeclared", None, "", "XEN_ELFNOTE_SUPPORTED_FEATURES")],
                        "built with dom0 support (xen_init_vga) but the supported features "
                        "writable_page_tables|pae_pgdir_above_4gb|linux_rsdp_unrestricted lack "
                        "dom0: Xen refuses"),
    "NO_DOM0_CODE": ([("xen.dom0-unbacked", None, "", "XEN_ELFNOTE_SUPPORTED_FEATURES")],
                     "include dom0, but none of xen_init_vga"),
    "BAD_XEN_VERSION": ([("xen.builder.pv.xen-version", None, "", "pv-domu,pv-dom0")],
                        "XEN_VERSION 'xen-4.0' (from the notes): does not start with 'xen-3.0'"),
    "BAD_XEN_ENTRY": ([("xen.entry", None, "xen_entry_data", "XEN_ELFNOTE_ENTRY")],
                      "XEN_ELFNOTE_ENTRY leads to 0x"),
}


@pytest.mark.parametrize("variant", sorted(DEFECTS))
def test_each_defect_is_caught_and_named_exactly(variant):
    path = build(**{variant: 1})
    want, phrase = DEFECTS[variant]
    assert rows(path) == want
    first = messages(path, want[0][0])[0]
    assert phrase in first


def test_the_clean_fixture_has_only_the_standing_xen_warning():
    path = build()
    assert rows(path) == []
    with KernelModel.open(path) as model:
        found = run_checks(model, ("native", "xen"), 2).findings
    assert [(f.check, f.severity, f.backend, f.function, f.op) for f in found] == \
        [("slot.null", WARNING, "xen", "_start+0x36", "mmu.alloc_p4d")]


def test_a_pv_kernel_without_xen_notes_fails_xens_pv_checks_only():
    path = str(assemble("pv_kernel61.S", 64))
    assert rows(path) == [("xen.builder.pv.xen-elf", None, "", "pv-domu"),
                          ("xen.builder.pv.loader", None, "", "pv-domu"),
                          ("xen.builder.pv.xen-version", None, "", "pv-domu")]
    assert rows(path, ("native",)) == []  # the Xen notes family runs with the xen backend


def test_the_dom0_builder_failure_is_reported_once_as_the_kernels_expectation():
    found = rows(build(DOM0_UNDECLARED=1))
    assert [r[0] for r in found] == ["xen.dom0-undeclared"]


def test_a_mid_function_slot_target_is_not_a_function():
    with ElfImage(build()) as image:
        save_fl = image.symbols.address("native_save_fl")
        assert target_problem(image, save_fl) is None
        assert target_problem(image, save_fl + 1) == \
            "which is inside native_save_fl+0x1, not a function's start"


def test_registry_ids_are_unique_and_every_check_has_a_severity_and_title():
    assert len(BY_ID) == len(CHECKS)
    for c in CHECKS:
        assert c.severity in (ERROR, WARNING) and c.title and c.id.startswith(c.family + ".")


# -- the command line -------------------------------------------------------------------------

def test_exit_status_follows_fail_on():
    clean, bad = build(), build(BAD_INLINE=1)
    assert run(clean).returncode == 0
    assert run(clean, "--fail-on", "warning").returncode == 1  # the standing warning counts
    assert run(clean, "--backend", "native", "--fail-on", "warning").returncode == 0
    r = run(bad)
    assert r.returncode == 1
    assert "clobber.violation" in r.stdout and "FAIL: 1 error(s)" in r.stdout


@pytest.mark.parametrize("args,phrase", [
    (("--backend", "native,bogus"), "--backend takes a comma-separated list"),
    (("--format", "xml"), "Invalid value for '--format'"),
    (("--fail-on", "info"), "Invalid value for '--fail-on'"),
    (("-o", "SELF"), "is the input"),
])
def test_bad_usage_exits_2(args, phrase):
    path = build()
    r = run(path, *(path if a == "SELF" else a for a in args))
    assert r.returncode == 2 and phrase in r.stderr and "Traceback" not in r.stderr


def test_unreadable_input_and_baseline_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf image at all")
    for args in ((str(tmp_path / "missing"),), (str(junk),),
                 (build(), "--baseline", str(junk)),
                 (build(), "--baseline", str(tmp_path / "missing"))):
        r = run(*args)
        assert r.returncode == 2, args
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("pvpatch: error:"), r.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "pvpatch.apply/1"}))
    r = run(build(), "--baseline", str(other))
    assert r.returncode == 2 and "expected 'pvpatch.check/1'" in r.stderr


def test_backend_lists():
    assert parse_backends(None) == (("native", "xen"), False)
    assert parse_backends("xen, native,xen") == (("xen", "native"), True)


def test_xen_is_skipped_by_default_but_an_error_when_asked_for_without_xen_pv():
    path = str(assemble("pv_kernel61.S", 64, defsyms={"NO_XEN_PV": 1}))
    r = run(path, "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [b["name"] for b in d["backends"]] == ["native"] and d["findings"] == []
    assert d["notes"] == ["xen backend skipped: the kernel is built without Xen PV support "
                          "(no xen_start_kernel)"]
    r = run(path, "--backend", "native,xen")
    assert r.returncode == 2 and "built without Xen PV support" in r.stderr


def test_json_report_follows_the_documented_schema(tmp_path):
    out = tmp_path / "r.json"
    r = run(build(BAD_INLINE=1), "--format", "json", "-o", str(out))
    assert r.returncode == 1 and r.stdout.startswith("pvpatch check: FAIL") and str(out) in r.stdout
    d = json.loads(out.read_text())
    assert d["schema"] == "pvpatch.check/1" and d["failed"] is True
    assert set(d) == {"schema", "input", "kernel", "machine", "build_id", "backends", "notes",
                      "nops", "checked", "fail_on", "baseline", "counts", "failed", "checks",
                      "findings"}
    assert d["counts"] == {"error": 1, "warning": 1, "new": 2, "known": 0, "failing": 1}
    f = d["findings"][0]
    assert f == {"check": "clobber.violation", "family": "clobber", "severity": "error",
                 "status": "new", "backend": "native", "address": "0x40100c",
                 "function": "_start+0xc", "op": "irq.save_fl", "message": f["message"]}
    assert {c["id"] for c in d["checks"]} == set(BY_ID)


def test_junit_is_well_formed_with_a_suite_per_family_and_backend(tmp_path):
    out = tmp_path / "junit.xml"
    assert run(build(BAD_CLOBBER=1), "--format", "junit", "-o", str(out)).returncode == 1
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites" and root.get("failures") == "1"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == ["image", "site", "alt", "static_call", "slot (native)",
                            "fit (native)", "clobber (native)", "alt (native)",
                            "static_call (native)", "slot (xen)", "fit (xen)", "clobber (xen)",
                            "alt (xen)", "static_call (xen)", "xen"]
    assert int(root.get("tests")) == sum(int(s.get("tests")) for s in suites.values())
    case = suites["clobber (xen)"].find("testcase[@name='clobber.violation']")
    failure = case.find("failure")
    assert failure is not None and "_start+0xc irq.save_fl" in failure.text
    warn = suites["slot (xen)"].find("testcase[@name='slot.null']")
    assert warn.find("failure") is None and "mmu.alloc_p4d" in warn.find("system-out").text


def test_junit_goes_to_stdout_without_output():
    r = run(build(), "--format", "junit")
    assert r.returncode == 0
    assert ET.fromstring(r.stdout.split("\n", 1)[1]).tag == "testsuites"


# -- --baseline -------------------------------------------------------------------------------

def test_baseline_report_turns_old_findings_known_even_when_addresses_move(tmp_path):
    bad = build(BAD_INLINE=1)
    old = tmp_path / "old.json"
    run(bad, "--format", "json", "-o", str(old))
    doc = json.loads(old.read_text())
    for f in doc["findings"]:  # a rebuild moves everything: only function and op stay
        f["address"] = "0xdead"
        f["function"] = f["function"].split("+")[0] + "+0x999"
    old.write_text(json.dumps(doc))
    r = run(bad, "--baseline", str(old), "--fail-on", "warning")
    assert r.returncode == 0, r.stdout
    assert "known   error     clobber.violation" in r.stdout and "2 known" in r.stdout
    d = json.loads(run(bad, "--baseline", str(old), "--format", "json").stdout)
    assert {f["status"] for f in d["findings"]} == {"known"}
    assert d["baseline"] == {"source": str(old), "kind": "report", "findings": 2}


def test_baseline_image_counts_only_new_findings():
    old, new = build(BAD_INLINE=1), build(BAD_INLINE=1, WRONG_SLOT=1)
    r = run(new, "--baseline", old, "--format", "json")
    assert r.returncode == 1
    d = json.loads(r.stdout)
    status = {(f["check"], f["status"]) for f in d["findings"]}
    assert status == {("clobber.violation", "known"), ("slot.null", "known"),
                      ("site.wrong-slot", "new")}
    assert d["baseline"]["kind"] == "image" and d["counts"]["failing"] == 1
    assert run(old, "--baseline", old).returncode == 0


def test_baseline_matches_per_backend():
    """A defect known under Xen is still new when it appears natively."""
    old = build(BAD_CLOBBER=1)  # clobber.violation under xen
    new = build(BAD_INLINE=1)  # clobber.violation natively, same function and op
    r = run(new, "--baseline", old, "--format", "json")
    d = json.loads(r.stdout)
    assert r.returncode == 1
    assert [(f["check"], f["backend"], f["status"]) for f in d["findings"]
            if f["check"] == "clobber.violation"] == [("clobber.violation", "native", "new")]


# -- real kernels -----------------------------------------------------------------------------

# Debian 6.1 under Xen PV: these slots stay NULL in xen_mmu_ops and their sites become
# `call paravirt_BUG` — 5-level paging ops (Xen PV runs 4-level) and the SEV/TDX
# encryption-status hook. Reached only on paths Xen PV never takes (docs/check.md).
XEN_NULL_OPS = {"mmu.set_pgd", "mmu.alloc_p4d", "mmu.release_p4d",
                "mmu.notify_page_enc_status_changed"}


@pytest.mark.realkernel
@pytest.mark.parametrize("flavour", ["cloud-amd64", "amd64"])
def test_debian_61_checks_clean_with_only_explained_warnings(flavour, tmp_path):
    path = str(real_kernel(flavour, "6.1"))
    out = tmp_path / "r.json"
    r = run(path, "--format", "json", "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["kernel"].startswith("6.1.") and d["counts"]["error"] == 0
    assert [b["name"] for b in d["backends"]] == ["native", "xen"]
    null = [f for f in d["findings"] if f["check"] == "slot.null"]
    assert null and {f["backend"] for f in null} == {"xen"}
    assert {f["op"] for f in null} == XEN_NULL_OPS
    # every pv static-call key is resolved, natively and from Xen's start-up code
    assert not [f for f in d["findings"] if f["check"].startswith("static_call.")]
    rest = [f["check"] for f in d["findings"] if f["check"] != "slot.null"]
    # the cloud flavour is built without CONFIG_XEN_DOM0 yet 6.1 declares dom0 unconditionally
    assert rest == (["xen.dom0-unbacked"] if flavour == "cloud-amd64" else [])
    assert run(path, "--backend", "native", "--fail-on", "warning").returncode == 0


def test_json_flag_is_format_json_and_workers_do_not_change_the_report(tmp_path):
    """--json = --format json; the backends planned in worker processes (the default) give
    the very report a single process gives (PVPATCH_JOBS=1)."""
    path = build(BAD_CLOBBER=1)
    a = run(path, "--json")
    b = subprocess.run([sys.executable, "-m", "pvpatch", "check", path, "--format", "json"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PVPATCH_JOBS": "1"})
    assert a.returncode == b.returncode == 1 and a.stdout == b.stdout
    assert json.loads(a.stdout)["counts"]["error"] == 1
    r = run(path, "--json", "--format", "junit")
    assert r.returncode == 2 and "exclude each other" in r.stderr


def _report(findings: object, **top: object) -> str:
    return json.dumps({"schema": "pvpatch.check/1", "machine": "x86_64", **top,
                       "findings": findings})


@pytest.mark.parametrize("text,needle", [
    ("[" * 100_000 + "]" * 100_000, "nested too deep"),
    ('{"schema": "pvpatch.check/1", "n": ' + "9" * 5000 + "}", "4300 digits"),
    (_report({"check": "x"}), "findings is an object, expected a list"),
    (_report(["x"]), "finding 0 is a string, expected an object"),
    (_report([{"check": "c", "backend": None, "function": "f"}]), "finding 0 lacks 'op'"),
    (_report([{"check": "c", "backend": None, "function": 7, "op": "o"}]),
     "finding 0 has function a number"),
    (_report([{"check": ["c"], "backend": None, "function": "f", "op": "o"}]),
     "finding 0 has check a list"),  # a list would be unhashable in the key
    (_report([{"check": "c", "backend": {}, "function": "f", "op": "o"}]),
     "finding 0 has backend an object"),
])
def test_a_baseline_report_of_the_wrong_shape_is_an_input_error(tmp_path, text, needle):
    """Found by the fuzzer: each of these was a traceback (RecursionError, ValueError,
    AttributeError on .split, TypeError: unhashable)."""
    path = tmp_path / "old.json"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(needle)):
        load_baseline(str(path), ("native",), 2)


def test_a_wrong_baseline_report_is_one_line_on_the_command_line(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(_report([{"check": "c", "backend": None, "function": 1.5, "op": "o"}]))
    r = run(build(), "--baseline", str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "finding 0 has function a number" in r.stderr
