"""Site checks: is each ``.parainstructions`` record the pv call site it claims to be?

These hold for every backend: the kernel trusts each record blindly (``apply_paravirt`` only
``BUG_ON``s an over-long one), so a record that points at the wrong bytes makes it overwrite
whatever is there.
"""

from __future__ import annotations

from pvpatch.checks.context import Context
from pvpatch.checks.model import Finding, finding
from pvpatch.kernel.sites import MAX_SITE_LEN, Site


def check_sites(ctx: Context) -> list[Finding]:
    """Per-record checks, then overlaps between records."""
    out: list[Finding] = []
    for s in ctx.model.sites.sites:
        out.extend(_record(ctx, s))
    out.extend(_overlaps(ctx))
    return out


def _record(ctx: Context, s: Site) -> list[Finding]:
    """The record's problems; the site is named only when it has one (naming costs a
    symbol lookup, thousands of which a clean kernel need not pay)."""
    if not 0 < s.length <= MAX_SITE_LEN:
        found = [("site.length", f"record length {s.length} is outside 1..{MAX_SITE_LEN}")]
    else:
        found = [hit for hit in (_bytes(ctx, s), _slot(ctx, s), _mask(ctx, s)) if hit[0]]
    return [finding(cid, None, s.address, ctx.label(s), s.op, msg) for cid, msg in found]


def _mask(ctx: Context, s: Site) -> tuple[str | None, str]:
    """Clobber-mask bits beyond the era's registers mean a corrupt or foreign record."""
    bits = ctx.model.clobber_bits
    if s.clobbers is None or not s.clobbers & ~bits.any:
        return None, ""
    return "site.clobber-mask", (f"clobber mask {s.clobbers:#x} has bits "
                                 f"{s.clobbers & ~bits.any:#x} that no register is assigned "
                                 f"to ({bits.versions} numbering)")


def _bytes(ctx: Context, s: Site) -> tuple[str | None, str]:
    """The record must point at whole instructions in code, one of them an indirect branch."""
    if not ctx.in_code(s):
        sec = ctx.section(s)
        where = f"section {sec.name}" if sec else "no allocated section"
        return "site.not-code", f"{s.address:#x}+{s.length} is in {where}, not executable code"
    if not s.insns:
        return "site.not-code", f"the {s.length} bytes at {s.address:#x} are not in the file"
    if sum(i.size for i in s.insns) != s.length:
        return "site.not-indirect-call", (f"the {s.length} bytes do not decode to whole "
                                          f"instructions ({s.text or 'nothing'})")
    if not any(i.is_indirect_branch for i in s.insns):
        return "site.not-indirect-call", f"no indirect call or jump in the bytes: {s.text}"
    return None, ""


def _slot(ctx: Context, s: Site) -> tuple[str | None, str]:
    """The type byte must name a slot, and the slot the instruction reads."""
    if s.slot is None:
        return "site.unknown-type", (f"type {s.type} indexes no slot of "
                                     f"{ctx.model.pvops.described}")
    if s.call_target is None or s.slot.address is None or s.call_target == s.slot.address:
        return None, ""
    other = ctx.model.pvops.slot_by_address(s.call_target)
    reads = f"{other.name} ({s.call_target:#x})" if other else f"{s.call_target:#x}, no slot"
    return "site.wrong-slot", (f"type {s.type} names {s.slot.name} ({s.slot.address:#x}) but "
                               f"the instruction reads {reads}")


def _overlaps(ctx: Context) -> list[Finding]:
    """Each site that starts inside an earlier one, named with the site it collides with."""
    out = []
    widest: Site | None = None
    for s in sorted(ctx.model.sites.sites, key=lambda x: (x.address, x.index)):
        if widest is not None and s.address < widest.address + widest.length:
            out.append(finding("site.overlap", None, s.address, ctx.label(s), s.op,
                               f"{s.length}-byte site overlaps the {widest.length}-byte "
                               f"{widest.op} site at {widest.address:#x} "
                               f"(record {widest.index})"))
        if widest is None or s.address + s.length > widest.address + widest.length:
            widest = s
    return out
