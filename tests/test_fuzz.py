"""The short fuzz run: every command on structure-aware mutants of every fixture image.

`make fuzz` runs the long version (100,000 mutants, memory-limited workers); this one keeps
`make test` honest about the contract: exit 0, 1 or 2, no traceback, nothing left behind.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fuzz
from fuzzing.images import COMMANDS, MUTATORS, mutate

MUTANTS = 320


@pytest.fixture(scope="module")
def images() -> list[tuple[str, bytes]]:
    found = fuzz.seeds()
    assert len(found) >= 5, "the fixture images to mutate must build"
    return found


def test_every_command_survives_mutants(images):
    rng = random.Random(20261121)
    failures = []
    for i in range(MUTANTS):
        name, image = images[i % len(images)]
        job = (i, rng.randrange(1 << 62), name, image, image, 20, 0)
        _index, failure = fuzz.run_one(job)
        if failure:
            failures.append(failure)
    assert 4 * len(COMMANDS) <= MUTANTS, "every command must see several mutants"
    assert not failures, "\n\n".join(failures[:5])


def test_mutators_change_the_image(images):
    rng = random.Random(7)
    _name, image = images[0]
    for name, mutator in MUTATORS.items():
        buf = bytearray(image)
        what = mutator(buf, rng)
        assert what and (bytes(buf) != image or "out of range" in what), name
    mutant, log = mutate(image, rng)
    assert mutant != image and log


def test_the_installed_package_carries_no_fuzzing_code():
    """The fuzzer is test machinery (scripts/fuzzing/): src/ neither holds nor imports it."""
    import importlib.util

    assert importlib.util.find_spec("pvpatch.fuzz") is None
    src = Path(__file__).resolve().parent.parent / "src"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "import fuzzing" not in text and "from fuzzing" not in text, path
