"""Describe decoded Xen notes and check results: text for people, dicts for ``--json``.

The kernel modules hold numbers and libelf's view; this module names addresses after symbols and
turns values into words. The JSON schema is documented in ``docs/notes.md`` and versioned by the
``schema`` key.
"""

from __future__ import annotations

import json

from pvpatch.image.elf import ElfImage
from pvpatch.kernel import xen_notes as X
from pvpatch.kernel.xen_checks import FAIL, NA, PASS, CheckReport, addresses
from pvpatch.kernel.xen_notes import DecodedNote, XenNotes
from pvpatch.render.table import table

SCHEMA = "pvpatch.notes/1"
STATUS_WORDS = {PASS: "PASS", FAIL: "FAIL", NA: "n/a"}
RAW_SHOWN = 16  # descriptor bytes printed for notes libelf ignores


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


def _quote(text: str) -> str:
    return json.dumps(text)


# -- symbols -----------------------------------------------------------------------------------

def _symbol(image: ElfImage, addr: int) -> str | None:
    """A symbol defined at ``addr``, else ``function+off`` when ``addr`` is in code."""
    name = image.symbols.name_at(addr)
    if name:
        return name
    sec = image.section_at(addr)
    if sec is None or not sec.is_exec:
        return None
    text = image.symbols.describe(addr)
    return None if text.startswith("0x") else text


def virtual_shift(xen: XenNotes) -> int:
    """What libelf adds to p_paddr to get a PV virtual address (VIRT_BASE - PADDR_OFFSET)."""
    a = addresses(xen, X.dom_parms(xen, hvm=False))
    return (a.virt_base - a.paddr_offset) & X.UNSET_ADDR


def note_symbol(image: ElfImage, n: DecodedNote, shift: int) -> tuple[str | None, int | None]:
    """Symbol for an address-valued note, and the virtual address used for a physical one."""
    if not isinstance(n.value, int):
        return None, None
    if n.type in (X.ENTRY, X.HYPERCALL_PAGE):
        return _symbol(image, n.value), None
    if n.type == X.PHYS32_ENTRY:
        direct = _symbol(image, n.value)
        if direct:
            return direct, None
        virt = (n.value + shift) & X.UNSET_ADDR
        return _symbol(image, virt), virt
    return None, None


# -- values as words ---------------------------------------------------------------------------

def _features_text(fs: X.FeatureString) -> str:
    parts = [f"required: {', '.join(fs.required) or '-'}",
             f"supported: {', '.join(fs.supported) or '-'}"]
    if fs.unknown_required:
        parts.append("unknown required: " + ", ".join("!" + n for n in fs.unknown_required))
    if fs.unknown_supported:
        parts.append("unknown (ignored): " + ", ".join(fs.unknown_supported))
    return "; ".join(parts)


def _reloc_text(r: X.Phys32Reloc) -> str:
    names = ("align", "min", "max")
    given = (r.align, r.min, r.max)
    return ", ".join(f"{k} {v:#x}" if g is not None else f"{k} {v:#x} (default)"
                     for k, g, v in zip(names, given, r.effective, strict=True))


def _raw_text(raw: bytes) -> str:
    shown = raw[:RAW_SHOWN].hex(" ")
    return (shown + f" … ({len(raw)} bytes)") if len(raw) > RAW_SHOWN else (shown or "(empty)")


def value_text(image: ElfImage, n: DecodedNote, shift: int) -> str:
    """One line saying what the note holds, as libelf reads it."""
    d = n.detail
    if n.spec is None or (n.spec.kind == X.IGNORED and n.type != 0):
        return _raw_text(n.raw)
    if n.type == 0:
        return (_quote(n.value) if isinstance(n.value, str) else _raw_text(n.raw)) + \
            " (libelf ignores INFO)"
    if isinstance(d, X.FeatureBitmap):
        return f"{d.used:#x} = " + ("|".join(d.names) or "no features")
    if isinstance(d, X.MfnPairs):
        return "; ".join(f"mask {m:#x} value {v:#x}" for m, v in d.pairs)
    if isinstance(d, X.Phys32Reloc):
        return _reloc_text(d)
    if isinstance(n.value, str):
        text = _quote(n.value)
        if isinstance(d, X.FeatureString):
            text += " → " + _features_text(d)
        elif isinstance(d, X.PaeMode):
            text += f" → PAE {d.name}"
        return text
    if isinstance(n.value, int):
        return _number_text(image, n, shift)
    return "(libelf cannot read it: see the notes below)" if n.spec.kind != X.SPECIAL else \
        _raw_text(n.raw)


def _number_text(image: ElfImage, n: DecodedNote, shift: int) -> str:
    value = n.value
    assert isinstance(value, int)
    if n.descsz not in (1, 2, 4, 8):
        return f"raw {_raw_text(n.raw)} → libelf reads 0"
    sym, virt = note_symbol(image, n, shift)
    if sym and virt is not None:
        return f"{value:#x} ({sym}, virtual {virt:#x})"
    return f"{value:#x} ({sym})" if sym else f"{value:#x}"


