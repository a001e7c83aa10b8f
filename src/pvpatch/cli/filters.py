"""``--op GLOB`` and ``--function GLOB``: which sites a command shows.

One matching rule for every command that lists sites (inspect, apply, diff): shell globs,
case-sensitive, an op by its full name (``irq.save_fl``), a function by its name without the
``+0xoff``; repeated options widen the choice, the two kinds narrow each other.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
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


def _static_wanted(key: str, function: str, ops: Sequence[str],
                   functions: Sequence[str]) -> bool:
    """A pv static call matches --op by its name (``pv_steal_clock``) or as
    ``static_call.pv_steal_clock``, --function by its function (a trampoline: __SCT__KEY)."""
    op = f"static_call.{key}"
    return (not ops or any(fnmatch.fnmatchcase(key, g) or fnmatch.fnmatchcase(op, g)
                           for g in ops)) and \
        (not functions or any(fnmatch.fnmatchcase(function.split("+", 1)[0], g)
                              for g in functions))


def select_static_sites(sites: list[T], ops: Sequence[str], functions: Sequence[str]
                        ) -> list[T]:
    """The pv static-call sites (model records) the filters keep."""
    if not ops and not functions:
        return sites
    return [s for s in sites if _static_wanted(s.key, s.function, ops, functions)]


def select_static_keys(names: Iterable[str], selected: Sequence[T], ops: Sequence[str],
                       functions: Sequence[str]) -> list[str] | None:
    """The pv static-call keys a filtered summary shows (None: no filter, all of them): those
    with a selected site, and those the filters name themselves (function ``__SCT__KEY``)."""
    if not ops and not functions:
        return None
    used = {s.key for s in selected}
    return [k for k in names if k in used or _static_wanted(k, f"__SCT__{k}", ops, functions)]


def select_static(patches: list[T], ops: Sequence[str], functions: Sequence[str]) -> list[T]:
    """The planned or observed pv static-call sites and trampolines the filters keep."""
    if not ops and not functions:
        return patches
    return [p for p in patches if _static_wanted(
        p.key, p.site.function if p.site is not None else f"__SCT__{p.key}", ops, functions)]


def select_by_site(items: list[T], site_of: Callable[[T], Site], ops: Sequence[str],
                   functions: Sequence[str]) -> list[T]:
    """The items (site patches, diff rows) whose site passes the filters."""
    if not ops and not functions:
        return items
    return [x for x in items if wanted(site_of(x), ops, functions)]
