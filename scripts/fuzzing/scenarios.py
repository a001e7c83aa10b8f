"""What each run does: one command, one seed, one input mutated (or one odd output path).

A scenario writes its files into the run's folder through a :class:`Case`, which records
which files are inputs (they must come out unchanged) and which are outputs (after a
refusal they must not exist, or still hold what they held), and returns the argv. Every
command and every input path has its own scenarios, so the per-scenario counts of a run
say how often each was exercised.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fuzzing import btf as btf_mutants
from fuzzing import options as option_mutants
from fuzzing import reports, targets, text
from fuzzing.images import garbage_code, mutate
from fuzzing.seeds import Seed
from fuzzing.values import flip_bytes


@dataclass
class Case:
    """The files of one run, and the log that says how its inputs were made."""

    tmp: Path
    seed: Seed
    seeds: Sequence[Seed]
    rng: random.Random
    log: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    # (path, what a refusal must leave there): "absent" (nothing was there), "as-was-or-
    # absent" (a stale file a command may remove once it has validated its input), "as-was"
    outputs: list[tuple[str, str]] = field(default_factory=list)

    def file(self, name: str, data: bytes) -> str:
        path = self.tmp / name
        path.write_bytes(data)
        self.inputs.append(str(path))
        return str(path)

    def side_file(self, name: str, data: bytes) -> str:
        """An option's file (--btf, --system-map, --cpuinfo, --baseline): mostly ``data``,
        sometimes a path no such file should be — endless (/dev/zero), empty (/dev/null),
        a directory, missing, or the image itself."""
        if self.rng.random() < 0.06:
            odd = self.rng.choice(("/dev/zero", "/dev/null", str(self.tmp),
                                   str(self.tmp / "missing"), *self.inputs[:1]))
            self.log.append(f"{name}: {odd}")
            return odd
        return self.file(name, data)

    def intact(self, name: str = "ref") -> str:
        return self.file(name, self.seed.image)

    def mutant(self, name: str = "in", focus: str | None = None) -> str:
        data, log = self.seed.mutant(self.rng, focus)
        self.log += log
        return self.file(name, data)

    def output(self, name: str = "out", odd: bool = False, other: str | None = None) -> str:
        """A path for an output; ``odd``: one of :mod:`fuzzing.targets`'s odd ones."""
        if not odd:
            path, mode = str(self.tmp / name), "absent"
        else:
            path, kind, mode = targets.target(self.tmp, name, self.rng, self.inputs, other)
            self.log.append(f"{name} target: {kind}")
        self.outputs.append((path, mode))
        return path

    def backend(self) -> str:
        """One of the backends the seed plans for (native when none)."""
        return self.rng.choice(self.seed.backends or ("native",))

    def vcpus(self, backend: str) -> list[str]:
        if backend in ("xen", "kvm", "hyperv", "vmware") and self.rng.random() < 0.5:
            return ["--vcpus", self.rng.choice(("1", "2", "64"))]
        return []


@dataclass(frozen=True)
class Scenario:
    name: str
    command: str  # the pvpatch command it runs, for the per-command figures
    build: Callable[[Case], list[str]]
    fits: Callable[[Seed], bool] = lambda s: True


# -- image mutants through every command (the original fuzz table) ---------------------------

def _image(*argv: str) -> Callable[[Case], list[str]]:
    def build(c: Case) -> list[str]:
        values = {"in": c.mutant(), "other": c.intact()}
        if "{out}" in argv:
            values["out"] = c.output()
        return [a.format(**values) for a in argv]

    return build


def _inspect_backend(c: Case) -> list[str]:
    b = c.backend()
    return ["inspect", c.mutant(), "--backend", b, *c.vcpus(b), "--json"]


def _apply_backend(c: Case) -> list[str]:
    b = c.backend()
    return ["apply", c.mutant(), "--backend", b, *c.vcpus(b), "-o", c.output()]


