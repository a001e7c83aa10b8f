"""Already-patched images, on fixtures: recognised from the bytes at the sites, named by the
configuration they match, refused by apply and diff, one finding in check, said by inspect —
and a types-less 32-bit image patched in place stays readable.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import assemble, one_line_error, pvpatch, sha256

from pvpatch.cli import cli
from pvpatch.kernel import builtin_choice
from pvpatch.types.builtin import BuiltinTable

CONFIGS = {"native": ("--backend", "native"), "xen2": ("--backend", "xen", "--vcpus", "2"),
           "xen1": ("--backend", "xen", "--vcpus", "1")}


@pytest.fixture(scope="module", params=["6.1", "6.12"])
def kernel(request) -> str:
    defsyms = {"XEN_NOTES": 1, **({"ERA612": 1} if request.param == "6.12" else {})}
    return str(assemble("pv_kernel61.S", 64, defsyms=defsyms))


@pytest.fixture(autouse=True)
def kernel_untouched(request):
    """Whatever a test runs, the fixture kernel it read is byte for byte as it was."""
    path = request.getfixturevalue("kernel") if "kernel" in request.fixturenames else None
    before = sha256(path) if path else None
    yield
    if path:
        assert sha256(path) == before


@pytest.fixture(scope="module", params=list(CONFIGS))
def patched(request, kernel, tmp_path_factory) -> tuple[str, str]:
    """(a copy of the fixture as `pvpatch apply` writes it, the options that wrote it)."""
    out = tmp_path_factory.mktemp("patched") / "vmlinux.patched"
    args = CONFIGS[request.param]
    r = pvpatch("apply", kernel, "-o", str(out), *args)
    assert r.returncode == 0, r.stderr
    return str(out), " ".join(args)


def test_inspect_names_the_configuration_and_counts_no_problem(patched):
    path, options = patched
    before = sha256(path)
    r = pvpatch("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["problems"] == 0
    assert [m["options"] for m in d["already_patched"]["matches"]] == [options]
    assert d["already_patched"]["patched_form"] == d["site_count"]
    text = pvpatch("inspect", path).stdout
    assert f"  patched   {d['site_count']} of {d['site_count']} sites hold what boot " \
           f"patching leaves" in text and f"it matches {options}" in text
    assert "problems  none" in text
    listed = json.loads(pvpatch("inspect", path, "--json", "--sites").stdout)["sites"]
    calls = [x for x in listed if x["bytes"].startswith("e8")]
    assert calls and all(not x["op"].startswith("type ") for x in calls)  # 6.8+: recovered
    assert sha256(path) == before


def test_apply_refuses_it_saying_which_configuration(patched, tmp_path):
    path, options = patched
    before = sha256(path)
    for argv in (["-o", str(tmp_path / "again")], ["--dry-run"], ["--in-place"]):
        one_line_error(pvpatch("apply", path, *argv),
                       f"{path} was already patched by pvpatch apply (it matches {options}); "
                       "apply needs the unpatched vmlinux")
    assert sha256(path) == before and not (tmp_path / "again").exists()


def test_check_gives_one_finding_for_the_image(patched):
    path, options = patched
    before = sha256(path)
    r = pvpatch("check", path, "--json")
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    sited = [f for f in d["findings"] if f["family"] != "xen"]
    assert [(f["check"], f["severity"]) for f in sited] == [("image.already-patched", "error")]
    assert f"it matches {options}" in sited[0]["message"]
    assert d["backends"] == [] and any("already patched" in n for n in d["notes"])
    assert sha256(path) == before


def test_diff_refuses_it_as_original(patched, kernel):
    path, options = patched
    one_line_error(pvpatch("diff", path, kernel), path, f"it matches {options}",
                   "diff needs the unpatched vmlinux as ORIGINAL")
    assert pvpatch("diff", kernel, path).returncode == 0  # the right way round


def test_a_pristine_image_is_not_patched(kernel):
    d = json.loads(pvpatch("inspect", kernel, "--json").stdout)
    assert d["already_patched"] is None and d["problems"] == 0


def test_one_bad_site_in_a_pristine_image_stays_a_site_finding():
    path = str(assemble("pv_kernel61.S", 64, defsyms={"XEN_NOTES": 1, "SITE_NOT_CALL": 1}))
    d = json.loads(pvpatch("check", path, "--json", "--backend", "native").stdout)
    assert [f["check"] for f in d["findings"]] == ["site.not-indirect-call"]


# -- a types-less 32-bit image, patched in place --------------------------------------------------

SLOTS = (("cpu.io_delay", "native_io_delay"), ("irq.save_fl", "native_save_fl"),
         ("irq.irq_disable", "native_irq_disable"), ("mmu.pte_val", "_paravirt_ident_64"),
         ("mmu.flush", "_paravirt_nop"), ("lock.kick", "NULL"))


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def bare32(tmp_path, monkeypatch) -> str:
    """pv_sites.S for i386 with no types and no pv_ops symbol (a 686 bzImage's vmlinux), a
    built-in table that fits it, and a copy patched in place by `pvpatch apply`."""
    table = BuiltinTable("6.1 i386 fixture", (6, 1), 32, "fixture", "pv_sites.S", SLOTS)
    monkeypatch.setattr(builtin_choice, "tables", lambda: (table,))
    src = assemble("pv_sites.S", 32, defsyms={"I386": 1, "NO_PVOPS_SYM": 1, "PATCHER": 1},
                   ld_args=("-x",))
    path = tmp_path / "vmlinux"
    shutil.copyfile(src, path)
    r = run("apply", str(path), "--in-place")
    assert r.exit_code == 0, r.output
    return str(path)


def test_a_types_less_image_patched_in_place_is_still_read(bare32):
    """Its layout is detected from what boot patching leaves at every record; the table from
    the built-in table's initialiser, since no call site reads a slot any more."""
    before = sha256(bare32)
    r = run("inspect", bare32, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert "points at what boot patching leaves" in d["layout"]["detected_from"]
    assert "already patched" in d["pv_table"]["address_from"]
    assert d["pv_table"]["builtin_table"] == "6.1 i386 fixture"
    assert [m["options"] for m in d["already_patched"]["matches"]] == ["--backend native"]
    assert d["problems"] == 0
    r = run("apply", bare32, "--dry-run")
    assert r.exit_code == 2 and "was already patched by pvpatch apply (it matches --backend " \
                                "native)" in r.stderr
    r = run("check", bare32, "--json", "--backend", "native")
    assert r.exit_code == 1
    assert [f["check"] for f in json.loads(r.stdout)["findings"]] == ["image.already-patched"]
    assert sha256(bare32) == before


def test_without_a_table_it_is_still_recognised_as_patched(bare32, monkeypatch):
    """No table fits: nothing can be planned, yet the image is read and said to be patched."""
    monkeypatch.setattr(builtin_choice, "tables", lambda: ())
    r = run("inspect", bare32)
    assert r.exit_code == 0, r.output
    assert "but no configuration pvpatch plans writes these bytes" in r.stdout
    r = run("apply", bare32, "--dry-run")
    assert r.exit_code == 2 and f"{bare32} is already patched" in r.stderr
