"""One run: a scenario on a seed, held to the contract every pvpatch command keeps.

The contract, on any input: exit status 0, 1 or 2; exactly one line on stderr with status 2;
never a traceback; bounded time (an alarm) and memory (the caller's address-space limit: a
MemoryError is an exception like any other); the inputs never modified; after a refusal no
output where there was none, an earlier file as it was (or, for a stale output a command
has validated its input against, removed), and no temporary ``.pvpatch-*`` file anywhere.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import stat
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fuzzing.scenarios import Case, Scenario
from fuzzing.seeds import Seed


class Timeout(BaseException):
    """Raised by the alarm. Not an Exception: no ``except Exception`` in pvpatch (nor
    click's test runner) may swallow it and let the run go on."""


@dataclass(frozen=True)
class Outcome:
    scenario: str
    seed: str
    status: int | None  # the exit status (None: no status, see failure)
    seconds: float
    failure: str | None = None


def state(path: str) -> tuple[object, ...]:
    """What is at ``path`` now, without following a final symlink or opening a FIFO."""
    try:
        st = os.lstat(path)
    except OSError:
        return ("missing",)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        return ("file", hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return ("other", stat.S_IFMT(st.st_mode))


def _alarm(signum: int, frame: object) -> None:
    raise Timeout


def run_case(scenario: Scenario, seed: Seed, seeds: Sequence[Seed], mutant_seed: int,
             timeout: int, keep: Path | None = None) -> Outcome:
    """Build the scenario's files in a fresh folder, run the command, check the contract.
    ``keep``: copy the folder there afterwards (to replay a failure by hand)."""
    from click.testing import CliRunner

    from pvpatch.cli import cli

    with tempfile.TemporaryDirectory(prefix="pvfuzz-") as tmp:
        case = Case(Path(tmp), seed, seeds, random.Random(mutant_seed))
        try:
            argv = scenario.build(case)
        except Exception as e:  # a bug of the fuzzer's own: a failure all the same
            return _failed(scenario, seed, mutant_seed, case, [], 0.0,
                           "the scenario could not make its files (a fuzzer bug):\n"
                           + "".join(traceback.format_exception(e)))
        before = {p: state(p) for p in case.inputs}
        outputs = {p: (mode, state(p)) for p, mode in case.outputs}
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(timeout)
        started = time.monotonic()
        try:
            result = CliRunner().invoke(cli, argv, catch_exceptions=True)
        except Timeout:
            return _failed(scenario, seed, mutant_seed, case, argv, timeout,
                           f"over {timeout} s")
        finally:
            signal.alarm(0)
        took = time.monotonic() - started
        why = _broken(result, case, before, outputs, Path(tmp))
        status = result.exit_code if result.exception is None or \
            isinstance(result.exception, SystemExit) else None
        if keep is not None:
            shutil.copytree(tmp, keep, symlinks=True, dirs_exist_ok=True)
    if why is None:
        return Outcome(scenario.name, seed.name, status, took)
    return _failed(scenario, seed, mutant_seed, case, argv, took, why, status)


def _broken(result: object, case: Case, before: dict, outputs: dict, tmp: Path) -> str | None:
    """Which part of the contract the run broke (None: none)."""
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        return "exception:\n" + "".join(traceback.format_exception(exc))
    code = result.exit_code
    if code not in (0, 1, 2):
        return f"exit status {code}"
    if "Traceback" in result.stdout or "Traceback" in result.stderr:
        return "a traceback in the output"
    lines = result.stderr.rstrip("\n").split("\n")
    if code == 2 and (len(lines) != 1 or not lines[0].strip() or "\r" in lines[0]):
        return f"exit 2 with {len(lines)} lines on stderr: {result.stderr[:600]!r}"
    changed = [p for p, s in before.items() if state(p) != s]
    if changed:
        return f"inputs modified: {changed}"
    left = [str(p.relative_to(tmp)) for p in tmp.rglob(".pvpatch-*")]
    if left:
        return f"temporary files left behind: {left}"
    if code == 2:
        for path, (mode, was) in outputs.items():
            now = state(path)
            if now != was and not (mode == "as-was-or-absent" and now == ("missing",)):
                return f"after the refusal {path} is {now[0]}, was {was[0]} ({mode})"
    return None


def _failed(scenario: Scenario, seed: Seed, mutant_seed: int, case: Case, argv: list[str],
            took: float, why: str, status: int | None = None) -> Outcome:
    shown = [a if len(a) < 200 else a[:80] + f"…({len(a)} chars)" for a in argv]
    text = (f"scenario {scenario.name!r}, seed image {seed.name}, mutant seed {mutant_seed}\n"
            f"  pvpatch {' '.join(shown)}\n  " + "\n  ".join(case.log) + f"\n  → {why}\n"
            f"  replay: scripts/fuzz.py '--replay={scenario.name}' --image={seed.name} "
            f"--mutant={mutant_seed}")
    return Outcome(scenario.name, seed.name, status, took, text)
