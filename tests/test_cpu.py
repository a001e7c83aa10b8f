"""The boot CPU: ``--cpu`` and ``--cpuinfo`` parsing, and how the commands take them.

Usage contract (docs/apply.md): a bad value is one line on stderr and exit status 2; the two
options exclude each other; ``inspect`` takes them only with ``--backend`` (without it nothing
is planned, so a CPU would be ignored, and options that do not apply are refused).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import assemble, one_line_error
from legacy_fixtures import legacy_kernel

from pvpatch.cpu import DEFAULT, parse_cpu, parse_cpuinfo, resolve_cpu
from pvpatch.errors import InputError, UsageError

# The first processor of a QEMU qemu64 guest's /proc/cpuinfo (trimmed), then a second one
# that must not be read.
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 15
model\t\t: 107
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 ht syscall nx lm rep_good nopl cpuid pni cx16 hypervisor lahf_lm svm

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 94
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("spec,vendor,family,model,assumed", [
    ("amd:15:107", "amd", 15, 107, ""),  # QEMU's qemu64
    ("AMD:0xf:0x6b", "amd", 15, 107, ""),
    ("intel:6:94", "intel", 6, 94, ""),
    ("intel:6", "intel", 6, 0, "model 0 assumed"),
    ("intel", "intel", 6, 0x9E, "family 0x6 model 0x9e assumed"),
    ("amd", "amd", 0x19, 1, "family 0x19 model 0x1 assumed"),
    ("hygon", "hygon", 0x18, 0, "family 0x18 model 0x0 assumed"),
    ("centaur:6:15", "centaur", 6, 15, ""),
    ("zhaoxin:7:0x3b", "zhaoxin", 7, 0x3B, ""),
    ("GenuineIntel:6:0x55", "intel", 6, 0x55, ""),
])
def test_cpu_spec(spec, vendor, family, model, assumed):
    cpu = parse_cpu(spec)
    assert (cpu.vendor, cpu.family, cpu.model, cpu.flags) == (vendor, family, model, None)
    assert cpu.source == f"--cpu {spec}"
    assert cpu.assumed.startswith(assumed) and bool(cpu.assumed) == bool(assumed)


@pytest.mark.parametrize("spec,needle", [
    ("", "takes VENDOR"), ("amd:15:107:1", "takes VENDOR"), ("via", "unknown vendor"),
    ("amd:fifteen", "not a number"), ("amd:15:0x100", "outside"), ("amd:0x10f", "outside"),
    ("amd:-1", "outside"), (":15", "takes VENDOR")])
def test_bad_cpu_spec(spec, needle):
    with pytest.raises(UsageError, match=needle):
        parse_cpu(spec)


def test_cpuinfo_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    cpu = parse_cpuinfo(str(path))
    assert (cpu.vendor, cpu.vendor_id, cpu.family, cpu.model) == ("amd", "AuthenticAMD", 15, 107)
    assert {"nopl", "lm", "svm"} <= cpu.flags and "fpu" in cpu.flags
    assert cpu.describe() == "AuthenticAMD family 0xf model 0x6b"


def test_cpuinfo_other_vendor_takes_the_default_branch(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor : 0\nvendor_id : CyrixInstead\ncpu family : 6\nmodel : 2\n")
    cpu = parse_cpuinfo(str(path))
    assert (cpu.vendor, cpu.vendor_id, cpu.flags) == ("other", "CyrixInstead", None)


@pytest.mark.parametrize("text,needle", [
    ("hello\n", "no vendor_id, cpu family, model line"),
    ("vendor_id : GenuineIntel\ncpu family : six\nmodel : 1\n", "not a decimal number"),
    # found by the fuzzer: out of CPUID's range no NOP rule's default test matched, and
    # planning a pre-5.13 kernel failed an assertion
    ("vendor_id : GenuineIntel\ncpu family : 6\nmodel : 256\n", "model 256 is outside 0–255"),
    ("vendor_id : GenuineIntel\ncpu family : 271\nmodel : 1\n", "outside 0–270"),
    ("vendor_id : GenuineIntel\ncpu family : -1\nmodel : 1\n", "not a decimal number"),
    ("vendor_id : GenuineIntel\ncpu family : 6\nmodel : " + "9" * 5000 + "\n", "outside"),
    ("vendor_id : GenuineIntel\ncpu family : \u0666\nmodel : 1\n", "not a decimal number")])
def test_not_a_cpuinfo(tmp_path, text, needle):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    with pytest.raises(InputError, match=needle):
        parse_cpuinfo(str(path))


def test_cpuinfo_out_of_range_is_a_one_line_error_for_a_pre_5_13_plan(tmp_path):
    from legacy_fixtures import xen_legacy_kernel

    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO.replace("model\t\t: 107", "model\t\t: 256"))
    one_line_error(run("apply", xen_legacy_kernel(3, 32, 40900), "--dry-run", "--cpuinfo",
                       str(info)), "model 256 is outside")


def test_resolve_cpu():
    assert resolve_cpu(None, None) is DEFAULT and DEFAULT.is_default
    with pytest.raises(UsageError, match="exclude each other"):
        resolve_cpu("amd", "/proc/cpuinfo")


# -- the commands -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k510() -> str:
    return legacy_kernel(4, 64, 51000)  # a 5.10 kernel (G4): the boot CPU picks its NOPs


def test_options_exclude_each_other_everywhere(k510, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    both = ("--cpu", "amd", "--cpuinfo", str(info))
    for args in (("apply", k510, "--dry-run"), ("check", k510), ("diff", k510, k510),
                 ("inspect", k510, "--backend", "native")):
        one_line_error(run(*args, *both), "--cpu and --cpuinfo exclude each other")


@pytest.mark.parametrize("option", [("--cpu", "amd:15:107"), ("--cpuinfo", "/proc/cpuinfo")])
def test_inspect_refuses_a_cpu_without_backend(k510, option):
    one_line_error(run("inspect", k510, *option), f"{option[0]} only means something with "
                   "--backend")


def test_bad_values_are_one_line(k510, tmp_path):
    bad = tmp_path / "not-cpuinfo"
    bad.write_text("this is not a cpuinfo\n")
    one_line_error(run("apply", k510, "--dry-run", "--cpu", "amd:15:x"), "not a number")
    one_line_error(run("check", k510, "--cpu", "sparc"), "unknown vendor")
    one_line_error(run("apply", k510, "--dry-run", "--cpuinfo", str(bad)),
                   "not a /proc/cpuinfo", str(bad))
    one_line_error(run("diff", k510, k510, "--cpuinfo", str(tmp_path / "missing")),
                   "cannot open")  # as for every other file


QEMU64_WHY = ("k8 NOPs: 5.10 arch_init_ideal_nops: AuthenticAMD family 0xf model 0x6b: not AMD "
              "family > 0xf; the default branch (x86-64) → k8 (--cpu amd:15:107)")


def test_the_report_says_which_table_and_why(k510, tmp_path):
    r = run("apply", k510, "--dry-run", "--cpu", "amd:15:107")
    assert r.returncode == 0 and f"  nops      {QEMU64_WHY}\n" in r.stdout
    doc = json.loads(run("apply", k510, "--dry-run", "--json", "--cpu", "amd:15:107").stdout)
    assert doc["nop_table"] == "k8" and doc["nops"]["why"] == QEMU64_WHY
    assert doc["nops"]["cpu_matters"] is True
    assert doc["nops"]["cpu"] == {"vendor": "amd", "vendor_id": "AuthenticAMD", "family": 15,
                                  "model": 107, "source": "--cpu amd:15:107", "assumed": None,
                                  "flags": None}
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    check = json.loads(run("check", k510, "--json", "--cpuinfo", str(info)).stdout)
    assert check["nops"]["table"] == "k8"
    assert check["nops"]["why"].endswith(f"(--cpuinfo {info})")
    assert "nopl" in check["nops"]["cpu"]["flags"]
    text = run("inspect", k510, "--backend", "native", "--cpu", "intel:6:94").stdout
    assert "  nops      p6 NOPs: 5.10 arch_init_ideal_nops: GenuineIntel family 0x6 model " \
           "0x5e: not the decoder-quirk models" in text
    doc = json.loads(run("inspect", k510, "--backend", "native", "--json").stdout)
    assert doc["backend"]["nops"]["table"] == "p6" and "default: a current x86 CPU" in \
        doc["backend"]["nops"]["why"]


def test_default_cpu_is_said(k510):
    r = run("apply", k510, "--dry-run")
    assert "(default: a current x86 CPU, taken as GenuineIntel family 6 model 0x9e; --cpu or " \
           "--cpuinfo for another)" in r.stdout


def test_diff_judges_padding_for_the_cpu(k510, tmp_path):
    out = tmp_path / "k8"
    assert run("apply", k510, "-o", str(out), "--cpu", "amd:15:107").returncode == 0
    k8 = json.loads(run("diff", k510, str(out), "--json", "--cpu", "amd:15:107").stdout)
    p6 = json.loads(run("diff", k510, str(out), "--json", "--cpu", "intel:6:94").stdout)
    assert k8["padding"]["other"] == 0 and k8["padding"]["as_table"] > 0
    assert p6["padding"]["other"] > 0  # the 3+-byte fills differ between K8 and P6
    assert p6["padding"]["as_table"] + p6["padding"]["other"] == k8["padding"]["as_table"]
    assert "sites padded with p6 NOPs" in run("diff", k510, str(out), "--cpu",
                                              "intel:6:94").stdout


@pytest.mark.parametrize("defsyms,table", [({}, "p6"), ({"ERA612": 1}, "p6-11")])
def test_cpu_does_not_matter_from_5_13(defsyms, table):
    """pv_kernel61.S is a 6.1 image (5.13–6.7 planner), with ERA612 a 6.12 one (6.8+
    planner): x86_nops[] is fixed at build time."""
    path = str(assemble("pv_kernel61.S", 64, defsyms=defsyms))
    docs = [json.loads(run("apply", path, "--dry-run", "--json", *cpu).stdout)
            for cpu in ((), ("--cpu", "amd:15:107"), ("--cpu", "intel:6:0x17"))]
    assert {d["nop_table"] for d in docs} == {table}
    assert all(not d["nops"]["cpu_matters"] and "the CPU does not matter" in d["nops"]["why"]
               for d in docs)
    assert docs[0]["sites"] == docs[1]["sites"] == docs[2]["sites"]
