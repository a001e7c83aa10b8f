"""Every documented example, run as written, does what the docs say it does.

The examples are read from the docs themselves, so a new one is tested without touching this
file: README.md and docs/*.md (fenced ``sh``/``bash``/``console`` blocks, ``$ `` prompt
lines, and the untagged blocks that list ``pvpatch …`` lines), and the ``--help`` of pvpatch
and of each command (the indented ``pvpatch …`` lines of their epilogs). What follows a
listed command after two spaces, or a ``#``, is its description.

Each block (a fenced block, or one help text) runs in a directory of its own, its commands in
order, so a later line finds what an earlier one wrote (``apply -o vmlinux.xen``, then
``diff vmlinux vmlinux.xen``). Only file names are substituted, never an option: every name a
command reads is looked up in ``NAMES`` (first match wins) and a fixture made for it is put
there — a kernel of the shape the name says, a bzImage of one, a memory image of the boot the
example's own options name (``--backend``, ``--vcpus``, the guest options), an image patched
by ``apply``; names outside the directory (``/proc/kcore``, ``/boot/vmlinuz-$(uname -r)``,
``~/.cache/…``, ``/tmp/…``) become the same path inside it. A name ``NAMES`` does not know
fails the test: map it. ``sudo`` is dropped; what a pvpatch command pipes into (``jq``,
``grep``, ``less``) runs on its output and must succeed too. Lines that run no pvpatch
(make, apt, qemu, scripts) are not examples here; docs/ci.md's YAML and make snippets are
run by tests/test_ci_recipes.py.

What is asserted, for every pvpatch command:

- no traceback, ever; exit status 2 comes with exactly one line on stderr;
- the exit status the docs give: ``$ echo $?`` and the number under it; an error line
  (``pvpatch: error: …``) shown under the command means 2; a description or comment saying
  ``exits N`` means N; otherwise 0 — every example is documented to work, and its fixture is
  a suitable input (a clean kernel, memory of the very build and boot);
- every input's sha256 is unchanged afterwards (unless ``--in-place``); ``--json`` output
  parses; an ``-o``/``--report`` file exists after success;
- where the docs show the output, its key lines: every summary label (``  kernel``,
  ``  verdict``, …), every table header, the verdict with its numbers masked, and the
  error message up to its first ``;`` with its numbers masked.

An example that cannot run on a fixture at all is in ``SKIP`` with the reason; an entry that
names no example fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from conftest import FIXTURES, ROOT, assemble, sha256
from corewriter import NO_ADDRESS, Segment, vmcoreinfo, write_core
from legacy_fixtures import legacy_kernel

from pvpatch.cli import COMMANDS, cli
from pvpatch.image.elf import ElfImage

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HELPS = ["", *COMMANDS]  # `pvpatch --help`, `pvpatch inspect --help`, …

# The fewest pvpatch examples each source must yield: so that a change of format cannot make
# the extractor silently find nothing. Every doc and every help text must be listed.
MIN_EXAMPLES = {
    "README.md": 12,
    "docs/apply.md": 6,
    "docs/backends.md": 1,
    "docs/boot-test.md": 2,
    "docs/check.md": 1,
    "docs/ci.md": 0,  # its pvpatch lines are YAML and make: tests/test_ci_recipes.py runs them
    "docs/inspect.md": 2,
    "docs/notes.md": 2,
    "docs/verify.md": 9,
    "docs/vmlinuz.md": 10,
    "pvpatch --help": 6,
    "pvpatch inspect --help": 9,
    "pvpatch notes --help": 4,
    "pvpatch apply --help": 8,
    "pvpatch diff --help": 4,
    "pvpatch check --help": 5,
    "pvpatch extract --help": 2,
    "pvpatch verify --help": 4,
}

# Examples that cannot run on a fixture, by source and text as extracted, with the reason.
SKIP = {
    ("docs/boot-test.md",
     '.venv/bin/pvpatch apply $V -o /tmp/v.epyc --backend native --cpu '
     '"$(jq -r .guest_cpu.pvpatch_cpu $D/native@EPYC.json)"'):
        "its --cpu is read from the metadata of a QEMU boot on an EPYC CPU, which only "
        "`make boot-test` (boot.py) writes",
}

SLIDE = 0x34600000  # the KASLR slide of docs/verify.md's guest.core
START_KERNEL_MAP = 0xFFFFFFFF80000000
KERNEL_MAP = ("-T", str(FIXTURES / "kernel_map.ld"), "--build-id")


# -- what the docs' names stand for --------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    """A fixture kernel: ``6.1`` (5.13–6.7 shape, Xen notes, pv static calls, the guests'
    start-up code, linked at 0xffffffff81000000), ``6.8+`` (the same in the 6.8+ shape),
    ``5.10`` (4.20–5.12), ``i386`` (a 32-bit 6.1 without types or pv_ops symbol), ``other``
    (another build of the 6.1 shape)."""
    key: str
    vmlinuz: bool = False


@dataclass(frozen=True)
class Patched:
    """``pvpatch apply`` of a kernel with these options."""
    key: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Memory:
    """Memory of a kernel booted as ``args`` say, overridden by the example's own backend
    options: ``raw`` .text, a ``kcore`` (virtual addresses, VMCOREINFO note), a kdump
    ``vmcore`` (virtual and physical, the note), QEMU's ``dump-guest-memory`` of a guest that
    did not hand over its VMCOREINFO (physical, no note); KASLR-slid except raw.
    ``tamper``: one .text pv site holds what the native boot writes there."""
    key: str
    form: str
    args: tuple[str, ...] = ()
    tamper: bool = False


@dataclass(frozen=True)
class Other:
    what: str  # "cpuinfo", "btf"


NAMES: list[tuple[str, object]] = [
    (r"^/proc/cpuinfo$", Other("cpuinfo")),                      # QEMU qemu64's, first CPU
    (r"^/sys/kernel/btf/vmlinux$", Other("btf")),                # raw .BTF of the 6.1 one
    (r"vmlinuz-[^/]*686", Kernel("i386", vmlinuz=True)),
    (r"vmlinuz-7\.", Kernel("6.8+", vmlinuz=True)),
    (r"(^|/)vmlinuz", Kernel("6.1", vmlinuz=True)),              # /boot/vmlinuz-$(uname -r), …
    (r"(^|/)vmlinux-5\.10", Kernel("5.10")),
    (r"(^|/)vmlinux-(6\.12|7\.)", Kernel("6.8+")),
    (r"(^|/)(V|vmlinux|vmlinux-6\.1\.\S*|vmlinux-\$\(uname -r\))$", Kernel("6.1")),
    (r"(^|/)(vmlinux\.xen|out)$", Patched("6.1", ("--backend", "xen"))),
    (r"(^|/)vmlinux\.qemu64$", Patched("5.10", ("--cpu", "amd:15:107"))),
    (r"^/proc/kcore$|(^|/)kcore-copy$", Memory("6.1", "kcore")),
    (r"(^|/)vmcore$", Memory("6.1", "vmcore")),
    (r"(^|/)guest\.core$", Memory("6.1", "qemu")),               # a 6.1 guest, as verify.md says
    # verify.md: a Xen dom0's .text with one site set to the native bytes
    (r"(^|/)xen2\.text\.bin$", Memory("6.1", "raw", ("--backend", "xen", "--vcpus", "2"),
                                      tamper=True)),
    (r"(^|/)kvm\.text$", Memory("6.1", "raw", ("--backend", "kvm"))),
    (r"(^|/)native-6\.1\.0-50\.text\.bin$", Memory("other", "raw")),  # another build's .text
    (r"(^|/)text\.bin$", Memory("6.1", "raw")),
]

# --cpuinfo's stand-in for /proc/cpuinfo: the first processor of a QEMU qemu64 guest
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 15
model\t\t: 107
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx \
fxsr sse sse2 ht syscall nx lm rep_good nopl cpuid pni cx16 hypervisor lahf_lm svm
"""

