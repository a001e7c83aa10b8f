"""Real-kernel tier: `inspect` invariants on Debian's debug vmlinux (not this image's numbers).

Skips loudly when the kernels are not cached (`make fetch`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import real_kernel

from pvpatch.kernel.model import KernelModel

pytestmark = pytest.mark.realkernel
FLAVOURS = ["cloud-amd64", "amd64"]


@pytest.fixture(scope="module", params=FLAVOURS)
def model(request):
    with KernelModel.open(str(real_kernel(request.param))) as m:
        yield m


def test_every_site_is_an_indirect_call_through_the_slot_its_type_names(model):
    sites = model.sites.sites
    assert sites, "a 6.1 kernel with CONFIG_PARAVIRT has .parainstructions"
    for s in sites:
        assert not s.problems, (hex(s.address), s.problems)
        assert s.insns and s.insns[0].is_indirect_branch
        assert sum(i.size for i in s.insns) == s.length
        assert s.slot is not None and s.call_target == s.slot.address


def test_every_op_resolves_to_a_member_name(model):
    assert model.types is not None and model.types.origin == "btf"
    members = {"cpu", "irq", "mmu", "lock"}
    for s in model.sites.sites:
        assert s.op.split(".", 1)[0] in members, s.op
    ops = {s.op for s in model.sites.sites}
    assert {"irq.save_fl", "irq.irq_disable", "cpu.cpuid", "lock.queued_spin_unlock"} <= ops


def test_layout_detected_from_btf_with_stale_clobber_words(model):
    t = model.sites
    assert t.layout.name == "x86_64+stale-clobbers"
    assert "struct paravirt_patch_site from btf" in t.layout_reason
    assert {s.clobbers for s in t.sites} <= {0x1, 0x1ff}


def test_native_targets_come_from_the_pv_ops_initialiser(model):
    by_op = {s.op: s.native_name for s in model.sites.sites}
    assert by_op["cpu.cpuid"] == "native_cpuid"
    assert by_op["irq.save_fl"] in ("native_save_fl", "__raw_callee_save_native_save_fl")
    assert by_op["lock.queued_spin_unlock"] == "__raw_callee_save___native_queued_spin_unlock"
    assert "_paravirt_nop" in by_op.values()


def test_version_from_banner(model):
    v = model.version
    assert (v.major, v.minor) == (6, 1) and v.source == "linux_banner"
    assert v.distro and v.distro.startswith("Debian 6.1.")


def test_cli_json_matches_model(model):
    r = subprocess.run([sys.executable, "-m", "pvpatch", "inspect", model.image.path, "--json",
                        "--sites"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["site_count"] == len(model.sites.sites)
    assert sum(o["sites"] for o in d["ops"]) == d["site_count"]
    assert d["problems"] == 0


@pytest.fixture(scope="module")
def model612():
    with KernelModel.open(str(real_kernel("cloud-amd64", "6.12"))) as m:
        yield m


def test_6_12_sites_are_the_direct_call_alternatives(model612):
    t = model612.sites
    assert t.origin.startswith(".altinstructions") and t.layout is None
    assert model612.image.section(".parainstructions") is None
    for s in t.sites:
        assert not s.problems, (hex(s.address), s.problems)
        assert s.length == 6 and s.insns[0].raw[:2] == b"\xff\x15"
        assert s.slot is not None and s.call_target == s.slot.address
    ops = {s.op for s in t.sites}
    assert {"irq.save_fl", "cpu.cpuid", "lock.queued_spin_unlock"} <= ops
    assert model612.alternatives.layout.size == 14


def test_6_12_apply_plans_every_site_without_problems(model612):
    from pvpatch.backends import load_backend
    from pvpatch.patch.plan import nop_choice, plan

    for backend, vcpus in (("native", 2), ("xen", 1), ("xen", 2)):
        p = plan(model612, load_backend(model612, backend, vcpus), model612.alternatives,
                 nop_choice(model612))
        assert not [x.problems for x in p.patches if x.problems]
        assert all(x.outcome != "unpatched" for x in p.patches)
