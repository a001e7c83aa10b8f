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

from pvpatch.errors import Interrupted, UsageError
from pvpatch.outputs import OutputFiles
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

    def slow_partial_copy(src: str, dst: str, stop=None) -> None:
        real_copy(src, dst, stop)
        time.sleep(0.2)

    monkeypatch.setattr(writer, "_copy", slow_partial_copy)
    if when == "writing":
        monkeypatch.setattr(writer, "verify", lambda *a: os.kill(os.getpid(),
                                                                 getattr(signal, interrupt)))
    before = kernel.read_bytes()
    out = tmp_path / "out"
    with _ctrl_c_raises(), pytest.raises((KeyboardInterrupt, Interrupted)), \
            OutputFiles([str(kernel)]) as outs, \
            PatchedCopy(str(kernel), outs.claim(str(out), "-o")) as c:
        if when == "planning":
            os.kill(os.getpid(), getattr(signal, interrupt))
        c.commit([Poke(0x100, b"\x90", 0)])
        time.sleep(1)
        outs.commit()
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
    def no_space(src: str, dst: str, stop=None) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer, "_copy", no_space)
    with pytest.raises(UsageError, match="No space left on device"), \
            OutputFiles([str(kernel)]) as outs, \
            PatchedCopy(str(kernel), outs.claim(str(tmp_path / "out"), "-o")) as c:
        c.commit([])
        outs.commit()
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


def test_an_earlier_output_is_touched_only_once_the_input_is_validated(kernel, tmp_path):
    """Until the command has validated its input (and enters PatchedCopy) an earlier output
    stays as it was; from then on it is removed as the new one is written (as ld does) and
    the new, verified file takes its place. A directory in the way is a usage error, never
    removed."""
    out = tmp_path / "out"
    out.write_bytes(b"an older build's output")
    with pytest.raises(RuntimeError), OutputFiles([str(kernel)]) as outs:
        outs.claim(str(out), "-o")
        raise RuntimeError("planning failed")
    assert out.read_bytes() == b"an older build's output" and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), OutputFiles([str(kernel)]) as outs, \
            PatchedCopy(str(kernel), outs.claim(str(out), "-o")):
        raise RuntimeError("writing failed")
    assert not out.exists() and leftovers(tmp_path) == []
    out.write_bytes(b"an older build's output")
    notkernel = tmp_path / "notkernel"
    notkernel.write_bytes(b"\x7fELF" + bytes(60))
    assert run("apply", str(notkernel), "-o", str(out)).returncode == 2
    assert out.read_bytes() == b"an older build's output" and leftovers(tmp_path) == []
    assert run("apply", str(kernel), "-o", str(out)).returncode == 0
    assert out.read_bytes() != b"an older build's output" and leftovers(tmp_path) == []
    (tmp_path / "adir").mkdir()
    r = run("apply", str(kernel), "-o", str(tmp_path / "adir"))
    assert r.returncode == 2 and "is a directory" in r.stderr and (tmp_path / "adir").is_dir()


def test_a_copy_started_before_validation_keeps_the_earlier_output(kernel, tmp_path):
    """apply starts copying before it has read the input through: the earlier output stays
    until validated() (so a rejected input leaves it), and goes only then."""
    out = tmp_path / "out"
    out.write_bytes(b"an older build's output")
    with pytest.raises(RuntimeError), OutputFiles([str(kernel)]) as outs, \
            PatchedCopy(str(kernel), outs.claim(str(out), "-o"), validated=False):
        time.sleep(0.05)  # the copy runs meanwhile
        raise RuntimeError("the input was rejected")
    assert out.read_bytes() == b"an older build's output" and leftovers(tmp_path) == []
    with OutputFiles([str(kernel)]) as outs, \
            PatchedCopy(str(kernel), outs.claim(str(out), "-o"), validated=False) as c:
        assert out.exists()
        c.validated()
        c.commit([Poke(0x100, b"\x90", 0)])
        assert not out.exists()  # removed beside the copy, before the rename
        outs.commit()
    assert out.read_bytes()[0x100] == 0x90 and leftovers(tmp_path) == []


def test_a_failing_command_stops_the_copy(tmp_path, monkeypatch):
    """Leaving the block on an error ends the copy at its next chunk, not after the whole
    image."""
    monkeypatch.setattr(writer, "COPY_CHUNK", 1 << 20)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(64 << 20))
    chunks = []
    real_range = os.copy_file_range

    def slow_range(*a):
        chunks.append(a)
        time.sleep(0.02)
        return real_range(*a)

    monkeypatch.setattr(os, "copy_file_range", slow_range)
    with pytest.raises(RuntimeError), OutputFiles([str(big)]) as outs, \
            PatchedCopy(str(big), outs.claim(str(tmp_path / "out"), "-o"), validated=False):
        time.sleep(0.1)
        raise RuntimeError("the input was rejected")
    assert 0 < len(chunks) < 64 and leftovers(tmp_path) == []


# -- one safe way to write every file (issue: --report replaced the input kernel) -------------

def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def work(kernel, tmp_path) -> Path:
    """A private copy of the fixture kernel, so that tests may try to overwrite it."""
    k = tmp_path / "vmlinux"
    k.write_bytes(kernel.read_bytes())
    return k


