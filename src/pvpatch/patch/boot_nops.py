"""Which NOP table ``add_nops`` pads with: the release's rule applied to the boot CPU.

Up to 5.12 the kernel picked the table at boot (``find_nop_table``, then
``arch_init_ideal_nops``); from 5.13 it is fixed at build time. The rules and the feature bits
they read are data in :mod:`pvpatch.patch.native_tables`; this module only evaluates them and
says why, in one line a report can print.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.cpu import DEFAULT, Cpu
from pvpatch.patch import native_tables as T
from pvpatch.patch.nops import NOP_TABLES, NopTable, default_nops


@dataclass(frozen=True)
class NopChoice:
    table: NopTable
    why: str  # "k8 NOPs: 5.10 arch_init_ideal_nops: AuthenticAMD family 0xf … (--cpu …)"
    cpu_matters: bool  # False from 5.13 (and for the 6.8+ planner)
    cpu: Cpu


def choose(bits: int, version: T.Version | None, cpu: Cpu = DEFAULT) -> NopChoice:
    """The table for this image class and version on ``cpu``; ``version`` None: unknown."""
    if version is None or T.FIXED_NOPS.holds(version):
        return fixed(bits, version, cpu)
    rule = next((r for r in T.NOP_RULES if r.bits == bits and r.span.holds(version)), None)
    if rule is None:
        table = default_nops(bits, version[:2])
        return NopChoice(table, f"{table.name} NOPs: no NOP rule recorded for "
                         f"{_short(version)} ({bits}-bit): assumed", False, cpu)
    return _evaluate(rule, version, cpu)


def fixed(bits: int, version: T.Version | None, cpu: Cpu = DEFAULT) -> NopChoice:
    """5.13+: x86_nops[] is fixed at build time, whatever the CPU."""
    table = default_nops(bits, None if version is None else version[:2])
    return NopChoice(table, f"{table.name} NOPs: fixed at build time from 5.13 "
                     f"({T.FIXED_NOPS_SOURCE}): the CPU does not matter", False, cpu)


def _evaluate(rule: T.NopRule, version: T.Version, cpu: Cpu) -> NopChoice:
    """First test that holds, with the tests of the CPU's vendor that failed before it."""
    passed: list[str] = []
    features: dict[str, tuple[bool, str]] = {}
    for test in rule.tests:
        holds = _holds(test, rule, version, cpu, features)
        if holds:
            table = NOP_TABLES[test.table]
            steps = "; ".join([*passed, f"{test.text} → {test.table}"])
            notes = "".join(f"; X86_FEATURE_{name} {'set' if on else 'not set'}: {why}"
                            for name, (on, why) in features.items())
            why = (f"{table.name} NOPs: {_short(version)} {rule.function}: {cpu.describe()}: "
                   f"{steps} ({cpu.origin()}){notes}")
            return NopChoice(table, why, True, cpu)
        if test.vendor == cpu.vendor or (test.vendor is None and test.feature):
            passed.append(f"not {test.text}")
    raise AssertionError(f"NOP rule {rule.span} has no test that always holds")


def _holds(test: T.CpuTest, rule: T.NopRule, version: T.Version, cpu: Cpu,
           features: dict[str, tuple[bool, str]]) -> bool:
    if test.vendor is not None and test.vendor != cpu.vendor:
        return False
    if not (test.families[0] <= cpu.family <= test.families[1]
            and test.models[0] <= cpu.model <= test.models[1]
            and cpu.model not in test.not_models):
        return False
    if test.feature is None:
        return True
    if test.feature not in features:
        features[test.feature] = feature(test.feature, rule.bits, version, cpu)
    return features[test.feature][0]


def feature(name: str, bits: int, version: T.Version, cpu: Cpu) -> tuple[bool, str]:
    """Is X86_FEATURE_<name> set when the table is chosen, and the kernel's reason."""
    for f in T.CPU_FEATURES:
        if f.name == name and f.bits == bits and f.span.holds(version):
            if f.value is not None:
                return f.value, f.why
            on = f.vendor == cpu.vendor and f.families[0] <= cpu.family <= f.families[1]
            return on, f.why
    return False, "nothing sets it in this release"


def _short(v: T.Version) -> str:
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[0] == 2 else "")


# One CPU per branch of the NOP rules (patch.native_tables.NOP_RULES), tried in turn when
# a memory image is verified and no --cpu says what the machine was (verify.configs). Each is a
# part the branch's test holds for; a kernel whose rule sends two of them to one table is tried
# once.
CPU_CLASSES = (
    ("intel:6:94", "Intel with NOPL, e.g. a Skylake (QEMU's Skylake-Client)"),
    ("amd:15:107", "AMD family 0xf, a K8 (QEMU's qemu64 and its Xen -cpu max)"),
    ("amd:23:1", "AMD family > 0xf, e.g. an EPYC"),
    ("amd:6:2", "AMD family 6, a K7 (i386)"),
    ("intel:6:23", "an Intel decoder-quirk model, e.g. a Core 2 Penryn"),
    ("hygon:24:0", "Hygon"),
    ("centaur:6:15", "any other vendor, e.g. a VIA Nano"),
)

