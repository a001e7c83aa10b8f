"""The padding each release writes on each class of boot CPU, before 5.13.

Fixture: fixtures/pv_legacy.S (tests/legacy_fixtures.py) at one banner version per rule. The
site checked is the inline ``irq_disable`` (``cli``): 10 bytes in 2.6.20–23, 6 (i386) or 7
(x86-64) from 2.6.24, so its padding is 9, 5 or 6 bytes — long enough to tell every table
apart. The expected table of each case was worked out by hand from the kernel source:

- 2.6.20–23 arch/i386/kernel/alternative.c find_nop_table(): K8 bit → k8, K7 bit → k7, else
  the intel table; arch/i386/kernel/cpu/amd.c init_amd(): K8 for family 15 (2.6.23 adds
  0x10/0x11, 398cf2abdb5), K7 for family 6;
- 2.6.24–26 (32c464f5d97): i386 adds P4 (Intel family 15) and P3 (Intel family 6) → p6;
  x86-64: Intel family ≥ 6 → p6, else k8;
- 2.6.27–39 (f31d731e446): NOPL instead of P3/P4 — never set on i386 (detect_nopl), always on
  x86-64 (required-features.h); K8 up to family 0x11 until 2.6.35, then any family ≥ 0xf;
- 3.0–3.5 arch_init_ideal_nops() has no break after the Intel case: every CPU falls into the
  default (x86-64 k8; i386 K8/K7, which init_amd() sets only later: the intel table);
- 3.6: the break; Intel family 6 models 0x0f–0x2f bar 0x1c/0x26/0x27 → k8, else p6 with NOPL
  (x86-64) or the intel table (i386);
- 4.2: AMD family > 0xf → p6; 4.18: early_init_amd() sets K7/K8 before the choice;
- 4.20: Hygon → p6 (earlier kernels do not know the vendor: the default branch).
"""

from __future__ import annotations

import pytest
from legacy_fixtures import legacy_kernel

from pvpatch.backends import load_backend
from pvpatch.cpu import parse_cpu
from pvpatch.kernel.model import KernelModel
from pvpatch.patch.plan import nop_choice, plan

# arch/x86/include/asm/nops.h (read in 2.6.20, 2.6.24, 2.6.27, 4.19 and 5.10: the same bytes)
TABLES = {
    "intel": ("90", "89f6", "8d7600", "8d742600", "908d742600", "8db600000000",
              "8db42600000000", "908db42600000000"),
    "k8": ("90", "6690", "666690", "66666690", "6666906690", "666690666690", "66666690666690",
           "6666669066666690"),
    "k7": ("90", "8bc0", "8d0420", "8d442000", "8d44200090", "8d8000000000", "8d040500000000",
           "8d04050000000090"),
    "p6": ("90", "6690", "0f1f00", "0f1f4000", "0f1f440000", "660f1f440000", "0f1f8000000000",
           "0f1f840000000000"),
}


