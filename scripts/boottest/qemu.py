"""Run one QEMU guest: start it, wait for a marker on its serial log, dump memory, kill it.

QEMU is driven through QMP (a JSON monitor on a unix socket); a human monitor (HMP) socket is
opened too, for poking at a guest by hand while it runs. Every wait is bounded, and the process
group is killed when the ``Qemu`` context ends, whatever happened (exceptions, SIGINT, SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from boottest.common import BootError, say

# Lines that mean the boot is over without reaching the marker.
FATAL = ("Kernel panic - not syncing", "(XEN) Panic on CPU")


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the boot test dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _terminate_on_signal() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so ``with Qemu(...)`` blocks clean up."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(sig, handler)


class Qemu:
    """``with Qemu(args, serial_log) as q: q.wait_for(marker); q.pmemsave(...)``."""

    def __init__(self, args: list[str], serial_log: Path) -> None:
        self.serial_log = serial_log
        self.tmp = Path(tempfile.mkdtemp(prefix="pvpatch-qemu-"))
        self.qmp_path = self.tmp / "qmp.sock"
        self.hmp_path = self.tmp / "hmp.sock"
        self.argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot",
                     "-serial", f"file:{serial_log}",
                     "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                     "-monitor", f"unix:{self.hmp_path},server=on,wait=off", *args]
        self.proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._file = None
        self.started = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Qemu:
        _terminate_on_signal()
        self.serial_log.unlink(missing_ok=True)
        self.stderr_path = self.serial_log.with_name(
            self.serial_log.name.removesuffix(".serial.log") + ".qemu-stderr.log")
        err = open(self.stderr_path, "w")
        say("starting " + shlex.join(self.argv))
        self.started = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            err.close()
        self._connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.qmp("quit", timeout=5)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- QMP -------------------------------------------------------------------------------

    def _connect(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(self.qmp_path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise BootError(f"QEMU's QMP socket did not appear within {timeout} s"
                                    ) from None
                time.sleep(0.1)
        self._sock = s
        self._file = s.makefile("rw")
        s.settimeout(30)
        json.loads(self._file.readline())  # greeting
        self.qmp("qmp_capabilities")

    def qmp(self, command: str, timeout: float = 120, **arguments: object) -> object:
        if self._sock is None:
            raise BootError("QMP not connected")
        self._sock.settimeout(timeout)
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg) + "\n")
        self._file.flush()
        while True:
            line = self._file.readline()
            if not line:
                raise BootError(f"QMP closed while waiting for {command}")
            reply = json.loads(line)
            if "error" in reply:
                raise BootError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
            if "return" in reply:
                return reply["return"]

    def hmp(self, command_line: str) -> str:
        return str(self.qmp("human-monitor-command", **{"command-line": command_line}))

    # -- guest -----------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BootError(f"QEMU exited with status {self.proc.returncode}: "
                            f"{self.stderr_path.read_text()[-1500:]}\n"
                            f"serial log tail:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.serial_log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return "(no serial output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no serial output)"

    def wait_for(self, marker: str, timeout: float) -> float:
        """Seconds from start until ``marker`` appears on the serial log; BootError otherwise."""
        deadline = self.started + timeout
        needle = marker.encode()
        while True:
            try:
                data = self.serial_log.read_bytes()
            except OSError:
                data = b""
            if needle in data:
                return self.elapsed()
            for fatal in FATAL:
                if fatal.encode() in data:
                    raise BootError(f"the guest failed ({fatal!r} on the serial log); "
                                    f"tail:\n{self.tail(40)}")
            self._check_alive()
            if time.monotonic() > deadline:
                raise BootError(f"no {marker} on the serial log within {timeout:.0f} s; "
                                f"tail:\n{self.tail(40)}")
            time.sleep(0.25)

    def registers(self) -> list[dict[str, str]]:
        """Each vCPU's RIP, CR3 and CPL from HMP ``info registers -a`` (the guest stopped)."""
        out = []
        for block in self.hmp("info registers -a").split("CPU#")[1:]:
            regs = dict(re.findall(r"\b(RIP|CR3|CPL)=([0-9a-fA-F]+)", block))
            out.append({"cpu": block.split(None, 1)[0], **regs})
        return out

    def dump_guest_memory(self, path: Path) -> None:
        """All guest RAM as an ELF core with physical addresses (QMP dump-guest-memory, no
        paging), the way ``virsh dump --memory-only`` writes it."""
        path.unlink(missing_ok=True)
        self.qmp("stop")
        self.qmp("dump-guest-memory", paging=False, protocol=f"file:{path}", timeout=600)
        if not path.is_file() or path.stat().st_size < 1 << 20:
            raise BootError(f"dump-guest-memory left no core at {path}")

    def pmemsave(self, addr: int, size: int, path: Path) -> None:
        """Save guest-physical [addr, addr+size) to ``path`` (the guest is stopped first)."""
        path.unlink(missing_ok=True)
        self.qmp("stop")
        self.qmp("pmemsave", val=addr, size=size, filename=str(path), timeout=600)
        if not path.is_file() or path.stat().st_size != size:
            raise BootError(f"pmemsave wrote {path.stat().st_size if path.exists() else 0} "
                            f"bytes to {path}, expected {size}")