# the options of a boot: what a memory image's configuration takes from the example
BOOT_OPTIONS = ("--backend", "--vcpus", "--kvm-features", "--kvm-hints", "--hyperv-features",
                "--vmware-features", "--cmdline", "--cpu")


def pvpatch(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "80"})


class Fixtures:
    """Every fixture a name can stand for, made once, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[object, Path] = {}

    def get(self, what: object, example_args: tuple[str, ...] = ()) -> Path:
        if isinstance(what, Memory):  # the boot the example asks about
            what = Memory(what.key, what.form, merged(what.args, example_args), what.tamper)
        if what not in self.made:
            self.made[what] = self._make(what)
        return self.made[what]

    def _path(self, name: str) -> Path:
        return self.root / f"{len(self.made)}-{name}"

    def _make(self, what: object) -> Path:
        if isinstance(what, Kernel) and what.vmlinuz:
            from test_vmlinuz import RELOCS, compress, make_bzimage

            elf = self.get(Kernel(what.key)).read_bytes()
            out = self._path("vmlinuz")
            out.write_bytes(make_bzimage(compress(elf + RELOCS, "xz")))
            return out
        if isinstance(what, Kernel):
            return kernel_fixture(what.key)
        if isinstance(what, Patched):
            out = self._path("patched")
            r = pvpatch("apply", self.get(Kernel(what.key)), "-o", out, *what.args)
            assert r.returncode == 0, r.stderr
            return out
        if isinstance(what, Memory):
            return self._memory(what)
        if what == Other("cpuinfo"):
            out = self._path("cpuinfo")
            out.write_text(CPUINFO)
            return out
        if what == Other("btf"):
            out = self._path("btf")
            with ElfImage(self.get(Kernel("6.1"))) as im:
                out.write_bytes(bytes(im.section_data(im.section(".BTF"))))
            return out
        raise AssertionError(what)

    def _memory(self, m: Memory) -> Path:
        kernel = self.get(Kernel(m.key))
        booted = self.get(Patched(m.key, m.args))
        out = self._path(m.form)
        if m.form == "raw":
            addr, text = text_of(booted)
            if m.tamper:
                text = tampered(kernel, text, addr, text_of(self.get(Patched(m.key, ())))[1])
            out.write_bytes(text)
            return out
        release, build_id = identity_of(kernel)
        info = vmcoreinfo(OSRELEASE=release, **{"BUILD-ID": build_id,
                          "KERNELOFFSET": f"{SLIDE:x}", "NUMBER(phys_base)": "0"})
        segs = []
        for va, data in loads(booted):
            run, phys = va + SLIDE, va + SLIDE - START_KERNEL_MAP
            segs.append({"kcore": Segment(run, NO_ADDRESS, data),
                         "vmcore": Segment(run, phys, data),
                         "qemu": Segment(0, phys, data)}[m.form])
        return write_core(out, segs, b"" if m.form == "qemu" else info)


def kernel_fixture(key: str) -> Path:
    base = {"KERNEL_MAP": 1, "XEN_NOTES": 1, "STATIC_CALLS": 1, "GUEST_CODE": 1}
    if key == "6.1":
        return assemble("pv_kernel61.S", 64, defsyms=base, ld_args=KERNEL_MAP)
    if key == "6.8+":
        return assemble("pv_kernel61.S", 64, defsyms={**base, "ERA612": 1}, ld_args=KERNEL_MAP)
    if key == "other":
        return assemble("pv_kernel61.S", 64, defsyms={"KERNEL_MAP": 1, "XEN_NOTES": 1},
                        ld_args=KERNEL_MAP)
    if key == "5.10":
        return Path(legacy_kernel(4, 64, NO_SHORT=1))
    if key == "i386":
        return assemble("pv_sites.S", 32, defsyms={"I386": 1, "NO_PVOPS_SYM": 1, "PATCHER": 1},
                        ld_args=("-x",))
    raise AssertionError(key)


def merged(base: tuple[str, ...], example: tuple[str, ...]) -> tuple[str, ...]:
    """``base`` options with the example's boot options put over them."""
    opts = dict(zip(base[::2], base[1::2], strict=True))
    words = list(example)
    for i, word in enumerate(words[:-1]):
        if word in BOOT_OPTIONS:
            opts[word] = words[i + 1]
    return tuple(w for kv in sorted(opts.items()) for w in kv)