def _refused(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, lines
    for n in needles:
        assert n in lines[0], lines


@pytest.mark.parametrize("argv", [
    ("apply", "{k}", "-o", "{d}/ok.elf", "--report", "{k}"),           # the report onto the input
    ("apply", "{k}", "-o", "{d}/ok.elf", "--report", "{d}/ok.elf"),    # the report onto -o
    ("apply", "{k}", "-o", "{d}/link"),                                # -o a symlink to the input
    ("apply", "{k}", "-o", "{d}/hard"),                                # -o a hard link of it
    ("apply", "{k}", "--dry-run", "--report", "{d}/hard"),
    ("apply", "{k}", "--in-place", "--report", "{k}"),
    ("check", "{k}", "-o", "{d}/link"),
    ("check", "{k}", "-o", "{k}"),
    ("check", "{k}", "--baseline", "{d}/base.json", "-o", "{d}/base.json"),
    ("extract", "{k}", "-o", "{d}/hard"),
])
def test_an_output_that_is_an_input_or_another_output_is_refused(work, argv):
    d = work.parent
    (d / "link").symlink_to(work)
    os.link(work, d / "hard")
    (d / "base.json").write_text('{"schema": "pvpatch.check/1", "findings": []}')
    before = {p.name: _sha(p) for p in d.iterdir() if p.is_file()}
    r = run(*(a.format(k=work, d=d) for a in argv))
    _refused(r)
    assert "is the input" in r.stderr or "is also" in r.stderr
    assert {p.name: _sha(p) for p in d.iterdir() if p.is_file()} == before
    assert not (d / "ok.elf").exists() and leftovers(d) == []


def test_a_report_that_cannot_be_written_stops_before_anything_is_written(work):
    d = work.parent
    r = run("apply", str(work), "-o", str(d / "ok.elf"), "--report", "/nonexistent/r.json")
    _refused(r, "no such directory /nonexistent")
    assert not (d / "ok.elf").exists() and leftovers(d) == []


def test_apply_writes_the_elf_and_the_report_together(work):
    import json

    d = work.parent
    before = _sha(work)
    r = run("apply", str(work), "-o", str(d / "ok.elf"), "--report", str(d / "r.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((d / "r.json").read_text())["schema"].startswith("pvpatch.apply")
    assert (d / "ok.elf").stat().st_size == work.stat().st_size
    assert _sha(work) == before and leftovers(d) == []


@pytest.mark.parametrize("cmd", ["apply", "check", "extract"])
def test_a_rejected_input_leaves_an_existing_output_alone(tmp_path, cmd):
    bad = tmp_path / "notkernel"
    bad.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(200))
    out = tmp_path / "out"
    out.write_bytes(b"last week's output")
    r = run(cmd, str(bad), "-o", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert out.read_bytes() == b"last week's output" and leftovers(tmp_path) == []


def test_dry_run_with_an_output_is_refused(work):
    _refused(run("apply", str(work), "--dry-run", "-o", str(work.parent / "x")), "--dry-run")
    assert not (work.parent / "x").exists()


@pytest.mark.parametrize("signame,status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signals_exit_128_plus_the_signal_with_one_line(tmp_path, signame, status):
    """A real signal to a real apply while it copies a big input: the documented status, one
    line naming the signal, no output and no temporary file."""
    big = tmp_path / "vmlinux"
    big.write_bytes(assemble("pv_kernel61.S", 64).read_bytes() + os.urandom(256 << 20))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pvpatch", "apply", str(big), "-o",
                             str(out_dir / "patched")], stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                             signal.default_int_handler))
    deadline = time.monotonic() + 60
    while not leftovers(out_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("the copy finished before the signal could land (very fast disk)")
    proc.send_signal(getattr(signal, signame))
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and signame in lines[0] and "Traceback" not in err
    assert leftovers(out_dir) == [] and not (out_dir / "patched").exists()


@pytest.mark.parametrize("report", ["{d}/r.json/", "{d}/" + "x" * 300, "{d}/."])
def test_a_report_name_the_file_system_refuses_stops_before_anything_is_written(work, report):
    """Found by the fuzzer: `--report r.json/` was claimed, and only its rename failed, after
    -o's had put the patched ELF in place: a refused command left an output behind."""
    d = work.parent
    r = run("apply", str(work), "-o", str(d / "ok.elf"), "--report", report.format(d=d))
    _refused(r, "--report")
    assert not (d / "ok.elf").exists() and leftovers(d) == []


def test_a_failed_rename_takes_back_the_outputs_already_in_place(work, monkeypatch):
    """Should the last rename fail anyway (a full directory, EIO), the earlier ones go."""
    from pvpatch import outputs
    from pvpatch.errors import UsageError

    d = work.parent
    real = os.replace

    def flaky(src: str, dst: str) -> None:
        if dst.endswith("r.json"):
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", flaky)
    with pytest.raises(UsageError, match="cannot write"), \
            outputs.OutputFiles([str(work)]) as outs:
        for name in ("ok.elf", "r.json"):
            outs.claim(str(d / name), "-o").write_text("x")
        outs.commit()
    assert not (d / "ok.elf").exists() and leftovers(d) == []


@pytest.mark.parametrize("option", ["--btf", "--system-map", "--cpuinfo", "--baseline"])
def test_a_side_file_that_never_ends_is_refused_in_bounded_memory(kernel, option):
    """Found by the fuzzer: --baseline /dev/zero (and --btf, --system-map, --cpuinfo) read
    the whole 'file', until MemoryError or the OOM killer; now each stops at its bound."""
    cmd = "check" if option == "--baseline" else "apply"
    extra = () if cmd == "check" else ("--dry-run",)
    r = subprocess.run([sys.executable, "-c",
                        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, "
                        "(1 << 30, 1 << 30)); from pvpatch.cli import main; sys.argv[0] = "
                        "'pvpatch'; main()", cmd, str(kernel), *extra, option, "/dev/zero"],
                       capture_output=True, text=True, timeout=120)
    _refused(r, "/dev/zero", "more than")