def fill(table: str, n: int) -> str:
    """add_nops(): the longest NOP (at most 8 bytes) that fits, again and again."""
    return TABLES[table][7] * (n // 8) + (TABLES[table][n % 8 - 1] if n % 8 else "")


ERA = {22620: 1, 22623: 2}  # others: 3 (2.6.24–4.19) or 4 (4.20–5.12)
CASES = [
    # (bits, banner, --cpu, table)
    (32, 22620, "amd:15", "k8"), (32, 22620, "amd:6", "k7"), (32, 22620, "amd:0x10", "intel"),
    (32, 22620, "intel", "intel"),
    (32, 22623, "amd:0x10", "k8"), (32, 22623, "amd:0x12", "intel"),
    (32, 22624, "intel:6", "p6"), (32, 22624, "intel:15", "p6"), (32, 22624, "intel:5", "intel"),
    (32, 22624, "amd:6", "k7"), (32, 22624, "amd:15", "k8"), (32, 22624, "centaur:6", "intel"),
    (32, 22627, "intel", "intel"), (32, 22627, "amd:0x11", "k8"), (32, 22627, "amd:0x12", "intel"),
    (32, 22627, "amd:6", "k7"),
    (32, 22636, "amd:0x12", "k8"),
    (32, 30200, "intel:6:0x17", "intel"), (32, 30200, "amd:15", "intel"),
    (32, 30200, "amd:6", "intel"),
    (32, 30600, "intel:6:0x17", "k8"), (32, 30600, "intel:6:0x1c", "intel"),
    (32, 30600, "intel", "intel"), (32, 30600, "amd:0x17", "intel"),
    (32, 40200, "amd:0x17", "p6"), (32, 40200, "amd:15", "intel"),
    (32, 41700, "amd:15", "intel"), (32, 41700, "amd:6", "intel"),
    (32, 41800, "amd:15", "k8"), (32, 41800, "amd:6", "k7"), (32, 41800, "hygon", "intel"),
    (32, 50200, "hygon", "p6"), (32, 50200, "zhaoxin", "intel"), (32, 50200, "amd:15", "k8"),
    (64, 22625, "intel:6", "p6"), (64, 22625, "intel:15", "p6"), (64, 22625, "amd:15", "k8"),
    (64, 22625, "centaur:6", "k8"),
    (64, 22627, "intel:6:0x17", "p6"), (64, 22627, "amd:0x10", "k8"),
    (64, 30200, "intel", "k8"), (64, 30200, "amd:0x17", "k8"),
    (64, 30600, "intel", "p6"), (64, 30600, "intel:6:0x17", "k8"),
    (64, 30600, "intel:6:0x0f", "k8"),
    (64, 30600, "intel:6:0x2f", "k8"), (64, 30600, "intel:6:0x30", "p6"),
    (64, 30600, "intel:6:0x1c", "p6"), (64, 30600, "intel:6:0x26", "p6"),
    (64, 30600, "intel:6:0x27", "p6"), (64, 30600, "intel:6:0x0e", "p6"),
    (64, 30600, "intel:15", "p6"), (64, 30600, "amd:0x17", "k8"),
    (64, 40200, "amd:0x10", "p6"), (64, 40200, "amd:15", "k8"), (64, 40200, "hygon", "k8"),
    (64, 51000, "hygon", "p6"), (64, 51000, "amd:15:107", "k8"), (64, 51000, "amd:23:1", "p6"),
    (64, 51000, "centaur", "k8"), (64, 51000, "zhaoxin", "k8"), (64, 51000, "intel", "p6"),
    (64, 51000, "intel:6:0x1a", "k8"),
]


def irq_disable(bits: int, banner: int, cpu: str) -> tuple[str, int, str]:
    """(the cli site's bytes after boot, its length, the table's name) for ``cpu``."""
    era = ERA.get(banner, 4 if banner >= 42000 else 3)
    with KernelModel.open(legacy_kernel(era, bits, banner)) as model:
        choice = nop_choice(model, parse_cpu(cpu))
        p = plan(model, load_backend(model, "native"), model.alternatives, choice)
    sp = next(x for x in p.patches if x.site.op.rsplit(".", 1)[-1] == "irq_disable")
    assert sp.outcome == "inline-native", sp.reason
    return sp.after.hex(), sp.site.length, choice.table.name


@pytest.mark.parametrize("bits,banner,cpu,table", CASES)
def test_padding_per_release_and_cpu(bits, banner, cpu, table):
    after, length, chosen = irq_disable(bits, banner, cpu)
    assert chosen == table
    assert after == "fa" + fill(table, length - 1)


def test_the_tables_differ_at_the_site():
    """The cases would prove nothing if two tables padded the checked sites alike."""
    for n in (5, 6, 9):
        assert len({fill(t, n) for t in TABLES}) == len(TABLES)


@pytest.mark.parametrize("bits,banner,cpu,needles", [
    (32, 30200, "amd:15", ("not X86_FEATURE_K8 set", "X86_FEATURE_K8 not set: init_amd() sets it",
                           "after setup_arch() has run arch_init_ideal_nops()")),
    (32, 22627, "intel", ("X86_FEATURE_NOPL not set: detect_nopl() clears it on i386",)),
    (64, 30200, "intel", ("3.2 arch_init_ideal_nops", "the default branch (x86-64) → k8")),
    (64, 40200, "hygon", ("HygonGenuine family 0x18 model 0x0: the default branch",)),
])
def test_the_reason_names_the_kernel_facts(bits, banner, cpu, needles):
    era = ERA.get(banner, 4 if banner >= 42000 else 3)
    with KernelModel.open(legacy_kernel(era, bits, banner)) as model:
        why = nop_choice(model, parse_cpu(cpu)).why
    for n in needles:
        assert n in why, why
