"""Trust, on fixtures: inputs of another build are refused, options that do not apply are
refused, an ELF that is no kernel is refused — each with exit status 2, one line on stderr,
no traceback, no output file, and every input byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from btfwriter import BtfWriter
from conftest import assemble, one_line_error, pvpatch, sha256


@pytest.fixture(scope="module")
def kernel() -> str:
    return str(assemble("pv_kernel61.S", 64, defsyms={"XEN_NOTES": 1}))


@pytest.fixture(autouse=True)
def kernel_untouched(request):
    """Whatever a test runs, the fixture kernel it read is byte for byte as it was."""
    path = request.getfixturevalue("kernel") if "kernel" in request.fixturenames else None
    before = sha256(path) if path else None
    yield
    if path:
        assert sha256(path) == before


def unchanged(*paths: str | Path):
    """A context that asserts ``paths`` are byte for byte the same afterwards."""
    class Same:
        def __enter__(self) -> None:
            self.before = [sha256(p) for p in paths]

        def __exit__(self, *exc: object) -> None:
            assert [sha256(p) for p in paths] == self.before

    return Same()


def refused(argv: list[str], *needles: str, inputs: tuple[str | Path, ...] = ()) -> None:
    with unchanged(*inputs):
        one_line_error(pvpatch(*argv), *needles)


# -- an ELF that is no kernel ---------------------------------------------------------------

@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    """An ordinary x86 program: this Python interpreter, copied."""
    exe = Path(os.path.realpath(sys.executable))
    if exe.read_bytes()[:4] != b"\x7fELF":
        pytest.skip("the interpreter is not an ELF file here")
    out = tmp_path_factory.mktemp("program") / "prog"
    shutil.copyfile(exe, out)
    return out


@pytest.mark.parametrize("argv", [
    ["inspect", "{p}"], ["inspect", "{p}", "--json"], ["notes", "{p}"], ["notes", "{p}", "--check"],
    ["apply", "{p}", "-o", "{d}/out"], ["apply", "{p}", "--dry-run"], ["check", "{p}"],
    ["check", "{p}", "-o", "{d}/out"], ["diff", "{p}", "{p}"], ["extract", "{p}", "-o", "{d}/out"],
])
def test_an_elf_that_is_no_kernel_is_refused_by_every_command(program, tmp_path, argv):
    args = [a.format(p=program, d=tmp_path) for a in argv]
    refused(args, "not a Linux kernel", "linux_banner", inputs=(program,))
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == []


def test_a_kernel_fixture_without_banner_is_still_a_kernel():
    """Marks other than the banner count: .parainstructions here."""
    path = str(assemble("pv_sites.S", 64, defsyms={"NO_BANNER": 1}))
    assert pvpatch("inspect", path).returncode == 0


# -- options that do not apply ----------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["inspect", "{k}", "--vcpus", "1"], "--vcpus"),
    (["inspect", "{k}", "--backend", "native", "--vcpus", "2"], "--backend xen"),
    (["apply", "{k}", "--dry-run", "--vcpus", "1"], "--vcpus"),
    (["apply", "{k}", "--dry-run", "--backend", "native", "--vcpus", "4"], "--backend xen"),
    (["apply", "{k}", "--dry-run", "--json", "--sites"], "drop --sites"),
    (["check", "{k}", "--backend", "native", "--vcpus", "1"], "vmware in --backend"),
    (["apply", "{k}", "--dry-run", "--kvm-features", "steal_time"], "--backend kvm"),
    (["check", "{k}", "--hyperv-features", "none"], "--backend hyperv"),
    (["check", "{k}", "--json", "--format", "text"], "exclude each other"),
    (["diff", "{k}", "{k}", "--changed"], "add --sites"),
    (["diff", "{k}", "{k}", "--json", "--sites"], "drop --sites"),
    (["inspect", "{k612}", "--layout", "x86_64"], "no .parainstructions"),
])
def test_an_option_that_does_not_apply_is_refused(kernel, tmp_path, argv, needle):
    k612 = str(assemble("pv_kernel61.S", 64, defsyms={"ERA612": 1}))
    refused([a.format(k=kernel, k612=k612) for a in argv], needle, inputs=(kernel, k612))


def test_vcpus_asks_for_xen_on_a_kernel_without_it():
    """The default backend list skips xen on such a kernel with a note; --vcpus would then
    do nothing, so it makes xen explicit and the kernel an input error."""
    path = str(assemble("pv_kernel61.S", 64, defsyms={"NO_XEN_PV": 1}))
    assert pvpatch("check", path).returncode == 0
    refused(["check", path, "--vcpus", "1"], "built without Xen PV support", inputs=(path,))


def test_the_defaults_and_the_options_that_apply_still_pass(kernel):
    for argv in (["inspect", kernel, "--backend", "xen", "--vcpus", "1"],
                 ["apply", kernel, "--dry-run", "--backend", "xen", "--vcpus", "1"],
                 ["check", kernel, "--vcpus", "1"],  # the default list has xen
                 ["check", kernel, "--json", "--format", "json"],
                 ["diff", kernel, kernel, "--sites", "--changed"]):
        assert pvpatch(*argv).returncode in (0, 1), argv


# -- --op/--function on apply and diff: the same filters as inspect ----------------------------

def _listing(stdout: str) -> list[str]:
    return stdout.split("\naddress", 1)[1].strip().splitlines()[1:]


def test_apply_and_diff_filter_what_they_show_as_inspect_does(kernel, tmp_path):
    want = json.loads(pvpatch("inspect", kernel, "--json", "--sites", "--op", "irq.*",
                              "--function", "_start").stdout)
    addresses = [s["address"] for s in want["sites"]]
    assert addresses and len(addresses) < want["site_count"]
    out, report = tmp_path / "out", tmp_path / "r.json"
    r = pvpatch("apply", kernel, "-o", str(out), "--backend", "xen", "--op", "irq.*",
                "--function", "_start", "--sites", "--report", str(report))
    assert r.returncode == 0, r.stderr
    assert [row.split()[0] for row in _listing(r.stdout) if row.startswith("0x")] == addresses
    full = json.loads(report.read_text())  # the report file is never narrowed
    assert len(full["sites"]) == want["site_count"]
    j = json.loads(pvpatch("apply", kernel, "--dry-run", "--json", "--op", "irq.*",
                           "--function", "_start").stdout)
    assert [s["address"] for s in j["sites"]] == addresses and j["selected"] == len(addresses)
    assert sum(j["counts"].values()) == want["site_count"]  # every site is still patched
    assert set(j["ops"]) <= {s["op"] for s in want["sites"]}
    d = json.loads(pvpatch("diff", kernel, str(out), "--json", "--op", "irq.*",
                           "--function", "_start").stdout)
    assert [s["address"] for s in d["sites"]] == addresses
    assert d["changed_sites"] == full["changed_sites"]
    text = pvpatch("diff", kernel, str(out), "--sites", "--op", "irq.*", "--function", "_start")
    assert [row.split()[0] for row in _listing(text.stdout) if row.startswith("0x")] == addresses


# -- diff: two images of one build -------------------------------------------------------------

def test_diff_refuses_another_build_by_its_section_layout(kernel, tmp_path):
    """No build-id in either: same banner, but another build's sections differ."""
    other = str(assemble("pv_kernel61.S", 64, defsyms={"XEN_NOTES": 1, "SITE_NOT_CALL": 1}))
    refused(["diff", kernel, other], kernel, other, "section", inputs=(kernel, other))


