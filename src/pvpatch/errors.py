"""Errors a user can act on.

Every problem with the input image is raised as :class:`InputError`; the CLI prints it as one
line naming the file and exits with status 2. Anything else escaping is a pvpatch bug.
"""

from __future__ import annotations


class InputError(Exception):
    """The input is not something pvpatch can read (bad ELF, truncated, inconsistent tables)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UsageError(Exception):
    """The command line asks for something impossible (e.g. output path equals input)."""


class Interrupted(BaseException):
    """SIGTERM (or another terminating signal) arrived: unwind like KeyboardInterrupt, so that
    nothing half-written stays behind, and exit with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
