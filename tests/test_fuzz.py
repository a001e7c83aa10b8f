"""The short fuzz run: every scenario — every command, every input path — on its seeds.

`make fuzz` runs the long version (scripts/fuzz.py: 100,000 mutants, memory-limited worker
processes); this one keeps `make test` honest about the contract (scripts/fuzzing/runner.py):
exit 0, 1 or 2, one line on stderr with 2, no traceback, the inputs unchanged, nothing left
behind. Each scenario runs at least RUNS times, on every seed it fits in turn.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from fuzzing import btf as btf_mutants
from fuzzing import options, reports, text
from fuzzing.images import MUTATORS, mutate
from fuzzing.runner import _broken, run_case, state
from fuzzing.scenarios import SCENARIOS, Case
from fuzzing.seeds import seeds

RUNS = 8  # per scenario at least; a scenario that fits more seeds runs once on each


@pytest.fixture(scope="module")
def images() -> list:
    found = seeds()
    assert len(found) >= 20, "the fixture images to mutate must build"
    return found


def test_every_scenario_keeps_the_contract(images):
    rng = random.Random(20261121)
    failures, runs = [], {}
    for sc in SCENARIOS:
        fitting = [s for s in images if sc.fits(s)]
        assert fitting, f"no seed for {sc.name}"
        for n in range(max(RUNS, len(fitting))):
            o = run_case(sc, fitting[n % len(fitting)], images, rng.randrange(1 << 62), 20)
            runs[sc.name] = runs.get(sc.name, 0) + 1
            if o.failure:
                failures.append(o.failure)
    assert all(n >= RUNS for n in runs.values()) and len(runs) == len(SCENARIOS)
    assert not failures, "\n\n".join(failures[:5])


def test_the_seeds_cover_the_newest_shapes(images):
    by = {s.name: s for s in images}
    guests = by["7.x-guest-code"]
    assert {"kvm", "hyperv", "vmware"} <= set(guests.backends) and guests.functions
    assert "xen" in by["6.12-xen-code-notes"].backends and by["6.12-xen-code-notes"].functions
    for name in ("7.x-kallsyms", "7.x-kallsyms-bzimage-zstd", "6.1-kallsyms-bzimage-gzip"):
        assert by[name].kallsyms and by[name].backends, name  # stripped: kallsyms name all
    assert any(s.cpu_matters for s in images) and any(s.report for s in images)


def test_mutators_change_what_they_mutate(images):
    rng = random.Random(7)
    seed = next(s for s in images if s.name == "6.1-guest-code")
    for name, mutator in [*MUTATORS.items(), *seed.extra()]:
        buf = bytearray(seed.elf)
        what = mutator(buf, rng)
        assert what and (bytes(buf) != seed.elf or "out of range" in what), name
    mutant, log = mutate(seed.elf, rng)
    assert mutant != seed.elf and log
    for name, mutator in btf_mutants.MUTATORS.items():
        buf = bytearray(seed.btf)
        assert mutator(buf, rng) and bytes(buf) != seed.btf, name
    assert btf_mutants.records(seed.btf), "the BTF walk must find the type records"
    data, _ = reports.mutate(seed.report, rng)
    assert data != seed.report.encode()
    assert text.system_map(seed.system_map, rng)[0] != seed.system_map.encode()
    assert text.cpuinfo(rng)[0] != text.CPUINFO.encode()
    assert options.cpu_spec(rng)[0] is not None and options.guest_value("cmdline", rng)


def test_the_runner_sees_each_breach_of_the_contract(tmp_path):
    """The checker itself: a run that breaks the contract must be reported."""
    victim = tmp_path / "in"
    victim.write_bytes(b"input")
    case = Case(tmp_path, None, [], random.Random(1), inputs=[str(victim)])
    before = {str(victim): state(str(victim))}

    def result(code=0, stderr="", exc=None):
        return SimpleNamespace(exception=exc, exit_code=code, stdout="", stderr=stderr)

    assert _broken(result(), case, before, {}, tmp_path) is None
    assert "exception" in _broken(result(exc=KeyError("x")), case, before, {}, tmp_path)
    assert "exit status" in _broken(result(code=3), case, before, {}, tmp_path)
    assert "2 lines" in _broken(result(2, "a\nb\n"), case, before, {}, tmp_path)
    assert "traceback" in _broken(result(1, "Traceback (most"), case, before, {}, tmp_path)
    out = tmp_path / "out"
    out.write_bytes(b"half")
    assert "is file, was missing" in _broken(result(2, "one\n"), case, before,
                                             {str(out): ("absent", ("missing",))}, tmp_path)
    (tmp_path / ".pvpatch-x.tmp").write_bytes(b"")
    assert "temporary files" in _broken(result(), case, before, {}, tmp_path)
    victim.write_bytes(b"changed")
    assert "inputs modified" in _broken(result(), case, before, {}, tmp_path)


def test_the_installed_package_carries_no_fuzzing_code():
    """The fuzzer is test machinery (scripts/fuzzing/): src/ neither holds nor imports it."""
    import importlib.util

    assert importlib.util.find_spec("pvpatch.fuzz") is None
    src = Path(__file__).resolve().parent.parent / "src"
    for path in src.rglob("*.py"):
        source = path.read_text()
        assert "import fuzzing" not in source and "from fuzzing" not in source, path
