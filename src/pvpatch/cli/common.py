"""What the commands that read an image share: progress messages and the input options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])

_KEPT: list[object] | None = None  # a list once main() promised to leave with os._exit


def keep_until_exit(obj: object) -> None:
    """Hold ``obj`` until the process ends, when ``pvpatch.cli.main`` runs the command.

    main() leaves with ``os._exit``, so a loaded model (hundreds of thousands of objects) need
    not be freed one by one when the command returns: ~25 ms of a ``check``. Elsewhere (click's
    test runner, a caller's own process) objects are freed as usual.
    """
    if _KEPT is not None:
        _KEPT.append(obj)


def exiting_without_teardown() -> None:
    """Called by main(): from now on :func:`keep_until_exit` holds what it is given."""
    global _KEPT
    _KEPT = []


def progress(message: str) -> None:
    """Say what a long step is doing, only when a person is watching stderr."""
    if sys.stderr.isatty():
        click.echo(f"pvpatch: {message}", err=True)


def say_progress() -> Callable[[str], None] | None:
    """:func:`progress` when stderr is a terminal, else None (the library then stays quiet)."""
    return progress if sys.stderr.isatty() else None


def image_options(types: bool = True) -> Callable[[F], F]:
    """``--system-map FILE`` and (where struct layouts matter) ``--btf FILE``."""

    def decorate(f: F) -> F:
        if types:
            f = click.option(
                "--btf", "btf", metavar="FILE", type=click.Path(dir_okay=False),
                help="Raw BTF of the same kernel (e.g. /sys/kernel/btf/vmlinux) for struct "
                     "layouts, instead of the image's .BTF or DWARF.")(f)
        return click.option(
            "--system-map", "system_map", metavar="FILE", type=click.Path(dir_okay=False),
            help="Take symbols from this System.map instead of the image's .symtab or, for "
                 "a stripped image or vmlinuz, its kallsyms tables.")(f)

    return decorate


def given(name: str) -> bool:
    """Did the user type option ``name`` (its parameter name), rather than leave its default?

    For refusing options that do not apply: a default is never an objection."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
