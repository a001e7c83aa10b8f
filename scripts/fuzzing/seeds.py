"""The seed images mutants are made from, and what each one offers the scenarios.

Every fixture shape pvpatch reads: the 5.13–6.7 and 6.8+ images with and without the pv
static calls, the Xen start-up code the store decoder reads (6.1 and 6.8+), the KVM, Hyper-V
and VMware start-up code (6.1, and 6.8+ with a 7.9 banner), the pre-5.13 eras with and
without Xen and lguest, Xen notes, i386, bzImages (gzip, lz4, zstd), and stripped images
whose only symbols are kallsyms tables of the 7.0 (place-relative) and 6.1.y (seqs) forms,
alone and inside a bzImage.

For each seed the parent process also works out, once, what the scenarios need beside the
image: which backends it plans for, its .BTF as a raw file, its System.map, its
``check --format json`` report, an ``apply`` output per backend (for ``diff``), where its
sites and start-up functions lie in the file, and where its kallsyms arrays are. That costs
a few seconds, so it is cached in fixtures/build/ keyed by the fixture sources and
pvpatch's own source.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fuzzing.elf import Elf
from fuzzing.images import (
    Mutator,
    boot_header,
    code_mutators,
    kallsyms_mutators,
    mutate,
    symbol_mutators,
)
from fuzzing.values import flip_bytes, truncate

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# helpers the start-up steps call, whose code is summarised at the call
HELPERS = ("paravirt_set_sched_clock", "__static_call_update")


@dataclass
class Seed:
    """One seed image and what the scenarios may do with it."""

    name: str
    elf: bytes  # the ELF mutants are made from (inside the bzImage when ``wrap`` is set)
    bits: int
    wrap: str | None = None  # the compression of a bzImage around ``elf``
    functions: dict[str, tuple[int, int]] = field(default_factory=dict)  # start-up code
    startup: tuple[str, ...] = ()  # start-up functions named in .symtab
    kallsyms: dict[str, tuple[int, int]] = field(default_factory=dict)  # arrays in the file
    backends: tuple[str, ...] = ()  # those `apply --dry-run --backend` plans for
    btf: bytes | None = None  # the image's .BTF as a raw file
    system_map: str | None = None  # `nm -n` of the image before it was stripped
    report: str | None = None  # its `check --format json` report
    patched: dict[str, bytes] = field(default_factory=dict)  # backend → `apply` output
    sites: list[tuple[int, int]] = field(default_factory=list)  # (file offset, length)
    cpu_matters: bool = False  # pre-5.13: the boot CPU picks the padding NOPs

    @property
    def check_backends(self) -> list[str]:
        """``--backend LIST`` for `check`: every backend the seed plans for (the default,
        native and Xen, refuses a kernel whose Xen start-up code pvpatch cannot read)."""
        return ["--backend", ",".join(self.backends)] if self.backends else []

    @property
    def image(self) -> bytes:
        """The file as pvpatch is given it."""
        return self.elf if self.wrap is None else wrap(self.elf, self.wrap)

    def extra(self) -> list[tuple[str, Mutator]]:
        """The mutators only this seed can aim: its code, its symbols, its kallsyms."""
        return [*code_mutators(self.functions), *symbol_mutators(self.startup),
                *kallsyms_mutators(self.kallsyms)]

    def mutant(self, rng: random.Random, focus: str | None = None) -> tuple[bytes, list[str]]:
        """A mutant of the image. ``focus`` ("code", "kallsyms") makes most rounds use that
        seed-specific family; a bzImage is mutated inside, or in its boot header."""
        extra = self.extra()
        weight = 0.3
        if focus is not None:
            extra = [(n, m) for n, m in extra if _family(n) == focus] or extra
            weight = 0.85
        if self.wrap is not None and rng.random() < 0.2:
            buf = bytearray(self.image)
            log = [f"bzImage: {rng.choice((boot_header, flip_bytes, truncate))(buf, rng)}"]
            return bytes(buf), log
        data, log = mutate(self.elf, rng, extra=extra, weight=weight)
        return (data if self.wrap is None else wrap(data, self.wrap)), log


def _family(mutator: str) -> str:
    return "kallsyms" if mutator == "kallsyms" else "code"


def wrap(elf: bytes, method: str) -> bytes:
    from test_vmlinuz import compress, make_bzimage

    return make_bzimage(compress(elf, method))


# -- the fixtures ------------------------------------------------------------------------------

def _pv61(**defs: int) -> tuple[bytes, int]:
    from conftest import assemble

    return assemble("pv_kernel61.S", 64, defsyms=defs).read_bytes(), 64


def _assembled(src: str, bits: int, **defs: int) -> Callable[[], tuple[bytes, int]]:
    def build() -> tuple[bytes, int]:
        from conftest import assemble

        script = ROOT / "fixtures" / (Path(src).stem + ".ld")
        ld = ("-T", str(script)) if script.exists() else ()
        return assemble(src, bits, defsyms=defs, ld_args=ld).read_bytes(), bits

    return build


def _legacy(era: int, bits: int) -> Callable[[], tuple[bytes, int]]:
    def build() -> tuple[bytes, int]:
        from legacy_fixtures import legacy_kernel

        return Path(legacy_kernel(era, bits)).read_bytes(), bits

    return build


def _xen_legacy(era: int, bits: int, version: int, **defs: int
                ) -> Callable[[], tuple[bytes, int]]:
    def build() -> tuple[bytes, int]:
        from legacy_fixtures import xen_legacy_kernel

        return Path(xen_legacy_kernel(era, bits, version, **defs)).read_bytes(), bits

    return build


GUESTS_7X = {"ERA612": 1, "STATIC_CALLS": 1, "GUEST_CODE": 1, "BANNER_NEWER": 1}

# name → (how to build the ELF, bzImage compression or None, kallsyms form or None)
FIXTURES: dict[str, tuple[Callable[[], tuple[bytes, int]], str | None, str | None]] = {
    "6.1": (lambda: _pv61(), None, None),
    "6.1-static-calls": (lambda: _pv61(STATIC_CALLS=1), None, None),
    "6.1-xen-code": (lambda: _pv61(XEN_CODE=1), None, None),
    "6.1-guest-code": (lambda: _pv61(STATIC_CALLS=1, GUEST_CODE=1), None, None),
    "6.12-static-calls": (lambda: _pv61(ERA612=1, STATIC_CALLS=1), None, None),
    "6.12-xen-code-notes": (lambda: _pv61(ERA612=1, XEN_CODE=1, XEN_NOTES=1), None, None),
    "7.x-guest-code": (lambda: _pv61(**GUESTS_7X), None, None),
    "pv_sites-64": (_assembled("pv_sites.S", 64), None, None),
    "pv_sites-32": (_assembled("pv_sites.S", 32, I386=1), None, None),
    "pv_sites-64-abs": (_assembled("pv_sites.S", 64, CALL_ABS=1), None, None),
    "xen_notes-64": (_assembled("xen_notes.S", 64), None, None),
    "xen_guest_legacy-32": (_assembled("xen_guest_legacy.S", 32, I386=1), None, None),
    "legacy-era1-32": (_legacy(1, 32), None, None),
    "legacy-era2-32": (_legacy(2, 32), None, None),
    "legacy-era3-32": (_legacy(3, 32), None, None),
    "legacy-era3-64": (_legacy(3, 64), None, None),
    "legacy-era4-64": (_legacy(4, 64), None, None),
    "xen-legacy-4.9-32-lguest": (_xen_legacy(3, 32, 40900, LGUEST=1), None, None),
    "xen-legacy-5.10-64": (_xen_legacy(4, 64, 51000), None, None),
    "bzimage-gzip": (lambda: _pv61(), "gzip", None),
    "bzimage-lz4": (lambda: _pv61(), "lz4", None),
    "7.x-kallsyms": (lambda: _pv61(**GUESTS_7X), None, "pc-relative"),
    "7.x-kallsyms-bzimage-zstd": (lambda: _pv61(**GUESTS_7X), "zstd", "pc-relative"),
    "6.1-kallsyms-bzimage-gzip": (lambda: _pv61(XEN_CODE=1), "gzip", "seqs"),
}


# -- what each seed offers ---------------------------------------------------------------------

def startup_names() -> tuple[str, ...]:
    """Every start-up function a backend reads (pvpatch.backends), and the helpers they call."""
    from pvpatch.backends import hyperv, kvm, lguest, vmware
    from pvpatch.backends.xen_rules import XEN_STARTUP

    steps = [*XEN_STARTUP.steps, *kvm.KVM_STARTUP.steps, *hyperv.HYPERV_STARTUP.steps,
             *vmware.VMWARE_STARTUP.steps, *lguest.LGUEST_STARTUP.steps]
    return tuple(dict.fromkeys([s.function for s in steps] + list(HELPERS)))


def _nm(elf: bytes) -> str:
    with tempfile.NamedTemporaryFile() as f:
        f.write(elf)
        f.flush()
        return subprocess.run(["nm", "-n", f.name], capture_output=True, text=True,
                              check=True).stdout


def _with_kallsyms(elf: bytes, bits: int, form: str
                   ) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """``elf`` stripped of .symtab, its symbols in kallsyms tables of ``form`` in a section
    of their own past its last one: what a vmlinux out of a bzImage holds."""
    from kallsyms_tables import Sym, tables

    syms = []
    for line in _nm(elf).splitlines():
        p = line.split()
        if len(p) == 3 and p[1] in "TtDdRrBbW":  # absolute symbols lie outside the image
            syms.append(Sym(p[2], int(p[0], 16), p[1]))
    low = min(s.addr for s in syms)
    # a kernel has thousands of symbols; the tables' shape needs more than one 256-block
    syms += [Sym(f"kallsyms_filler_{i}", low, "r") for i in range(300)]
    syms.sort(key=lambda s: s.addr)
    elf_ = Elf.parse(elf)
    top = max(s["sh_addr"] + s["sh_size"] for _a, s in elf_.sections(elf))
    base = (top + 0xFFF) & ~0xFFF
    blob, labels = tables(syms, bits, form, base)
    blob += bytes(max(0, 8192 - len(blob)))  # find_kallsyms reads sections of 4 KiB or more
    with tempfile.TemporaryDirectory() as tmp:
        src, tab, out = Path(tmp, "in"), Path(tmp, "tab"), Path(tmp, "out")
        src.write_bytes(elf)
        tab.write_bytes(blob)
        subprocess.run(["objcopy", "--add-section", f".kallsyms={tab}", "--set-section-flags",
                        ".kallsyms=alloc,load,readonly,data", "--change-section-address",
                        f".kallsyms={base:#x}", "--strip-all", str(src), str(out)],
                       check=True, capture_output=True)
        stripped = out.read_bytes()
    at = Elf.parse(stripped).file_offset(stripped, base)
    ends = [*sorted(labels.values()), base + len(blob)]
    regions = {name: (at + addr - base, ends[ends.index(addr) + 1] - addr)
               for name, addr in labels.items()}
    return stripped, regions


def _functions(elf: bytes, names: tuple[str, ...], symbols_from: bytes
               ) -> tuple[dict[str, tuple[int, int]], tuple[str, ...]]:
    """Where the start-up functions' code lies in ``elf`` (their addresses from the
    unstripped ``symbols_from``), and which of them ``elf``'s own .symtab names."""
    wanted = set(names)
    src = Elf.parse(symbols_from)
    here = Elf.parse(elf)
    syms = [s for s in src.symbols(symbols_from)
            if s.name in wanted or s.name.removesuffix(".cold") in wanted]
    out = {}
    for s in syms:
        off = here.file_offset(elf, s.value)
        if off is not None and s.size:
            out[s.name] = (off, s.size)
    own = tuple(sorted({s.name for s in here.symbols(elf)} & wanted))
    return out, own


