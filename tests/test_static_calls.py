"""The pv static calls on a fixture: model, plan, and every command that shows or writes them.

fixtures/static_calls.inc (included by pv_kernel61.S with STATIC_CALLS=1) builds keys,
trampolines and .static_call_sites as 6.1–7.3 do. Expected bytes are worked out from
arch/x86/kernel/static_call.c (Debian 6.1.192, 6.12.118, 7.3.4), ``__static_call_transform``:

- CALL (not a tail call, key non-NULL): ``e8 rel32`` to the key's function, except that the
  functions with an inline form get their array's bytes: ``__static_call_return0`` →
  xor5rax ``2e 2e 2e 31 c0``; 7.3's ``__raw_callee_save___native_queued_spin_unlock`` →
  unlockinsn ``3e 3e c6 07 00``;
- NOP (not a tail call, NULL key): ``x86_nops[5]`` = ``0f 1f 44 00 00``;
- JMP (tail call): ``e9 rel32``; RET (tail call, NULL key): retinsn ``c3 cc cc cc cc`` on a CPU
  that wants no return thunk;
- JCC (a tail call built as Jcc.d32): ``0f <cc> rel32``, NULL going to ``__static_call_return``.

static_call_init() (kernel/static_call_inline.c) applies that to every site with the key's
current function, init text included; a trampoline is rewritten (JMP, or RET for NULL) only by
a static_call_update() that changes the key, and __static_call_fixup() turns a trampoline still
jumping to ``__x86_return_thunk`` into the RET form.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assemble

from pvpatch.backends import CallTarget, load_backend
from pvpatch.image.elf import ElfImage
from pvpatch.kernel.model import KernelModel
from pvpatch.patch.plan import nop_choice, plan

NOP5, RET5 = "0f1f440000", "c3cccccccc"
XOR5RAX, UNLOCKINSN = "2e2e2e31c0", "3e3ec60700"
SITES = [f"sc_site{i}" for i in range(7)]


def build(**defs: int) -> str:
    return str(assemble("pv_kernel61.S", 64, defsyms={"STATIC_CALLS": 1, **defs}))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


def rel(opcode: str, at: int, target: int, length: int = 5) -> str:
    return opcode + ((target - (at + length)) & 0xFFFFFFFF).to_bytes(4, "little").hex()


def planned(path: str, backend=None) -> tuple[dict[int, str], dict[str, str], ElfImage]:
    """(site address → bytes after boot, key → trampoline bytes after boot, the image)."""
    model = KernelModel.open(path)
    be = backend(model) if backend else load_backend(model, "native")
    p = plan(model, be, model.alternatives, nop_choice(model))
    sites = {x.address: x.after.hex() for x in p.static_calls if x.kind == "site"}
    tramps = {x.key: x.after.hex() for x in p.static_calls if x.kind == "trampoline"}
    return sites, tramps, model.image


# -- the model -------------------------------------------------------------------------------

def test_the_model_reads_keys_trampolines_and_every_pv_record():
    with KernelModel.open(build()) as m:
        sc, sym = m.static_calls, m.image.symbols.address
        assert sc.origin == "__start_static_call_sites..__stop_static_call_sites"
        assert sc.records == 8  # the seven pv sites and x86_idle's
        assert set(sc.keys) == {"pv_steal_clock", "pv_sched_clock", "queued_spin_lock_slowpath",
                                "queued_spin_unlock", "xen_hypercall"}  # x86_idle is not pv
        k = sc.keys["pv_steal_clock"]
        assert (k.func, k.func_name) == (sym("native_steal_clock"), "native_steal_clock")
        assert k.tramp == sym("__SCT__pv_steal_clock") and k.tramp_signed and not k.problems
        assert k.tramp_target_name == "native_steal_clock"
        assert [s.address for s in sc.sites] == [sym(n) for n in SITES]
        assert [s.tail for s in sc.sites] == [False, False, True, False, True, False, False]
        assert [s.init for s in sc.sites] == [False] * 6 + [True]  # .init.text, flag clear
        assert sc.sites[4].length == 6 and sc.sites[4].text.startswith("jne")
        assert all(s.branch_target == sc.keys[s.key].tramp for s in sc.sites)
        assert sc.problems == 0 and sc.unknown_keys == []


def test_a_kernel_without_static_calls_has_none():
    with KernelModel.open(str(assemble("pv_kernel61.S", 64))) as m:
        sc = m.static_calls
        assert (sc.keys, sc.sites, sc.records) == ({}, [], 0)
        assert "no .static_call_sites" in sc.origin
        p = plan(m, load_backend(m, "native"), m.alternatives, nop_choice(m))
        assert p.static_calls == [] and p.static_call_notes == []


def test_a_record_on_other_bytes_and_one_naming_no_key_are_problems():
    with KernelModel.open(build(SC_BAD_SITE=1, SC_UNKNOWN_KEY=1)) as m:
        sc, sym = m.static_calls, m.image.symbols.address
        bad = next(s for s in sc.sites if s.address == sym("sc_bad"))
        assert bad.problems == ["call site holds nopl (%rax, %rax), not a call"]
        assert [(a, k) for _i, a, k in sc.unknown_keys] == [(sym("sc_unknown"), sym("pv_ops"))]


# -- the plan --------------------------------------------------------------------------------

def test_native_boot_calls_each_initialiser_and_inlines_the_native_unlock():
    sites, tramps, im = planned(build())
    a = im.symbols.address
    s = [a(n) for n in SITES]
    assert sites == {
        s[0]: rel("e8", s[0], a("native_steal_clock")),
        s[1]: rel("e8", s[1], a("native_sched_clock")),
        s[2]: rel("e9", s[2], a("native_sched_clock")),
        s[3]: rel("e8", s[3], a("native_queued_spin_lock_slowpath")),
        s[4]: rel("0f85", s[4], a("native_queued_spin_lock_slowpath"), 6),
        s[5]: UNLOCKINSN,  # the image's unlockinsn[] (7.3)
        s[6]: rel("e8", s[6], a("xen_hypercall_hvm")),  # init text is patched too
    }
    with open(im.path, "rb"):  # no key changed: every trampoline stays as built
        for key, code in tramps.items():
            assert code == im.read(a(f"__SCT__{key}"), 5).hex()


def xen_like(model: KernelModel):
    """A hand-made backend, as the Xen one will fill it: updates, a NULL, return0."""
    be = load_backend(model, "native")
    a = model.image.symbols.address

    def target(name: str) -> CallTarget:
        return CallTarget(a(name) if name != "NULL" else 0, name, "test")

    be.static_calls.update({
        "pv_steal_clock": target("xen_steal_clock"),
        "pv_sched_clock": target("__static_call_return0"),
        "queued_spin_lock_slowpath": target("NULL"),
        "queued_spin_unlock": target("__raw_callee_save___pv_queued_spin_unlock"),
        "xen_hypercall": target("xen_hypercall_pv")})
    return be


def test_updated_keys_retarget_sites_and_trampolines_with_each_form():
    sites, tramps, im = planned(build(), xen_like)
    a = im.symbols.address
    s = [a(n) for n in SITES]
    assert sites == {
        s[0]: rel("e8", s[0], a("xen_steal_clock")),
        s[1]: XOR5RAX,  # CALL of __static_call_return0
        s[2]: rel("e9", s[2], a("__static_call_return0")),  # a tail call is not inlined
        s[3]: NOP5,  # NULL: x86_nops[5]
        s[4]: rel("0f85", s[4], a("__static_call_return"), 6),  # NULL Jcc
        s[5]: rel("e8", s[5], a("__raw_callee_save___pv_queued_spin_unlock")),
        s[6]: rel("e8", s[6], a("xen_hypercall_pv")),
    }
    t = {k: a(f"__SCT__{k}") for k in tramps}
    assert tramps == {
        "pv_steal_clock": rel("e9", t["pv_steal_clock"], a("xen_steal_clock")),
        "pv_sched_clock": rel("e9", t["pv_sched_clock"], a("__static_call_return0")),
        "queued_spin_lock_slowpath": RET5,  # RET: no return thunk
        "queued_spin_unlock": rel("e9", t["queued_spin_unlock"],
                                  a("__raw_callee_save___pv_queued_spin_unlock")),
        "xen_hypercall": rel("e9", t["xen_hypercall"], a("xen_hypercall_pv")),
    }


def test_a_null_key_kept_is_a_nop_and_its_trampoline_the_fixed_up_ret():
    sites, tramps, im = planned(build(SC_NULL_KEY=1))
    a = im.symbols.address
    assert sites[a("sc_site3")] == NOP5
    assert sites[a("sc_site4")] == rel("0f85", a("sc_site4"), a("__static_call_return"), 6)
    built = im.read(a("__SCT__queued_spin_lock_slowpath"), 5).hex()
    assert built == rel("e9", a("__SCT__queued_spin_lock_slowpath"), a("__x86_return_thunk"))
    assert tramps["queued_spin_lock_slowpath"] == RET5  # __static_call_fixup()


@pytest.mark.parametrize("era", [{}, {"ERA612": 1}])
def test_without_the_arrays_the_version_says_which_inline_forms_exist(era):
    """A 6.1/6.12 banner: xor5rax is in the transform (from 6.1), unlockinsn is not (7.3)."""
    sites, _, im = planned(build(SC_NO_ARRAYS=1, **era), xen_like)
    a = im.symbols.address
    assert sites[a("sc_site1")] == XOR5RAX
    sites, _, im = planned(build(SC_NO_ARRAYS=1, **era))
    assert sites[a("sc_site5")] == rel("e8", a("sc_site5"),
                                       a("__raw_callee_save___native_queued_spin_unlock"))


def test_an_unresolved_key_is_left_as_built_not_guessed():
    def partial(model):
        be = load_backend(model, "native")
        del be.static_calls["pv_steal_clock"]
        return be

    sites, tramps, im = planned(build(), partial)
    a = im.symbols.address
    assert sites[a("sc_site0")] == im.read(a("sc_site0"), 5).hex()
    assert tramps["pv_steal_clock"] == im.read(a("__SCT__pv_steal_clock"), 5).hex()


# -- the commands ----------------------------------------------------------------------------

def test_apply_writes_the_planned_bytes_and_diff_reads_them_back(tmp_path):
    path, out = build(), tmp_path / "out"
    r = run("apply", path, "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["static_calls"]
    assert report["counts"] == {"direct-call": 4, "direct-jmp": 1, "direct-jcc": 1, "inline": 1}
    assert report["trampoline_counts"] == {"as-built": 5} and report["changed_sites"] == 7
    with ElfImage(str(out)) as im:
        for s in report["sites"]:
            assert im.read(int(s["address"], 16), s["length"]).hex() == s["after"]
    d = json.loads(run("diff", path, str(out), "--json").stdout)["static_calls"]
    assert d["counts"] == report["counts"] and d["changed_sites"] == 7
    assert [s["after"] for s in d["sites"]] == [s["after"] for s in report["sites"]]
    text = run("diff", path, str(out), "--sites").stdout
    assert "static calls  7 sites, 7 changed" in text and "<native_steal_clock>" in text


def test_inspect_lists_them_as_a_kind_of_their_own():
    path = build()
    d = json.loads(run("inspect", path, "--json", "--sites").stdout)["static_calls"]
    assert [k["name"] for k in d["keys"]] == ["pv_steal_clock", "pv_sched_clock",
                                              "queued_spin_lock_slowpath",
                                              "queued_spin_unlock", "xen_hypercall"]
    assert d["keys"][1]["sites"] == 2 and d["keys"][1]["tail_sites"] == 1
    assert d["keys"][0]["trampoline_instruction"] == "jmp native_steal_clock"
    site = d["sites"][2]
    assert site["kind"] == "static call" and site["key"] == "pv_sched_clock" and site["tail"]
    assert site["instruction"] == "jmp __SCT__pv_sched_clock"
    assert site["func"] == "native_sched_clock"
    text = run("inspect", path, "--sites", "--op", "pv_s*").stdout
    assert "static calls  2 pv keys, 3 (of 7) sites" in text
    assert "callq __SCT__pv_steal_clock" in text and "irq.save_fl" not in text


def test_the_filters_narrow_the_key_table_and_its_counts():
    """--op and --function narrow the summary's key table as they narrow the pv ops: a key is
    shown when one of its sites is selected or the filter names it, counting selected sites."""
    path = build()

    def keys(*filters: str) -> dict[str, int]:
        doc = json.loads(run("inspect", path, "--json", *filters).stdout)["static_calls"]
        return {k["name"]: k["sites"] for k in doc["keys"]}

    assert len(keys()) == 5
    assert keys("--op", "static_call.pv_sched_clock") == {"pv_sched_clock": 2}
    assert keys("--op", "irq.*") == {}
    assert keys("--function", "__SCT__xen_hypercall") == {"xen_hypercall": 0}
    text = run("inspect", path, "--op", "irq.*").stdout
    assert "static call " not in text  # no key table at all


def test_check_reports_bad_records_and_unresolved_keys():
    r = run("check", build(SC_BAD_SITE=1, SC_UNKNOWN_KEY=1), "--format", "json")
    assert r.returncode == 1
    found = {(f["check"], f["backend"]) for f in json.loads(r.stdout)["findings"]}
    assert {("static_call.bad-site", None), ("static_call.unknown-key", None)} <= found
    r = run("check", build(), "--backend", "xen", "--format", "json")
    d = json.loads(r.stdout)
    unresolved = [f for f in d["findings"] if f["check"] == "static_call.unresolved"]
    assert len(unresolved) == 5  # the xen backend fills none yet: a warning per key
    assert {f["severity"] for f in unresolved} == {"warning"}
    assert run("apply", build(SC_BAD_SITE=1), "--dry-run", "--check").returncode == 1


def test_a_tail_call_site_of_0f_but_no_jcc_is_a_problem_not_a_crash(tmp_path):
    """Found by the fuzzer: 0f not followed by 8x starts no Jcc.d32, so the site branches
    nowhere; __static_call_validate() would refuse it as it refuses any other bytes."""
    path = tmp_path / "vmlinux"
    path.write_bytes(Path(build()).read_bytes())
    with KernelModel.open(str(path)) as m:
        jcc = next(s for s in m.static_calls.sites if s.tail and s.code[:1] == b"\x0f")
        at = m.image.offset_of(jcc.address + 1, 1)
    data = bytearray(path.read_bytes())
    data[at] = 0x1F  # 0f 1f: a nopl, not a Jcc
    path.write_bytes(data)
    with KernelModel.open(str(path)) as m:
        site = next(s for s in m.static_calls.sites if s.address == jcc.address)
        assert site.branch_target is None
        assert len(site.problems) == 1 and "not a jmp.d32 or Jcc.d32" in site.problems[0]
    r = run("inspect", str(path))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