def text_of(elf: Path) -> tuple[int, bytes]:
    with ElfImage(elf) as im:
        sec = im.section(".text")
        return sec.addr, bytes(im.section_data(sec))


def loads(elf: Path) -> list[tuple[int, bytes]]:
    with ElfImage(elf) as im:
        return [(p.vaddr, bytes(im.data[p.offset:p.offset + p.filesz]))
                for p in im.segments if p.type == 1 and p.filesz]


def identity_of(kernel: Path) -> tuple[str, str]:
    doc = json.loads(pvpatch("inspect", kernel, "--json").stdout)
    return doc["kernel"]["release"], doc["build_id"]


def tampered(kernel: Path, text: bytes, addr: int, native: bytes) -> bytes:
    """``text`` with its first pv site that a native boot patches otherwise set to that."""
    for site in json.loads(pvpatch("inspect", kernel, "--json", "--sites").stdout)["sites"]:
        at = int(site["address"], 16) - addr
        end = at + site["length"]
        if site["section"] == ".text" and text[at:end] != native[at:end]:
            return text[:at] + native[at:end] + text[end:]
    raise AssertionError("no pv site differs from the native boot")


# -- reading the examples ------------------------------------------------------------------

@dataclass
class Example:
    source: str
    line: int
    block: str
    text: str
    note: str = ""  # the description or comment beside it
    status: int | None = None  # as the docs give it
    output: list[str] = field(default_factory=list)  # as the docs show it
    env: dict[str, str] = field(default_factory=dict)  # shell variables set before it
    indent: int = 0

    def expected(self) -> int:
        if self.status is not None:
            return self.status
        if any(line.startswith("pvpatch: error: ") for line in self.output):
            return 2
        said = re.search(r"\bexits (\d)\b", self.note)
        return int(said.group(1)) if said else 0


FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SHELLS = {"sh", "bash", "shell", "console"}
PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b|[\[\]…]")  # a synopsis (VMLINUX, [--sites], …), unquoted


def cut(line: str, at_two_spaces: bool) -> tuple[str, str]:
    """The command and its description: what follows a ``#`` that starts a word, or (in a
    listing) the first two spaces, outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip(), line[i + 1:].strip()
        elif at_two_spaces and line.startswith("  ", i) and line[:i].strip():
            return line[:i].rstrip(), line[i:].strip()
    return line.rstrip(), ""


def logical_lines(lines: list[str]) -> Iterator[tuple[int, str]]:
    """Lines with their ``\\`` continuations joined, and the index of the first."""
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1].rstrip() + " " + lines[i].strip()
        yield start, text
        i += 1


def is_listed_command(text: str) -> bool:
    return bool(re.match(r"(sudo )?pvpatch ", text))


def listed(text: str) -> tuple[str, str]:
    """A listed command and its description; spaces that align the command names in a
    column (``pvpatch notes   /boot/vmlinuz…``) are one space."""
    return cut(re.sub(r"^((?:sudo )?pvpatch \w+) +", r"\1 ", text), True)


def md_examples(path: Path) -> list[Example]:
    return examples_in(path.read_text(), str(path.relative_to(ROOT)))


def examples_in(doc: str, source: str) -> list[Example]:
    out: list[Example] = []
    for m in FENCE.finditer(doc):
        lang, lines = m.group(1), m.group(2).splitlines()
        first = doc.count("\n", 0, m.start(2)) + 1
        block = f"{source}:{first - 1}"
        if lang not in SHELLS | {""}:
            continue
        if any(line.startswith("$ ") for line in lines):  # a session: commands and output
            current: Example | None = None
            for i, text in logical_lines(lines):
                if text.startswith("$ "):
                    cmd, note = cut(text[2:], False)
                    if cmd == "echo $?":
                        current = None
                        continue
                    current = Example(source, first + i, block, cmd, note)
                    out.append(current)
                elif current is not None:
                    current.output.append(text)
                elif re.fullmatch(r"\d+", text) and out:  # under `$ echo $?`
                    out[-1].status = int(text)
        elif lang:  # a script: every line, with the variables it sets
            env: dict[str, str] = {}
            for i, text in logical_lines(lines):
                cmd, note = cut(text, False)
                if not cmd:
                    continue
                try:
                    words = shlex.split(cmd.removeprefix("export "))
                except ValueError:
                    words = []
                if words and all(re.match(r"[A-Za-z_]\w*=", w) for w in words):
                    for w in words:
                        name, value = w.split("=", 1)
                        env[name] = expand(value, env)
                    continue
                out.append(Example(source, first + i, block, cmd, note, env=dict(env)))
        else:  # a listing: `pvpatch …` lines with their descriptions
            out += listing(lines, source, first, block)
    return out


def listing(lines: list[str], source: str, first: int, block: str) -> list[Example]:
    """The ``pvpatch …`` lines of a listing (a doc's, or a help text's indented ones), each
    with its description: after two spaces, and on the deeper-indented lines under it."""
    out: list[Example] = []
    last: Example | None = None
    for i, line in enumerate(lines):
        text, indent = line.strip(), len(line) - len(line.lstrip())
        if is_listed_command(text):
            cmd, note = listed(text)
            last = None
            if not PLACEHOLDER.search(re.sub(r"'[^']*'|\"[^\"]*\"", "", cmd)):
                last = Example(source, first + i, block, cmd, note, indent=indent)
                out.append(last)
        elif last is not None and text and indent >= last.indent + 8:
            last.note = f"{last.note} {text}".strip()
        else:
            last = None
    return out


def help_text(command: str) -> str:
    r = pvpatch(*([command] if command else []), "--help")
    assert r.returncode == 0, r.stderr
    return r.stdout


def help_examples(command: str) -> list[Example]:
    source = f"pvpatch {command} --help".replace("  ", " ")
    return [e for e in listing(help_text(command).splitlines(), source, 1, source)
            if e.indent >= 2]


def expand(text: str, env: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` of the variables the block set."""
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?",
                  lambda m: env.get(m.group(1), m.group(0)), text)