def _in_place(c: Case) -> list[str]:
    """--in-place replaces its input by request: only after a refusal must it be intact."""
    path = c.mutant()
    c.inputs.remove(path)
    c.outputs.append((path, "as-was"))
    return ["apply", path, "--in-place", "--backend", c.backend()]


# -- the start-up code the store decoder reads, and kallsyms ---------------------------------

def _startup(c: Case) -> list[str]:
    b = c.rng.choice([x for x in c.seed.backends if x != "native"] or ["xen"])
    image = c.mutant(focus="code")
    cmd = c.rng.choice(("apply", "inspect", "check"))
    if cmd == "apply":
        return ["apply", image, "--dry-run", "--json", "--backend", b, *c.vcpus(b)]
    if cmd == "inspect":
        return ["inspect", image, "--backend", b, *c.vcpus(b)]
    return ["check", image, "--backend", b, *c.vcpus(b), "--format", "json"]


def _kallsyms(c: Case) -> list[str]:
    image = c.mutant(focus="kallsyms")
    cmd = c.rng.choice(("inspect", "notes", "apply", "check", "extract"))
    if cmd == "apply":
        return ["apply", image, "--backend", c.backend(), "-o", c.output()]
    if cmd == "extract":
        return ["extract", image, "-o", c.output()]
    if cmd == "check":
        return ["check", image, *c.seed.check_backends]
    return [cmd, image, "--json"]


# -- check --baseline ----------------------------------------------------------------------

def _baseline_report(c: Case) -> list[str]:
    data, log = reports.mutate(c.seed.report or "{}", c.rng)
    c.log += log
    base = c.side_file("old.json", data)
    fmt = c.rng.choice((["--format", "json"], ["--format", "junit", "-o", c.output()], []))
    return ["check", c.intact(), "--baseline", base, *c.seed.check_backends, *fmt]


def _baseline_image(c: Case) -> list[str]:
    return ["check", c.intact(), "--baseline", c.mutant("old"), *c.seed.check_backends,
            "--format", c.rng.choice(("text", "json"))]


# -- odd output paths ------------------------------------------------------------------------

def _apply_report(c: Case) -> list[str]:
    image = c.intact("in") if c.rng.random() < 0.7 else c.mutant()
    elf = c.output("out", odd=c.rng.random() < 0.3)
    report = c.output("report.json", odd=True, other=elf)
    return ["apply", image, "--backend", c.backend(), "-o", elf, "--report", report]


def _odd_output(c: Case) -> list[str]:
    image = c.intact("in") if c.rng.random() < 0.7 else c.mutant()
    cmd = c.rng.choice(("check", "extract", "apply"))
    out = c.output("out", odd=True)
    if cmd == "check":
        return ["check", image, *c.seed.check_backends, "--format", "junit", "-o", out]
    if cmd == "extract":
        return ["extract", image, "-o", out]
    return ["apply", image, "-o", out]


# -- --btf, --system-map, --cpuinfo, --cpu, the guest options --------------------------------

def _other_seed(c: Case, what: Callable[[Seed], object]) -> Seed | None:
    others = [s for s in c.seeds if s is not c.seed and what(s)]
    return c.rng.choice(others) if others else None


def _with(c: Case, option: list[str]) -> list[str]:
    """A command on the intact image with ``option`` (its file already made)."""
    cmd = c.rng.choice(("inspect", "apply", "check", "diff"))
    image = c.intact("in")
    if cmd == "apply":
        return ["apply", image, "--dry-run", *option]
    if cmd == "check":
        return ["check", image, *c.seed.check_backends, *option]
    if cmd == "diff" and c.seed.patched:
        patched = c.file("patched", c.seed.patched[c.rng.choice(list(c.seed.patched))])
        return ["diff", image, patched, *option]
    return ["inspect", image, *option]


def _btf(c: Case) -> list[str]:
    source = c.seed.btf
    if c.rng.random() < 0.15:  # another build's types
        other = _other_seed(c, lambda s: s.btf)
        if other is not None:
            source = other.btf
            c.log.append(f"the BTF of {other.name}")
    data, log = btf_mutants.mutate(source or b"", c.rng)
    c.log += log
    return _with(c, ["--btf", c.side_file("raw.btf", data)])


