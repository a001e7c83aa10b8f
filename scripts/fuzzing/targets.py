"""Output paths that must stay one-line errors, or work: what ``-o`` and ``--report`` are given.

A directory, a folder that does not exist, a path below a regular file, the input itself (by
its name, through a symlink, through a hard link), the other output of the same command, a
dangling symlink, a name too long for the file system, a stale file from an earlier run, a
FIFO. The command must refuse the clashes before it reads anything, write nothing half, and
never write through a link into its input.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

KINDS = ("fresh", "stale", "directory", "missing-folder", "below-a-file", "the-input",
         "symlink-to-input", "hardlink-to-input", "the-other-output", "symlink-to-other",
         "dangling-symlink", "too-long", "trailing-slash", "fifo", "dot")


def target(tmp: Path, name: str, rng: random.Random, inputs: list[str],
           other: str | None = None) -> tuple[str, str, str]:
    """A path for an output called ``name`` in ``tmp``: (path, kind, what a refusal must
    leave there: "absent", "as-was", or "as-was-or-absent" for a stale file, which a command
    may remove once it has validated its input)."""
    kind = rng.choice(KINDS)
    path = tmp / name
    if kind == "stale":
        path.write_bytes(b"an earlier output\n")
        return str(path), kind, "as-was-or-absent"
    if kind == "directory":
        path.mkdir()
        return str(path), kind, "as-was"
    if kind == "missing-folder":
        return str(tmp / "no-such-folder" / name), kind, "absent"
    if kind == "below-a-file":
        return str(Path(inputs[0]) / name), kind, "as-was"
    if kind == "the-input":
        return inputs[0], kind, "as-was"
    if kind == "symlink-to-input":
        path.symlink_to(os.path.abspath(rng.choice(inputs)))
        return str(path), kind, "as-was"
    if kind == "hardlink-to-input":
        os.link(rng.choice(inputs), path)
        return str(path), kind, "as-was"
    if kind == "the-other-output" and other is not None:
        return other, kind, "as-was"
    if kind == "symlink-to-other" and other is not None:
        path.symlink_to(os.path.abspath(other))
        return str(path), kind, "as-was"
    if kind == "dangling-symlink":
        path.symlink_to(tmp / "nowhere" / "x")
        return str(path), kind, "as-was"
    if kind == "too-long":
        return str(tmp / ("x" * 300)), kind, "absent"
    if kind == "trailing-slash":
        return str(path) + "/", kind, "absent"
    if kind == "fifo":
        os.mkfifo(path)
        return str(path), kind, "as-was-or-absent"
    if kind == "dot":
        return str(tmp) + "/.", kind, "as-was"
    return str(path), "fresh", "absent"
