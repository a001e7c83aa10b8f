"""Describe the pv static calls: a kind of site of their own, beside the pv sites.

For ``inspect`` the model's keys, trampolines and sites; for ``apply``/``diff`` what boot
writes at each site and trampoline. The JSON keys are documented in docs/inspect.md and
docs/apply.md; everything here is added beside the pv-site keys, never in place of one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING

from pvpatch.disasm import decode, text_of
from pvpatch.kernel.static_calls import (
    TRAMP_PREFIX,
    TRAMP_SIZE,
    StaticCallKey,
    StaticCallSite,
    StaticCallTable,
)
from pvpatch.render.table import table

if TYPE_CHECKING:  # inspect renders no plan: the planner is imported by the apply side only
    from pvpatch.backends import Backend
    from pvpatch.patch.static_calls import StaticCallPatch

KIND = "static call"


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


def _code_text(code: bytes | None, address: int, bits: int) -> str:
    return text_of(decode(code, address, bits)) if code else ""


# -- inspect ---------------------------------------------------------------------------------

def key_dict(key: StaticCallKey, sites: list[StaticCallSite], bits: int,
             backend: Backend | None) -> dict:
    mine = [s for s in sites if s.key == key.name]
    out = {
        "name": key.name, "versions": key.info.versions if key.info else None,
        "key_address": _hex(key.address), "func": key.func_name, "func_address": _hex(key.func),
        "trampoline": _hex(key.tramp), "trampoline_size": TRAMP_SIZE,
        "trampoline_bytes": key.tramp_code.hex() if key.tramp_code else None,
        "trampoline_instruction": _tramp_text(key, bits),
        "trampoline_signed": key.tramp_signed,
        "trampoline_target": _hex(key.tramp_target),
        "trampoline_target_name": key.tramp_target_name,
        "sites": len(mine), "tail_sites": sum(s.tail for s in mine),
        "init_sites": sum(s.init for s in mine), "problems": key.problems,
    }
    if backend is not None:
        t = backend.static_calls.get(key.name)
        out.update({"target": t.name if t else None,
                    "target_address": _hex(t.value) if t else None,
                    "reason": t.reason if t else f"not resolved by the {backend.name} backend"})
    return out


def _tramp_text(key: StaticCallKey, bits: int) -> str:
    """The trampoline's instruction as objdump names it: ``jmp native_steal_clock``."""
    if key.tramp_target_name:
        return f"jmp {key.tramp_target_name}"
    return _code_text(key.tramp_code[:5] if key.tramp_code else None, key.tramp or 0, bits)


def site_text(s: StaticCallSite, key: StaticCallKey | None) -> str:
    """The built instruction, its trampoline named: ``callq __SCT__pv_steal_clock``."""
    if key is not None and key.tramp is not None and s.branch_target == key.tramp and s.text:
        return f"{s.text.split()[0]} {TRAMP_PREFIX}{key.name}"
    return s.text


def site_dict(s: StaticCallSite, key: StaticCallKey | None) -> dict:
    return {
        "kind": KIND, "index": s.index, "address": _hex(s.address), "section": s.section,
        "function": s.function, "key": s.key, "op": s.op, "tail": s.tail, "init": s.init,
        "length": s.length, "bytes": s.code.hex() if s.code else None,
        "instruction": site_text(s, key), "branch_target": _hex(s.branch_target),
        "func": key.func_name if key else None,
        "func_address": _hex(key.func) if key else None, "problems": s.problems,
    }


def inspect_section(table_: StaticCallTable, sites: list[StaticCallSite], bits: int,
                    backend: Backend | None, with_sites: bool,
                    keys: Collection[str] | None = None) -> dict:
    """``static_calls`` of ``inspect --json``: the keys always, the sites with --sites.

    ``keys`` are the keys a filter shows (None: all of them, each counting all its sites);
    under a filter a key counts only the selected sites."""
    shown = table_.keys.values() if keys is None else \
        [k for name, k in table_.keys.items() if name in keys]
    counted = table_.sites if keys is None else sites
    return {
        "origin": table_.origin, "records": table_.records,
        "keys": [key_dict(k, counted, bits, backend) for k in shown],
        "site_count": len(table_.sites), "selected": len(sites),
        "sections": dict(Counter(s.section or "?" for s in sites)),
        "unknown_keys": [{"index": i, "address": _hex(a), "key": _hex(k)}
                         for i, a, k in table_.unknown_keys],
        "problems": sum(len(s.problems) for s in sites) + len(table_.unknown_keys) +
        sum(len(k.problems) for k in table_.keys.values()),
        **({"sites": [site_dict(s, table_.keys.get(s.key)) for s in sites]}
           if with_sites else {}),
    }


def render_inspect_lines(d: dict) -> list[str]:
    """The summary line of the static calls (goes with the header lines)."""
    if not d["keys"]:
        return [f"  static calls  none: no pv static-call key ({d['origin']})"
                if not d["records"] else
                f"  static calls  {d['records']} records, none for a pv key"]
    per_sec = ", ".join(f"{n} {c}" for n, c in sorted(d["sections"].items(),
                                                      key=lambda kv: -kv[1]))
    shown = "" if d["selected"] == d["site_count"] else f" (of {d['site_count']})"
    return [f"  static calls  {len(d['keys'])} pv keys, {d['selected']}{shown} sites: "
            f"{per_sec or 'none'}; {d['records']} records in all ({d['origin']})",
            f"            problems {d['problems'] or 'none'}"]


