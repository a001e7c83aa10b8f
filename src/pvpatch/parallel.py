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
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
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


class Stream(Iterator[R]):
    """``fn()`` for each of ``fns`` in order, computed one after another in a child process
    while this one does its own share, each result readable as soon as it is ready; ``close``
    stops the child, so the functions not yet needed are never finished (``verify`` stops
    planning the other backends once native matches). Without fork, each is computed here
    when asked for."""

    def __init__(self, fns: Sequence[Callable[[], R]]) -> None:
        self._fns, self._next, self._child = list(fns), 0, None
        if len(self._fns) and _can_fork():
            gc.freeze()
            self._child = _spawn_stream(self._fns)

    def __next__(self) -> R:
        if self._next >= len(self._fns):
            raise StopIteration
        self._next += 1
        if self._child is None:
            return self._fns[self._next - 1]()
        fd = self._child[1]
        head = _read_exactly(fd, _FRAME.size)
        body = _read_exactly(fd, _FRAME.unpack(head)[0]) if len(head) == _FRAME.size else b""
        if not body:
            raise RuntimeError("a worker process died without a result")
        ok, value = pickle.loads(body)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self._child is not None:
            _reap(*self._child)
            self._child = None
            gc.unfreeze()

    def __enter__(self) -> Stream[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_FRAME = struct.Struct("<Q")  # the length of each pickled result a streaming child sends


def _spawn_stream(fns: Sequence[Callable[[], R]]) -> tuple[int, int]:
    """A child that sends each ``fn()`` framed as soon as it is computed; a failure is sent
    as the last frame."""
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        status = 0
        try:
            with os.fdopen(wfd, "wb") as out:
                for fn in fns:
                    try:
                        payload = pickle.dumps((True, fn()))
                    except BaseException as e:
                        status, payload = 1, _pickled_error(e)
                    out.write(_FRAME.pack(len(payload)) + payload)
                    out.flush()
                    if status:
                        break
        finally:
            os._exit(status)
    os.close(wfd)
    return pid, rfd


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


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