def test_diff_refuses_another_build_by_build_id(tmp_path):
    a = str(assemble("pv_kernel61.S", 64, ld_args=("--build-id=sha1",), name="bid-a"))
    b = str(assemble("pv_kernel61.S", 64, defsyms={"NATIVE_NULL": 1},
                     ld_args=("--build-id=sha1",), name="bid-b"))
    refused(["diff", a, b], a, b, "build-id", inputs=(a, b))


def test_diff_takes_an_apply_output_of_the_same_build(tmp_path):
    a = str(assemble("pv_kernel61.S", 64, ld_args=("--build-id=sha1",), name="bid-a"))
    out = tmp_path / "out"
    assert pvpatch("apply", a, "-o", str(out), "--backend", "xen").returncode == 0
    with unchanged(a, out):
        r = pvpatch("diff", a, str(out), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["build_id"] == d["patched_build_id"] is not None and d["changed_sites"] > 0


# -- --system-map of another build -------------------------------------------------------------

def _nm(path: str, dest: Path, shift: dict[str, int] | None = None) -> Path:
    lines = subprocess.run(["nm", "-n", path], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and shift and parts[2] in shift:
            parts[0] = f"{int(parts[0], 16) + shift[parts[2]]:016x}"
        out.append(" ".join(parts))
    dest.write_text("\n".join(out) + "\n")
    return dest


def test_system_map_anchors_must_agree(kernel, tmp_path):
    ok = _nm(kernel, tmp_path / "System.map")
    assert pvpatch("inspect", kernel, "--system-map", str(ok)).returncode == 0
    moved = _nm(kernel, tmp_path / "moved.map", {"linux_banner": 0x40})
    refused(["inspect", kernel, "--system-map", str(moved)], str(moved), kernel,
            "linux_banner", inputs=(kernel, moved))


def test_system_map_of_a_stripped_image_is_held_to_the_section_edges(kernel, tmp_path):
    """No symbols of its own to compare with: the linker script's edge symbols and the
    banner's bytes decide."""
    stripped = tmp_path / "stripped"
    subprocess.run(["objcopy", "--strip-all", kernel, str(stripped)], check=True)
    pvpatch_ok = pvpatch("inspect", str(stripped), "--system-map",
                         str(_nm(kernel, tmp_path / "System.map")))
    assert pvpatch_ok.returncode == 0, pvpatch_ok.stderr
    moved = _nm(kernel, tmp_path / "moved.map", {"linux_banner": 0x40})
    refused(["notes", str(stripped), "--system-map", str(moved)], "linux_banner",
            "does not point", inputs=(stripped, moved))


# -- --btf of another kernel --------------------------------------------------------------------

def _btf(names: list[str]) -> bytes:
    """Raw BTF shaped like the fixture's, the template's 13 members named ``names``."""
    w = BtfWriter()
    u8 = w.int_("u8", 1)
    fn = w.ptr(w.func_proto(0, []))
    w.struct("paravirt_patch_template", 8 * len(names), [(n, fn, 64 * i, 0)
                                                         for i, n in enumerate(names)])
    w.struct("paravirt_patch_site", 16, [("instr", w.ptr(u8), 0, 0), ("type", u8, 64, 0),
                                         ("len", u8, 72, 0)])
    s32, u16 = w.int_("s32", 4, signed=True), w.int_("u16", 2)
    w.struct("alt_instr", 12, [("instr_offset", s32, 0, 0), ("repl_offset", s32, 32, 0),
                               ("cpuid", u16, 64, 0), ("instrlen", u8, 80, 0),
                               ("replacementlen", u8, 88, 0)])
    return w.blob()


SLOTS = ["io_delay", "cpuid", "save_fl", "irq_disable", "irq_enable", "read_cr2", "pte_val",
         "write_cr3", "set_pte", "alloc_p4d", "queued_spin_unlock", "vcpu_is_preempted", "kick"]


def test_btf_whose_members_name_other_functions_is_refused(kernel, tmp_path):
    good = tmp_path / "good.btf"
    good.write_bytes(_btf(SLOTS))
    r = pvpatch("inspect", kernel, "--btf", str(good), "--json")
    assert r.returncode == 0, r.stderr
    assert {o["op"] for o in json.loads(r.stdout)["ops"]} >= {"io_delay", "save_fl"}
    shifted = tmp_path / "shifted.btf"
    shifted.write_bytes(_btf(SLOTS[1:] + SLOTS[:1]))
    for cmd in ("inspect", "check"):
        refused([cmd, kernel, "--btf", str(shifted)], str(shifted), kernel, "slots hold",
                inputs=(kernel, shifted))


def test_btf_whose_template_is_another_size_is_refused(kernel, tmp_path):
    longer = tmp_path / "longer.btf"
    longer.write_bytes(_btf([*SLOTS, "extra"]))
    refused(["apply", kernel, "--dry-run", "--btf", str(longer)], "112 bytes", "pv_ops is 104",
            inputs=(kernel, longer))


def test_btf_of_a_6_8_kernel_on_a_6_1_image_is_refused(kernel, tmp_path):
    k612 = str(assemble("pv_kernel61.S", 64, defsyms={"ERA612": 1}))
    btf = tmp_path / "612.btf"
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.BTF", k612, str(btf)],
                   check=True)
    refused(["check", kernel, "--btf", str(btf)], str(btf), "alt_instr", inputs=(kernel, btf))


# -- --baseline: an earlier build of the same kind ---------------------------------------------

def test_baseline_of_another_series_is_refused(kernel, tmp_path):
    newer = str(assemble("pv_kernel61.S", 64, defsyms={"XEN_NOTES": 1, "BANNER_NEWER": 1}))
    refused(["check", kernel, "--baseline", newer], "7.9.0-fixture", "kernel series",
            inputs=(kernel, newer))


def test_baseline_report_of_another_architecture_is_refused(kernel, tmp_path):
    r = pvpatch("check", kernel, "--json")
    doc = json.loads(r.stdout)
    assert doc["machine"] == "x86_64"
    same = tmp_path / "same.json"
    same.write_text(json.dumps(doc))
    assert pvpatch("check", kernel, "--baseline", str(same)).returncode == 0
    other = tmp_path / "i386.json"
    other.write_text(json.dumps({**doc, "machine": "i386"}))
    refused(["check", kernel, "--baseline", str(other)], "architecture", inputs=(kernel, other))
    flavour = tmp_path / "flavour.json"
    flavour.write_text(json.dumps({**doc, "kernel": "6.1.0-fixture-rt"}))
    refused(["check", kernel, "--baseline", str(flavour)], "flavour", inputs=(kernel, flavour))
    schemaless = tmp_path / "schemaless.json"
    schemaless.write_text(json.dumps({k: v for k, v in doc.items() if k != "schema"}))
    refused(["check", kernel, "--baseline", str(schemaless)], "schema",
            inputs=(kernel, schemaless))
