"""Real-kernel tier: the pv static calls of Debian's 5.10, 6.1, 6.12 and 7.3 kernels.

Invariants, not this image's counts: which pv keys each release has (read in its source, see
kernel/static_calls.py), that every pv record decodes as the call/jmp of its key's trampoline,
and that the native plan writes what ``__static_call_transform()`` gives for the key's
initialiser (arch/x86/kernel/static_call.c: ``e8``/``e9 rel32``, 7.3's unlockinsn for the
native unlock thunk). Skips loudly when the kernels are not cached (`make fetch`).
"""

from __future__ import annotations

import pytest
from conftest import real_kernel

from pvpatch.backends import load_backend
from pvpatch.kernel.model import KernelModel
from pvpatch.patch.plan import nop_choice, plan

pytestmark = pytest.mark.realkernel
CLOCKS = {"pv_steal_clock", "pv_sched_clock"}  # 5.12+
LOCKS = {"queued_spin_lock_slowpath", "queued_spin_unlock"}  # 7.3+
KEYS = {"6.1": CLOCKS | {"xen_hypercall"}, "6.12": CLOCKS | {"xen_hypercall"},
        "7.3": CLOCKS | LOCKS | {"xen_hypercall"}}


@pytest.fixture(scope="module", params=sorted(KEYS))
def model(request):
    with KernelModel.open(str(real_kernel("amd64", request.param))) as m:
        m.series = request.param
        yield m


def rel32(opcode: int, at: int, target: int) -> bytes:
    return bytes([opcode]) + ((target - (at + 5)) & 0xFFFFFFFF).to_bytes(4, "little")


def test_each_release_has_its_pv_keys_and_every_record_decodes(model):
    sc = model.static_calls
    assert set(sc.keys) == KEYS[model.series]
    assert sc.records > len(sc.sites) > 0 and sc.unknown_keys == []
    for k in sc.keys.values():
        assert not k.problems and k.tramp_signed and k.func_name == k.tramp_target_name
    for s in sc.sites:
        assert not s.problems, (hex(s.address), s.problems)
        assert s.branch_target == sc.keys[s.key].tramp
        assert s.code[0] == (0xE9 if s.tail else 0xE8) or (s.tail and s.code[0] == 0x0F)
    assert {s.key for s in sc.sites} == set(sc.keys)


def test_the_native_plan_is_the_transform_of_each_initialiser(model):
    p = plan(model, load_backend(model, "native"), model.alternatives, nop_choice(model))
    keys = model.static_calls.keys
    unlock = model.image.symbols.get("unlockinsn")
    sites = [x for x in p.static_calls if x.kind == "site"]
    assert len(sites) == len(model.static_calls.sites) and not any(x.problems for x in sites)
    for x in sites:
        func = keys[x.key].func
        if x.key == "queued_spin_unlock":  # 7.3: written inline, the image's unlockinsn[]
            assert x.after == model.image.read(unlock.value, 5) == bytes.fromhex("3e3ec60700")
        else:
            assert x.after == rel32(0xE9 if x.tail else 0xE8, x.address, func), hex(x.address)
    tramps = [x for x in p.static_calls if x.kind == "trampoline"]
    assert {x.key for x in tramps} == set(keys) and not any(x.changed for x in tramps)


def test_5_10_has_static_calls_but_no_pv_ones():
    with KernelModel.open(str(real_kernel("amd64", "5.10"))) as m:
        sc = m.static_calls
        assert sc.records > 0 and sc.keys == {} and sc.sites == []


def test_32_bit_has_pv_keys_and_trampolines_but_no_inline_sites():
    with KernelModel.open(str(real_kernel("686-pae", "6.1"))) as m:
        sc = m.static_calls
        assert set(sc.keys) == CLOCKS | {"xen_hypercall"} and sc.sites == []
        assert "no .static_call_sites" in sc.origin
        assert all(not k.problems and k.tramp_signed for k in sc.keys.values())
