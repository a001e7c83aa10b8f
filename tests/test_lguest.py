"""`pvpatch apply --backend lguest` (i386, 2.6.23–4.13) on fixtures of both eras.

Fixture: fixtures/xen_legacy.S with LGUEST=1 (ERA 2: 2.6.23 paravirt_ops; ERA 3: 4.9's split
pv_*_ops), built by tests/legacy_fixtures.py. Expected bytes from the source:
- lguest_init (arch/i386/lguest/boot.c 2.6.23, arch/x86/lguest/boot.c 4.x) installs
  lguest_patch and its ops before start_kernel; read from the fixture's code;
- lguest_patch(): the op's lguest_insns[] template lgstart_<name> … lgend_<name> (cli for
  irq_disable: `movl $0, lguest_data+LGUEST_DATA_irq_enabled`, c7 05 abs32 imm32, 10 bytes;
  pushf for save_fl: `movl lguest_data+…, %eax`, a1 abs32, 5 bytes; head_32.S) when it fits,
  else paravirt_patch_default (arch/x86/kernel/paravirt.c of each era: jmp ops, calls refused
  unless the site's clobber mask holds CLBR_ANY, ≤4.18);
- padding: add_nops() with the GENERIC ("intel") table, the default CPU on i386.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import one_line_error
from legacy_fixtures import legacy_kernel, xen_legacy_kernel

from pvpatch.image.elf import ElfImage
from pvpatch.patch.templates import TEMPLATES

INTEL = {1: "90", 2: "89f6", 3: "8d7600", 5: "908d742600"}


def plan(path: str) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "pvpatch", "apply", path, "--dry-run", "--json",
                        "--backend", "lguest"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["sites"]


def lguest_data(path: str) -> str:
    with ElfImage(path) as im:
        return im.symbols.address("lguest_data").to_bytes(4, "little").hex()


def call(path: str, site: dict, target: str) -> str:
    with ElfImage(path) as im:
        rel = (im.symbols.address(target) - (int(site["address"], 16) + 5)) & 0xFFFFFFFF
    return "e8" + rel.to_bytes(4, "little").hex()


def test_4_9_templates_where_they_fit_else_the_default_patcher():
    path = xen_legacy_kernel(3, 32, 40900, LGUEST=1)
    s = plan(path)
    data = lguest_data(path)
    cli, pushf = f"c705{data}00000000", f"a1{data}"
    assert s[1]["outcome"] == "unpatched"  # 6-byte irq_disable, mask eax|edx: call refused
    assert "does not fit" in s[1]["reason"]
    assert s[2]["after"] == pushf + INTEL[1] and s[2]["outcome"] == "inline-lguest"
    assert s[3]["after"] == call(path, s[3], "__raw_callee_save_lguest_irq_disable") + \
        INTEL[2]  # 7 bytes, CLBR_ANY: a call
    assert s[4]["after"] == cli + INTEL[3]  # the 13-byte DISABLE_INTERRUPTS site
    assert s[5]["outcome"] == "unpatched"  # irq_enable has no template, mask NONE
    iret = next(x for x in s if x["op"] == "pv_cpu_ops.iret")
    assert iret["outcome"] == "direct-jmp" and iret["target"] == "lguest_iret"


def test_2_6_23_paravirt_ops():
    path = xen_legacy_kernel(2, 32, 22623, LGUEST=1)
    s = plan(path)
    data = lguest_data(path)
    assert s[0]["after"] == f"c705{data}00000000"  # the 10-byte C site: cli fits
    assert s[1]["after"] == f"a1{data}" + INTEL[5]
    assert next(x for x in s if x["op"] == "set_pte")["target"] == "lguest_set_pte"


def test_the_fixtures_templates_are_the_sources():
    """The fixture assembles the source's instructions: same shape as patch/templates.py."""
    path = xen_legacy_kernel(3, 32, 40900, LGUEST=1)
    with ElfImage(path) as im:
        for tpl in (t for t in TEMPLATES if t.patcher == "lguest_patch"):
            start = im.symbols.address(tpl.symbol)
            end = im.symbols.address(tpl.symbol.replace("lgstart_", "lgend_"))
            code = im.read(start, end - start)
            data = im.symbols.address("lguest_data").to_bytes(4, "little")
            assert code == tpl.code.replace(bytes.fromhex("000050c0"), data)


def test_no_lguest_is_refused():
    r = subprocess.run([sys.executable, "-m", "pvpatch", "apply", legacy_kernel(4, 64),
                        "--dry-run", "--backend", "lguest"], capture_output=True, text=True)
    one_line_error(r, "lguest")