def _system_map(c: Case) -> list[str]:
    other = _other_seed(c, lambda s: s.system_map and s.bits == c.seed.bits)
    data, what = text.system_map(c.seed.system_map or "", c.rng,
                                 other.system_map if other else None)
    c.log.append(what)
    path = c.side_file("System.map", data)
    if c.rng.random() < 0.2:
        image = c.intact("in")
        return ["notes", image, "--system-map", path, *(["--json"] if c.rng.random() < .5
                                                         else ["--check"])]
    return _with(c, ["--system-map", path])


def _cpu_context(c: Case, option: list[str]) -> list[str]:
    """--cpu and --cpuinfo speak to a plan: inspect takes them with --backend only."""
    argv = _with(c, option)
    if argv[0] == "inspect" and c.rng.random() < 0.8:
        argv += ["--backend", c.backend()]
    return argv


def _cpuinfo(c: Case) -> list[str]:
    data, what = text.cpuinfo(c.rng)
    c.log.append(what)
    return _cpu_context(c, ["--cpuinfo", c.side_file("cpuinfo", data)])


def _cpu(c: Case) -> list[str]:
    spec, what = option_mutants.cpu_spec(c.rng)
    c.log.append(what)
    return _cpu_context(c, ["--cpu", spec])


def _guest(c: Case) -> list[str]:
    option = c.rng.choice(list(option_mutants.GUEST_WORDS))
    right = [b for b in option_mutants.GUEST_BACKENDS[option] if b in c.seed.backends]
    b = c.rng.choice(right) if right and c.rng.random() < 0.85 else c.backend()
    argv = []
    for name in {option, c.rng.choice(list(option_mutants.GUEST_WORDS))}:
        value, what = option_mutants.guest_value(name, c.rng)
        c.log.append(what)
        argv += [f"--{name.replace('_', '-')}", value]
    cmd = c.rng.choice(("inspect", "apply", "check"))
    image = c.intact("in")
    if cmd == "apply":
        return ["apply", image, "--dry-run", "--backend", b, *c.vcpus(b), *argv]
    if cmd == "check":
        return ["check", image, "--backend", b, *c.vcpus(b), *argv]
    return ["inspect", image, "--backend", b, *c.vcpus(b), *argv]


# -- diff with a mutated PATCHED ---------------------------------------------------------------

def _patched_sites(buf: bytearray, seed: Seed, rng: random.Random) -> str:
    """The bytes at one site of a patched image: garbage code, a call anywhere, int3s."""
    if not seed.sites:
        return flip_bytes(buf, rng)
    off, length = rng.choice(seed.sites)
    if off + length > len(buf):
        return flip_bytes(buf, rng)
    pick = rng.randrange(3)
    if pick == 0:
        buf[off:off + length] = garbage_code(length, rng)
    elif pick == 1 and length >= 5:
        buf[off:off + 5] = b"\xe8" + rng.randbytes(4)
    else:
        buf[off:off + length] = b"\xcc" * length
    return f"site@{off:#x}+{length}: {('garbage', 'call anywhere', 'int3')[pick]}"


def _diff_patched(c: Case) -> list[str]:
    backend = c.rng.choice(list(c.seed.patched))
    data = c.seed.patched[backend]
    c.log.append(f"apply --backend {backend} output")
    if c.rng.random() < 0.5:
        buf = bytearray(data)
        for _ in range(c.rng.choice((1, 2, 4))):
            c.log.append(_patched_sites(buf, c.seed, c.rng))
        data = bytes(buf)
    else:
        data, log = mutate(data, c.rng)
        c.log += log
    patched = c.file("patched", data)
    flags = c.rng.choice(([], ["--json"], ["--sites"], ["--sites", "--changed"]))
    return ["diff", c.intact(), patched, *flags]


