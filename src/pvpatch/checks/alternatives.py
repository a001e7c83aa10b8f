"""Alternative checks: ``.altinstructions`` entries that touch a pv site must cover it exactly.

From 5.13 the inline-able ops are ``ALTERNATIVE(pv call, native code, ALT_NOT(feature))``: the
entry starts at the site and is as long as it, so the native code replaces the patched call
whole. An entry covering only part of a site (or spilling past it) leaves pieces of the call's
displacement behind; an entry whose feature no backend decides makes the site's bytes depend on
the CPU, which an offline patch cannot know.
"""

from __future__ import annotations

from pvpatch.checks.context import BackendRun, Context
from pvpatch.checks.model import Finding, finding
from pvpatch.kernel.alternatives import AltEntry


def feature_name(e: AltEntry) -> str:
    return f"{'NOT ' if e.inverted else ''}feature {e.feature // 32}*32+{e.feature % 32}"


def check_alignment(ctx: Context) -> list[Finding]:
    """Backend-independent: each (entry, site) pair must share start and length."""
    out = []
    for e, s in ctx.pv_alternatives:
        if e.instr == s.address and e.instrlen == s.length:
            continue
        out.append(finding("alt.misaligned", None, s.address, ctx.label(s), s.op,
                           f"alternative #{e.index} ({feature_name(e)}) covers "
                           f"{e.instr:#x}+{e.instrlen}, the site is {s.address:#x}+{s.length}"))
    return out


def check_features(ctx: Context, run: BackendRun) -> list[Finding]:
    """Aligned entries whose feature bit this backend leaves to the CPU."""
    out = []
    for e, s in ctx.pv_alternatives:
        if e.instr != s.address or e.instrlen != s.length:
            continue  # alt.misaligned
        if run.backend.has_feature(e.feature) is not None:
            continue
        out.append(finding("alt.undecidable", run.backend.name, s.address, ctx.label(s), s.op,
                           f"alternative #{e.index} tests {feature_name(e)}, which "
                           f"{run.backend.name} does not decide: the site's bytes depend on "
                           "the CPU"))
    return out