SUBST = re.compile(r"\$\((?:[^()]|\([^()]*\))*\)")


def pipelines(ex: Example) -> list[list[list[str]]]:
    """The example's pipelines (split at ``;``, ``&&``, ``||``), each a list of simple
    commands (split at ``|``), each a list of words; ``$(…)`` stays inside its word."""
    text = expand(ex.text, ex.env)
    substs: list[str] = []

    def protect(m: re.Match[str]) -> str:
        substs.append(m.group(0))
        return f"@@{len(substs) - 1}@@"

    lexer = shlex.shlex(SUBST.sub(protect, text), posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    restore = lambda w: re.sub(r"@@(\d+)@@", lambda m: substs[int(m.group(1))], w)  # noqa: E731
    out: list[list[list[str]]] = [[[]]]
    for token in lexer:
        if token in (";", "&&", "||"):
            out.append([[]])
        elif token == "|":
            out[-1].append([])
        else:  # a redirection stays a word: a pvpatch command with one fails below
            out[-1][-1].append(restore(token))
    return [[c for c in p if c] for p in out if any(p)]


def pvpatch_args(words: list[str]) -> list[str] | None:
    """The arguments, when ``words`` run pvpatch (after ``sudo`` and ``VAR=value``)."""
    while words and (words[0] == "sudo" or re.match(r"[A-Za-z_]\w*=", words[0])):
        words = words[1:]
    if words and Path(words[0]).name == "pvpatch":
        return words[1:]
    return None


def runs_pvpatch(ex: Example) -> bool:
    try:
        return any(pvpatch_args(p[0]) is not None for p in pipelines(ex))
    except ValueError:  # no shell would read it either: fails below if it names pvpatch
        return "pvpatch" in ex.text


def all_examples() -> list[Example]:
    found = [e for path in DOCS for e in md_examples(path)]
    found += [e for c in HELPS for e in help_examples(c)]
    return [e for e in found if runs_pvpatch(e)]


EXAMPLES = all_examples()
BLOCKS = list(dict.fromkeys(e.block for e in EXAMPLES))


# -- running them ---------------------------------------------------------------------------

def params_of(name: str) -> tuple[click.Command, dict[str, click.Option]]:
    cmd = cli.get_command(click.Context(cli), name)
    assert cmd is not None, f"pvpatch has no command {name!r}"
    return cmd, {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts}


OUTPUTS = ("-o", "--output", "--report")
INPUTS = ("--cpuinfo", "--system-map", "--btf", "--baseline")


def local(word: str) -> str:
    """Where a file the example names lives in the run directory."""
    word = re.sub(r"\$\(([^)]*)\)", lambda m: re.sub(r"\W+", "-", m.group(1)), word)
    return word.removeprefix("~/").lstrip("/") or "root"


class Block:
    """One block's examples, run in order in one directory."""

    def __init__(self, run: Path, fixtures: Fixtures) -> None:
        self.run = run
        self.fixtures = fixtures

    def substitute(self, args: list[str]) -> tuple[list[str], list[Path], list[Path]]:
        """The arguments with every file a fixture (inputs) or a path in the run directory
        (outputs); and the inputs and outputs."""
        assert args, "pvpatch without a command"
        _, options = params_of(args[0])
        out, inputs, outputs = [args[0]], [], []
        i = 1
        while i < len(args):
            word = args[i]
            if word.startswith("-") and len(word) > 1:
                opt = word.split("=", 1)[0]
                assert opt in options, f"pvpatch {args[0]} has no option {opt}"
                if options[opt].is_flag or "=" in word:
                    out.append(word)
                    i += 1
                    continue
                assert i + 1 < len(args), f"{opt} needs a value"
                value = args[i + 1]
                if opt in OUTPUTS:
                    value = self.output(value, outputs)
                elif opt in INPUTS:
                    value = self.input(value, args, inputs)
                else:
                    assert "$(" not in value, f"{value}: a command substitution is no option"
                out += [word, value]
                i += 2
                continue
            out.append(self.input(word, args, inputs))
            i += 1
        return out, inputs, outputs

    def output(self, word: str, outputs: list[Path]) -> str:
        path = self.run / local(word)
        path.parent.mkdir(parents=True, exist_ok=True)
        outputs.append(path)
        return local(word)

    def input(self, word: str, args: list[str], inputs: list[Path]) -> str:
        path = self.run / local(word)
        if not path.exists():  # not written by an earlier line of the block: a fixture
            what = next((w for pattern, w in NAMES if re.search(pattern, word)), None)
            assert what is not None, f"no fixture stands for {word!r}: add it to NAMES"
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.fixtures.get(what, tuple(args)), path)
        inputs.append(path)
        return local(word)

    def example(self, ex: Example) -> list[str]:
        """Run ``ex``; what went wrong, if anything."""
        where = f"{ex.source}:{ex.line}: {ex.text}"
        problems: list[str] = []
        try:
            runs = [(p, pvpatch_args(p[0])) for p in pipelines(ex)]
        except ValueError as e:
            return [f"{where}: not a shell command line ({e})"]
        for pipeline, args in runs:
            if args is None:
                continue
            if any(set(w) <= set("&<>()") for c in pipeline for w in c):
                problems.append(f"{where}: a redirection or subshell: run it by hand")
                continue
            try:
                argv, inputs, outputs = self.substitute(args)
            except AssertionError as e:  # not a command pvpatch takes, or an unknown name
                problems.append(f"{where}: {str(e).splitlines()[0]}")
                continue
            before = {p: sha256(p) for p in inputs}
            r = pvpatch(*argv, cwd=self.run)
            shown = f"\n  ran: pvpatch {shlex.join(argv)}\n  exit {r.returncode}\n" \
                    f"  stderr: {r.stderr.strip()[:2000]}"
            if "Traceback" in r.stderr:
                problems.append(f"{where}: a traceback{shown}")
                continue
            want = ex.expected() if (pipeline, args) == runs[-1] else 0
            if r.returncode != want:
                problems.append(f"{where}: exit status {r.returncode}, documented {want}{shown}")
                continue
            if r.returncode == 2 and len(r.stderr.strip().splitlines()) != 1:
                problems.append(f"{where}: exit 2 without one line on stderr{shown}")
            for p, digest in before.items():
                if "--in-place" not in argv and sha256(p) != digest:
                    problems.append(f"{where}: input {p.name} was modified")
            if r.returncode in (0, 1):
                problems += self.outcome(where, argv, outputs, r, shown)
            if ex.output:
                problems += [f"{where}: {p}{shown}" for p in shown_lines(ex.output,
                                                                         r.stdout + r.stderr)]
            if len(pipeline) > 1 and r.returncode in (0, 1):
                problems += self.downstream(where, pipeline[1:], r.stdout)
        return problems

    def outcome(self, where: str, argv: list[str], outputs: list[Path],
                r: subprocess.CompletedProcess[str], shown: str) -> list[str]:
        problems = []
        wants_json = "--json" in argv or "json" in [argv[i + 1] for i, w in
                                                    enumerate(argv[:-1]) if w == "--format"]
        to_file = argv[0] == "check" and {"-o", "--output"} & set(argv)  # the verdict only
        if wants_json and not to_file:
            try:
                json.loads(r.stdout)
            except ValueError as e:
                problems.append(f"{where}: --json printed no JSON document ({e}){shown}")
        for p in outputs:
            if not p.exists():
                problems.append(f"{where}: {p.name} was not written{shown}")
        return problems

    def downstream(self, where: str, commands: list[list[str]], stdin: str) -> list[str]:
        """What the output is piped into, where the machine has it."""
        if any(shutil.which(c[0]) is None for c in commands):
            return []
        line = " | ".join(shlex.join(c) for c in commands)
        r = subprocess.run(["bash", "-c", line], input=stdin, capture_output=True, text=True,
                           cwd=self.run, timeout=60)
        if r.returncode != 0:
            return [f"{where}: `{line}` on its output exited {r.returncode}: {r.stderr.strip()}"]
        return []


