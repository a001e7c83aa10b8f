"""Every file a command writes: claimed before the work, written beside its target, renamed
into place only when the command has succeeded.

One mechanism for apply's ELF and report, check's report, extract's ELF and whatever comes
later, so that the same guarantees hold everywhere:

- an output is never an input of the same command, nor another of its outputs (the same path,
  a symlink to it, a hard link of it): refused before anything is read;
- a missing folder, or a directory where the file should go, is a one-line error;
- the bytes go to a temporary file in the target's folder, created with SIGINT and SIGTERM
  held so that no signal can orphan it; any failure or signal removes every temporary file;
- an existing target is replaced (by rename) only in :meth:`OutputFiles.commit`, after the
  command has read and validated its input: a rejected input leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pvpatch.errors import Interrupted, UsageError


@dataclass
class Output:
    """One claimed output: ``path`` is where it ends up, ``tmp`` where it is written first."""

    path: str
    what: str  # the option that named it, for messages ("-o", "--report")
    replaces_input: bool = False  # --in-place: the input itself, by request
    tmp: str = ""
    _identity: tuple[object, ...] = field(default=(), repr=False)

    def release_target(self) -> None:
        """Remove an earlier file at the target, once the command has validated its input
        and writes a large output.

        Renaming a new file over an old one is atomic either way; this is for speed. Renaming
        over a 600 MB file makes ext4 free its blocks (and, with auto_da_alloc, flush the new
        file) inside the rename: 0.15 s on the main thread, where a thread beside the copy
        removes it for free. Like ld, a run that fails from here on leaves no stale output
        that looks current. A symlink or special file is left for the rename to replace."""
        if self.replaces_input:
            return
        try:
            if os.path.isfile(self.path) and not os.path.islink(self.path):
                os.unlink(self.path)
        except OSError as e:
            raise UsageError(f"cannot replace {self.path}: {e.strerror}") from None

    def write_bytes(self, data: bytes) -> None:
        self._write(data, "wb")

    def write_text(self, text: str) -> None:
        self._write(text.encode("utf-8"), "wb")

    def _write(self, data: bytes, mode: str) -> None:
        try:
            with open(self.tmp, mode) as f:
                f.write(data)
        except OSError as e:
            raise UsageError(f"cannot write {self.path}: {e.strerror}") from None


def _refuse_unusable_name(path: str, what: str) -> None:
    """A target the final rename would fail on, found before anything is written: a name
    ending in a slash (a directory's name), or one the file system refuses (too long, a
    regular file where a folder should be)."""
    if path.endswith(os.sep) or os.path.basename(path) in (".", ".."):
        raise UsageError(f"{what} {path} names a directory, not a file")
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror}") from None


def identity(path: str) -> tuple[object, ...]:
    """What makes two paths the same file: device and inode when it exists (so symlinks and
    hard links compare equal), else the path with every symlink resolved."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


class OutputFiles:
    """The outputs of one command. Use as a context manager around the whole command::

        with OutputFiles(inputs=[vmlinux, btf]) as outs:
            elf = outs.claim(out_path, "-o")
            ...                      # read and validate the input, fill elf.tmp
            outs.commit()            # every output renamed into place

    Leaving the block without :meth:`commit` (an error, Ctrl-C, SIGTERM) removes every
    temporary file and leaves each target as it was.
    """

    def __init__(self, inputs: Sequence[str | None] = ()) -> None:
        self.inputs = {identity(p): p for p in inputs if p}
        self.outputs: list[Output] = []
        self._committed = False
        self._term = _TermAsInterrupt()

    def __enter__(self) -> OutputFiles:
        self._term.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self._committed:
                self.discard()
        finally:
            self._term.__exit__(*exc)

    def claim(self, path: str, what: str, *, replaces_input: bool = False,
              hint: str = "") -> Output:
        """Check that ``path`` may be written and create its temporary file. ``hint`` is
        added to the refusal when ``path`` is an input (apply: "use --in-place")."""
        out = Output(path, what, replaces_input, _identity=identity(path))
        self._refuse_clashes(out, hint)
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) and not os.path.islink(path):
            raise UsageError(f"{what} {path} is a directory")
        if not os.path.isdir(folder):
            raise UsageError(f"{what} {path}: no such directory {folder}")
        _refuse_unusable_name(path, what)
        try:
            with signals_held():
                fd, out.tmp = tempfile.mkstemp(prefix=".pvpatch-", suffix=".tmp", dir=folder)
                self.outputs.append(out)
            os.close(fd)
        except OSError as e:
            raise UsageError(f"cannot create a file in {folder}: {e.strerror}") from None
        return out

    def _refuse_clashes(self, out: Output, hint: str) -> None:
        same_input = self.inputs.get(out._identity)
        if same_input is not None and not out.replaces_input:
            raise UsageError(f"{out.what} {out.path} is the input {same_input}"
                             + (f"; {hint}" if hint else ""))
        for other in self.outputs:
            if other._identity == out._identity:
                raise UsageError(f"{out.what} {out.path} is also {other.what} {other.path}: "
                                 "give each output its own file")

    def commit(self) -> None:
        """Rename every output into place, in the order they were claimed. If one rename
        fails, those already made are removed again: a failed command leaves none of its
        outputs (their earlier files were replaced already, like ld's)."""
        with signals_held():
            done: list[Output] = []
            for out in self.outputs:
                try:
                    os.replace(out.tmp, out.path)
                except OSError as e:
                    for made in done:
                        with contextlib.suppress(OSError):
                            os.unlink(made.path)
                    raise UsageError(f"cannot write {out.path}: {e.strerror}") from None
                out.tmp = ""
                done.append(out)
            self._committed = True

    def discard(self) -> None:
        """Remove every temporary file not yet renamed into place."""
        for out in self.outputs:
            if out.tmp:
                with contextlib.suppress(OSError):
                    os.unlink(out.tmp)
                out.tmp = ""


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (delivered on leaving) where that is possible (the main thread
    of a POSIX process), so a step that must not be cut in half is not."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _TermAsInterrupt:
    """While active, SIGTERM raises :class:`Interrupted` in the main thread, as Ctrl-C raises
    KeyboardInterrupt, so ``with`` blocks unwind and remove what they were writing. Nested
    uses and other threads leave the handler as they found it."""

    def __init__(self) -> None:
        self._old: object = None
        self._installed = False

    def __enter__(self) -> None:
        try:
            self._old = signal.getsignal(signal.SIGTERM)
            if self._old is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _raise_interrupted)
                self._installed = True
        except ValueError:  # not the main thread
            pass

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._installed = False


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)
