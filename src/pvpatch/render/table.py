"""Plain-text tables sized to their content (no dependency: the output must stay greppable)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()
          ) -> str:
    """Columns separated by two spaces; ``right`` lists right-aligned column indexes."""
    rows = [list(map(str, r)) for r in rows]
    widths = [len(h) for h in header]
    for r in rows:
        for i, cell in enumerate(r[:-1]):  # the last column is never padded
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if i == len(cells) - 1:
                out.append(cell)
            elif i in right:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