def masked(text: str) -> str:
    """The words with digits in them, and so the fixture's numbers and names, as ``#``."""
    return re.sub(r"\S*\d\S*", "#", text.strip())


# a summary line's label: `  kernel    …`, `  static calls  …`, `    expected  …`
LABEL = re.compile(r"^( {2}| {4})([A-Za-z][\w.-]*(?: [\w.-]+){0,2})(?:  +(.*))?$")


def shown_lines(shown: list[str], actual: str) -> list[str]:
    """The key lines of the output the docs show that ``actual`` lacks."""
    got = actual.splitlines()
    headers = {tuple(re.split(r"  +", line.strip())) for line in got}
    missing = []
    for line in shown:
        if line.strip() == "…":  # lines cut
            continue
        if "…" in line and not LABEL.match(line):  # a line cut short: only its label counts
            continue
        if line.startswith("pvpatch: error: "):  # the file and what is wrong with it
            want = masked(re.split(r"[;']", ": ".join(line.split(": ")[:4]))[0])
            if not any(masked(g).startswith(want) for g in got):
                missing.append(f"no error line like the docs' {want!r}")
        elif m := LABEL.match(line):
            label = m.group(1) + m.group(2)
            values = [masked(n.group(3) or "") for g in got
                      if (n := LABEL.match(g)) and n.group(1) + n.group(2) == label]
            if not values:
                missing.append(f"no line {label.strip()!r} as the docs show ({line.strip()!r})")
            elif m.group(2) == "verdict" and "…" not in line \
                    and masked(m.group(3) or "") not in values:
                missing.append(f"the verdict is not {line.strip()!r} (numbers aside)")
        elif re.fullmatch(r"[a-z][a-z -]*(?:  +[a-z][a-z -]*)+", line.rstrip()):
            if tuple(re.split(r"  +", line.strip())) not in headers:
                missing.append(f"no table headed {line.strip()!r}")
        elif re.match(r"  \S", line) and masked(line) not in {masked(g) for g in got}:
            missing.append(f"no line {line.strip()!r} (numbers aside)")  # an unlabelled one
    return missing


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("doc-fixtures"))


