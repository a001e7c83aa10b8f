"""The pv static calls as boot leaves them: every site and trampoline, byte for byte.

Ported from ``arch/x86/kernel/static_call.c`` (``__static_call_transform``,
``arch_static_call_transform``, ``__static_call_fixup``) and ``kernel/static_call_inline.c``
(``static_call_init``, ``__static_call_update``), read in Debian's 5.10.223, 6.1.192, 6.12.118
and 7.3.4. The boot order (``setup_arch``) makes the end state a function of each key's final
function alone:

1. a backend's ``static_call_update_early()`` (Xen: ``xen_hypercall``, before start_kernel)
   sets the key and rewrites the trampoline;
2. ``static_call_init()`` rewrites every site to the key's current function: a call (or
   inline code for a few functions), a NOP for NULL, a jmp/ret/Jcc for a tail call;
3. each later ``static_call_update()`` that changes the key rewrites the trampoline and every
   site again (except ``__exit`` text); an update to the function the key already holds does
   nothing, so a trampoline whose key keeps its initialiser stays as built;
4. ``apply_returns()`` then lets ``__static_call_fixup()`` turn a trampoline that still jumps to
   ``__x86_return_thunk`` into the ret form.

Release-dependent facts are data below, each with where it was read. Where the kernel asks the
CPU (return thunks, call-depth tracking, the RET forms) the default of an x86 CPU without those
mitigations is planned, and the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvpatch.backends import Backend, CallTarget
from pvpatch.image.elf import ElfImage
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.static_calls import (
    CALL,
    JMP32,
    TRAMP_PREFIX,
    StaticCallKey,
    StaticCallSite,
    rel32_target,
)
from pvpatch.patch.nops import NopTable

STATIC_CALL_OUTCOMES = ("direct-call", "direct-jmp", "direct-jcc", "inline", "nop", "ret",
                        "as-built", "unpatched")


@dataclass(frozen=True)
class InlineForm:
    """A function whose CALL sites ``__static_call_transform()`` fills with inline code."""

    function: str
    array: str  # the static const u8[] of arch/x86/kernel/static_call.c copied into the site
    code: bytes  # its x86-64 bytes where the source was read
    versions: str
    fallback_from: tuple[int, int] | None  # without the array symbol: the version that has it
    text: str = ""  # the instruction the array's comment names (AT&T; .byte where no
    #                 assembler knows it)


INLINE_FORMS = (
    InlineForm("__static_call_return0", "xor5rax", bytes.fromhex("2e2e2e31c0"),
               "cs cs cs xorl %eax,%eax: read in 6.1.192, 6.12.118, 7.3.4; not in 5.10.223",
               (6, 1), "cs; cs; cs; xorl %eax,%eax"),
    InlineForm("__WARN_trap", "warninsn", bytes.fromhex("67480fb93a"),
               "ud1 (%edx),%rdi: read in 7.3.4; not in 6.12.118", (7, 3),
               ".byte 0x67, 0x48, 0x0f, 0xb9, 0x3a"),  # keystone 0.9 has no ud1
    InlineForm("__raw_callee_save___native_queued_spin_unlock", "unlockinsn",
               bytes.fromhex("3e3ec60700"),
               "ds ds movb $0,(%rdi), with CONFIG_PARAVIRT_SPINLOCKS: read in 7.3.4 (the "
               "release that made queued_spin_unlock a static call); not in 6.12.118", (7, 3),
               "ds; ds; movb $0,(%rdi)"),
)
# retinsn[] (5.10.223–7.3.4): ret; int3 × 4 — the RET form when the CPU wants no return thunk.
RETINSN = bytes.fromhex("c3cccccccc")
RETINSN_TEXT = "ret; int3; int3; int3; int3"
# Symbols whose presence says the kernel has a piece of the port (all in static_call.c).
JCC_SUPPORT = "__static_call_return"  # the Jcc tail-call form (6.1.192+; not in 5.10.223)
FIXUP = "__static_call_fixup"  # apply_returns' trampoline fix-up (CONFIG_*RETHUNK builds)
RETURN_THUNK = "__x86_return_thunk"
CPU_NOTES = (
    "static calls: planned for a CPU without return thunks (X86_FEATURE_RETHUNK: retbleed/SRSO "
    "mitigations) and without call-depth tracking (X86_FEATURE_CALL_DEPTH, retbleed=stuff); "
    "with them, NULL keys' ret forms become jmps to the return thunk and calls may go through "
    "call thunks",
)


@dataclass
class StaticCallPatch:
    """What boot writes at one pv static-call site or trampoline."""

    kind: str  # "site" or "trampoline"
    key: str
    address: int
    section: str | None
    before: bytes
    after: bytes
    outcome: str
    target: int | None = None
    target_name: str | None = None
    reason: str = ""
    site: StaticCallSite | None = None  # None for a trampoline
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def length(self) -> int:
        return len(self.before)

    @property
    def tail(self) -> bool:
        return self.site is not None and self.site.tail

    @property
    def init(self) -> bool:
        return self.site is not None and self.site.init

    @property
    def function(self) -> str:
        return self.site.function if self.site is not None else TRAMP_PREFIX + self.key

    @property
    def op(self) -> str:
        return f"static_call.{self.key}"


@dataclass(frozen=True)
class Transform:
    """The release's ``__static_call_transform()`` pieces, read from the image once."""

    inline: dict[int, tuple[bytes, str]]  # function address → (bytes, where they came from)
    nop5: bytes
    ret: bytes
    jcc_null: int | None  # where a NULL Jcc tail call goes (__static_call_return)
    fixup: bool
    return_thunk: int | None
    bits: int