def _run(argv: list[str]) -> tuple[int, str]:
    from click.testing import CliRunner

    from pvpatch.cli import cli

    r = CliRunner().invoke(cli, argv)
    return r.exit_code, r.stdout


def _describe(seed: Seed, unstripped: bytes) -> None:
    """Fill in what the scenarios need beside the image (see the module's docstring)."""
    from pvpatch.backends import BACKENDS

    seed.functions, seed.startup = _functions(seed.elf, startup_names(), unstripped)
    elf = Elf.parse(seed.elf)
    where = elf.named(seed.elf, b".BTF") if elf else None
    if where is not None:
        seed.btf = seed.elf[where[0]:where[0] + where[1]]
    seed.system_map = _nm(unstripped)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp, "image")
        image.write_bytes(seed.image)
        for backend in BACKENDS:
            out = Path(tmp, backend)
            rc, _ = _run(["apply", str(image), "--backend", backend, "-o", str(out)])
            if rc == 0:
                seed.backends += (backend,)
                seed.patched[backend] = out.read_bytes()
        rc, report = _run(["check", str(image), "--format", "json", *seed.check_backends])
        seed.report = report if rc in (0, 1) and report.startswith("{") else None
        rc, plan = _run(["apply", str(image), "--dry-run", "--json"])
        if rc == 0:
            doc = json.loads(plan)
            seed.cpu_matters = bool(doc.get("nops", {}).get("cpu_matters"))
            for s in doc.get("sites", []):
                off = elf.file_offset(seed.elf, int(s["address"], 16)) if elf else None
                if off is not None:
                    seed.sites.append((off, s["length"]))


