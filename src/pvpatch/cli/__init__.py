"""The ``pvpatch`` command line: a thin shell over the library.

Each command lives in its own module here and only parses options, calls the library and hands
the result to a renderer. Exit status: 0 fine, 1 a check failed, 2 usage or input error.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from pvpatch import __version__
from pvpatch.cli.common import exiting_without_teardown
from pvpatch.errors import InputError, Interrupted, UsageError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_INPUT = 0, 1, 2


COMMANDS = {  # name → module; imported only when that command runs, to keep start-up short
    "inspect": "pvpatch.cli.inspect_cmd",
    "notes": "pvpatch.cli.notes_cmd",
    "apply": "pvpatch.cli.apply_cmd",
    "diff": "pvpatch.cli.diff_cmd",
    "check": "pvpatch.cli.check_cmd",
    "extract": "pvpatch.cli.extract_cmd",
    "verify": "pvpatch.cli.verify_cmd",
}


class PvpatchGroup(click.Group):
    """Lazily loaded commands, and one exit convention for all of them.

    InputError/UsageError and click's own usage errors become one line on stderr and status 2;
    Ctrl-C exits 130 and SIGTERM 143 (128 + the signal), each with one line, after every
    ``with`` block has unwound (so no output is left half-written).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name])
        return getattr(module, name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (InputError, UsageError) as e:
            click.echo(f"pvpatch: error: {one_line(str(e))}", err=True)
            ctx.exit(EXIT_INPUT)
        except KeyboardInterrupt:  # before click turns it into "Aborted!" and status 1
            raise Interrupted(signal.SIGINT) from None
        except BrokenPipeError:  # `pvpatch inspect … | head`
            sys.stderr.close()
            ctx.exit(EXIT_OK)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        code = self._run(args, prog_name, complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args: Sequence[str] | None, prog_name: str | None,
             complete_var: str | None, **extra: Any) -> int:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            return e.exit_code
        except click.exceptions.NoArgsIsHelpError as e:  # bare `pvpatch`: asking for help
            click.echo(e.format_message())
            return EXIT_OK
        except click.ClickException as e:
            click.echo(f"pvpatch: error: {_usage_line(e)}", err=True)
            return EXIT_INPUT
        except (click.exceptions.Abort, KeyboardInterrupt):
            return _interrupted(signal.SIGINT)
        except Interrupted as e:
            return _interrupted(e.signum)
        return rv if isinstance(rv, int) else EXIT_OK


def one_line(message: str) -> str:
    """``message`` with every character that is not printable (a newline or carriage return
    in a file name or an option's value, an escape sequence) written as its escape: the
    error is one line, whatever the user's input held."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _usage_line(e: click.ClickException) -> str:
    """click's three-line usage error as one line, with where to read more."""
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        return f"{message} (see '{ctx.command_path} --help')"
    return message


def _interrupted(signum: int) -> int:
    name = signal.Signals(signum).name
    click.echo(f"pvpatch: interrupted by {name}: nothing was written", err=True)
    return 128 + signum


@click.group(cls=PvpatchGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                 "max_content_width": 100})
@click.version_option(__version__, prog_name="pvpatch")
def cli() -> None:
    """Read, check and offline-patch the paravirt call sites of an x86 Linux kernel.

    \b
    Typical use:
      pvpatch inspect vmlinux                   what pv sites the kernel has, per op
      pvpatch inspect vmlinux --sites --op irq.save_fl
      pvpatch notes vmlinux --check             would Xen's domain builder load it?
      pvpatch apply vmlinux -o out --backend xen   the kernel as a Xen PV guest patches it
      pvpatch diff vmlinux out                  what changed at each site, classified
      sudo pvpatch verify vmlinux /proc/kcore   does the running kernel hold what it should?

    Every command takes --json for machine-readable output (schemas in docs/).
    Exit status: 0 fine, 1 a check failed, 2 bad usage or unreadable input,
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM); nothing is left half-written.
    """


# Containers allocated between two young-generation collections (CPython's default: 700).
# A command builds tables of 100k+ rows and then thousands of small records; at the default
# the collector ran ~60 times per `inspect` and re-walked the young big tables (~30 ms of a
# second) to find no garbage. The rare cycles are still collected.
GC_THRESHOLD = 50_000


def main() -> NoReturn:
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    exiting_without_teardown()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(prog_name="pvpatch")  # standalone mode: it always ends in SystemExit
    except SystemExit as e:
        _leave(e.code)
    _leave(EXIT_OK)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds the command like Ctrl-C does (see PvpatchGroup)."""
    raise Interrupted(signum)


def _leave(code: int | str | None) -> NoReturn:
    """Exit with ``code`` once the output is flushed, without tearing the heap down.

    Every file a command writes is closed by then (the writer renames its output into place
    before returning), so nothing is lost; what is skipped is freeing a few hundred thousand
    objects one by one and the interpreter's last full collection: ~50 ms of a ``check``.
    """
    if isinstance(code, str):  # sys.exit("message"): Python prints it and exits 1
        click.echo(code, err=True)
        code = EXIT_CHECK_FAILED
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`), a closed stream
            stream.flush()
    os._exit(EXIT_OK if code is None else code)
