"""Static-call checks: is each pv static-call record the call it claims, and does the backend
say what each pv key holds?

``static_call_init()`` trusts the table: it rewrites 5 bytes (6 for a Jcc) at every record's
address, and ``__static_call_validate()`` BUG()s (6.1+) or WARNs (5.10) when they are not a
call/jmp/Jcc of the kind the record's tail flag says. A record whose key is no static-call key
makes the kernel read a ``struct static_call_key`` out of whatever lies there.
"""

from __future__ import annotations

from pvpatch.checks.context import BackendRun, Context
from pvpatch.checks.model import Finding, finding
from pvpatch.kernel.static_calls import KEY_PREFIX, TRAMP_PREFIX


def check_image(ctx: Context) -> list[Finding]:
    """Per pv site its bytes; per pv key its initialiser and trampoline; records of no key."""
    table = ctx.model.static_calls
    symbols = ctx.model.image.symbols
    out = [finding("static_call.bad-site", None, s.address, s.function, s.op, p)
           for s in table.sites for p in s.problems]
    out += [finding("static_call.trampoline", None, k.tramp or k.address,
                    TRAMP_PREFIX + k.name if k.tramp else KEY_PREFIX + k.name,
                    f"static_call.{k.name}", p)
            for k in table.keys.values() for p in k.problems]
    out += [finding("static_call.unknown-key", None, site, symbols.describe(site),
                    "static_call.?", f"record {i} names {key:#x} "
                    f"({symbols.name_at(key) or 'no symbol'}), which is no {KEY_PREFIX} key")
            for i, site, key in table.unknown_keys]
    return out


def check_backend(ctx: Context, run: BackendRun) -> list[Finding]:
    """One warning per pv key the backend leaves unresolved: its sites are not modelled."""
    out = []
    for key in ctx.model.static_calls.keys.values():
        target = run.backend.static_calls.get(key.name)
        if target is not None and target.value is not None:
            continue
        why = target.reason if target else f"the {run.backend.name} backend does not say"
        n = sum(s.key == key.name for s in ctx.model.static_calls.sites)
        out.append(finding("static_call.unresolved", run.backend.name, key.tramp or key.address,
                           TRAMP_PREFIX + key.name, f"static_call.{key.name}",
                           f"what {key.name} holds is unknown ({why}): its {n} sites and its "
                           "trampoline are left as built, not modelled"))
    return out
