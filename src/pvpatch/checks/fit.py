"""Fit checks: does what the kernel writes into a site fit the site?

``apply_paravirt`` (5.13–6.7) writes a 5-byte ``call`` for every slot that is neither the nop
function nor patched inline, and ``BUG_ON(used > p->len)`` stops the boot when that does not
fit. ``apply_alternatives`` copies ``replacementlen`` bytes over ``instrlen``: a longer
replacement overwrites the code after the site.
"""

from __future__ import annotations

from pvpatch.checks.context import BackendRun, Context
from pvpatch.checks.model import Finding, finding
from pvpatch.kernel.era import LEGACY_ERAS
from pvpatch.patch.plan import call_rel32

CALL_LEN = len(call_rel32(0, 0))


def check_fit(ctx: Context, run: BackendRun) -> list[Finding]:
    return _calls(ctx, run) + _alternatives(ctx, run)


def _calls(ctx: Context, run: BackendRun) -> list[Finding]:
    """Sites shorter than a call whose slot makes the kernel write one."""
    if run.plan.era in LEGACY_ERAS:
        return _legacy_fatal(ctx, run)
    out = []
    for s in ctx.model.sites.sites:
        if not 0 < s.length < CALL_LEN:
            continue  # site.length reports impossible lengths
        res = run.backend.resolution(s.type)
        if res is None or res.value is None or res.value == run.nop_function:
            continue
        target = run.plan.bug_function if res.value == 0 else res.name
        why = (f"a {CALL_LEN}-byte call to {target} does not fit the {s.length}-byte site "
               "(5.13–6.7 apply_paravirt: BUG_ON(used > len))")
        out.append(finding("fit.call-too-long", run.backend.name, s.address, ctx.label(s),
                           s.op, why))
    return out


def _legacy_fatal(ctx: Context, run: BackendRun) -> list[Finding]:
    """≤5.12: only 5.3–5.12 BUG on what does not fit; older kernels leave the site."""
    sites = {s.index: s for s in ctx.model.sites.sites}
    return [finding("fit.call-too-long", run.backend.name, p.site.address,
                    ctx.label(sites[p.site.index]), p.site.op, p.fatal)
            for p in run.plan.patches if p.fatal]


def _alternatives(ctx: Context, run: BackendRun) -> list[Finding]:
    """Alternatives on pv sites that this backend applies (or may) with too long a payload."""
    out = []
    for e, s in ctx.pv_alternatives:
        if e.replacementlen <= e.instrlen:
            continue
        present = run.backend.has_feature(e.feature)
        if present is not None and not e.applies(present):
            continue  # never copied for this backend
        when = "applies" if present is not None else "may apply (CPU-dependent)"
        out.append(finding("fit.alt-too-long", run.backend.name, s.address, ctx.label(s), s.op,
                           f"alternative #{e.index} {when}: its {e.replacementlen}-byte "
                           f"replacement is longer than the {e.instrlen} bytes it replaces"))
    return out