# -- text --------------------------------------------------------------------------------------

def _type_text(number: int) -> str:
    return str(number) if number < 0x100 else f"{number:#x}"


def _source_line(xen: XenNotes) -> str:
    where = ", ".join(xen.areas)
    if xen.source == "PT_NOTE":
        return f"Xen notes: {len(xen.notes)} from PT_NOTE segments ({where})"
    if xen.source == "SHT_NOTE":
        return (f"Xen notes: {len(xen.notes)} from SHT_NOTE sections ({where}); no PT_NOTE "
                "segment held one")
    if xen.source == X.LEGACY_SECTION:
        return (f"Xen notes: none (walked: {where or 'no note area'}); the legacy "
                f"{X.LEGACY_SECTION} string stands in (PV guests only)")
    return (f"No Xen ELF notes (walked: {where or 'no note area'}) and no {X.LEGACY_SECTION} "
            "section: not a Xen-ELF image, so Xen's domain builder would refuse it")


def render_notes(image: ElfImage, xen: XenNotes) -> str:
    """Header, one table row per Xen note, then observations, other notes and problems."""
    entry_sym = _symbol(image, xen.e_entry)
    lines = [f"{xen.path}: ELF{xen.bits} {xen.machine}, e_entry {xen.e_entry:#x}"
             + (f" ({entry_sym})" if entry_sym else ""), _source_line(xen)]
    shift = virtual_shift(xen)
    if xen.notes:
        rows = [(_type_text(n.type), n.name, str(n.descsz), value_text(image, n, shift))
                for n in xen.notes]
        lines += ["", table(("type", "name", "size", "value"), rows, right=(0, 2))]
    if xen.legacy is not None:
        lines += ["", *render_legacy(image, xen)]
    obs = [f"  {n.name}: {o}" for n in xen.notes for o in n.observations]
    if obs:
        lines += ["", "Observations:", *obs]
    if xen.other_notes:
        others = ", ".join(f"{name or '(no name)'}/{t:#x} in {area}"
                           for name, t, area in xen.other_notes)
        lines += ["", f"Other notes walked: {others}"]
    if xen.problems:
        lines += ["", "Problems:", *(f"  {p}" for p in xen.problems)]
    return "\n".join(lines)


def legacy_meaning(image: ElfImage, name: str, value: str, pv: X.DomParms) -> str:
    """What libelf takes from one ``__xen_guest`` item."""
    if name in ("VIRT_BASE", "VIRT_ENTRY", "ELF_PADDR_OFFSET"):
        number = X.strtoull(value)
        sym = _symbol(image, number) if name == "VIRT_ENTRY" else None
        return f"{number:#x}" + (f" ({sym})" if sym else "")
    if name == "HYPERCALL_PAGE":
        page = X.strtoull(value)
        addr = pv.virt_hypercall
        sym = _symbol(image, addr) if addr is not None else None
        return f"page {page:#x} → {_hex(addr) or 'unset'}" + (f" ({sym})" if sym else "")
    if name == "FEATURES":
        fs = X.parse_features(value)
        return _features_text(fs) + (f" ({fs.error}; ignored)" if fs.error else "")
    if name == "PAE":
        return "PAE " + X.PAE_NAMES[X.pae_from_legacy(value)]
    if name == "BSD_SYMTAB":
        return "yes (presence alone)"
    if name in ("LOADER", "GUEST_OS", "GUEST_VER", "XEN_VER"):
        return ""
    return "(not a key libelf reads)"


def legacy_meanings(image: ElfImage, xen: XenNotes, pv: X.DomParms) -> list[str]:
    """Per item, what libelf takes; items after a bad FEATURES value are never read."""
    assert xen.legacy is not None
    out, stopped = [], False
    for name, value in xen.legacy.items:
        out.append("(not read: libelf stopped at the FEATURES error)" if stopped
                   else legacy_meaning(image, name, value, pv))
        stopped = stopped or (name == "FEATURES" and X.parse_features(value).error is not None)
    return out


def render_legacy(image: ElfImage, xen: XenNotes) -> list[str]:
    """The ``__xen_guest`` string, its items as libelf splits them, and what libelf takes."""
    leg = xen.legacy
    assert leg is not None
    pv = X.dom_parms(xen, hvm=False)
    head = (f"{X.LEGACY_SECTION} section at file offset {leg.offset:#x} ({leg.size:#x} bytes):"
            f" {_quote(leg.text)}")
    if xen.notes:
        head += " — not read: Xen notes take precedence"
    rows = [(n, v, m) for (n, v), m in zip(leg.items, legacy_meanings(image, xen, pv),
                                             strict=True)]
    out = [head, table(("item", "value", "libelf takes"), rows)]
    out += [f"  {X.LEGACY_SECTION}: {o}" for o in leg.observations]
    return out