@pytest.mark.parametrize("block", BLOCKS)
def test_documented_examples_run_as_written(block, fixtures, tmp_path):
    runner = Block(tmp_path, fixtures)
    problems = []
    for ex in (e for e in EXAMPLES if e.block == block):
        if (ex.source, ex.text) not in SKIP:
            problems += runner.example(ex)
    assert not problems, "\n\n".join(problems)


def test_the_extractor_finds_the_examples():
    sources = {str(p.relative_to(ROOT)) for p in DOCS} | {
        f"pvpatch {c} --help".replace("  ", " ") for c in HELPS}
    assert sources == set(MIN_EXAMPLES), "list every doc and help text in MIN_EXAMPLES"
    counts = {s: sum(e.source == s for e in EXAMPLES) for s in sources}
    few = {s: (n, MIN_EXAMPLES[s]) for s, n in counts.items() if n < MIN_EXAMPLES[s]}
    assert not few, f"found fewer pvpatch examples than expected (found, expected): {few}"


def test_every_skipped_example_exists():
    known = {(e.source, e.text) for e in EXAMPLES}
    assert not set(SKIP) - known, f"SKIP names examples the docs no longer have: " \
                                  f"{set(SKIP) - known}"
    assert len(SKIP) <= 3, "keep the skip-list small: make a fixture instead"


