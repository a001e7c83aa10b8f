"""Describe a kernel model's pv sites: a dict for ``--json`` and tables for people.

The pv static calls are a kind of site of their own, described by ``render.static_calls``
beside the pv sites (``static_calls`` in JSON, their own lines and tables in text).

The model holds numbers; this module turns them into words. The JSON schema is documented in
``docs/inspect.md`` and versioned by the ``schema`` key.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import Site
from pvpatch.render.nops import nops_dict, nops_line
from pvpatch.render.static_calls import (
    inspect_section,
    render_inspect_keys,
    render_inspect_lines,
    render_inspect_sites,
)

if TYPE_CHECKING:
    from pvpatch.patch.recognise import Recognition
from pvpatch.render.table import table

if TYPE_CHECKING:  # plain inspect resolves no backend and plans nothing: not imported then
    from pvpatch.backends import Backend
    from pvpatch.kernel.static_calls import StaticCallSite
    from pvpatch.patch.boot_nops import NopChoice

SCHEMA = "pvpatch.inspect/1"


@dataclass(frozen=True)
class OpSummary:
    op: str
    slot: int
    sites: int
    native_target: str | None
    native_address: int | None


def summarize_ops(sites: list[Site]) -> list[OpSummary]:
    counts = Counter(s.type for s in sites)
    first = {}
    for s in sites:
        first.setdefault(s.type, s)
    return [OpSummary(first[t].op, t, n, first[t].native_name, first[t].native_target)
            for t, n in sorted(counts.items())]


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


def site_dict(s: Site, clobber_names: list[str] | None) -> dict:
    return {
        "index": s.index,
        "address": _hex(s.address),
        "section": s.section,
        "function": s.function,
        "type": s.type,
        "op": s.op,
        "length": s.length,
        "clobbers": s.clobbers,
        "clobber_regs": clobber_names,
        "bytes": "".join(i.raw.hex() for i in s.insns),
        "instruction": s.text,
        "slot_address": _hex(s.call_target),
        "native_target": s.native_name,
        "native_address": _hex(s.native_target),
        "problems": s.problems,
    }


def backend_ops(backend: Backend) -> list[dict]:
    """Every slot of the backend, whether or not a site calls it: target and why."""
    return [{"op": r.slot.name, "type": r.slot.index, "target": r.name,
             "target_address": _hex(r.value), "reason": r.reason}
            for _i, r in sorted(backend.slots.items())]


def inspect_dict(model: KernelModel, sites: list[Site], backend: Backend | None = None,
                 with_sites: bool = True,
                 static_sites: list[StaticCallSite] | None = None,
                 nops: NopChoice | None = None, patched: Recognition | None = None,
                 static_keys: list[str] | None = None) -> dict:
    """The whole report; ``static_sites`` are the pv static-call sites selected (all: None),
    ``static_keys`` the keys a filter shows (all: None)."""
    table_ = model.sites
    v = model.version
    lay = table_.layout
    return {
        "schema": SCHEMA,
        "file": model.image.path,
        "machine": model.image.machine,
        "build_id": model.image.build_id,
        "kernel": {"release": v.release, "version": v.short, "distro": v.distro,
                   "banner": v.banner, "source": v.source},
        "patch_era": _era_dict(model),
        "pv_table": {"container": model.pvops.described,
                     "slots": len(model.pvops.slots),
                     "types": model.types.origin if model.types else
                     ("builtin" if model.builtin and model.builtin.table else None),
                     "builtin_table": model.builtin.table.name
                     if model.builtin and model.builtin.table else None,
                     "address": _hex(model.pvops.base),
                     "address_from": model.pvops.base_origin},
        "layout": None if lay is None else {
            "name": lay.name, "versions": lay.versions, "record_size": lay.stride,
            "clobbers": ("used" if lay.clobbers_used else "stale")
            if lay.clobbers_off is not None else "absent",
            "detected_from": table_.layout_reason},
        "layout_reason": table_.layout_reason,
        "site_count": len(table_.sites),
        "selected": len(sites),
        "sections": dict(Counter(s.section or "?" for s in sites)),
        "ops": [{"op": o.op, "type": o.slot, "sites": o.sites, "native_target": o.native_target,
                 "native_address": _hex(o.native_address)} for o in summarize_ops(sites)],
        "problems": sum(len(s.problems) for s in sites),
        "already_patched": None if patched is None else patched.to_json(),
        "backend": None if backend is None else {
            "name": backend.name, "description": backend.description,
            "features": backend.feature_reasons, "ops": backend_ops(backend),
            "nops": nops_dict(nops)},
        **({"sites": [site_dict(s, _clobber_names(model, s)) for s in sites]}
           if with_sites else {}),
        "static_calls": inspect_section(
            model.static_calls, model.static_calls.sites if static_sites is None
            else static_sites, model.image.bits, backend, with_sites, static_keys),
    }


def _era_dict(model: KernelModel) -> dict | None:
    d = model.era
    if d is None:
        return None
    return {"era": d.era.key, "versions": d.era.versions, "dispatcher": d.era.dispatcher,
            "type_byte": d.era.type_byte, "detected_from": d.evidence, "conflict": d.conflict}


def _clobber_names(model: KernelModel, s: Site) -> list[str] | None:
    return None if s.clobbers is None else model.clobber_bits.decode(s.clobbers)


def render_summary(model: KernelModel, sites: list[Site], backend: Backend | None = None,
                   static_sites: list[StaticCallSite] | None = None,
                   nops: NopChoice | None = None, patched: Recognition | None = None,
                   static_keys: list[str] | None = None) -> str:
    d = inspect_dict(model, sites, backend, with_sites=False, static_sites=static_sites,
                     nops=nops, patched=patched, static_keys=static_keys)
    lines = [d["file"]]
    k = d["kernel"]
    kernel = k["release"] or "unknown version"
    if k["distro"]:
        kernel += f" ({k['distro']})"
    lines.append(f"  kernel    {kernel}, {d['machine']}  [from {k['source']}]")
    lines.append(f"  build-id  {d['build_id'] or 'none (no NT_GNU_BUILD_ID note)'}")
    lines.append(f"  pv table  {d['pv_table']['container']}, {d['pv_table']['slots']} slots")
    era = d["patch_era"]
    if era is not None:
        lines.append(f"  era       {era['versions']} ({era['era']}): {era['dispatcher']}; type "
                     f"byte = {era['type_byte']}")
        lines.append(f"            detected from {era['detected_from']}")
        if era["conflict"]:
            lines.append(f"            ! {era['conflict']}")
    lay = d["layout"]
    if lay is None:
        lines.append(f"  records   {d['layout_reason']}")
    else:
        lines.append(f"  records   .parainstructions, {d['site_count']} × {lay['record_size']} "
                     f"bytes, layout {lay['name']} ({lay['versions']}), clobber word "
                     f"{lay['clobbers']}")
        lines.append(f"            detected from {lay['detected_from']}")
    per_sec = ", ".join(f"{name} {n}" for name, n in sorted(d["sections"].items(),
                                                             key=lambda kv: -kv[1]))
    shown = "" if d["selected"] == d["site_count"] else f" (of {d['site_count']})"
    lines.append(f"  sites     {d['selected']}{shown}: {per_sec or 'none'}")
    lines.append(f"  problems  {d['problems'] or 'none'}")
    lines += render_inspect_lines(d["static_calls"])
    if patched is not None:
        lines.append(f"  patched   {patched.look.described}; {patched.described}")
    if backend is not None:
        lines.append(f"  backend   {backend.name}: {backend.description}")
        lines += [f"            {k}: {v}" for k, v in backend.feature_reasons.items()]
        lines += nops_line(nops)
        counts = Counter(s.type for s in sites)
        rows = [(o["op"], str(o["type"]), str(counts.get(o["type"], 0)), o["target"] or "?",
                 o["reason"]) for o in d["backend"]["ops"]]
        lines += ["", table(("op", "type", "sites", f"{backend.name} target", "why"), rows,
                            right=(1, 2))]
    elif d["ops"]:
        rows = [(o["op"], str(o["type"]), str(o["sites"]), o["native_target"] or "?")
                for o in d["ops"]]
        lines.append("")
        lines.append(table(("op", "type", "sites", "native target"), rows, right=(1, 2)))
    if d["static_calls"]["keys"]:
        lines += ["", render_inspect_keys(d["static_calls"], backend)]
    return "\n".join(lines)


def render_all_sites(model: KernelModel, sites: list[Site], static_sites: list[StaticCallSite],
                     backend: Backend | None = None) -> str:
    """--sites: the pv sites, then (a kind of their own) the pv static-call sites."""
    parts = [render_sites(model, sites)] if sites or not static_sites else []
    if static_sites:
        parts.append(render_inspect_sites(static_sites, model.static_calls.keys, backend))
    return "\n\n".join(parts)


def render_sites(model: KernelModel, sites: list[Site]) -> str:
    rows = []
    for s in sites:
        clob = "" if s.clobbers is None else f"{s.clobbers:#06x} " + (
            "any" if s.clobbers == model.clobber_bits.any else
            ",".join(model.clobber_bits.decode(s.clobbers)))
        rows.append((f"{s.address:#x}", s.section or "?", s.function, s.op, str(s.length),
                     clob, s.text, s.native_name or "?"))
        rows.extend(("", "", "", "", "", "", f"! {p}", "") for p in s.problems)
    return table(("address", "section", "function", "op", "len", "clobbers", "instruction",
                  "native target"), rows, right=(4,))
