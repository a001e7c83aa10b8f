"""What both planners (5.13–6.7 and 6.8+) decide the same way about one alternative entry."""

from __future__ import annotations

from pvpatch.backends import Backend
from pvpatch.kernel.alternatives import AltEntry


def feature_text(e: AltEntry) -> str:
    """``NOT 8*32+16`` style: how cpufeatures.h names the bit the entry tests."""
    return f"{'NOT ' if e.inverted else ''}feature {e.feature // 32}*32+{e.feature % 32}"


def decide(e: AltEntry, instrlen: int, backend: Backend) -> tuple[bool | None, str | None]:
    """(does the entry apply, why it cannot be modelled): exactly one of them is None."""
    if e.replacementlen > instrlen:
        return None, (f"alternative #{e.index}'s {e.replacementlen}-byte replacement is longer "
                      f"than the {instrlen}-byte original: the kernel would write past the "
                      "site; not modelled")
    present = backend.has_feature(e.feature)
    if present is None:
        return None, (f"alternative #{e.index} tests CPU feature {e.feature // 32}*32+"
                      f"{e.feature % 32}, which depends on the CPU: not modelled")
    return e.applies(present), None
