"""Describe a patch plan (or any before/after pair of site bytes): text tables and JSON.

The pv static calls ride along in their own keys and tables (``render.static_calls``)."""

from __future__ import annotations

from collections import Counter, defaultdict

from pvpatch.disasm import decode, text_of
from pvpatch.patch.plan import OUTCOMES, PatchPlan, SitePatch
from pvpatch.render.nops import nops_dict, nops_line
from pvpatch.render.static_calls import (
    plan_section,
    render_plan_keys,
    render_plan_lines,
    render_plan_sites,
)
from pvpatch.render.table import table

SCHEMA = "pvpatch.apply/1"


def disasm(code: bytes, address: int, bits: int) -> str:
    insns = decode(code, address, bits)
    text = text_of(insns)
    if sum(i.size for i in insns) != len(code):
        text += " (undecodable tail)"
    return text


def after_text(p: SitePatch, bits: int) -> str:
    """The patched site's disassembly, with the call target named as objdump does."""
    text = disasm(p.after, p.site.address, bits)
    if p.target is not None and p.target_name:
        text = text.replace(f"{p.target:#x}", f"{p.target:#x} <{p.target_name}>", 1)
    return text


def patch_dict(p: SitePatch, bits: int) -> dict:
    s = p.site
    return {
        "address": f"{s.address:#x}", "section": s.section, "function": s.function,
        "op": s.op, "length": s.length, "outcome": p.outcome,
        "target": p.target_name, "target_address": None if p.target is None else f"{p.target:#x}",
        "before": p.before.hex(), "after": p.after.hex(),
        "before_text": disasm(p.before, s.address, bits),
        "after_text": after_text(p, bits),
        "reason": p.reason,
        "alternatives": [a.index for a in p.alternatives],
        "clobber_mask": s.clobbers,
        "clobbers": p.clobbered,
        "clobber_source": p.clobber_source or None,
        "clobber_violations": p.violations,
        "problems": p.problems,
    }


def per_op(patches: list[SitePatch]) -> dict[str, Counter]:
    out: dict[str, Counter] = defaultdict(Counter)
    for p in patches:
        out[p.site.op][p.outcome] += 1
    return out


def plan_dict(plan: PatchPlan, bits: int, extra: dict | None = None) -> dict:
    be = plan.backend
    return {
        "schema": SCHEMA,
        **(extra or {}),
        "backend": {"name": be.name, "description": be.description,
                    "features": be.feature_reasons},
        "era": plan.era,
        "notes": plan.notes,
        "nop_table": plan.nops.name,
        "nops": nops_dict(plan.nop_choice),
        "counts": dict(Counter(p.outcome for p in plan.patches)),
        "changed_sites": sum(p.changed for p in plan.patches),
        "alternatives": {"applied_to_pv_sites": plan.alternatives_used,
                         "left_alone": plan.alternatives_left,
                         "note": "entries that touch no pv site depend on the CPU and are not "
                                 "modelled; their bytes are left as built"},
        "ops": {op: dict(c) for op, c in sorted(per_op(plan.patches).items())},
        "problems": sum(len(p.problems) for p in plan.patches),
        "sites": [patch_dict(p, bits) for p in plan.patches],
        "static_calls": plan_section(plan.static_calls, bits, plan.static_call_notes),
    }


def render_summary(plan: PatchPlan, header: list[str],
                   shown: list[SitePatch] | None = None) -> str:
    """The plan's summary; the op table has the ``shown`` sites (default: all)."""
    lines = list(header)
    be = plan.backend
    lines.append(f"  backend   {be.name}: {be.description}")
    for name, why in be.feature_reasons.items():
        lines.append(f"            {name}: {why}")
    counts = Counter(p.outcome for p in plan.patches)
    lines.append("  outcomes  " + ", ".join(f"{k} {counts[k]}" for k in OUTCOMES if counts[k]))
    lines += nops_line(plan.nop_choice)
    lines += [f"  note      {n}" for n in plan.notes]
    lines.append(f"  alternatives  {plan.alternatives_used} applied to pv sites, "
                 f"{plan.alternatives_left} others left as built (CPU-dependent)")
    problems = sum(len(p.problems) for p in plan.patches)
    lines.append(f"  problems  {problems or 'none'}")
    lines += render_plan_lines(plan.static_calls, plan.static_call_notes)
    lines += ["", render_ops(plan.patches if shown is None else shown)]
    if plan.static_calls:
        lines += ["", render_plan_keys(plan.static_calls)]
    return "\n".join(lines)


def render_all_sites(plan: PatchPlan, bits: int) -> str:
    """--sites: the pv sites, then the pv static-call sites and trampolines."""
    out = render_sites(plan.patches, bits)
    if plan.static_calls:
        out += "\n\n" + render_plan_sites(plan.static_calls, bits)
    return out


def render_ops(patches: list[SitePatch]) -> str:
    """One row per op: how many sites, which outcomes, the most common target."""
    rows = []
    targets: dict[str, Counter] = defaultdict(Counter)
    for p in patches:
        targets[p.site.op][p.target_name or ("(inline)" if p.outcome == "inline-native" else
                                             p.outcome)] += 1
    for op, c in sorted(per_op(patches).items()):
        main_target = targets[op].most_common(1)[0][0]
        rows.append((op, str(sum(c.values())), ", ".join(f"{k} {v}" for k, v in c.items()),
                     main_target))
    return table(("op", "sites", "outcome", "target"), rows, right=(1,))


def render_sites(patches: list[SitePatch], bits: int) -> str:
    rows = []
    for p in patches:
        s = p.site
        rows.append((f"{s.address:#x}", s.function, s.op, p.outcome,
                     disasm(p.before, s.address, bits), "→ " + after_text(p, bits)))
        rows.extend(("", "", "", "", "", f"! {m}") for m in p.problems)
    return table(("address", "function", "op", "outcome", "before", "after"), rows)
