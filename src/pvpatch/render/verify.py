"""Describe a verification: the text report and the ``pvpatch.verify/1`` JSON document."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pvpatch.disasm import decode
from pvpatch.render.nops import cpu_dict
from pvpatch.render.table import table
from pvpatch.verify.compare import KINDS, LABELS, Outcome, Verification

SCHEMA = "pvpatch.verify/1"

Namer = Callable[[int], str]


def disasm(code: bytes, address: int, bits: int, name: Namer) -> str:
    """AT&T text, each branch target named (``callq 0xffffffff9a2b1c40 <xen_save_fl>``)."""
    insns = decode(code, address, bits)
    parts = []
    for i in insns:
        text = i.text
        if i.mnemonic.startswith(("call", "j")) and i.op_str.startswith("0x"):
            text += f" <{name(int(i.op_str, 16))}>"
        parts.append(text)
    if sum(i.size for i in insns) != len(code):
        parts.append(f"(undecodable {code[sum(i.size for i in insns):].hex(' ')})")
    return "; ".join(parts)


def _namer(v: Verification, symbols: object) -> Namer:
    """Names a runtime address after the image's symbol at its link address."""
    slide = v.placement.slide
    return lambda addr: symbols.describe(addr - slide)  # type: ignore[attr-defined]


def by_kind(v: Verification, o: Outcome) -> dict[str, dict[str, int]]:
    """Per kind of place: how many, matched, unexpected, and of those not in memory."""
    bad = set(o.unexpected)
    out = {k: Counter() for k in KINDS}
    for i, pl in enumerate(v.places):
        c = out[pl.kind]
        c["places"] += 1
        c["matched" if i not in bad else "unexpected"] += 1
        c["not_in_memory"] += v.found[i] is None
    return {k: {f: c[f] for f in ("places", "matched", "unexpected", "not_in_memory")}
            for k, c in out.items()}


def unexpected_rows(v: Verification, o: Outcome, symbols: object) -> list[dict]:
    name = _namer(v, symbols)
    slide, bits = v.placement.slide, v.bits
    rows = []
    for i in o.unexpected:
        pl, got, want = v.places[i], v.found[i], o.wanted.get(i)
        at = pl.address + slide
        rows.append({
            "address": f"{at:#x}", "link_address": f"{pl.address:#x}",
            "function": pl.function, "op": pl.op, "kind": pl.kind, "length": pl.length,
            "expected": None if want is None else want.hex(),
            "expected_text": None if want is None else disasm(want, at, bits, name),
            "expected_outcome": o.expected.outcomes[i] if i < len(o.expected.outcomes) else None,
            "expected_target": o.expected.targets[i] if i < len(o.expected.targets) else None,
            "found": None if got is None else got.hex(),
            "found_text": None if got is None else disasm(got, at, bits, name),
            "note": "not in memory" if got is None else ("" if want is not None else
                                                          "not planned")})
    return rows


def place_rows(v: Verification, o: Outcome) -> list[dict]:
    bad = set(o.unexpected)
    return [{"address": f"{pl.address + v.placement.slide:#x}", "link_address":
             f"{pl.address:#x}", "function": pl.function, "op": pl.op, "kind": pl.kind,
             "status": "unexpected" if i in bad else "matched"}
            for i, pl in sorted(enumerate(v.places), key=lambda ip: ip[1].address)]


def config_dict(o: Outcome) -> dict:
    c = o.expected.config
    return {"key": c.key, "name": c.name, "backend": c.backend, "vcpus": c.vcpus,
            "cpu": cpu_dict(c.cpu) if c.cpu_class or not c.cpu.is_default else None,
            "cpu_class": c.cpu_class, "description": o.expected.description,
            "nops": o.expected.nops, "places": o.total, "matched": o.matched,
            "unexpected": len(o.unexpected), "every_place": o.every_place}


