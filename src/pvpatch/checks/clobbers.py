"""Clobber checks: the replacement may only write registers the site's clobber mask allows.

The analysis itself is the planner's (``pvpatch.patch.plan.check_clobbers``: inline code from
capstone's access lists, a called function from its own instructions); this family turns each
violation into a finding. Records without a mask (6.2+) have nothing to check.
"""

from __future__ import annotations

from pvpatch.checks.context import BackendRun, Context
from pvpatch.checks.model import Finding, finding


def check_clobbers(ctx: Context, run: BackendRun) -> list[Finding]:
    bits = ctx.model.clobber_bits
    out = []
    for sp in run.plan.patches:
        if not sp.violations:
            continue
        s = sp.site
        mask = s.clobbers or 0
        allowed = ",".join(bits.decode(mask)) or "none"
        what = f"call {sp.target_name}" if sp.target_name else f"{sp.outcome} code"
        out.append(finding("clobber.violation", run.backend.name, s.address, ctx.label(s), s.op,
                           f"{what} writes {','.join(sp.violations)}, outside the mask "
                           f"{mask:#x} ({allowed}); from {sp.clobber_source}"))
    return out