def plan_static_calls(model: KernelModel, backend: Backend, nops: NopTable
                      ) -> tuple[list[StaticCallPatch], list[str]]:
    """Every pv static-call site, then every pv trampoline, as boot leaves them; and notes."""
    table = model.static_calls
    if not table.keys:
        return [], []
    tf = transform_of(model, nops)
    out = []
    for site in table.sites:
        key = table.keys[site.key]
        out.append(plan_site(site, key, backend.static_calls.get(site.key), tf, backend.name))
    for key in table.keys.values():
        if key.tramp is not None and key.tramp_code is not None:
            out.append(plan_trampoline(key, backend.static_calls.get(key.name), tf,
                                       backend.name))
    notes = list(CPU_NOTES) if table.sites or any(p.changed for p in out) else []
    return out, notes + _inline_notes(model, tf)


# -- the release's transform, read from the image -------------------------------------------

def transform_of(model: KernelModel, nops: NopTable) -> Transform:
    image = model.image
    syms = image.symbols
    fixup = syms.address(FIXUP) is not None
    return Transform(_inline_forms(model), nops.seqs[4], _array(image, "retinsn", RETINSN),
                     syms.address(JCC_SUPPORT), fixup,
                     syms.address(RETURN_THUNK) if fixup else None, image.bits)


def _inline_forms(model: KernelModel) -> dict[int, tuple[bytes, str]]:
    """Each inline form this kernel's transform has: the image's own array when its symbol is
    there, else the bytes read in the source when the version has the form."""
    out = {}
    syms = model.image.symbols
    key = model.version.key
    for form in INLINE_FORMS:
        func = syms.address(form.function)
        if func is None:
            continue
        array = syms.get(form.array)
        if array is not None:
            code = model.image.try_read(array.value, 5)
            if code is not None:
                out[func] = (code, f"{form.array}[] as the image holds it")
                continue
        if key is not None and form.fallback_from and key[:2] >= form.fallback_from:
            out[func] = (form.code, f"{form.array}[] as read in the source ({form.versions}); "
                                    "no such symbol in the image")
    return out


def _array(image: ElfImage, name: str, default: bytes) -> bytes:
    sym = image.symbols.get(name)
    code = image.try_read(sym.value, len(default)) if sym is not None else None
    return code if code is not None else default


def _inline_notes(model: KernelModel, tf: Transform) -> list[str]:
    used = {a for a in tf.inline
            if any(k.func == a for k in model.static_calls.keys.values())}
    return [f"static calls: calls of {model.image.symbols.name_at(a)} are written inline "
            f"({tf.inline[a][1]})" for a in sorted(used)]


# -- __static_call_transform -----------------------------------------------------------------

def transform(at: int, built: bytes, tail: bool, func: int, tf: Transform
              ) -> tuple[bytes, str, str]:
    """(bytes, outcome, how) for ``__static_call_transform(at, __sc_insn(!func, tail), func)``.

    ``built`` is what the instruction holds now: a Jcc.d32 tail call keeps its condition."""
    if tail and built[:1] == b"\x0f" and built[1] & 0xF0 == 0x80 and tf.jcc_null is not None:
        return _jcc(at, built[1], func, tf)
    if tail:
        if not func:
            return tf.ret, "ret", "NULL key, tail call: retinsn (no return thunk)"
        return _rel32(JMP32, at, func), "direct-jmp", "tail call: jmp"
    if not func:
        return tf.nop5, "nop", "NULL key: x86_nops[5]"
    if func in tf.inline:
        code, how = tf.inline[func]
        return code, "inline", f"written inline ({how})"
    return _rel32(CALL, at, func), "direct-call", "call"