def verify_dict(v: Verification, symbols: object, with_places: bool = False) -> dict:
    p = v.placement
    best = v.best
    name = _namer(v, symbols)
    doc: dict = {
        "schema": SCHEMA, "vmlinux": v.image, "memory": v.memory,
        "memory_format": v.memory_described, "release": v.release,
        "placement": {
            "space": p.space, "text_at": None if p.text_at is None else f"{p.text_at:#x}",
            "text_how": p.text_how, "slide": f"{p.slide:#x}", "slide_how": p.slide_how,
            "missing_pages": sorted(p.missing), "vmcoreinfo": p.vmcoreinfo_how or None},
        "identity": p.identity,
        "outside": None if p.outside is None else {
            "compared": p.outside.compared, "differing": p.outside.differing,
            "relocations": p.outside.relocations,
            "runs": [{"address": f"{a + p.slide:#x}", "link_address": f"{a:#x}",
                      "function": name(a + p.slide), "length": n} for a, n in p.outside.runs]},
        "places": dict(Counter(pl.kind for pl in v.places)),
        "freed": v.freed,
        "configurations": [config_dict(o) for o in v.outcomes],
        "skipped": [{"configuration": c, "why": why} for c, why in v.skipped],
        "verdict": None,
        "unexpected": [],
        "notes": v.notes,
    }
    if best is not None:
        doc["verdict"] = {"configuration": best.expected.config.name,
                          "key": best.expected.config.key, "every_place": best.every_place,
                          "matched": best.matched, "places": best.total,
                          "by_kind": by_kind(v, best),
                          "also_every_place": [o.expected.config.name for o in v.also]}
        doc["unexpected"] = unexpected_rows(v, best, symbols)
        if with_places:
            doc["sites"] = place_rows(v, best)
    return doc


# -- text ------------------------------------------------------------------------------------

def render_text(v: Verification, symbols: object, with_places: bool = False) -> str:
    lines = [f"{v.image} ↔ {v.memory}", *(_head(v))]
    best = v.best
    if best is None:
        return "\n".join([*lines, "", "no configuration could be planned"])
    lines += ["", _configs_table(v)]
    rows = unexpected_rows(v, best, symbols)
    if rows:
        n = len(rows)
        lines += ["", f"unexpected against {best.expected.config.name}: {n} "
                      f"place{'s' if n != 1 else ''}", _unexpected(rows)]
    if with_places:
        lines += ["", table(("address", "function", "op", "kind", "status"),
                            ([r["address"], r["function"], r["op"], LABELS[r["kind"]],
                              r["status"]]
                             for r in place_rows(v, best)))]
    return "\n".join(lines)


def _head(v: Verification) -> list[str]:
    p = v.placement
    text_at = "scattered" if p.text_at is None else f"{p.space} {p.text_at:#x}"
    out = [f"  memory    {v.memory_described}",
           f"  kernel    {v.release or 'release unknown'}",
           f"  placed    .text at {text_at}: {p.text_how}"
           + (f"; {len(p.missing)} pages not in memory" if p.missing else ""),
           f"  slide     {p.slide_how or f'{p.slide:#x}'}"]
    out += [f"  identity  {line}" for line in p.identity]
    if p.outside is not None and p.outside.differing:
        out.append(f"  outside   {p.outside.differing} bytes of .text no patch table names "
                   f"differ from the image ({p.outside.relocations}); first at "
                   f"{p.outside.runs[0][0] + p.slide:#x}")
    counts = Counter(pl.kind for pl in v.places)
    compared = ", ".join(f"{counts[k]} {LABELS[k]}s" for k in KINDS if counts[k])
    freed = ", ".join(f"{n} {LABELS[kind]}s in {sec}" for kind, secs in v.freed.items()
                      for sec, n in secs.items())
    out.append(f"  compared  {compared or 'nothing'} in .text"
               + (f"; not compared (freed after boot): {freed}" if freed else ""))
    best = v.best
    if best is not None:
        verdict = "matches every place" if best.every_place else \
            f"{len(best.unexpected)} unexpected"
        also = "" if not v.also else \
            f"; also every place: {', '.join(o.expected.config.name for o in v.also)}"
        out.append(f"  verdict   {best.expected.config.name}: {verdict} ({best.matched} of "
                   f"{best.total}){also}")
    out += [f"  skipped   {c}: {why}" for c, why in v.skipped]
    out += [f"  note      {n}" for n in v.notes]
    return out


def _configs_table(v: Verification) -> str:
    best = v.best
    rows = []
    for o in v.outcomes:
        mark = ""
        if o is best:
            mark = "← verdict" + (", every place" if o.every_place else "")
        rows.append([o.expected.config.name, str(o.matched), str(len(o.unexpected)), mark])
    return table(("configuration", "matched", "unexpected", ""), rows, right=(1, 2))


def _unexpected(rows: list[dict]) -> str:
    out = []
    for r in rows:
        out.append(f"{r['address']}  {r['function']}  {r['op']}  ({LABELS[r['kind']]}"
                   + (f", {r['note']}" if r["note"] else "") + ")")
        exp = "-" if r["expected"] is None else _spaced(r["expected"])
        got = "-" if r["found"] is None else _spaced(r["found"])
        out.append(f"    expected  {exp:<24} {r['expected_text'] or ''}")
        out.append(f"    found     {got:<24} {r['found_text'] or ''}")
    return "\n".join(out)


def _spaced(hexstr: str) -> str:
    return " ".join(hexstr[i:i + 2] for i in range(0, len(hexstr), 2))

