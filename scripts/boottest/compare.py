#!/usr/bin/env python3
"""Compare a patched kernel's pv sites with what the booted kernel held in memory.

For every ``.text`` pv site of VMLINUX (from ``pvpatch inspect VMLINUX --json``), and every
``.text`` pv static-call site and pv trampoline (its ``static_calls``), the bytes of PATCHED at
the site (read through its PT_LOAD mapping) are compared with the bytes of the boot dump at the
same address. Without --patched, VMLINUX itself is compared: that lists every site
boot changed. --describe prints, per op, the distinct things the booted kernel holds at the
sites, disassembled: the ground truth a patcher must reproduce.

    scripts/boottest/compare.py --vmlinux V --dump D [--patched P] [--describe] [--json]

D is a .text image starting at the .text link address (boot.py writes them); its metadata,
D with .text.bin replaced by .json, is read when present (pages the dump lacks, how obtained).
Exit status: 0 every site (pv and static-call) matches, 1 some site differs or is not in the
dump, 2 bad input.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boottest.common import (PAGE, BootError, read_text, text_layout, text_sites,  # noqa: I001
                             text_static_calls)


# -- disassembly -----------------------------------------------------------------------------


class Renderer:
    """Disassemble site bytes, naming branch targets by symbol (AT&T, as objdump prints)."""

    def __init__(self, symbols) -> None:
        import capstone

        self.md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.md.syntax = capstone.CS_OPT_SYNTAX_ATT
        self.symbols = symbols

    def insns(self, code: bytes, addr: int) -> list[tuple[str, str]]:
        """[(text, byte pattern)]: rel branch targets named, their displacement shown as xx."""
        out = []
        end = addr
        for insn in self.md.disasm(code, addr):
            end = insn.address + insn.size
            text = f"{insn.mnemonic} {insn.op_str}".strip()
            raw = bytes(insn.bytes)
            pattern = raw.hex(" ")
            is_branch = insn.mnemonic.startswith(("call", "j"))
            if is_branch and insn.op_str.startswith("0x"):
                target = int(insn.op_str, 16)
                text = f"{insn.mnemonic} {self.symbols.describe(target)}"
                rel = 4 if insn.size >= 5 else 1
                pattern = " ".join([raw[:-rel].hex(" ")] + ["xx"] * rel).strip()
            out.append((text, pattern))
        if end < addr + len(code):
            rest = code[end - addr:]
            out.append((f"(undecodable {rest.hex(' ')})", rest.hex(" ")))
        return out

    def text(self, code: bytes, addr: int) -> str:
        return "; ".join(t for t, _ in self.insns(code, addr))

    def pattern(self, code: bytes, addr: int) -> str:
        return " ".join(p for _, p in self.insns(code, addr))


# -- inputs ----------------------------------------------------------------------------------


def load_dump(path: Path, text_vaddr: int, text_size: int) -> tuple[bytes, set[int], dict]:
    data = path.read_bytes()
    name = path.name.removesuffix(".text.bin")
    meta_path = path.with_name(name + ".json") if name != path.name else None
    meta = json.loads(meta_path.read_text()) if meta_path and meta_path.is_file() else {}
    start = int(meta.get("text", {}).get("vaddr", hex(text_vaddr)), 16)
    if start != text_vaddr:
        raise BootError(f"{path} starts at {start:#x}, the vmlinux's .text at {text_vaddr:#x}")
    if len(data) < text_size:
        raise BootError(f"{path} has {len(data)} bytes, .text is {text_size}")
    missing = {int(p["page"]) for p in meta.get("location", {}).get("missing_pages", [])}
    return data, missing, meta


def patched_reader(path: Path | None, vmlinux: Path):
    """(addr, n) -> bytes of the patched ELF (or of the vmlinux) at that address."""
    from pvpatch.image.elf import ElfImage

    im = ElfImage(path or vmlinux)

    def read(addr: int, n: int) -> bytes | None:
        off = im.offset_of(addr, n)
        return None if off is None else bytes(im.data[off:off + n])

    return im, read


# -- comparison ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Per op: sites, matches, differences, sites the dump lacks; the rows that differ; with
    --describe, each distinct thing the booted kernel holds."""

    counts: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    mismatches: list[dict] = field(default_factory=list)
    patterns: dict[str, dict[str, dict]] = field(
        default_factory=lambda: collections.defaultdict(dict))

    def counts_dict(self) -> dict:
        return {op: {k: c[k] for k in COLUMNS} for op, c in sorted(self.counts.items())}

    def total(self) -> dict:
        return {k: sum(c[k] for c in self.counts.values()) for k in COLUMNS}


COLUMNS = ("sites", "match", "differ", "no_data")


