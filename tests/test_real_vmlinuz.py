"""Debian's bootable vmlinuz against its debug vmlinux: same sites, ops, targets, bytes.

The vmlinuz has no .symtab and no DWARF: symbols come from its kallsyms tables, types from
its .BTF. 6.1.0-56-amd64 is xz-compressed, -cloud-amd64 LZ4 (legacy frames); 6.12's (generic
and cloud) are zstd with the 6.4+ kallsyms order. `make fetch` fetches all four pairs
(scripts/fetch-kernel.sh FLAVOUR --with-vmlinuz).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import real_kernel

from pvpatch.cli import cli
from pvpatch.image.elf import ElfImage
from pvpatch.image.loader import open_image
from pvpatch.kernel.model import KernelModel

pytestmark = pytest.mark.realkernel

KERNELS = [("amd64", "6.1", "xz", "seqs"), ("cloud-amd64", "6.1", "lz4", "seqs"),
           ("cloud-amd64", "6.12", "zstd", "names-first"), ("amd64", "6.12", "zstd", "names-first")]


@pytest.fixture(scope="module", params=KERNELS, ids=[f"{k[1]}-{k[0]}" for k in KERNELS])
def pair(request) -> tuple[str, str, str, str]:
    flavour, series, method, layout = request.param
    return (str(real_kernel(flavour, series, "vmlinux")),
            str(real_kernel(flavour, series, "vmlinuz")), method, layout)


def run_json(*args: str) -> dict:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert r.exit_code in (0, 1), r.stderr
    return json.loads(r.stdout)


def without(doc: dict, *keys: str) -> dict:
    return {k: v for k, v in doc.items() if k not in keys}


@pytest.mark.parametrize("backend", ["native", "xen"])
def test_inspect_matches_the_debug_vmlinux(pair, backend):
    vmlinux, vmlinuz, method, _layout = pair
    a = run_json("inspect", "--json", "--sites", "--backend", backend, vmlinux)
    b = run_json("inspect", "--json", "--sites", "--backend", backend, vmlinuz)
    assert b["input"]["compression"] == method and b["input"]["symbols"] == "kallsyms"
    assert a["input"]["symbols"] == ".symtab"
    assert without(a, "file", "input", "sites") == without(b, "file", "input", "sites")
    assert len(a["sites"]) == len(b["sites"]) > 1000
    for x, y in zip(a["sites"], b["sites"], strict=True):
        # the function names come from kallsyms here and must agree with .symtab
        assert x == y, (x["address"], {k: (x[k], y[k]) for k in x if x[k] != y[k]})


def test_notes_match(pair):
    vmlinux, vmlinuz, _method, _layout = pair
    a = run_json("notes", "--json", "--check", vmlinux)
    b = run_json("notes", "--json", "--check", vmlinuz)
    # e_entry is the physical phys_startup_64, an absolute symbol kallsyms leaves out
    assert a["elf"].pop("e_entry_symbol") == "phys_startup_64"
    assert b["elf"].pop("e_entry_symbol") is None
    assert without(a, "file", "input") == without(b, "file", "input")


@pytest.mark.parametrize("backend", ["native", "xen"])
def test_apply_writes_the_same_site_bytes(pair, backend, tmp_path):
    vmlinux, vmlinuz, _method, _layout = pair
    a = run_json("apply", "--json", "--backend", backend, vmlinux, "-o", str(tmp_path / "a"))
    b = run_json("apply", "--json", "--backend", backend, vmlinuz, "-o", str(tmp_path / "b"))
    assert b["output_format"] == "ELF vmlinux"
    assert without(a, "input", "output", "input_format") == \
        without(b, "input", "output", "input_format")
    with KernelModel.open(vmlinux) as model, ElfImage(tmp_path / "a") as pa, \
            ElfImage(tmp_path / "b") as pb:
        changed = 0
        for s in model.sites.sites:
            after = pa.read(s.address, s.length)
            assert after == pb.read(s.address, s.length), hex(s.address)
            changed += after != model.image.read(s.address, s.length)
        assert changed > 1000
        for name in (".text", ".init.text", ".altinstr_replacement"):
            sa, sb = pa.section(name), pb.section(name)
            assert bytes(pa.section_data(sa)) == bytes(pb.section_data(sb)), name


def test_check_finds_the_same(pair):
    """`check --format json`: the same checks, counts and findings; only the input path differs."""
    vmlinux, vmlinuz, _method, _layout = pair
    a = run_json("check", "--format", "json", vmlinux)
    b = run_json("check", "--format", "json", vmlinuz)
    assert (a["input"], b["input"]) == (vmlinux, vmlinuz)
    assert [x["name"] for x in b["backends"]] == ["native", "xen"]
    assert b["checked"]["sites"] > 1000 and b["checked"]["xen_conditions"] > 0
    # Debian's kernels all have NULL xen_mmu_ops.mmu slots (slot.null warnings): the findings
    # carry function+offset names, from kallsyms on the vmlinuz and .symtab on the vmlinux
    assert {f["check"] for f in b["findings"]} >= {"slot.null"}
    assert without(a, "input", "findings") == without(b, "input", "findings")
    assert len(a["findings"]) == len(b["findings"])
    for x, y in zip(a["findings"], b["findings"], strict=True):
        assert x == y, (x["address"], {k: (x[k], y[k]) for k in x if x[k] != y[k]})


def test_kallsyms_agree_with_symtab(pair):
    vmlinux, vmlinuz, _method, layout = pair
    with ElfImage(vmlinux) as full, open_image(vmlinuz) as stripped:
        table = stripped.symbols
        assert table.source == "kallsyms" and table.kallsyms.layout == layout
        assert table.kallsyms.names == full.symbols.address("kallsyms_names")
        syms = table.kallsyms.symbols
        assert len(syms) > 80000
        sample = syms[::max(1, len(syms) // 400)]
        for name, addr, kind in sample:
            known = {s.value for s in full.symbols.lookup(name)}
            assert addr in known, (name, hex(addr), kind)
