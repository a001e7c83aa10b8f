"""Run independent pieces of one command on several cores, by fork.

``check`` plans the boot of every backend over the same mapped image; the plans share nothing
but read-only state, so forked children can compute them while the parent does its own share.
A child inherits the loaded model (no re-parsing) and sends back only plain results, pickled.
Where fork is unavailable, or ``PVPATCH_JOBS=1`` is set, everything runs in this process; an
error in a child is raised here as if it had happened here.
"""

from __future__ import annotations

import gc
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def fork_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]``, the first item in this process, the others in children."""
    if len(items) < 2 or not _can_fork():
        return [fn(x) for x in items]
    gc.freeze()  # keep the collector off the inherited heap: its passes would copy every page
    children = [_spawn(fn, x) for x in items[1:]]
    try:
        first = fn(items[0])
        return [first, *(_collect(pid, fd) for pid, fd in children)]
    finally:
        for pid, fd in children:  # after an error here: stop and reap what still runs
            _reap(pid, fd)
        gc.unfreeze()


def _can_fork() -> bool:
    return hasattr(os, "fork") and os.environ.get("PVPATCH_JOBS", "") != "1"


def _spawn(fn: Callable[[T], R], item: T) -> tuple[int, int]:
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, and leave without running the parent's cleanup
        os.close(rfd)
        status = 0
        try:
            payload = pickle.dumps((True, fn(item)))
        except BaseException as e:  # handed to the parent, which raises it
            status = 1
            payload = _pickled_error(e)
        try:
            with os.fdopen(wfd, "wb") as out:
                out.write(payload)
        finally:
            os._exit(status)
    os.close(wfd)
    return pid, rfd


def _pickled_error(e: BaseException) -> bytes:
    try:
        return pickle.dumps((False, e))
    except Exception:  # an exception that does not pickle: keep its text
        return pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))


def _collect(pid: int, fd: int) -> R:
    with os.fdopen(os.dup(fd), "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("a worker process died without a result")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


def _reap(pid: int, fd: int) -> None:
    os.close(fd)
    try:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # collected already