def compare(vmlinux: Path, dump_path: Path, patched: Path | None, describe: bool) -> dict:
    text = text_layout(vmlinux)
    sites = text_sites(vmlinux)
    statics = text_static_calls(vmlinux)
    dump, missing, meta = load_dump(dump_path, text.vaddr, text.size)
    orig = read_text(vmlinux)
    im, read = patched_reader(patched, vmlinux)
    try:
        psec = im.section(".text")
        if psec is None or psec.addr != text.vaddr or psec.size != text.size:
            raise BootError(f"{patched}: its .text is not the vmlinux's (another kernel?)")
        render = Renderer(im.symbols)
        view = DumpView(text.vaddr, dump, missing, orig, read, render, describe)
        pv, sc = view.tally(sites), view.tally(statics)
        outside = None
        if patched is not None:
            outside = _changed_outside_sites(orig, bytes(im.section_data(psec)),
                                             sites + statics, text)
        result = {
            "vmlinux": str(vmlinux), "dump": str(dump_path),
            "patched": str(patched) if patched else None,
            "dump_info": {k: meta[k] for k in ("release", "mode", "how", "date", "boot_seconds",
                                               "cpu", "kernel_cmdline", "xen_cmdline")
                          if k in meta},
            "counts": pv.counts_dict(),
            "total": pv.total(),
            "mismatches": pv.mismatches,
            "static_calls": {"counts": sc.counts_dict(), "total": sc.total(),
                             "sites": _kind_total(sc, "static_call."),
                             "trampolines": _kind_total(sc, "static_call_trampoline."),
                             "mismatches": sc.mismatches},
            "patched_changes_outside_sites": outside,
        }
        if describe:
            result["patterns"] = {op: sorted(ps.values(), key=lambda p: -p["count"])
                                  for op, ps in sorted({**pv.patterns, **sc.patterns}.items())}
            if "changes" in meta:
                result["boot_changes"] = {k: v for k, v in meta["changes"].items()
                                          if k != "unexplained_runs"}
        return result
    finally:
        im.close()


def _kind_total(t: Tally, prefix: str) -> dict:
    return {k: sum(c[k] for op, c in t.counts.items() if op.startswith(prefix))
            for k in COLUMNS}


@dataclass
class DumpView:
    """The dump, the vmlinux and the patched image, read at the same addresses."""

    vaddr: int
    dump: bytes
    missing: set[int]
    orig: bytes
    read: object
    render: Renderer
    describe: bool

    def tally(self, spans: list[dict]) -> Tally:
        t = Tally()
        for s in spans:
            self._one(t, s)
        return t

    def _one(self, t: Tally, s: dict) -> None:
        addr, n, op = s["addr"], s["length"], s["op"]
        off = addr - self.vaddr
        c = t.counts[op]
        c["sites"] += 1
        if off // PAGE in self.missing or (off + n - 1) // PAGE in self.missing:
            c["no_data"] += 1
            t.mismatches.append(_row(s, None, self.read(addr, n), self.render,
                                     "not in the dump"))
            return
        want = self.dump[off:off + n]
        got = self.read(addr, n)
        if got == want:
            c["match"] += 1
        else:
            c["differ"] += 1
            t.mismatches.append(_row(s, want, got, self.render, ""))
        if self.describe:
            self._pattern(t, s, want)

    def _pattern(self, t: Tally, s: dict, want: bytes) -> None:
        addr, n, op = s["addr"], s["length"], s["op"]
        off = addr - self.vaddr
        r = self.render
        key = r.pattern(want, addr) + " | " + r.text(want, addr)
        p = t.patterns[op].setdefault(key, {
            "count": 0, "text": r.text(want, addr), "pattern": r.pattern(want, addr),
            "example": hex(addr), "example_function": s.get("function", ""),
            "unchanged_by_boot": 0})
        p["count"] += 1
        p["unchanged_by_boot"] += want == self.orig[off:off + n]


def _row(s: dict, want: bytes | None, got: bytes | None, render: Renderer, note: str) -> dict:
    addr = s["addr"]
    return {"address": hex(addr), "function": s.get("function", ""), "op": s["op"],
            "length": s["length"],
            "expected": want.hex() if want is not None else None,
            "expected_text": render.text(want, addr) if want is not None else None,
            "got": got.hex() if got is not None else None,
            "got_text": render.text(got, addr) if got is not None else None,
            "note": note}


def _changed_outside_sites(orig: bytes, new: bytes, sites: list[dict], text) -> int:
    """Bytes of the patched .text that differ from the vmlinux outside every pv site."""
    inside = bytearray(len(orig))
    for s in sites:
        o = s["addr"] - text.vaddr
        inside[o:o + s["length"]] = b"\1" * s["length"]
    n = 0
    for base in range(0, len(orig), 4096):
        a, b = orig[base:base + 4096], new[base:base + 4096]
        if a != b:
            n += sum(1 for j in range(len(a)) if a[j] != b[j] and not inside[base + j])
    return n


# -- output ----------------------------------------------------------------------------------


