"""Nothing lost: apply never leaves a partial output and never touches its input.

Covers Ctrl-C and SIGTERM during the copy (in-process, deterministic, and with a real signal
to a real process), a full disk (a real 1 MiB tmpfs where mounting is allowed, and a
simulated ENOSPC), and a target folder nobody can create files in.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assemble

from pvpatch.errors import UsageError
from pvpatch.patch import writer
from pvpatch.patch.writer import PatchedCopy, Poke


@pytest.fixture(scope="module")
def kernel() -> Path:
    return assemble("pv_kernel61.S", 64)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".pvpatch-")]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=120)


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[None]:
    """SIGINT raising KeyboardInterrupt, as in a terminal: Python leaves it ignored when it
    starts ignored (a background job of a script), which the test must not depend on."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("when", ["planning", "writing"])
@pytest.mark.parametrize("interrupt", ["SIGINT", "SIGTERM"])
def test_interrupt_leaves_nothing(kernel, tmp_path, monkeypatch, interrupt, when):
    """Ctrl-C or SIGTERM while the copy runs and the plan is computed, or while writing."""
    real_copy = writer._copy

    def slow_partial_copy(src: str, dst: str) -> None:
        real_copy(src, dst)
        time.sleep(0.2)

    monkeypatch.setattr(writer, "_copy", slow_partial_copy)
    if when == "writing":
        monkeypatch.setattr(writer, "verify", lambda *a: os.kill(os.getpid(),
                                                                 getattr(signal, interrupt)))
    before = kernel.read_bytes()
    out = tmp_path / "out"
    with _ctrl_c_raises(), pytest.raises((KeyboardInterrupt, SystemExit)), \
            PatchedCopy(str(kernel), str(out)) as c:
        if when == "planning":
            os.kill(os.getpid(), getattr(signal, interrupt))
        c.commit([Poke(0x100, b"\x90", 0)])
        time.sleep(1)
    assert not out.exists() and leftovers(tmp_path) == []
    assert kernel.read_bytes() == before


def test_real_sigterm_to_a_running_apply(tmp_path):
    """A big input so the copy is still running when the signal lands."""
    big = tmp_path / "vmlinux"
    big.write_bytes(assemble("pv_kernel61.S", 64).read_bytes() + os.urandom(256 << 20))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pvpatch", "apply", str(big), "-o",
                             str(out_dir / "patched")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not leftovers(out_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("the copy finished before the signal could land (very fast disk)")
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode != 0 and "Traceback" not in err
    assert leftovers(out_dir) == [] and not (out_dir / "patched").exists()


def test_full_disk_simulated(kernel, tmp_path, monkeypatch):
    def no_space(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer, "_copy", no_space)
    with pytest.raises(UsageError, match="No space left on device"), \
            PatchedCopy(str(kernel), str(tmp_path / "out")) as c:
        c.commit([])
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_full_disk_real_tmpfs(kernel, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mnt)],
                       check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("cannot mount a small tmpfs here (needs root); the simulated case covers it")
    try:
        r = run("apply", str(kernel), "-o", str(mnt / "out"))
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "No space left on device" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_target_folder_that_refuses_files(kernel):
    r = run("apply", str(kernel), "-o", "/proc/pvpatch-out")  # procfs: no new files, even root
    assert r.returncode == 2 and "cannot create a file in /proc" in r.stderr
    assert "Traceback" not in r.stderr


def test_input_is_never_opened_for_writing(kernel, tmp_path):
    ro = tmp_path / "vmlinux"
    ro.write_bytes(kernel.read_bytes())
    ro.chmod(0o444)
    before = ro.read_bytes()
    assert run("apply", str(ro), "-o", str(tmp_path / "out")).returncode == 0
    assert ro.read_bytes() == before and oct(ro.stat().st_mode)[-3:] == "444"


def test_copy_falls_back_to_sendfile(tmp_path, monkeypatch):
    """Filesystems that refuse copy_file_range (EXDEV across mounts, old kernels) still copy."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    dst = tmp_path / "dst"
    dst.write_bytes(b"")

    def refused(*_a: object) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refused)
    writer._copy(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()


def test_preallocation_is_optional_but_reports_a_full_disk(tmp_path, monkeypatch):
    """No fallocate (EOPNOTSUPP): the copy goes on; ENOSPC from it: the error surfaces."""
    class FakeLibc:
        def __init__(self, err: int) -> None:
            self.err = err

        def fallocate(self, *_a: object) -> int:
            monkeypatch.setattr(writer.ctypes, "get_errno", lambda: self.err)
            return -1

    src = tmp_path / "src"
    src.write_bytes(os.urandom(1 << 20))
    dst = tmp_path / "dst"
    dst.write_bytes(b"")
    monkeypatch.setattr(writer, "_libc", lambda: FakeLibc(errno.EOPNOTSUPP))
    writer._copy(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()
    monkeypatch.setattr(writer, "_libc", lambda: FakeLibc(errno.ENOSPC))
    with pytest.raises(OSError, match="No space left"):
        writer._copy(str(src), str(dst))


def test_an_earlier_output_is_removed_when_writing_starts(kernel, tmp_path):
    """Like ld: a failed run leaves no stale output that looks current; a good one leaves
    the new, verified file. A directory in the way is a usage error, never removed."""
    out = tmp_path / "out"
    out.write_bytes(b"an older build's output")
    with pytest.raises(RuntimeError), PatchedCopy(str(kernel), str(out)):
        raise RuntimeError("planning failed")  # the copy (which removes it) had started
    assert not out.exists() and leftovers(tmp_path) == []
    assert run("apply", str(kernel), "-o", str(out)).returncode == 0
    assert out.read_bytes() != b"an older build's output" and leftovers(tmp_path) == []
    (tmp_path / "adir").mkdir()
    r = run("apply", str(kernel), "-o", str(tmp_path / "adir"))
    assert r.returncode == 2 and "is a directory" in r.stderr and (tmp_path / "adir").is_dir()