def test_the_output_check_catches_what_it_is_for():
    """A self-test: a missing label, another verdict, another table, another error."""
    shown = ["x ↔ y", "  kernel    6.1.0-57-amd64", "…",
             "  verdict   xen, 2 vCPUs: 1 unexpected (3880 of 3881)", "",
             "configuration  matched  unexpected", "native               1        3880"]
    good = ("x ↔ y\n  kernel    6.1.0-fixture\n  verdict   xen, 2 vCPUs: 1 unexpected (23 of 24)"
            "\n  note      more\n\nconfiguration  matched  unexpected\nnative  5  19\n")
    assert shown_lines(shown, good) == []
    for bad in (good.replace("  kernel", "  release"), good.replace("1 unexpected", "matches"),
                good.replace("matched", "found")):
        assert len(shown_lines(shown, bad)) == 1, bad
    error = ["pvpatch: error: guest.core: memory of another build: the .text of 6.12.118 is "
             "nowhere; it holds 'Linux version 6.1.0-57'"]
    assert shown_lines(error, "pvpatch: error: guest.core: memory of another build: its "
                              "linux_banner is 'Linux version 6.1.0-fixture'") == []
    assert shown_lines(error, "pvpatch: error: guest.core: cannot open: No such file") != []


def test_the_extractor_reads_the_forms_it_is_for():
    """A self-test on a made-up doc: a listing with descriptions, a session with its status
    and output, a script with variables; a synopsis is no example."""
    doc = ("```\npvpatch apply VMLINUX [-o OUT]\npvpatch check vmlinux --fail-on warning"
           "   exits 1 on a warning\n```\n"
           "```\n$ pvpatch verify vmlinux text.bin --raw-start 0x0\n  verdict   native\n"
           "$ echo $?\n1\n```\n"
           "```sh\nV=~/k/vmlinux-6.1.0-1 \\\n  X=1\npvpatch inspect $V --op 'irq.*'  # ops\n```\n")
    found = examples_in(doc, "selftest.md")
    assert [(e.text, e.expected()) for e in found] == [
        ("pvpatch check vmlinux --fail-on warning", 1),
        ("pvpatch verify vmlinux text.bin --raw-start 0x0", 1),
        ("pvpatch inspect $V --op 'irq.*'", 0)]
    assert found[1].output == ["  verdict   native"]
    assert pipelines(found[2]) == [[["pvpatch", "inspect", "~/k/vmlinux-6.1.0-1", "--op",
                                     "irq.*"]]]
    ex = Example("x", 1, "x", "pvpatch inspect /boot/vmlinuz-$(uname -r) | jq .a; echo")
    assert pipelines(ex) == [[["pvpatch", "inspect", "/boot/vmlinuz-$(uname -r)"],
                              ["jq", ".a"]], [["echo"]]]
    assert local("/boot/vmlinuz-$(uname -r)") == "boot/vmlinuz-uname-r"