def print_report(r: dict, max_list: int) -> None:
    info = r["dump_info"]
    print(f"vmlinux  {r['vmlinux']}")
    print(f"dump     {r['dump']}" + (f"  ({info.get('mode', '?')} boot, {info.get('date', '?')})"
                                     if info else ""))
    print(f"patched  {r['patched'] or 'none: the unpatched vmlinux is compared'}")
    print()
    w = max([len(op) for op in r["counts"]] + [5])
    print(f"{'op':<{w}}  {'sites':>6} {'match':>6} {'differ':>6} {'no-data':>7}")
    for op, c in r["counts"].items():
        print(f"{op:<{w}}  {c['sites']:>6} {c['match']:>6} {c['differ']:>6} {c['no_data']:>7}")
    t = r["total"]
    print(f"{'total':<{w}}  {t['sites']:>6} {t['match']:>6} {t['differ']:>6} {t['no_data']:>7}")
    print_static_calls(r["static_calls"])
    if r["patched_changes_outside_sites"]:
        print(f"\nnote: the patched .text differs from the vmlinux at "
              f"{r['patched_changes_outside_sites']} bytes outside the pv sites")
    mm = r["mismatches"] + r["static_calls"]["mismatches"]
    if mm:
        shown = mm if not max_list else mm[:max_list]
        print(f"\n{len(mm)} site(s) differ" + (f" (first {len(shown)})" if len(shown) < len(mm)
                                               else "") + ": address function op")
        print("    boot:    bytes  instructions       (what the booted kernel holds)")
        print("    patched: bytes  instructions")
        for m in shown:
            print(f"{m['address']}  {m['function']}  {m['op']}" +
                  (f"  [{m['note']}]" if m["note"] else ""))
            print(f"    boot:    {m['expected'] or '-':<16} {m['expected_text'] or ''}")
            print(f"    patched: {m['got'] or '-':<16} {m['got_text'] or ''}")
    if "patterns" in r:
        print_patterns(r)


def print_static_calls(sc: dict) -> None:
    """The pv static calls' table: sites and trampolines per key."""
    if not sc["counts"]:
        print("\nstatic calls: no pv static-call site or trampoline in .text")
        return
    w = max(len(op) for op in sc["counts"])
    print(f"\n{'pv static call':<{w}}  {'sites':>6} {'match':>6} {'differ':>6} {'no-data':>7}")
    for op, c in sc["counts"].items():
        print(f"{op:<{w}}  {c['sites']:>6} {c['match']:>6} {c['differ']:>6} {c['no_data']:>7}")
    for label in ("sites", "trampolines"):
        t = sc[label]
        print(f"{'total ' + label:<{w}}  {t['sites']:>6} {t['match']:>6} {t['differ']:>6} "
              f"{t['no_data']:>7}")


def print_patterns(r: dict) -> None:
    info = r["dump_info"]
    print(f"\n== ground truth: what the booted kernel holds at the .text pv sites "
          f"({info.get('release', '?')}, {info.get('mode', '?')})")
    for op, ps in r["patterns"].items():
        n = sum(p["count"] for p in ps)
        print(f"{op} ({n} site{'s' if n != 1 else ''})")
        for p in ps:
            same = ("  [unchanged by boot]" if p["unchanged_by_boot"] == p["count"] else
                    f"  [{p['unchanged_by_boot']} unchanged]" if p["unchanged_by_boot"] else "")
            print(f"  {p['count']:>5}  {p['pattern']:<24} {p['text']}{same}")
    if "boot_changes" in r:
        c = r["boot_changes"]
        by = ", ".join(f"{k} {v}" for k, v in c["by_table"].items())
        print(f"\nbytes of .text boot changed: {c['changed_bytes']} ({by}); outside every "
              f"patch table: {c['unexplained_bytes']}")


def print_side_by_side(title: str, results: dict[str, dict]) -> None:
    """Per op, each distinct thing the booted kernels hold, and which boots hold it."""
    print(f"\n== ground truth, {title}: per op, what each boot holds at the .text pv sites")
    ops = sorted(set().union(*(r["patterns"] for r in results.values())))
    for op in ops:
        n = max(sum(p["count"] for p in r["patterns"].get(op, [])) for r in results.values())
        print(f"{op} ({n} site{'s' if n != 1 else ''})")
        seen: dict[tuple[str, str], list[str]] = {}
        for label, r in results.items():
            ps = r["patterns"].get(op, [])
            for p in ps:
                tag = label if len(ps) == 1 else f"{label}×{p['count']}"
                seen.setdefault((p["text"], p["pattern"]), []).append(tag)
        w = max(len(" ".join(v)) for v in seen.values())
        for (text, pattern), labels in seen.items():
            print(f"    {' '.join(labels):<{w}}  {pattern:<20} {text}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--vmlinux", required=True, type=Path)
    ap.add_argument("--dump", required=True, type=Path, help="a boot dump's .text image")
    ap.add_argument("--patched", type=Path, help="the ELF pvpatch apply wrote (default: none)")
    ap.add_argument("--describe", action="store_true",
                    help="print, per op, what the booted kernel holds at the sites")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--max-list", type=int, default=0, metavar="N",
                    help="list at most N differing sites (default: all)")
    a = ap.parse_args()
    try:
        r = compare(a.vmlinux, a.dump, a.patched, a.describe)
    except (BootError, OSError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        print_report(r, a.max_list)
    t, sc = r["total"], r["static_calls"]["total"]
    return 0 if t["match"] == t["sites"] and sc["match"] == sc["sites"] else 1


if __name__ == "__main__":
    sys.exit(main())
