#!/usr/bin/env python3
"""Fuzz every pvpatch command and input path with structure-aware mutants of the fixtures.

    scripts/fuzz.py [--mutants N] [--seed S] [--jobs J] [--timeout SEC] [--memory MB]
                    [--only SCENARIO]
    scripts/fuzz.py --replay=SCENARIO --image=SEED_IMAGE --mutant=MUTANT_SEED

Runs rotate through the scenarios (scripts/fuzzing/scenarios.py: each command on mutated
images, and each new input path — --baseline reports and images, --report and -o targets,
--btf, --system-map, --cpuinfo, --cpu, the guest options, diff's PATCHED, the start-up code,
kallsyms), each on the seeds it fits, in worker processes with an address-space limit and a
time limit. A failure breaks the contract (scripts/fuzzing/runner.py); failing runs are
printed with the mutation log and saved in fuzz-failures/, and the run exits 1. The last
lines give the figures per scenario: runs, failures, exit statuses, time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import multiprocessing.pool
import os
import random
import resource
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from fuzzing.runner import Outcome, run_case  # noqa: E402
from fuzzing.scenarios import SCENARIOS, Scenario  # noqa: E402
from fuzzing.seeds import Seed, seeds  # noqa: E402

_SEEDS: list[Seed] = []  # set in the parent before the workers fork


def plan(count: int, rng: random.Random, wanted: list[Scenario],
         images: list[Seed]) -> Iterator[tuple[int, int, int]]:
    """(index into SCENARIOS, seed index, mutant seed): the ``wanted`` scenarios in turn,
    each on the seeds it fits in turn."""
    fitting = [[k for k, s in enumerate(images) if sc.fits(s)] if sc in wanted else []
               for sc in SCENARIOS]
    live = [i for i, f in enumerate(fitting) if f]
    for n in range(count):
        i = live[n % len(live)]
        seeds_of = fitting[i]
        yield i, seeds_of[(n // len(live)) % len(seeds_of)], rng.randrange(1 << 62)


def run_job(job: tuple[int, int, int, int]) -> Outcome:
    i, k, mutant_seed, timeout = job
    return run_case(SCENARIOS[i], _SEEDS[k], _SEEDS, mutant_seed, timeout)


def _limit_memory(memory_mb: int) -> None:
    if memory_mb:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))


def figures(outcomes: list[Outcome], took: float) -> str:
    """The per-scenario table: runs, failures, exit statuses, summed and slowest run time."""
    by: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by[o.scenario].append(o)
    rows = [f"{'scenario':34} {'runs':>7} {'fail':>5} {'exit 0/1/2':>17} {'run s':>8} "
            f"{'max s':>6}"]
    for sc in SCENARIOS:
        got = by.get(sc.name, [])
        if not got:
            rows.append(f"{sc.name:34} {0:>7}   (not run: --only, or no seed fits)")
            continue
        st = Counter(o.status for o in got)
        rows.append(f"{sc.name:34} {len(got):>7} {sum(o.failure is not None for o in got):>5} "
                    f"{st[0]:>5}/{st[1]:>5}/{st[2]:>5} {sum(o.seconds for o in got):>8.1f} "
                    f"{max(o.seconds for o in got):>6.2f}")
    fails = sum(o.failure is not None for o in outcomes)
    rows.append(f"fuzz: {len(outcomes)} mutants over {len(_SEEDS)} seed images and "
                f"{len(by)} scenarios in {took:.0f} s wall: {fails} failures")
    return "\n".join(rows)


def replay(scenario: str, seed: str, mutant_seed: str, timeout: int) -> int:
    """One run again, as a failure report names it, with a traceback a worker cannot hide."""
    os.environ["PVPATCH_JOBS"] = "1"
    sc = next(s for s in SCENARIOS if s.name == scenario)
    image = next(s for s in _SEEDS if s.name == seed)
    o = run_case(sc, image, _SEEDS, int(mutant_seed), timeout, keep=ROOT / "fuzz-replay")
    print(o.failure or f"passes: exit {o.status} in {o.seconds:.2f} s")
    return 1 if o.failure else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=int, default=20, help="seconds per run")
    ap.add_argument("--memory", type=int, default=1024, help="MB of address space per worker")
    ap.add_argument("--only", metavar="SCENARIO", help="run only scenarios whose name has this")
    ap.add_argument("--replay", metavar="SCENARIO",
                    help="with --image and --mutant: run one failure again in this process "
                         "(its files kept in fuzz-replay/, check's backends planned without "
                         "forking), as its report's replay line says")
    ap.add_argument("--image", metavar="SEED_IMAGE")
    ap.add_argument("--mutant", metavar="MUTANT_SEED")
    args = ap.parse_args()
    _SEEDS[:] = seeds()
    if args.replay:
        return replay(args.replay, args.image, args.mutant, timeout=args.timeout)
    wanted = [s for s in SCENARIOS if not args.only or args.only in s.name]
    jobs = ((*j, args.timeout) for j in plan(args.mutants, random.Random(args.seed), wanted,
                                             _SEEDS))
    outcomes: list[Outcome] = []
    saved = ROOT / "fuzz-failures"
    started = time.monotonic()

    def record(o: Outcome) -> None:
        outcomes.append(o)
        if o.failure:
            print(f"FAIL {o.failure}", flush=True)
            saved.mkdir(exist_ok=True)
            (saved / f"{len(outcomes):06d}.txt").write_text(o.failure + "\n")
        if len(outcomes) % 1000 == 0:
            rate = len(outcomes) / (time.monotonic() - started)
            fails = sum(x.failure is not None for x in outcomes)
            print(f"fuzz: {len(outcomes)}/{args.mutants} mutants, {fails} failures, "
                  f"{rate:.0f}/s", file=sys.stderr, flush=True)

    with mp.get_context("fork").Pool(args.jobs, initializer=_limit_memory,
                                     initargs=(args.memory,), maxtasksperchild=500) as pool:
        for o in _results(pool, jobs, 8 * args.jobs, 3 * args.timeout + 30):
            record(o)
    print(figures(outcomes, time.monotonic() - started))
    return 1 if any(o.failure for o in outcomes) else 0


def _results(pool: mp.pool.Pool, jobs: Iterator[tuple[int, int, int, int]], window: int,
             patience: int) -> Iterator[Outcome]:
    """The jobs' outcomes, at most ``window`` of them in flight. A worker that dies (the
    kernel's OOM killer, a crash in C) takes its job with it and the pool never answers
    for it: after ``patience`` seconds of waiting the job is a failure of its own, and the
    pool, which replaces dead workers, goes on with the rest."""
    pending: deque[tuple[tuple[int, int, int, int], mp.pool.AsyncResult]] = deque()
    for job in jobs:
        pending.append((job, pool.apply_async(run_job, (job,))))
        if len(pending) >= window:
            yield _wait(*pending.popleft(), patience)
    while pending:
        yield _wait(*pending.popleft(), patience)


def _wait(job: tuple[int, int, int, int], result: mp.pool.AsyncResult, patience: int
          ) -> Outcome:
    try:
        return result.get(patience)
    except mp.TimeoutError:
        sc, seed = SCENARIOS[job[0]], _SEEDS[job[1]]
        return Outcome(sc.name, seed.name, None, patience,
                       f"scenario {sc.name!r}, seed image {seed.name}, mutant seed {job[2]}\n"
                       f"  → the worker never answered in {patience} s (killed, or hung past "
                       f"the alarm)\n  replay: scripts/fuzz.py '--replay={sc.name}' "
                       f"--image={seed.name} --mutant={job[2]}")


if __name__ == "__main__":
    sys.exit(main())
