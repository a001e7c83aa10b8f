"""Real-kernel tier: the KVM, Hyper-V and VMware backends on Debian's 5.10–7.3 kernels.

docs/backends.md keeps, per backend and release range, every slot and pv static call the
guest's start-up code sets, with its function, its condition and its source file (read in
each release's source). Here each Debian kernel is planned with every condition on (Hyper-V
twice: its two sched clocks exclude each other) and the slots and keys the code set must be
exactly that table's rows for the release; with the defaults, no site or key may stay
unresolved and the plan must have no problem. Skips loudly when the kernels are not cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, cached_kernels, real_kernel

from pvpatch.backends import GuestOptions, load_backend
from pvpatch.backends.kvm import KVM_FEATURES
from pvpatch.kernel.model import KernelModel
from pvpatch.patch.plan import nop_choice, plan

pytestmark = pytest.mark.realkernel
DOC = ROOT / "docs" / "backends.md"
SERIES = ("5.10", "6.1", "6.12", "7.2", "7.3")
EVERYTHING = {  # backend → option sets whose union turns every condition on
    "kvm": [GuestOptions(kvm_features=frozenset(KVM_FEATURES))],
    "hyperv": [GuestOptions(), GuestOptions(hyperv_features=frozenset({"time_ref_count"}))],
    "vmware": [GuestOptions()],
}


@dataclass(frozen=True)
class Row:
    backend: str
    first: tuple[int, int]
    last: tuple[int, int]
    what: str
    function: str
    condition: str

    def holds(self, v: tuple[int, int]) -> bool:
        return self.first <= v <= self.last


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def doc_rows() -> list[Row]:
    """The table between the backend-table markers of docs/backends.md."""
    text = DOC.read_text()
    body = text.split("<!-- backend-table")[1].split("<!-- end backend-table")[0]
    out = []
    for line in body.splitlines()[3:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6:
            continue
        backend, releases, what, function, condition, _source = cells
        m = re.fullmatch(r"(\d+\.\d+)(?:–(\d+\.\d+)|(\+))", releases)
        assert m, f"bad release range {releases!r}"
        last = (99, 0) if m.group(3) else _version(m.group(2))
        out.append(Row(backend, _version(m.group(1)), last, what, function, condition))
    return out


def test_the_table_parses():
    rows = doc_rows()
    assert {r.backend for r in rows} == set(EVERYTHING) and len(rows) > 40


def kernels() -> list[tuple[str, Path | None]]:
    """The newest release of each series (skipping loudly when absent), then every older
    point release the cache also holds: each is judged by the same table."""
    out: list[tuple[str, Path | None]] = [(s, None) for s in SERIES]
    return out + [(series, older) for series, paths in sorted(cached_kernels().items())
                  for older in paths[1:]]


@pytest.fixture(scope="module", params=kernels(), ids=lambda k: k[1].name if k[1] else k[0])
def model(request):
    series, path = request.param
    with KernelModel.open(str(path or real_kernel("amd64", series))) as m:
        yield m


def observed(model: KernelModel, backend: str) -> set[tuple[str, str, str]]:
    """(slot or "static call KEY", function, condition) of everything the code set."""
    out = set()
    for options in EVERYTHING[backend]:
        be = load_backend(model, backend, 2, options)
        targets = [(r.slot.name, r.name, r.reason) for r in be.slots.values()]
        targets += [(f"static call {k}", t.name, t.reason) for k, t in be.static_calls.items()]
        for what, name, reason in targets:
            if reason.startswith("set by"):
                _, _, condition = reason.partition(", when ")
                out.add((what, name or "?", condition or "always"))
    return out


@pytest.mark.parametrize("backend", sorted(EVERYTHING))
def test_what_the_code_sets_is_the_documented_table(model, backend):
    v = (model.version.major, model.version.minor)
    want = {(r.what, r.function, r.condition) for r in doc_rows()
            if r.backend == backend and r.holds(v) and "(not planned)" not in r.condition}
    assert observed(model, backend) == want


@pytest.mark.parametrize("backend", sorted(EVERYTHING))
def test_the_default_plan_resolves_everything(model, backend):
    be = load_backend(model, backend, 2)
    p = plan(model, be, model.alternatives, nop_choice(model))
    assert [s.site.op for s in p.patches if s.outcome == "unpatched"] == []
    assert [s.key for s in p.static_calls if s.outcome == "unpatched"] == []
    assert [x for s in [*p.patches, *p.static_calls] for x in s.problems] == []
    assert not [n for n in be.notes if "not in the image" in n or "cannot" in n]
