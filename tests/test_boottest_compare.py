"""scripts/boottest/compare.py on a fixture: the pv static calls are compared beside the pv sites.

A "boot dump" is made from `pvpatch apply`'s own output (its .text bytes, laid out as boot.py
writes them), so every site must match it; the unpatched image against that dump must differ
at every static-call site boot rewrites, and the trampolines, which native boot leaves, match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, assemble

from pvpatch.image.elf import ElfImage


def compare(tmp: Path, vmlinux: Path, dump: Path, patched: Path | None) -> tuple[int, dict]:
    args = [sys.executable, str(ROOT / "scripts" / "boottest" / "compare.py"), "--vmlinux",
            str(vmlinux), "--dump", str(dump), "--json"]
    if patched is not None:
        args += ["--patched", str(patched)]
    env = dict(os.environ, PVPATCH_CACHE=str(tmp / "cache"))  # its inspect cache, not ours
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    return r.returncode, json.loads(r.stdout)


def test_static_call_sites_and_trampolines_are_compared(tmp_path):
    vmlinux = tmp_path / "vmlinux-fixture"
    vmlinux.write_bytes(assemble("pv_kernel61.S", 64, defsyms={"STATIC_CALLS": 1}).read_bytes())
    patched = tmp_path / "patched"
    r = subprocess.run([sys.executable, "-m", "pvpatch", "apply", str(vmlinux), "-o",
                        str(patched)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    dump = tmp_path / "native.text.bin"
    with ElfImage(str(patched)) as im:
        dump.write_bytes(bytes(im.section_data(im.section(".text"))))
    code, same = compare(tmp_path, vmlinux, dump, patched)
    sc = same["static_calls"]
    # six .text sites (the seventh is in .init.text, freed before a dump), five trampolines
    assert code == 0 and sc["sites"] == {"sites": 6, "match": 6, "differ": 0, "no_data": 0}
    assert sc["trampolines"]["match"] == 5 and same["patched_changes_outside_sites"] == 0
    code, unpatched = compare(tmp_path, vmlinux, dump, None)
    sc = unpatched["static_calls"]
    assert code == 1 and sc["sites"]["differ"] == 6 and sc["trampolines"]["match"] == 5
    assert {m["op"] for m in sc["mismatches"]} == {
        "static_call.pv_steal_clock", "static_call.pv_sched_clock",
        "static_call.queued_spin_lock_slowpath", "static_call.queued_spin_unlock"}
