"""Write a patched copy of an image: copy, poke only site bytes, verify, rename.

The output is built as a temporary file in the destination folder and renamed over the target
only after it was re-opened and checked, so an error or an interrupt never leaves a partial
file, and the input is never opened for writing.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pvpatch.errors import InputError, UsageError
from pvpatch.image.elf import ElfImage

CHUNK = 64 << 20


@dataclass(frozen=True)
class Poke:
    offset: int  # file offset
    data: bytes
    address: int  # for messages


def file_pokes(image: ElfImage, changes: Sequence[tuple[int, bytes]]) -> list[Poke]:
    """Map (address, new bytes) pairs to file offsets through the PT_LOAD segments."""
    out = []
    for addr, data in changes:
        off = image.offset_of(addr, len(data))
        if off is None:
            raise InputError(f"site {addr:#x} is not backed by the file", image.path)
        out.append(Poke(off, data, addr))
    return out


def write_patched(src: str, dst: str, pokes: Sequence[Poke], in_place: bool = False) -> None:
    """Create ``dst`` as a copy of ``src`` with ``pokes`` applied, atomically."""
    if not in_place and _same_file(src, dst):
        raise UsageError(f"output {dst} is the input; use --in-place to replace it")
    folder = os.path.dirname(os.path.abspath(dst)) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pvpatch-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UsageError(f"cannot create a file in {folder}: {e.strerror}") from None
    os.close(fd)
    with _removed_on_failure(tmp):
        try:
            shutil.copyfile(src, tmp)
            shutil.copymode(src, tmp)
            with open(tmp, "r+b") as f:
                for p in pokes:
                    f.seek(p.offset)
                    f.write(p.data)
        except OSError as e:
            raise UsageError(f"cannot write {dst}: {e.strerror}") from None
        verify(src, tmp, pokes)
        os.replace(tmp, dst)


def verify(src: str, out: str, pokes: Sequence[Poke]) -> None:
    """Re-open the result: every poke is there and every other byte equals the input."""
    allowed = sorted((p.offset, p.offset + len(p.data)) for p in pokes)
    with open(src, "rb") as a, open(out, "rb") as b:
        if os.fstat(a.fileno()).st_size != os.fstat(b.fileno()).st_size:
            raise UsageError(f"verification failed: {out} has a different size")
        if os.fstat(a.fileno()).st_size == 0:
            return
        ma = mmap.mmap(a.fileno(), 0, access=mmap.ACCESS_READ)
        mb = mmap.mmap(b.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            for p in pokes:
                if mb[p.offset:p.offset + len(p.data)] != p.data:
                    raise UsageError(f"verification failed: site {p.address:#x} was not written")
            for lo, hi in _gaps(allowed, len(ma)):
                for c in range(lo, hi, CHUNK):
                    end = min(c + CHUNK, hi)
                    if ma[c:end] != mb[c:end]:
                        raise UsageError(f"verification failed: bytes outside the sites "
                                         f"changed near file offset {c:#x}")
        finally:
            ma.close()
            mb.close()


def _gaps(spans: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    pos = 0
    for lo, hi in spans:
        if lo > pos:
            yield pos, lo
        pos = max(pos, hi)
    if pos < size:
        yield pos, size


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def _removed_on_failure(tmp: str) -> Iterator[None]:
    """Delete ``tmp`` on any exception, Ctrl-C or SIGTERM (turned into SystemExit)."""
    old = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        old = None
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
