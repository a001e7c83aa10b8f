"""``--op GLOB`` and ``--function GLOB``: which sites a command shows.

One matching rule for every command that lists sites (inspect, apply, diff): shell globs,
case-sensitive, an op by its full name (``irq.save_fl``), a function by its name without the
``+0xoff``; repeated options widen the choice, the two kinds narrow each other.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import TypeVar

import click

from pvpatch.kernel.sites import Site

F = TypeVar("F", bound=Callable[..., object])
T = TypeVar("T")


def filter_options(shown: str) -> Callable[[F], F]:
    """The two options, their help ending with ``shown``: what the filter narrows."""

    def decorate(f: F) -> F:
        f = click.option("--function", "functions", multiple=True, metavar="GLOB",
                         help="Only sites inside functions matching GLOB (e.g. 'native_*'); "
                              f"repeatable. {shown}")(f)
        return click.option("--op", "ops", multiple=True, metavar="GLOB",
                            help="Only sites of ops matching GLOB (e.g. 'irq.*', 'cpu.cpuid'); "
                                 f"repeatable. {shown}")(f)

    return decorate


def wanted(s: Site, ops: Sequence[str], functions: Sequence[str]) -> bool:
    """Does site ``s`` pass the filters? (``s.function`` costs a symbol index: only asked
    when a --function filter is given.)"""
    return (not ops or any(fnmatch.fnmatchcase(s.op, g) for g in ops)) and \
        (not functions or any(fnmatch.fnmatchcase(s.function.split("+", 1)[0], g)
                              for g in functions))


def select(sites: list[Site], ops: Sequence[str], functions: Sequence[str]) -> list[Site]:
    return [s for s in sites if wanted(s, ops, functions)]


def select_by_site(items: list[T], site_of: Callable[[T], Site], ops: Sequence[str],
                   functions: Sequence[str]) -> list[T]:
    """The items (site patches, diff rows) whose site passes the filters."""
    if not ops and not functions:
        return items
    return [x for x in items if wanted(site_of(x), ops, functions)]