def _build(name: str) -> Seed:
    make, method, form = FIXTURES[name]
    elf, bits = make()
    unstripped = elf
    regions: dict[str, tuple[int, int]] = {}
    if form is not None:
        elf, regions = _with_kallsyms(elf, bits, form)
    seed = Seed(name, elf, bits, method, kallsyms=regions)
    _describe(seed, unstripped)
    return seed


def _cache_key() -> str:
    h = hashlib.sha256()
    for folder in (ROOT / "fixtures", ROOT / "src" / "pvpatch", Path(__file__).parent, TESTS):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in (".S", ".inc", ".ld", ".py"):
                h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def seeds(names: list[str] | None = None) -> list[Seed]:
    """The seeds (all, or those ``names``), built or read from the cache."""
    cache = ROOT / "fixtures" / "build" / f"fuzz-seeds-{_cache_key()}.pickle"
    if names is None and cache.exists():
        return pickle.loads(cache.read_bytes())
    out = []
    for name in names or FIXTURES:
        try:
            out.append(_build(name))
        except Exception as e:  # a missing tool (objcopy, nm): fuzz what can be built
            print(f"fuzz: seed {name} not built: {type(e).__name__}: {e}", file=sys.stderr)
    if names is None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        pickle.dump(out, buf)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.rename(cache)
    return out
