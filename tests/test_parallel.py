"""fork_map and Stream: results in order, errors from a worker raised in the caller, serial
fallback; a closed stream leaves the rest uncomputed."""

from __future__ import annotations

import os
import time

import pytest

from pvpatch.errors import InputError
from pvpatch.parallel import Stream, fork_map


def test_results_in_order_and_computed_in_other_processes():
    parent = os.getpid()
    out = fork_map(lambda n: (n * n, os.getpid() != parent), [1, 2, 3])
    assert [v for v, _ in out] == [1, 4, 9]
    assert [elsewhere for _, elsewhere in out] == [False, True, True]


def test_serial_when_asked(monkeypatch):
    monkeypatch.setenv("PVPATCH_JOBS", "1")
    parent = os.getpid()
    assert fork_map(lambda n: os.getpid() == parent, [1, 2]) == [True, True]


def test_a_workers_error_is_raised_here_with_its_message():
    def boom(n: int) -> int:
        if n == 2:
            raise InputError("slot table is unreadable", "vmlinux")
        return n

    with pytest.raises(InputError, match="slot table is unreadable"):
        fork_map(boom, [1, 2])


def test_an_error_that_does_not_pickle_keeps_its_text():
    class Local(Exception):  # defined in a function: pickle cannot name it
        pass

    def boom(n: int) -> int:
        if n:
            raise Local("only the text survives")
        return n

    with pytest.raises(RuntimeError, match="Local: only the text survives"):
        fork_map(boom, [0, 1])


def test_results_that_do_not_pickle_are_an_error_not_a_hang():
    with pytest.raises(Exception, match=r"pickle|lambda"):
        fork_map(lambda n: (lambda: n), [1, 2])


def test_parent_error_reaps_the_workers():
    def work(n: int) -> int:
        if n == 0:
            raise ValueError("parent share failed")
        return n

    with pytest.raises(ValueError):
        fork_map(work, [0, 1, 2])
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child left behind


def test_a_stream_gives_each_result_as_it_is_ready_and_close_stops_the_rest(tmp_path):
    parent = os.getpid()
    marker = tmp_path / "finished"

    def slow() -> int:
        time.sleep(5)
        marker.write_text("x")
        return 2

    started = time.monotonic()
    with Stream([lambda: os.getpid() != parent, slow]) as results:
        assert next(results) is True  # computed in the worker, sent before `slow` runs
    assert time.monotonic() - started < 4  # closing did not wait for `slow`
    time.sleep(0.2)
    assert not marker.exists()


def test_a_stream_without_fork_computes_only_what_is_asked_for(monkeypatch):
    monkeypatch.setenv("PVPATCH_JOBS", "1")
    ran: list[int] = []
    with Stream([lambda: ran.append(1) or 1, lambda: ran.append(2) or 2]) as results:
        assert next(results) == 1
    assert ran == [1]


def test_a_stream_raises_the_workers_error_and_then_ends():
    def boom() -> int:
        raise InputError("start-up code is unreadable", "vmlinux")

    with Stream([lambda: 1, boom, lambda: 3]) as results:
        assert next(results) == 1
        with pytest.raises(InputError, match="start-up code is unreadable"):
            next(results)