def render_checks(report: CheckReport) -> str:
    """Each check (status, id, what must hold, then the detail) and one verdict per kind."""
    lines = ["Checks of Xen's domain builders:"]
    for r in report.results:
        lines.append(f"  {STATUS_WORDS[r.status]:<4}  {r.spec.id:<24}  {r.spec.title}")
        lines.append(f"  {'':<4}  {'':<24}  {r.detail}")
    lines += ["", "Verdict:"]
    width = max(len(v.label) for v in report.verdicts)
    for v in report.verdicts:
        why = "loads" if v.loads else "refused: " + "; ".join(
            f"{r.spec.id} ({r.spec.xen})" for r in v.failed)
        lines.append(f"  {v.label:<{width}}  {why}")
    if not report.loads_any:
        lines.append("  → Xen would load this image as no kind of guest.")
    return "\n".join(lines)


# -- JSON --------------------------------------------------------------------------------------

def _decoded_json(d: X.Detail | None) -> dict | None:
    if isinstance(d, X.FeatureString):
        return {"required": list(d.required), "supported": list(d.supported),
                "unknown_required": list(d.unknown_required),
                "unknown_supported": list(d.unknown_supported), "error": d.error,
                "supported_bits": _hex(d.supported_bits), "required_bits": _hex(d.required_bits)}
    if isinstance(d, X.FeatureBitmap):
        return {"words": [_hex(w) for w in d.words], "used": _hex(d.used), "names": d.names}
    if isinstance(d, X.MfnPairs):
        return {"unit": d.unit, "pairs": [{"mask": _hex(m), "value": _hex(v)}
                                          for m, v in d.pairs]}
    if isinstance(d, X.Phys32Reloc):
        eff = dict(zip(("align", "min", "max"), map(_hex, d.effective), strict=True))
        return {"align": _hex(d.align), "min": _hex(d.min), "max": _hex(d.max),
                "effective": eff}
    if isinstance(d, X.PaeMode):
        return {"pae": X.PAE_TOKENS[d.mode]}
    return None


def note_json(image: ElfImage, n: DecodedNote, shift: int) -> dict:
    """One ``notes[]`` entry of the JSON document."""
    sym, virt = note_symbol(image, n, shift)
    value = _hex(n.value) if isinstance(n.value, int) else n.value
    return {"type": n.type, "name": n.name, "known": n.spec is not None,
            "libelf": n.spec.kind if n.spec else None,
            "xen_versions": n.spec.xen if n.spec else None,
            "area": n.area, "offset": _hex(n.offset), "descsz": n.descsz, "desc": n.raw.hex(),
            "value": value, "symbol": sym, "virtual": _hex(virt),
            "decoded": _decoded_json(n.detail), "observations": list(n.observations),
            "overruns": n.overruns}


def _legacy_json(image: ElfImage, xen: XenNotes) -> dict | None:
    leg = xen.legacy
    if leg is None:
        return None
    pv = X.dom_parms(xen, hvm=False)
    return {"offset": _hex(leg.offset), "size": leg.size, "string": leg.text,
            "used": bool(pv.legacy_used),
            "items": [{"name": n, "value": v, "libelf": m} for (n, v), m in
                      zip(leg.items, legacy_meanings(image, xen, pv), strict=True)],
            "observations": list(leg.observations)}


def _checks_json(report: CheckReport | None) -> dict:
    if report is None:
        return {"checks": None, "verdicts": None, "loads": None}
    checks = [{"id": r.spec.id, "title": r.spec.title, "status": r.status, "detail": r.detail,
               "xen": r.spec.xen, "source": r.spec.source, "kinds": list(r.spec.kinds)}
              for r in report.results]
    verdicts = [{"kind": v.kind, "label": v.label, "loads": v.loads,
                 "failed": [r.spec.id for r in v.failed]} for v in report.verdicts]
    return {"checks": checks, "verdicts": verdicts, "loads": report.loads_any}


def to_json(image: ElfImage, xen: XenNotes, report: CheckReport | None = None) -> dict:
    """The whole ``pvpatch notes --json`` document (schema in docs/notes.md)."""
    shift = virtual_shift(xen)
    span = xen.span
    return {
        "schema": SCHEMA,
        "file": xen.path,
        "build_id": image.build_id,
        "elf": {"class": xen.bits, "machine": xen.machine, "e_entry": _hex(xen.e_entry),
                "e_entry_symbol": _symbol(image, xen.e_entry)},
        "source": xen.source,
        "areas": list(xen.areas),
        "load_span": {"pstart": _hex(span.pstart) if span.segments else None,
                      "pend": _hex(span.pend) if span.segments else None,
                      "max_align": _hex(span.max_align), "segments": span.segments},
        "notes": [note_json(image, n, shift) for n in xen.notes],
        "legacy": _legacy_json(image, xen),
        "other_notes": [{"name": n, "type": t, "area": a} for n, t, a in xen.other_notes],
        "total_notes": xen.total_notes,
        "problems": list(xen.problems),
        **_checks_json(report),
    }
