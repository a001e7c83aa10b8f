"""Debian's bootable vmlinuz against its debug vmlinux: same sites, ops, targets, bytes.

The vmlinuz has no .symtab and no DWARF: symbols come from its kallsyms tables, types from
its .BTF. 6.1's amd64 is xz-compressed, -cloud-amd64 LZ4 (legacy frames); 6.12's (generic
and cloud) are zstd with the 6.4+ kallsyms order; Debian 13's 7.3 (backports) is zstd with
7.0's place-relative kallsyms_offsets; 5.10 (Debian 11) is xz with the legacy order.
`make fetch` fetches every pair (scripts/fetch-kernel.sh [SUITE:]FLAVOUR --with-vmlinuz).

Where a backend refuses a kernel, the test checks that the vmlinuz is refused with the same
message and then skips, saying so.

Where several code symbols share an address, .symtab's definition order picks the name and
kallsyms has its own order (5.10: `hypercall_page` / `xen_hypercall_set_trap_table`): such a
name may differ, as long as both name the same address in the vmlinux's .symtab.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import real_kernel

from pvpatch.cli import cli
from pvpatch.image.elf import ElfImage
from pvpatch.image.loader import open_image
from pvpatch.kernel.model import KernelModel

pytestmark = pytest.mark.realkernel

# (flavour, series, compression, kallsyms layout, kallsyms addressing)
KERNELS = [("amd64", "6.1", "xz", "seqs", "base-relative"),
           ("cloud-amd64", "6.1", "lz4", "seqs", "base-relative"),
           ("cloud-amd64", "6.12", "zstd", "names-first", "base-relative"),
           ("amd64", "6.12", "zstd", "names-first", "base-relative"),
           ("amd64", "7.3", "zstd", "names-first", "pc-relative"),
           ("amd64", "5.10", "xz", "legacy", "base-relative")]


@pytest.fixture(scope="module", params=KERNELS, ids=[f"{k[1]}-{k[0]}" for k in KERNELS])
def pair(request) -> tuple[str, str, str, str, str]:
    flavour, series, method, layout, addressing = request.param
    return (str(real_kernel(flavour, series, "vmlinux")),
            str(real_kernel(flavour, series, "vmlinuz")), method, layout, addressing)


def run_json(*args: str) -> dict:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert r.exit_code in (0, 1), r.stderr
    return json.loads(r.stdout)


def run_both(vmlinux: str, vmlinuz: str, *args: str, out: Path | None = None) -> tuple[dict, dict]:
    """``args`` on each image (``-o out/a``, ``out/b`` if given), as JSON; if the debug vmlinux
    is refused (exit status 2), the vmlinuz must be refused with the same one line, and the
    test skips saying why."""
    def invoke(image: str, tag: str):
        extra = ["-o", str(out / tag)] if out else []
        return CliRunner().invoke(cli, [*args, image, *extra], catch_exceptions=False)

    a, b = invoke(vmlinux, "a"), invoke(vmlinuz, "b")
    if a.exit_code == 2:
        assert b.exit_code == 2, b.stdout
        assert a.stderr.replace(vmlinux, "IMAGE") == b.stderr.replace(vmlinuz, "IMAGE")
        pytest.skip(f"refused on both images: {a.stderr.strip()}")
    assert a.exit_code in (0, 1) and b.exit_code in (0, 1), (a.stderr, b.stderr)
    return json.loads(a.stdout), json.loads(b.stdout)


def without(doc: dict, *keys: str) -> dict:
    return {k: v for k, v in doc.items() if k not in keys}


@pytest.fixture(scope="module")
def symtab(pair):
    """The debug vmlinux's .symtab, to tell aliases apart from wrong names."""
    with ElfImage(pair[0]) as image:
        yield image.symbols