def _jcc(at: int, op: int, func: int, tf: Transform) -> tuple[bytes, str, str]:
    """The JCC case: the condition stays; NULL goes to __static_call_return."""
    dest = func or tf.jcc_null
    code = bytes([0x0F, op]) + ((dest - (at + 6)) & 0xFFFFFFFF).to_bytes(4, "little")
    how = "Jcc tail call" + ("" if func else " of a NULL key: to __static_call_return")
    return code, "direct-jcc", how


def _rel32(opcode: int, at: int, target: int) -> bytes:
    """``text_gen_insn()``: a 5-byte call or jmp to ``target``."""
    return bytes([opcode]) + ((target - (at + 5)) & 0xFFFFFFFF).to_bytes(4, "little")


# -- sites and trampolines -------------------------------------------------------------------

def plan_site(site: StaticCallSite, key: StaticCallKey, target: CallTarget | None,
              tf: Transform, backend: str) -> StaticCallPatch:
    """``static_call_init()`` with the key's final function (``__static_call_update()`` of a
    later update writes the same bytes; it skips ``__exit`` text, which keeps the first)."""
    before = site.code or b""
    sp = StaticCallPatch("site", site.key, site.address, site.section, before, before,
                         "unpatched", site=site)
    if site.problems or not before:  # __static_call_validate() would BUG() at boot
        sp.problems = [f"{p}: the kernel BUG()s patching it" for p in site.problems]
        sp.reason = site.problems[0] if site.problems else "no bytes in the file"
        return sp
    why = _unresolved(target, key, backend)
    if why is not None:
        sp.reason = why
        return sp
    func, reason = target.value, target.reason
    if site.section == ".exit.text" and func != key.func and key.func is not None:
        func, reason = key.func, "__static_call_update() skips __exit text: the initialiser"
    after, sp.outcome, how = transform(site.address, before, site.tail, func, tf)
    sp.after = after + before[len(after):]  # a 5-byte form over a 6-byte Jcc keeps the sixth
    sp.target, sp.target_name = _target(sp, func, target, key)
    sp.reason = f"{key.name} holds {_name(func, target, key)} ({reason}): {how}"
    return sp


def plan_trampoline(key: StaticCallKey, target: CallTarget | None, tf: Transform,
                    backend: str) -> StaticCallPatch:
    """The trampoline: retargeted only by an update that changed the key; then the
    ``__static_call_fixup()`` of apply_returns on one that still jumps to the return thunk."""
    before = key.tramp_code[:5]
    sp = StaticCallPatch("trampoline", key.name, key.tramp, None, before, before, "as-built")
    why = _unresolved(target, key, backend)
    if why is not None or key.problems:
        sp.outcome, sp.reason, sp.problems = "unpatched", why or key.problems[0], \
            list(key.problems)
        return sp
    func = target.value
    if func != key.func:
        sp.after, sp.outcome, how = transform(key.tramp, before, True, func, tf)
        sp.reason = f"static_call_update({key.name}, {_name(func, target, key)}) " \
                    f"({target.reason}): {how}"
    else:
        sp.reason = f"{key.name} keeps its initialiser ({target.reason}): as built"
    if tf.fixup and sp.after[0] == JMP32 and \
            rel32_target(key.tramp, sp.after, 1, tf.bits) == tf.return_thunk:
        sp.after, sp.outcome = tf.ret, "ret"
        sp.reason += "; __static_call_fixup(): ret form (no return thunk)"
    sp.target, sp.target_name = _target(sp, func, target, key)
    return sp


def _unresolved(target: CallTarget | None, key: StaticCallKey, backend: str) -> str | None:
    if target is None:
        return f"the {backend} backend does not say what {key.name} holds: not modelled"
    if target.value is None:
        return f"{key.name}: value unknown ({target.reason}): not modelled"
    return None


def _name(func: int, target: CallTarget, key: StaticCallKey) -> str:
    if not func:
        return "NULL"
    if func == target.value and target.name:
        return target.name
    return key.func_name or f"{func:#x}"


def _target(sp: StaticCallPatch, func: int, target: CallTarget, key: StaticCallKey
            ) -> tuple[int | None, str | None]:
    """The function the patched bytes reach (None for inline, NOP and ret forms)."""
    if sp.outcome in ("direct-call", "direct-jmp", "direct-jcc") or \
            (sp.outcome == "as-built" and func):
        return func, _name(func, target, key)
    return None, None
