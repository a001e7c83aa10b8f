#!/usr/bin/env python3
"""Fuzz every pvpatch command with structure-aware mutants of the fixture images.

    scripts/fuzz.py [--mutants N] [--seed S] [--jobs J] [--timeout SEC] [--memory MB]

Each mutant runs through one command (rotating through all of them) in a worker process
with an address-space limit and a time limit. A failure is: a traceback or any exit status
other than 0, 1, 2; a run over the time bound; a MemoryError or a kill by the memory bound;
an output file left behind on failure. Failing mutants are saved in fuzz-failures/ with the
mutation log, and the run exits 1.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def seeds() -> list[tuple[str, bytes]]:
    from conftest import assemble

    out = []
    for src, bits, defs in (("pv_kernel61.S", 64, {}), ("pv_kernel61.S", 64, {"STATIC_CALLS": 1}),
                            ("pv_sites.S", 64, {}),
                            ("pv_sites.S", 32, {"I386": 1}), ("pv_sites.S", 64, {"CALL_ABS": 1}),
                            ("xen_notes.S", 64, {}), ("xen_guest_legacy.S", 32, {})):
        try:
            path = assemble(src, bits, defsyms=defs,
                            ld_args=_ld_args(src))
        except Exception as e:  # a fixture that needs a linker script we lack: skip it
            print(f"fuzz: seed {src}/{bits} not built: {e}", file=sys.stderr)
            continue
        tag = "-static-calls" if "STATIC_CALLS" in defs else ""
        out.append((f"{Path(src).stem}-{bits}{tag}", path.read_bytes()))
    return out + _more_seeds()


def _more_seeds() -> list[tuple[str, bytes]]:
    """The pre-5.13 era fixtures (each era's records, op tables and BTF) and bzImages."""
    out = []
    try:
        from legacy_fixtures import legacy_kernel

        for era, bits in ((1, 32), (2, 32), (3, 32), (3, 64), (4, 64)):
            out.append((f"legacy-era{era}-{bits}", Path(legacy_kernel(era, bits)).read_bytes()))
    except Exception as e:
        print(f"fuzz: legacy seeds not built: {e}", file=sys.stderr)
    try:
        from conftest import assemble
        from test_vmlinuz import compress, make_bzimage

        elf = assemble("pv_kernel61.S", 64).read_bytes()
        for method in ("gzip", "lz4"):
            out.append((f"bzimage-{method}", make_bzimage(compress(elf, method))))
    except Exception as e:
        print(f"fuzz: bzImage seeds not built: {e}", file=sys.stderr)
    return out


def _ld_args(src: str) -> tuple[str, ...]:
    script = ROOT / "fixtures" / (Path(src).stem + ".ld")
    return ("-T", str(script)) if script.exists() else ()


class Timeout(Exception):
    pass


def run_one(job: tuple[int, int, str, bytes, bytes, int, int]) -> tuple[int, str | None]:
    """Run one mutant through one command; return (index, failure or None)."""
    index, seed, name, image, other, timeout, _memory_mb = job
    from click.testing import CliRunner
    from fuzzing.images import COMMANDS, mutate

    from pvpatch.cli import cli

    rng = random.Random(seed)
    mutant, log = mutate(image, rng)
    cmd = COMMANDS[index % len(COMMANDS)]
    with tempfile.TemporaryDirectory(prefix="pvfuzz-") as tmp:
        src, ref, out = Path(tmp, "in"), Path(tmp, "ref"), Path(tmp, "out")
        src.write_bytes(mutant)
        ref.write_bytes(other)
        argv = [a.format(**{"in": src, "out": out, "other": ref}) for a in cmd]
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(timeout)
        started = time.monotonic()
        try:
            result = CliRunner().invoke(cli, argv, catch_exceptions=True)
        except Timeout:
            return index, _report(name, seed, log, argv, f"over {timeout} s")
        finally:
            signal.alarm(0)
        elapsed = time.monotonic() - started
        exc = result.exception
        if exc is not None and not isinstance(exc, SystemExit):
            tb = "".join(traceback.format_exception(exc))
            return index, _report(name, seed, log, argv, f"exception after {elapsed:.1f}s:\n{tb}")
        if result.exit_code not in (0, 1, 2):
            return index, _report(name, seed, log, argv, f"exit status {result.exit_code}")
        if result.exit_code == 2 and "Traceback" in result.output:
            return index, _report(name, seed, log, argv, "traceback in output")
        leftovers = [p.name for p in Path(tmp).iterdir() if p.name.startswith(".pvpatch-")]
        if leftovers or (result.exit_code == 2 and out.exists()):
            return index, _report(name, seed, log, argv, f"files left behind: {leftovers}")
    return index, None


def _alarm(signum: int, frame: object) -> None:
    raise Timeout


def _report(name: str, seed: int, log: list[str], argv: list[str], what: str) -> str:
    return f"seed image {name}, mutant seed {seed}\n  {' '.join(argv)}\n  " + \
        "\n  ".join(log) + f"\n  → {what}"


def _limit_memory(memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=int, default=20, help="seconds per run")
    ap.add_argument("--memory", type=int, default=1024, help="MB of address space per worker")
    args = ap.parse_args()
    images = seeds()
    rng = random.Random(args.seed)
    # diff compares each mutant with the intact image it came from
    jobs = ((i, rng.randrange(1 << 62), *images[i % len(images)], images[i % len(images)][1],
             args.timeout, args.memory) for i in range(args.mutants))
    failures = []
    started = time.monotonic()
    with mp.get_context("fork").Pool(args.jobs, initializer=_limit_memory,
                                     initargs=(args.memory,), maxtasksperchild=500) as pool:
        for done, (_i, failure) in enumerate(pool.imap_unordered(run_one, jobs, 16), 1):
            if failure:
                failures.append(failure)
                print(f"FAIL {failure}", flush=True)
            if done % 1000 == 0:
                rate = done / (time.monotonic() - started)
                print(f"fuzz: {done}/{args.mutants} mutants, {len(failures)} failures, "
                      f"{rate:.0f}/s", file=sys.stderr, flush=True)
    took = time.monotonic() - started
    print(f"fuzz: {args.mutants} mutants over {len(images)} seed images and every command "
          f"in {took:.0f} s: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
