"""Mutants of ``check --format json`` reports, as ``check --baseline OLD`` reads them.

The structure is mutated, not the bytes: a key dropped or added, at the top or in a finding;
a value of the wrong type (a list where a string was: unhashable; an object; null); numbers
too large for any integer type or for Python's int parser; another schema; another
machine, series or flavour; the findings as an object or a string. Some mutants are made at
the text level instead: nesting deeper than any parser's stack, duplicate keys, a BOM,
bytes that are not UTF-8, the document cut short or followed by garbage.
"""

from __future__ import annotations

import copy
import json
import random

WRONG_TYPES: tuple[object, ...] = (None, True, 0, -1, 2**64, 1.5, "", "x", [], [1, [2]],
                                   {}, {"a": 1})
# JSON number literals Python reads as float inf, or refuses to turn into an int
HUGE_LITERALS = ("1e400", "-1e400", "9" * 5000, "1" + "0" * 4301, "NaN", "Infinity")


def _paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into ``doc`` (dict keys and list indexes)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:50]):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: object, path: tuple) -> tuple[object, object]:
    for p in path[:-1]:
        doc = doc[p]
    return doc, path[-1]


def _structural(doc: dict, rng: random.Random) -> str:
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return "nothing to change"
    path = rng.choice(paths)
    parent, last = _parent(doc, path)
    where = "/".join(map(str, path))
    pick = rng.randrange(4)
    if pick == 0:
        del parent[last]
        return f"{where} removed"
    if pick == 1:
        parent[last] = copy.deepcopy(rng.choice(WRONG_TYPES))
        return f"{where} = {parent[last]!r}"
    if pick == 2 and isinstance(parent, dict):
        parent[rng.choice(("extra", "", "é", "schema2", "findings_"))] = rng.choice(WRONG_TYPES)
        return f"a key added beside {where}"
    parent[last] = "@HUGE@"
    return f"{where} = a huge number"


def _semantic(doc: dict, rng: random.Random) -> str:
    """The fields --baseline reads: schema, machine, kernel, findings and their keys."""
    pick = rng.randrange(7)
    if pick == 0:
        doc["schema"] = rng.choice(("pvpatch.check/2", "pvpatch.check/1 ", "", None, 1,
                                    "pvpatch.inspect/1"))
        return f"schema {doc['schema']!r}"
    if pick == 1:
        doc["machine"] = rng.choice(("i386", "aarch64", "", None, 64, ["x86_64"]))
        return f"machine {doc['machine']!r}"
    if pick == 2:
        doc["kernel"] = rng.choice(("7.3.4+deb13-amd64", "6.1.0-fixture-rt", "6", "", "x.y",
                                    None, 6.1, "6.1.0-99-cloud-amd64", "é"))
        return f"kernel {doc['kernel']!r}"
    if pick == 3:
        doc["findings"] = rng.choice(WRONG_TYPES)
        return f"findings {doc['findings']!r}"
    findings = doc.get("findings")
    if not isinstance(findings, list):
        doc["findings"] = findings = []
    if pick == 4 or not findings:
        findings.append({k: rng.choice(WRONG_TYPES) for k in
                         ("check", "backend", "function", "op") if rng.random() < 0.8})
        return f"finding added: {findings[-1]!r}"
    f = rng.choice(findings)
    if not isinstance(f, dict):
        return "a finding that is no object"
    key = rng.choice(("check", "backend", "function", "op", "severity", "address"))
    if pick == 5:
        f.pop(key, None)
        return f"finding without {key}"
    f[key] = copy.deepcopy(rng.choice(WRONG_TYPES))
    return f"finding {key} = {f[key]!r}"


def _textual(text: str, rng: random.Random) -> tuple[bytes, str]:
    pick = rng.randrange(7)
    if pick == 0:
        depth = rng.choice((100, 1000, 100_000))
        return ("[" * depth + "]" * depth).encode(), f"arrays nested {depth} deep"
    if pick == 1:
        return (text[:1] + '"schema": 1, ' + text[1:]).encode(), "a duplicate key"
    if pick == 2:
        return b"\xef\xbb\xbf" + text.encode(), "a BOM"
    if pick == 3:
        at = rng.randrange(len(text) + 1)
        return text.encode()[:at] + b"\xff\xc3" + text.encode()[at:], "bytes not UTF-8"
    if pick == 4:
        return text.encode()[:rng.randrange(len(text) + 1)], "cut short"
    if pick == 5:
        return text.encode() + rng.choice((b"}", b" x", b"\0", b"\n{}")), "trailing garbage"
    return rng.choice((b"", b"null", b"[]", b'"x"', b"1" * 5000, b"{}")), "another document"


def mutate(report: str, rng: random.Random) -> tuple[bytes, list[str]]:
    """One mutant of the JSON ``report``."""
    if rng.random() < 0.25:
        data, what = _textual(report, rng)
        return data, [what]
    doc = json.loads(report)
    log = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        change = _semantic if rng.random() < 0.5 else _structural
        log.append(change(doc, rng))
    text = json.dumps(doc, indent=rng.choice((None, 1)))
    return text.replace('"@HUGE@"', rng.choice(HUGE_LITERALS)).encode(), log