def _odd_image_path(c: Case) -> list[str]:
    """The image named by a path that is no image file, or by an odd name."""
    kind = c.rng.choice(("directory", "missing", "/dev/null", "/dev/zero", "empty",
                         "newline-name", "unicode-name", "symlink-loop", "dash-name"))
    c.log.append(f"image path: {kind}")
    if kind in ("/dev/null", "/dev/zero"):
        path = kind
    elif kind == "directory":
        path = str(c.tmp)
    elif kind == "missing":
        path = str(c.tmp / "missing")
    elif kind == "empty":
        path = c.file("empty", b"")
    elif kind == "symlink-loop":
        (c.tmp / "loop").symlink_to(c.tmp / "loop")
        path = str(c.tmp / "loop")
    else:
        name = {"newline-name": "in\nx", "unicode-name": "vmlinüz-\u2028", "dash-name": "-in"}
        path = c.file(name[kind], c.seed.image)
    cmd = c.rng.choice(("inspect", "notes", "apply", "check", "extract", "diff"))
    if cmd in ("apply", "extract"):
        return [cmd, path, "-o", c.output()]
    if cmd == "diff":
        return ["diff", *c.rng.sample([path, c.intact()], 2)]
    return [cmd, path]


def _has_guest(s: Seed) -> bool:
    return bool(set(s.backends) & {"kvm", "hyperv", "vmware"})


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("inspect", "inspect", _image("inspect", "{in}")),
    Scenario("inspect --json --sites", "inspect", _image("inspect", "{in}", "--json", "--sites")),
    Scenario("inspect --backend", "inspect", _inspect_backend),
    Scenario("notes --check", "notes", _image("notes", "{in}", "--check")),
    Scenario("notes --json", "notes", _image("notes", "{in}", "--json")),
    Scenario("apply --dry-run --json", "apply", _image("apply", "{in}", "--dry-run", "--json")),
    Scenario("apply --backend -o", "apply", _apply_backend),
    Scenario("apply --in-place", "apply", _in_place),
    Scenario("diff ORIGINAL=mutant", "diff", _image("diff", "{other}", "{in}")),
    Scenario("check --format json", "check", _image("check", "{in}", "--format", "json")),
    Scenario("check mutant --baseline intact", "check",
             _image("check", "{in}", "--baseline", "{other}", "--format", "junit", "-o",
                    "{out}")),
    Scenario("extract", "extract", _image("extract", "{in}", "-o", "{out}")),
    # the mutant as memory of the intact image: an ELF core when the mutator made one, else raw
    # bytes from 0x400000 (where ld puts an x86-64 fixture's first segment)
    Scenario("verify IMAGE mutant", "verify", _image("verify", "{other}", "{in}")),
    Scenario("verify --raw-start", "verify",
             _image("verify", "{other}", "{in}", "--raw-start", "0x400000", "--json")),
    Scenario("start-up code", "apply/inspect/check", _startup, lambda s: bool(s.functions)),
    Scenario("kallsyms tables", "every command", _kallsyms, lambda s: bool(s.kallsyms)),
    Scenario("check --baseline REPORT", "check", _baseline_report, lambda s: bool(s.report)),
    Scenario("check --baseline IMAGE", "check", _baseline_image, lambda s: bool(s.report)),
    Scenario("apply --report ODD", "apply", _apply_report, lambda s: bool(s.backends)),
    Scenario("-o ODD", "check/extract/apply", _odd_output),
    Scenario("--btf", "inspect/apply/check/diff", _btf, lambda s: bool(s.btf)),
    Scenario("--system-map", "inspect/notes/apply/check/diff", _system_map,
             lambda s: bool(s.system_map)),
    Scenario("--cpuinfo", "inspect/apply/check/diff", _cpuinfo, lambda s: bool(s.backends)),
    Scenario("--cpu", "inspect/apply/check/diff", _cpu, lambda s: bool(s.backends)),
    Scenario("guest options", "inspect/apply/check", _guest, _has_guest),
    Scenario("diff PATCHED=mutant", "diff", _diff_patched, lambda s: bool(s.patched)),
    Scenario("odd image path", "every command", _odd_image_path),
)
