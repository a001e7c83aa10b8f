"""Write a patched copy of an image: copy, poke only site bytes, verify, rename.

The output is a file claimed through :mod:`pvpatch.outputs`: built as a temporary file in the
destination folder, re-opened and checked, and renamed over the target only when the command
succeeded, so an error or an interrupt never leaves a partial file; the input is never opened
for writing.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import fcntl
import functools
import io
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pvpatch.errors import InputError, UsageError
from pvpatch.image.elf import ElfImage
from pvpatch.outputs import Output

Buffer = bytes | bytearray | memoryview

PAGE = 4096
FICLONE = 0x40049409  # linux/fs.h: share the input's blocks where the filesystem can


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


class PatchedCopy:
    """Fill a claimed output (:class:`pvpatch.outputs.Output`) with a copy of ``src`` whose
    site bytes are then written and verified.

    Entering it starts a background thread that copies into the output's temporary file (the
    kernel does the copying) while the caller reads the input and prepares the site bytes.
    An earlier file at the target is removed (:meth:`~pvpatch.outputs.Output.release_target`)
    only once the input is known to be good: at once when ``validated`` (the caller checked
    the input before entering), else when the caller says so with :meth:`validated`. The
    :class:`~pvpatch.outputs.OutputFiles` that claimed the output renames it into place once
    the command has succeeded, and removes it otherwise; leaving the block on an error stops
    the copy at its next chunk.
    """

    def __init__(self, src: str, out: Output, *, data: Buffer | None = None,
                 validated: bool = True) -> None:
        """``data``, when given, is what the copy holds instead of ``src``'s bytes (the
        vmlinux decompressed out of the bzImage ``src``); ``src`` still names the input."""
        self.src, self.out, self.data = src, out, data
        self._errors: list[BaseException] = []
        self._stop = threading.Event()
        self._release_pending = not validated
        self._threads = [threading.Thread(
            target=self._release_then_copy if validated else self._copy, daemon=True)]

    def _release_then_copy(self) -> None:
        self._release_target()
        if not self._errors:
            self._copy()

    def _release_target(self) -> None:
        try:
            self.out.release_target()  # freeing 600 MB of blocks takes a while: off the caller
        except BaseException as e:  # handed to the main thread by commit()
            self._errors.append(e)

    def _copy(self) -> None:
        try:
            if self.data is None:
                _copy(self.src, self.out.tmp, stop=self._stop)
            else:
                _write(self.data, self.out.tmp)
            shutil.copymode(self.src, self.out.tmp)
        except BaseException as e:  # handed to the main thread by commit()
            self._errors.append(e)

    def __enter__(self) -> PatchedCopy:
        self._threads[0].start()
        return self

    def validated(self) -> None:
        """The input is good: an earlier output may now be removed (in a thread of its own,
        beside the copy)."""
        if self._release_pending:
            self._release_pending = False
            release = threading.Thread(target=self._release_target, daemon=True)
            release.start()
            self._threads.append(release)

    def __exit__(self, *exc: object) -> None:
        # the temporary file is removed by the OutputFiles only once nothing writes it
        if exc[0] is not None:
            self._stop.set()
        for t in self._threads:
            t.join()

    def commit(self, pokes: Sequence[Poke]) -> None:
        """Wait for the copy, write the site bytes and verify them."""
        self.validated()
        for t in self._threads:
            t.join()
        try:
            if self._errors:
                raise self._errors[0]
            with open(self.out.tmp, "r+b") as f:
                for p in pokes:
                    f.seek(p.offset)
                    f.write(p.data)
        except OSError as e:
            raise UsageError(f"cannot write {self.out.path}: {e.strerror}") from None
        verify(self.src if self.data is None else self.data, self.out.tmp, pokes)


def _write(data: Buffer, dst: str) -> None:
    with open(dst, "r+b") as fo:
        _preallocate(fo.fileno(), len(memoryview(data)))
        fo.write(data)


COPY_CHUNK = 64 << 20  # how much the kernel copies between two looks at ``stop``


def _copy(src: str, dst: str, stop: threading.Event | None = None) -> None:
    """Reflink when the filesystem shares blocks (instant), else an in-kernel copy into
    space allocated up front, in chunks so that a ``stop`` set by a failing command ends it
    within one chunk."""
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        try:
            fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
            return
        except OSError:
            pass
        size = os.fstat(fi.fileno()).st_size
        _preallocate(fo.fileno(), size)
        _copy_range(fi.fileno(), fo.fileno(), size, stop)


def _preallocate(fd: int, size: int) -> None:
    """Allocate the output's blocks in one call before writing it.

    On ext4 a new file written page by page reserves delayed-allocation blocks per page and
    has them all flushed when it is renamed over an existing output; measured on a 600 MB
    kernel, that makes the copy 2-10x slower than overwriting a file in place (what ``cp``
    does). Allocated extents avoid both. Where the filesystem cannot (EOPNOTSUPP) nothing
    is done; ENOSPC is reported at once instead of half-way through the copy.
    """
    if size <= 0:
        return
    libc = _libc()
    if libc is None:
        return
    if libc.fallocate(fd, 0, ctypes.c_int64(0), ctypes.c_int64(size)) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        return libc
    except (OSError, AttributeError):
        return None


def _copy_range(fin: int, fout: int, size: int, stop: threading.Event | None = None) -> None:
    """Copy ``size`` bytes in the kernel: copy_file_range, else sendfile (other filesystems),
    at most :data:`COPY_CHUNK` at a time; a set ``stop`` ends the copy with an OSError
    (ECANCELED) that nobody sees, since the command is failing already."""
    off = 0
    try:
        while off < size:
            _check(stop)
            n = os.copy_file_range(fin, fout, min(size - off, COPY_CHUNK), off, off)
            if n == 0:
                break
            off += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    os.lseek(fout, off, os.SEEK_SET)
    while off < size:
        _check(stop)
        n = os.sendfile(fout, fin, off, min(size - off, COPY_CHUNK))
        if n == 0:
            raise OSError(errno.EIO, "the input shrank while it was copied")
        off += n


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise OSError(errno.ECANCELED, os.strerror(errno.ECANCELED))


def verify(src: str | Buffer, out: str, pokes: Sequence[Poke]) -> None:
    """Re-open the result and check it against the input around every write.

    Every page that a site write touched is compared byte by byte with the input: each byte
    that differs must lie inside a site, and each site must hold its planned bytes. The other
    pages were never written by pvpatch (they come from the kernel's file copy), and the sizes
    must match.
    """
    spans = sorted((p.offset, p.offset + len(p.data)) for p in pokes)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(open(src, "rb")) if isinstance(src, str) \
            else io.BytesIO(memoryview(src))
        b = stack.enter_context(open(out, "rb"))
        size = os.fstat(a.fileno()).st_size if isinstance(src, str) else len(memoryview(src))
        if size != os.fstat(b.fileno()).st_size:
            raise UsageError(f"verification failed: {out} has a different size")
        for p in pokes:
            b.seek(p.offset)
            if b.read(len(p.data)) != p.data:
                raise UsageError(f"verification failed: site {p.address:#x} was not written")
        for lo, hi in _pages(spans):
            a.seek(lo)
            b.seek(lo)
            old, new = a.read(hi - lo), b.read(hi - lo)
            if old != new:
                _diffs_inside(old, new, lo, spans)


def _pages(spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Merged page-aligned ranges covering the written spans."""
    cur = None
    for lo, hi in spans:
        plo, phi = lo // PAGE * PAGE, -(-hi // PAGE) * PAGE
        if cur and plo <= cur[1]:
            cur = (cur[0], max(cur[1], phi))
            continue
        if cur:
            yield cur
        cur = (plo, phi)
    if cur:
        yield cur


def _diffs_inside(old: bytes, new: bytes, base: int, spans: list[tuple[int, int]]) -> None:
    """Every byte outside the site spans of this range must be unchanged (compared in C)."""
    end = base + len(old)
    k = bisect.bisect_right(spans, (base, base)) - 1
    pos = base
    for lo, hi in spans[max(k, 0):]:
        if lo >= end:
            break
        if hi <= pos:
            continue
        _same(old, new, base, pos, lo)
        pos = max(pos, hi)
    _same(old, new, base, pos, end)


def _same(old: bytes, new: bytes, base: int, lo: int, hi: int) -> None:
    if lo < hi and old[lo - base:hi - base] != new[lo - base:hi - base]:
        first = next(i for i in range(lo, hi) if old[i - base] != new[i - base])
        raise UsageError(f"verification failed: byte at file offset {first:#x} changed "
                         "outside every site")