def differences(a, b, path: tuple = ()):
    """(path, a's value, b's value) wherever two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for k in a:
            yield from differences(a[k], b[k], (*path, k))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from differences(x, y, (*path, i))
    elif a != b:
        yield path, a, b


def addresses_of(symtab, name: str) -> set[int]:
    """Where ``name`` or ``name+0xoff`` points, by .symtab (a name may be defined twice)."""
    base, _, off = name.partition("+")
    return {s.value + int(off or "0", 16) for s in symtab.lookup(base)}


def assert_same(symtab, a: dict, b: dict) -> int:
    """``a`` == ``b`` but for names of one address (aliases); returns how many those were."""
    aliases = 0
    for path, x, y in differences(a, b):
        named = path and path[-1] in ("function", "symbol") and isinstance(x, str) and \
            isinstance(y, str)
        assert named and addresses_of(symtab, x) & addresses_of(symtab, y), (path, x, y)
        aliases += 1
    return aliases


@pytest.mark.parametrize("backend", ["default", "native", "xen"])
def test_inspect_matches_the_debug_vmlinux(pair, symtab, backend):
    vmlinux, vmlinuz, method, _layout, _addressing = pair
    extra = [] if backend == "default" else ["--backend", backend]
    a, b = run_both(vmlinux, vmlinuz, "inspect", "--json", "--sites", *extra)
    assert b["input"]["compression"] == method and b["input"]["symbols"] == "kallsyms"
    assert a["input"]["symbols"] == ".symtab"
    assert len(a["sites"]) == len(b["sites"]) > 1000
    # the function names come from kallsyms here and must agree with .symtab
    assert_same(symtab, without(a, "file", "input"), without(b, "file", "input"))


@pytest.mark.parametrize("backend", ["default", "native"])
def test_inspect_text_matches(pair, backend):
    """The summary table: the same lines after the input line."""
    vmlinux, vmlinuz, *_ = pair
    extra = [] if backend == "default" else ["--backend", backend]
    a = CliRunner().invoke(cli, ["inspect", vmlinux, *extra], catch_exceptions=False)
    b = CliRunner().invoke(cli, ["inspect", vmlinuz, *extra], catch_exceptions=False)
    assert a.exit_code == b.exit_code
    assert a.stdout.splitlines()[2:] == b.stdout.splitlines()[2:]
    assert "symbols from kallsyms" in b.stdout.splitlines()[1]


def test_notes_match(pair, symtab):
    vmlinux, vmlinuz, _method, _layout, _addressing = pair
    a = run_json("notes", "--json", "--check", vmlinux)
    b = run_json("notes", "--json", "--check", vmlinuz)
    # e_entry is the physical phys_startup_64, an absolute symbol kallsyms leaves out
    assert a["elf"].pop("e_entry_symbol") == "phys_startup_64"
    assert b["elf"].pop("e_entry_symbol") is None
    assert_same(symtab, without(a, "file", "input"), without(b, "file", "input"))


@pytest.mark.parametrize("backend", ["native", "xen"])
def test_apply_writes_the_same_site_bytes(pair, symtab, backend, tmp_path):
    vmlinux, vmlinuz, _method, _layout, _addressing = pair
    a, b = run_both(vmlinux, vmlinuz, "apply", "--json", "--dry-run", "--backend", backend)
    assert_same(symtab, without(a, "input", "input_format"), without(b, "input", "input_format"))
    a, b = run_both(vmlinux, vmlinuz, "apply", "--json", "--backend", backend, out=tmp_path)
    assert b["output_format"] == "ELF vmlinux"
    assert_same(symtab, without(a, "input", "output", "input_format"),
                without(b, "input", "output", "input_format"))
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


@pytest.mark.parametrize("backend", ["all", "native"])
def test_check_finds_the_same(pair, symtab, backend):
    """`check --format json`: the same checks, counts and findings; only the input path differs.

    Every backend that takes the kernel is checked by default (native and Xen)."""
    vmlinux, vmlinuz, _method, _layout, _addressing = pair
    extra = [] if backend == "all" else ["--backend", backend]
    a, b = run_both(vmlinux, vmlinuz, "check", "--format", "json", *extra)
    assert (a["input"], b["input"]) == (vmlinux, vmlinuz)
    assert b["checked"]["sites"] > 1000
    if "xen" in [x["name"] for x in b["backends"]]:
        # findings (6.1 and 6.12: slot.null warnings for Xen's NULL mmu slots) carry
        # function+offset names, from kallsyms on the vmlinuz and .symtab on the vmlinux
        assert b["checked"]["xen_conditions"] > 0
    assert len(a["findings"]) == len(b["findings"])
    assert_same(symtab, without(a, "input"), without(b, "input"))


def test_kallsyms_agree_with_symtab(pair):
    vmlinux, vmlinuz, _method, layout, addressing = pair
    with ElfImage(vmlinux) as full, open_image(vmlinuz) as stripped:
        table = stripped.symbols
        assert table.source == "kallsyms" and table.kallsyms.layout == layout
        assert table.kallsyms.addressing == addressing
        assert table.kallsyms.names == full.symbols.address("kallsyms_names")
        assert table.kallsyms.addresses == full.symbols.address("kallsyms_offsets")
        syms = table.kallsyms.symbols
        assert len(syms) > 80000
        sample = syms[::max(1, len(syms) // 400)]
        for name, addr, kind in sample:
            known = {s.value for s in full.symbols.lookup(name)}
            assert addr in known, (name, hex(addr), kind)