def render_inspect_keys(d: dict, backend: Backend | None) -> str:
    """One row per pv key: its sites, the trampoline as built and where it goes."""
    last = f"{backend.name} target" if backend else "native target"
    rows = []
    for k in d["keys"]:
        target = (k["target"] or "?") if backend else (k["func"] or "?")
        rows.append((k["name"], str(k["sites"]), str(k["tail_sites"]),
                     str(k["init_sites"]), k["trampoline_instruction"] or "?", target))
        rows.extend(("", "", "", "", "", f"! {p}") for p in k["problems"])
    return table(("static call", "sites", "tail", "init", "trampoline as built", last), rows,
                 right=(1, 2, 3))


def render_inspect_sites(sites: list[StaticCallSite], keys: dict[str, StaticCallKey],
                         backend: Backend | None) -> str:
    rows = []
    for s in sites:
        key = keys.get(s.key)
        t = backend.static_calls.get(s.key) if backend else None
        target = (t.name if t else "?") if backend else (key.func_name if key else "?")
        rows.append((f"{s.address:#x}", s.section or "?", s.function, s.key,
                     "tail" if s.tail else "", site_text(s, key), target or "?"))
        rows.extend(("", "", "", "", "", f"! {p}", "") for p in s.problems)
    return table(("address", "section", "function", "static call", "tail", "instruction",
                  "current target"), rows)


# -- apply and diff --------------------------------------------------------------------------

def patch_dict(p: StaticCallPatch, bits: int) -> dict:
    return {
        "kind": KIND if p.kind == "site" else "static call trampoline",
        "address": _hex(p.address), "section": p.section, "function": p.function,
        "key": p.key, "op": p.op, "tail": p.tail, "init": p.init, "length": p.length,
        "outcome": p.outcome, "target": p.target_name, "target_address": _hex(p.target),
        "before": p.before.hex(), "after": p.after.hex(),
        "before_text": _code_text(p.before, p.address, bits),
        "after_text": after_text(p, bits), "reason": p.reason, "problems": p.problems,
    }


def after_text(p: StaticCallPatch, bits: int) -> str:
    text = _code_text(p.after, p.address, bits)
    if p.target is not None and p.target_name:
        text = text.replace(f"{p.target:#x}", f"{p.target:#x} <{p.target_name}>", 1)
    return text


def plan_section(patches: list[StaticCallPatch], bits: int, notes: list[str]) -> dict:
    """``static_calls`` of the apply report and of ``diff --json``."""
    sites = [p for p in patches if p.kind == "site"]
    tramps = [p for p in patches if p.kind == "trampoline"]
    return {
        "counts": dict(Counter(p.outcome for p in sites)),
        "trampoline_counts": dict(Counter(p.outcome for p in tramps)),
        "changed_sites": sum(p.changed for p in sites),
        "changed_trampolines": sum(p.changed for p in tramps),
        "keys": {k: dict(c) for k, c in sorted(per_key(sites).items())},
        "notes": notes,
        "problems": sum(len(p.problems) for p in patches),
        "sites": [patch_dict(p, bits) for p in sites],
        "trampolines": [patch_dict(p, bits) for p in tramps],
    }


def per_key(patches: list[StaticCallPatch]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for p in patches:
        out.setdefault(p.key, Counter())[p.outcome] += 1
    return out


def render_plan_lines(patches: list[StaticCallPatch], notes: list[str]) -> list[str]:
    """The summary lines of apply and diff: sites and trampolines, by outcome."""
    if not patches:
        return []
    sites = [p for p in patches if p.kind == "site"]
    tramps = [p for p in patches if p.kind == "trampoline"]
    return [f"  static calls  {len(sites)} sites, {sum(p.changed for p in sites)} changed: "
            f"{_outcomes(sites)}",
            f"            {len(tramps)} trampolines, {sum(p.changed for p in tramps)} changed"
            f": {_outcomes(tramps)}",
            f"            problems {sum(len(p.problems) for p in patches) or 'none'}",
            *(f"  note      {n}" for n in notes)]


def _outcomes(patches: list[StaticCallPatch]) -> str:
    c = Counter(p.outcome for p in patches)
    from pvpatch.patch.static_calls import STATIC_CALL_OUTCOMES

    return ", ".join(f"{k} {c[k]}" for k in STATIC_CALL_OUTCOMES if c[k]) or "none"


def render_plan_keys(patches: list[StaticCallPatch]) -> str:
    """One row per key: sites by outcome, the target they reach, the trampoline's outcome."""
    rows = []
    tramp = {p.key: p for p in patches if p.kind == "trampoline"}
    for key, c in sorted(per_key([p for p in patches if p.kind == "site"]).items()):
        targets = Counter(p.target_name or p.outcome for p in patches
                          if p.kind == "site" and p.key == key)
        t = tramp.get(key)
        rows.append((key, str(sum(c.values())), ", ".join(f"{k} {v}" for k, v in c.items()),
                     targets.most_common(1)[0][0], t.outcome if t else "-"))
    return table(("static call", "sites", "outcome", "target", "trampoline"), rows, right=(1,))


def render_plan_sites(patches: list[StaticCallPatch], bits: int) -> str:
    rows = []
    for p in patches:
        rows.append((f"{p.address:#x}", p.function, p.key, p.outcome,
                     _code_text(p.before, p.address, bits), "→ " + after_text(p, bits)))
        rows.extend(("", "", "", "", "", f"! {m}") for m in p.problems)
    return table(("address", "function", "static call", "outcome", "before", "after"), rows)
