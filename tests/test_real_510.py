"""Real-kernel tier: Debian's 5.10 pads its pv sites with the boot CPU's NOPs.

5.10's arch_init_ideal_nops() gives QEMU's qemu64 (AuthenticAMD family 15 model 107) the K8
table and a Skylake (GenuineIntel family 6 model 94) the P6 one; booted, the kernel agrees at
every .text site (docs/boot-test.md). Here the plans are checked against what the kernel
writes at two kinds of site, derived from the image rather than from addresses: the inline
``cli`` of ``irq.irq_disable`` (native_patch: ``fa``, then add_nops for the rest) and the
``_paravirt_nop`` ops (add_nops over the whole site).
"""

from __future__ import annotations

import pytest
from conftest import real_kernel

from pvpatch.backends import load_backend
from pvpatch.cpu import parse_cpu
from pvpatch.kernel.model import KernelModel
from pvpatch.patch.plan import nop_choice, plan

pytestmark = pytest.mark.realkernel

# arch/x86/include/asm/nops.h of 5.10 (linux-source-5.10): K8_NOP1…8 and P6_NOP1…8
K8 = ("90", "6690", "666690", "66666690", "6666906690", "666690666690", "66666690666690",
      "6666669066666690")
P6 = ("90", "6690", "0f1f00", "0f1f4000", "0f1f440000", "660f1f440000", "0f1f8000000000",
      "0f1f840000000000")


def fill(table: tuple[str, ...], n: int) -> bytes:
    return bytes.fromhex(table[7] * (n // 8) + (table[n % 8 - 1] if n % 8 else ""))


@pytest.fixture(scope="module")
def model510():
    with KernelModel.open(str(real_kernel("amd64", "5.10"))) as m:
        yield m


@pytest.fixture(scope="module")
def plans(model510):
    be = load_backend(model510, "native")
    out = {}
    for spec in ("amd:15:107", "intel:6:94"):
        choice = nop_choice(model510, parse_cpu(spec))
        out[spec] = plan(model510, be, model510.alternatives, choice)
    return out


def test_the_choice_for_each_cpu(plans):
    k8, p6 = plans["amd:15:107"].nop_choice, plans["intel:6:94"].nop_choice
    assert (k8.table.name, p6.table.name) == ("k8", "p6")
    assert k8.cpu_matters and "AuthenticAMD family 0xf model 0x6b" in k8.why
    assert "GenuineIntel family 0x6 model 0x5e" in p6.why


@pytest.mark.parametrize("spec,table", [("amd:15:107", K8), ("intel:6:94", P6)])
def test_inline_cli_and_nop_sites_are_padded_with_the_table(plans, spec, table):
    patches = plans[spec].patches
    cli = [p for p in patches if p.site.op == "irq.irq_disable" and p.outcome == "inline-native"]
    nops = [p for p in patches if p.outcome == "nop"]
    assert cli and nops, "5.10 inlines cli and has _paravirt_nop ops"
    assert any(p.site.length - 1 >= 3 for p in cli)  # long enough to tell K8 from P6
    for p in cli:
        assert p.after == b"\xfa" + fill(table, p.site.length - 1), hex(p.site.address)
    for p in nops:
        assert p.after == fill(table, p.site.length), hex(p.site.address)


def test_the_plans_differ_exactly_where_the_tables_do(plans):
    """K8 and P6 agree on 1- and 2-byte NOPs, so only longer padding may differ."""
    k8, p6 = plans["amd:15:107"].patches, plans["intel:6:94"].patches
    differ = [a for a, b in zip(k8, p6, strict=True) if a.after != b.after]
    assert differ
    for a, b in zip(k8, p6, strict=True):
        assert a.outcome == b.outcome and a.target == b.target
        same = a.after == b.after
        pad = a.site.length - {"direct-call": 5, "direct-jmp": 5, "nop": 0}.get(a.outcome, 1)
        if a.outcome in ("direct-call", "direct-jmp", "nop") or a.site.op == "irq.irq_disable":
            assert same == (pad < 3), (hex(a.site.address), a.outcome, pad)
