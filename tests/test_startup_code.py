"""The Xen backend read from the start-up code (pvpatch.kernel.stores / startup).

Fixture: fixtures/pv_kernel61.S with XEN_CODE=1 (fixtures/xen_startup_code.S), whose start-up
functions install, in the shapes compilers emit, exactly the values the table rules read from
xen_cpu_ops / xen_irq_ops / xen_mmu_ops plus the 6.1 piecemeal assignments. Two independent
readings of one kernel must agree, site for site; and each shape is checked on its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assemble, one_line_error

from pvpatch.backends import load_backend
from pvpatch.backends.xen import startup
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.stores import Call, StoreReader


def build(**defsyms: int) -> str:
    return str(assemble("pv_kernel61.S", 64, defsyms=defsyms))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


def plan(path: str, vcpus: int) -> dict:
    r = run("apply", path, "--dry-run", "--json", "--backend", "xen", "--vcpus", str(vcpus))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("vcpus", [1, 2])
def test_code_and_tables_give_the_same_bytes(vcpus):
    """The table rules (no start-up code) and the code (XEN_CODE) agree at every site."""
    tables, code = plan(build(), vcpus), plan(build(XEN_CODE=1), vcpus)

    def outcome(site: dict) -> tuple:  # the builds differ in addresses, not in what is called
        call = site["after"].startswith("e8")
        return site["op"], site["outcome"], site["target"], site["after"][10 if call else 0:]

    assert [outcome(s) for s in code["sites"]] == [outcome(s) for s in tables["sites"]]
    assert "read from its start-up code" in code["backend"]["description"]
    assert "start-up code" not in tables["backend"]["description"]


def _values(path: str, vcpus: int) -> dict[str, tuple[str | None, str]]:
    with KernelModel.open(path) as m:
        be = load_backend(m, "xen", vcpus)
        return {r.slot.name: (r.name, r.reason) for r in be.slots.values()}


def test_each_slot_says_which_store_set_it():
    v = _values(build(XEN_CODE=1), 2)
    assert v["cpu.cpuid"][0] == "xen_cpuid" and "rep movsq" in v["cpu.cpuid"][1] \
        and "xen_cpu_ops" in v["cpu.cpuid"][1]  # the struct copy names its table
    assert v["irq.save_fl"] == ("xen_save_fl_direct", v["irq.save_fl"][1])
    assert "xen_setup_vcpu_info_placement" in v["irq.save_fl"][1]  # the last store wins
    assert v["mmu.pte_val"][0] == "__raw_callee_save_xen_pte_val" and "movups" in \
        v["mmu.pte_val"][1]  # the SSE copy from xen_mmu_ops
    assert v["mmu.read_cr2"][0] == "xen_read_cr2_direct"
    assert v["mmu.set_pte"][0] == "xen_set_pte" and "xen_pagetable_init" in v["mmu.set_pte"][1]
    assert v["mmu.alloc_p4d"][0] == "NULL" and "rep stosl" in v["mmu.alloc_p4d"][1]
    assert v["lock.vcpu_is_preempted"][0] == "__raw_callee_save_xen_vcpu_stolen"
    assert "initialiser" in v["lock.queued_spin_unlock"][1] or \
        v["lock.queued_spin_unlock"][0] == "__raw_callee_save___pv_queued_spin_unlock"


def test_one_vcpu_skips_the_conditional_step():
    v = _values(build(XEN_CODE=1), 1)
    for op, native in (("lock.queued_spin_unlock", "__raw_callee_save___native_queued_spin_unlock"),
                       ("lock.vcpu_is_preempted", "__raw_callee_save___native_vcpu_is_preempted"),
                       ("lock.kick", "_paravirt_nop")):
        assert v[op][0] == native and "initialiser" in v[op][1], (op, v[op])


def test_the_static_call_helper_is_summarised():
    """paravirt_set_sched_clock(xen_sched_clock) → __static_call_update(&key, &tramp, f)."""
    with KernelModel.open(build(XEN_CODE=1)) as m:
        res = startup(m, 2)
        key = m.image.symbols.address("__SCK__pv_sched_clock")
        origin = res.value(key)
        assert origin.value == m.image.symbols.address("xen_sched_clock")
        assert "paravirt_set_sched_clock" in origin.how and origin.step == "xen_init_time_ops"


def test_store_shapes():
    path = build(XEN_CODE=1)
    with KernelModel.open(path) as m:
        r, syms = StoreReader(m.image), m.image.symbols
        base = syms.address("pv_ops")

        def stores(fn: str) -> list[tuple[int, int, int | None]]:
            return [(s.address - base, s.size, s.word(0, s.size) if s.size <= 8 else
                     s.word(0, 8)) for s in r.function(fn).stores]

        a = syms.address
        # immediate stores, RIP-relative
        assert stores("xen_init_irq_ops") == [(16, 8, a("paravirt_ret0")),
                                              (24, 8, a("_paravirt_nop")),
                                              (32, 8, a("paravirt_BUG"))]
        # rep stosl of 40 zero bytes, then stores through %rdx (= &pv_ops.mmu) and an SSE copy
        mmu = r.function("xen_init_mmu_ops").stores
        assert [(s.address - base, s.size) for s in mmu] == [(40, 40), (40, 8), (48, 16),
                                                             (64, 8)]
        assert mmu[0].value == bytes(40)
        assert mmu[2].word(0, 8) == a("__raw_callee_save_xen_pte_val")
        assert mmu[2].word(8, 8) == a("xen_write_cr3_init")
        # the struct copy: rep movsq of 16 bytes from xen_cpu_ops
        copy = [s for s in r.function("xen_start_kernel").stores if s.via is None]
        assert [(s.address - base, s.size) for s in copy] == [(0, 16)]
        assert copy[0].word(0, 8) == a("xen_io_delay") and copy[0].word(8, 8) == a("xen_cpuid")
        # a store whose value is through a register set before it, after a branch
        assert stores("xen_init_spinlocks")[1] == (88, 8, a("__raw_callee_save_xen_vcpu_stolen"))
        # calls are reported with their argument registers
        calls = [e for e in r.function("xen_init_time_ops").events if isinstance(e, Call)]
        assert calls[0].target == a("paravirt_set_sched_clock")
        assert calls[0].args[0] == a("xen_sched_clock")


def test_a_store_the_decoder_cannot_follow_leaves_the_slot_unresolved():
    v = _values(build(XEN_CODE=1, UNKNOWN_STORE=1), 2)
    name, reason = v["mmu.write_cr3"]
    assert name is None and "could not follow" in reason


def test_a_newer_kernel_is_answered_with_a_warning_when_the_code_says_everything():
    d = plan(build(XEN_CODE=1, BANNER_NEWER=1), 2)
    assert any("newer than 7.3" in n for n in d["notes"]), d["notes"]
    assert [s["after"] for s in d["sites"]] == [s["after"] for s in
                                                 plan(build(XEN_CODE=1), 2)["sites"]]


def test_a_newer_kernel_whose_code_leaves_a_slot_unknown_is_refused():
    r = run("apply", build(XEN_CODE=1, BANNER_NEWER=1, UNKNOWN_STORE=1), "--dry-run",
            "--backend", "xen")
    one_line_error(r, "newer than 7.3", "mmu.write_cr3")


def test_a_refusal_from_the_worker_leaves_an_earlier_output_and_no_temporary(tmp_path):
    """apply resolves a guest backend in a worker process while it copies the image: the
    worker's refusal is the same one-line error, the copy is dropped, -o is untouched."""
    out = tmp_path / "out"
    out.write_bytes(b"an older build's output")
    r = run("apply", build(XEN_CODE=1, BANNER_NEWER=1, UNKNOWN_STORE=1), "-o", str(out),
            "--backend", "xen")
    one_line_error(r, "newer than 7.3", "mmu.write_cr3")
    assert out.read_bytes() == b"an older build's output"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_newer_kernel_is_planned_natively_with_a_warning():
    r = run("apply", build(BANNER_NEWER=1), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    notes = json.loads(r.stdout)["notes"]
    assert any("7.9 is newer than 7.3" in n and "algorithm" in n for n in notes), notes


def test_a_function_whose_first_byte_does_not_decode_is_a_problem_not_a_crash(tmp_path):
    """Found by the fuzzer: no instruction at all left the dataflow with no block to read."""
    path = tmp_path / "vmlinux"
    path.write_bytes(Path(build(XEN_CODE=1)).read_bytes())
    with KernelModel.open(str(path)) as m:
        sym = m.image.symbols.get("xen_init_irq_ops")
        at = m.image.offset_of(sym.value, 1)
    data = bytearray(path.read_bytes())
    data[at] = 0x06  # push %es: invalid in 64-bit mode, so capstone decodes nothing
    path.write_bytes(data)
    with KernelModel.open(str(path)) as m:
        effects = StoreReader(m.image).function("xen_init_irq_ops")
    assert effects.events == []
    assert any("cannot decode" in p for p in effects.problems), effects.problems


def test_a_table_whose_btf_size_is_gigabytes_is_watched_at_its_slots_extent(tmp_path):
    """Found by the fuzzer: a BTF struct size of ~1.2 GB made the start-up walk allocate
    (and scan) that much memory for pv_ops; the image holds ~100 bytes there."""
    path = tmp_path / "vmlinux"
    path.write_bytes(Path(build(XEN_CODE=1)).read_bytes())
    with KernelModel.open(str(path)) as m:
        btf, sec = m.types, m.image.section(".BTF")
        (tid,) = btf._ids_named(m.pvops.container.template_type)
        hdr_len = int.from_bytes(m.image.section_data(sec)[4:8], "little")
        type_off = int.from_bytes(m.image.section_data(sec)[8:12], "little")
        at = sec.offset + hdr_len + type_off + 4 * (btf._offs[tid] + 2)
        honest = m.pvops.main_size
    data = bytearray(path.read_bytes())
    assert int.from_bytes(data[at:at + 4], "little") == honest  # the struct's size word
    data[at:at + 4] = (0x4CBFB450).to_bytes(4, "little")
    path.write_bytes(data)
    with KernelModel.open(str(path)) as m:
        assert m.pvops.main_size == honest
    r = run("apply", str(path), "--backend", "xen", "-o", str(tmp_path / "out"))
    assert r.returncode in (0, 2) and "Traceback" not in r.stderr, r.stderr


def _decoded_functions(path: str) -> list[object]:
    """Every instruction of the functions Xen's start-up analysis decodes in ``path``."""
    from pvpatch.kernel.stores import _decoder

    with KernelModel.open(path) as m:
        load_backend(m, "xen", 2)
        reader = m.stores
        out = []
        for (address, size, _depth), _effects in reader._cache.items():
            code = m.image.try_read(address, size or 4096)
            out += list(_decoder(m.image.bits).disasm(code or b"", address))
        return out


def _holds_to_capstone(insns: list[object]) -> None:
    from capstone import x86_const as X

    from pvpatch.kernel.stores import _branch_target, _direct_target, _route

    assert insns
    for i in insns:
        groups = i.groups
        expected = "stop" if X.X86_GRP_RET in groups or i.id in (X.X86_INS_UD2, X.X86_INS_INT3) \
            else "branch" if i.id in (X.X86_INS_CALL, X.X86_INS_JMP) or X.X86_GRP_JUMP in groups \
            else "other"
        assert _route(i) == expected, (hex(i.address), i.mnemonic, i.op_str)
        if expected == "branch":
            mask = (1 << 64) - 1
            assert _branch_target(i, mask) == _direct_target(i, mask), (i.mnemonic, i.op_str)


def test_branches_are_read_from_the_text_exactly_as_from_capstone_details():
    """The start-up decoder routes instructions by id and reads a direct branch's target
    from capstone's text, skipping the operand details: both must say what the details say."""
    _holds_to_capstone(_decoded_functions(build(XEN_CODE=1)))


@pytest.mark.realkernel
def test_branches_of_real_start_up_code_are_read_as_capstone_reads_them():
    from conftest import cached_kernels

    kernels = [paths[0] for paths in cached_kernels().values()]
    if not kernels:
        pytest.skip("REAL-KERNEL TIER SKIPPED: no Debian amd64 vmlinux cached (make fetch)")
    for path in kernels:
        _holds_to_capstone(_decoded_functions(str(path)))
