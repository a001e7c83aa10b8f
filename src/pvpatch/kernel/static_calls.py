"""The pv static calls: their keys, trampolines and ``.static_call_sites`` records, as built.

Since 5.12 some pv hooks are static calls rather than pv_ops slots. A static call NAME is a key
``__SCK__NAME`` (``struct static_call_key``: the function first, then — with inline static
calls — a word that points at its sites once booted) and a trampoline ``__SCT__NAME`` (a 5-byte
``jmp func`` or ``ret`` form; from some release between 5.10 and 6.1 followed by the
``ud1 %esp,%ecx`` signature). On x86-64 (CONFIG_HAVE_STATIC_CALL_INLINE) objtool records every
call or tail call of a trampoline in ``.static_call_sites``; 32-bit kernels have trampolines
only.

This room reads and validates what the image holds, the way ``kernel.sites`` does for
``.parainstructions``: each record of a pv key is checked against the code it points at. What
boot makes of the sites and trampolines is the planner's business (``patch.static_calls``).
Presence is read from the image — a pv static call exists when its ``__SCK__`` symbol does —
never from the version; the table below says where each one came from and where it was read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pvpatch.disasm import decode, text_of
from pvpatch.image.elf import ElfImage, Section
from pvpatch.image.symbols import SymbolTable
from pvpatch.kernel.version import KernelVersion


@dataclass(frozen=True)
class PvStaticCall:
    """A pv hook that is a static call: its name, the releases it exists in, and its source."""

    name: str
    versions: str
    defined: str  # where DEFINE_STATIC_CALL stands, per release read


PV_STATIC_CALLS = (
    PvStaticCall("pv_steal_clock", "5.12+",
                 "arch/x86/kernel/paravirt.c (6.1.192, 6.12.118); kernel/sched/cputime.c "
                 "(7.3.4): DEFINE_STATIC_CALL(pv_steal_clock, native_steal_clock)"),
    PvStaticCall("pv_sched_clock", "5.12+",
                 "arch/x86/kernel/paravirt.c (6.1.192, 6.12.118); arch/x86/kernel/tsc.c "
                 "(7.3.4): DEFINE_STATIC_CALL(pv_sched_clock, native_sched_clock)"),
    PvStaticCall("queued_spin_lock_slowpath", "7.3+",
                 "arch/x86/kernel/paravirt-spinlocks.c (7.3.4): DEFINE_STATIC_CALL("
                 "queued_spin_lock_slowpath, native_queued_spin_lock_slowpath)"),
    PvStaticCall("queued_spin_unlock", "7.3+",
                 "arch/x86/kernel/paravirt-spinlocks.c (7.3.4): DEFINE_STATIC_CALL("
                 "queued_spin_unlock, __raw_callee_save___native_queued_spin_unlock)"),
    PvStaticCall("xen_hypercall", "6.13+, backported to stable (Debian 6.1.176, 6.12.118 have "
                 "it; 5.10.223 does not)",
                 "arch/x86/xen/enlighten.c (6.1.192, 6.12.118, 7.3.4): "
                 "DEFINE_STATIC_CALL(xen_hypercall, xen_hypercall_hvm)"),
)
PV_NAMES = tuple(p.name for p in PV_STATIC_CALLS)

# include/linux/static_call_types.h (read in 5.10.223, 6.1.192, 6.12.118, 7.3.4):
# struct static_call_site { s32 addr; s32 key; }, each relative to its own field; the key's
# low bits are STATIC_CALL_SITE_TAIL (1) and STATIC_CALL_SITE_INIT (2).
SECTION = ".static_call_sites"
TABLE_BOUNDS = ("__start_static_call_sites", "__stop_static_call_sites")
RECORD = struct.Struct("<ii")
SITE_TAIL, SITE_INIT, SITE_FLAGS = 1, 2, 3
KEY_PREFIX, TRAMP_PREFIX = "__SCK__", "__SCT__"

# arch/x86/include/asm/static_call.h: a trampoline is 8 bytes, a 5-byte jmp (or the NULL
# form) and then ud1 %esp,%ecx (6.1.192, 6.12.118, 7.3.4); 5.10.223 pads with 0f 1f 00 instead.
TRAMP_SIZE = 8
TRAMP_SIGNATURE = b"\x0f\xb9\xcc"
SIGNATURE_CHECKED_FROM = (6, 1)  # __static_call_validate BUG()s without it (read in 6.1.192)
CALL, JMP32, RET, JCC0 = 0xE8, 0xE9, 0xC3, 0x0F


@dataclass
class StaticCallKey:
    """One pv static call as built: the key's initial function and the trampoline's bytes."""

    name: str
    address: int
    func: int | None  # the key's initialiser (None: not in the file)
    func_name: str | None
    tramp: int | None
    tramp_code: bytes | None = None
    tramp_target: int | None = None  # where its jmp.d32 goes as built (None: the ret form)
    tramp_target_name: str | None = None
    info: PvStaticCall | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def tramp_signed(self) -> bool:
        return self.tramp_code is not None and self.tramp_code[5:8] == TRAMP_SIGNATURE


@dataclass
class StaticCallSite:
    """One ``.static_call_sites`` record of a pv key, with the instruction it points at."""

    index: int  # position in the table
    address: int
    key: str  # the static call's name (``__SCK__`` stripped)
    key_address: int
    tail: bool  # STATIC_CALL_SITE_TAIL
    init_flag: bool  # STATIC_CALL_SITE_INIT as built (objtool leaves it clear)
    section: str | None
    code: bytes | None  # 5 bytes, 6 for a Jcc.d32 tail call
    branch_target: int | None = None  # where the built instruction goes (the trampoline)
    text: str = ""
    symbols: SymbolTable | None = field(default=None, repr=False, compare=False)
    problems: list[str] = field(default_factory=list)
    _function: str | None = field(default=None, repr=False, compare=False)

    @property
    def length(self) -> int:
        return len(self.code) if self.code else 5

    @property
    def init(self) -> bool:
        """static_call_init() marks sites in init text; the record's own flag counts too."""
        return self.init_flag or (self.section or "").startswith(".init")

    @property
    def function(self) -> str:
        if self._function is None:
            self._function = self.symbols.describe(self.address) if self.symbols else \
                f"{self.address:#x}"
        return self._function

    @property
    def op(self) -> str:
        """How renderers that list pv sites by op name this one."""
        return f"static_call.{self.key}"


@dataclass
class StaticCallTable:
    """The pv static calls of an image; empty (with the reason) for a kernel without any."""

    keys: dict[str, StaticCallKey]
    sites: list[StaticCallSite]
    records: int  # every record of the table, pv or not
    origin: str  # where the records were read, or why there are none
    unknown_keys: list[tuple[int, int, int]] = field(default_factory=list)  # (index, site, key)

    @property
    def problems(self) -> int:
        return sum(len(k.problems) for k in self.keys.values()) + \
            sum(len(s.problems) for s in self.sites) + len(self.unknown_keys)


def read_static_calls(image: ElfImage, version: KernelVersion | None = None,
                      keys: dict[str, StaticCallKey] | None = None) -> StaticCallTable:
    """The pv keys the image defines (``keys``, when read already), and every record of the
    site table that calls one."""
    keys = read_static_call_keys(image, version) if keys is None else keys
    raw, origin, base = _table(image)
    if raw is None:
        return StaticCallTable(keys, [], 0, origin)
    by_address = {k.address: k for k in keys.values()}
    sites, unknown = _records(image, raw, base, by_address)
    return StaticCallTable(keys, sites, len(raw) // RECORD.size, origin, unknown)


# -- keys and trampolines ---------------------------------------------------------------------

def read_static_call_keys(image: ElfImage, version: KernelVersion | None = None
                          ) -> dict[str, StaticCallKey]:
    """The pv static-call keys the image defines, by name, each with its trampoline."""
    syms = image.symbols
    out = {}
    for info in PV_STATIC_CALLS:
        address = syms.address(KEY_PREFIX + info.name)
        if address is None:
            continue
        out[info.name] = _key(image, info, address, version)
    _name_functions(image, list(out.values()))
    return out


def _key(image: ElfImage, info: PvStaticCall, address: int,
         version: KernelVersion | None) -> StaticCallKey:
    """The key's ``func`` (its first word) and the trampoline it names, both validated."""
    raw = image.try_read(address, image.ptr_size)
    func = None if raw is None else int.from_bytes(raw, "little")
    key = StaticCallKey(info.name, address, func, None,
                        image.symbols.address(TRAMP_PREFIX + info.name), info=info)
    if func is None:
        key.problems.append(f"{KEY_PREFIX}{info.name} at {address:#x} has no bytes in the file")
    if key.tramp is None:
        key.problems.append(f"no {TRAMP_PREFIX}{info.name} trampoline symbol")
        return key
    key.tramp_code = image.try_read(key.tramp, TRAMP_SIZE)
    key.tramp_target = tramp_target(key, image.bits)
    problem = _tramp_problem(image, key, version)
    if problem:
        key.problems.append(problem)
    return key


def _name_functions(image: ElfImage, keys: list[StaticCallKey]) -> None:
    """Name every key's function and trampoline target in one pass over the symbols."""
    wanted = {a for k in keys for a in (k.func, k.tramp_target) if a}
    names = image.symbols.names_at(wanted)

    def name(a: int | None) -> str | None:
        if a is None:
            return None
        return "NULL" if a == 0 else names.get(a) or image.symbols.describe(a)

    for k in keys:
        k.func_name, k.tramp_target_name = name(k.func), name(k.tramp_target)


def _tramp_problem(image: ElfImage, key: StaticCallKey,
                   version: KernelVersion | None) -> str | None:
    """A trampoline must be code, a 5-byte jmp or the NULL form, signed where 6.1+ checks it."""
    sec = image.section_at(key.tramp, TRAMP_SIZE)
    if sec is None or not sec.is_exec or key.tramp_code is None:
        return f"trampoline {key.tramp:#x} is not code in the file"
    code = key.tramp_code
    if code[0] not in (JMP32, RET):
        return f"trampoline holds {text_of(decode(code[:5], key.tramp, image.bits))}, " \
               "not a jmp.d32 or ret"
    checked = version is not None and version.key is not None and \
        version.key[:2] >= SIGNATURE_CHECKED_FROM
    if checked and not key.tramp_signed:
        return f"trampoline lacks the ud1 %esp,%ecx signature ({code[5:8].hex()})"
    return None


def tramp_target(key: StaticCallKey, bits: int) -> int | None:
    """Where the trampoline's jmp.d32 goes as built (None for the ret form)."""
    code = key.tramp_code
    if key.tramp is None or code is None or code[0] != JMP32:
        return None
    return rel32_target(key.tramp, code, 1, bits)


def rel32_target(at: int, code: bytes, opcode_len: int, bits: int) -> int:
    """The destination of a rel32 branch whose opcode is ``opcode_len`` bytes."""
    end = opcode_len + 4
    rel = int.from_bytes(code[opcode_len:end], "little", signed=True)
    return (at + end + rel) & ((1 << bits) - 1)


# -- the site table ---------------------------------------------------------------------------

def _table(image: ElfImage) -> tuple[bytes | None, str, int]:
    """The records' bytes, where they were found, and the address of the first."""
    start, stop = (image.symbols.address(n) for n in TABLE_BOUNDS)
    if start is not None and stop is not None and stop >= start:
        raw = image.try_read(start, stop - start) if stop > start else b""
        if raw is not None:
            return raw[:len(raw) - len(raw) % RECORD.size], \
                f"{TABLE_BOUNDS[0]}..{TABLE_BOUNDS[1]}", start
    sec = image.section(SECTION)
    if sec is not None and sec.has_file_data and sec.size:
        raw = bytes(image.section_data(sec))
        return raw[:len(raw) - len(raw) % RECORD.size], f"section {SECTION}", sec.addr
    return None, (f"no {SECTION} (no {TABLE_BOUNDS[0]} symbol or section): no inline static "
                  "calls"), 0


def _records(image: ElfImage, raw: bytes, base: int, keys: dict[int, StaticCallKey]
             ) -> tuple[list[StaticCallSite], list[tuple[int, int, int]]]:
    """Every record decoded; the pv keys' sites validated, unnamed keys listed."""
    mask = (1 << image.bits) - 1
    entries = [(i, (base + 8 * i + a) & mask, (base + 8 * i + 4 + k) & mask)
               for i, (a, k) in enumerate(RECORD.iter_unpack(raw))]
    named = _key_names(image, {k & ~SITE_FLAGS for _i, _a, k in entries})
    sites, unknown = [], []
    for i, addr, word in entries:
        key = keys.get(word & ~SITE_FLAGS)
        if key is not None:
            sites.append(_site(image, i, addr, word, key))
        elif word & ~SITE_FLAGS not in named:
            unknown.append((i, addr, word & ~SITE_FLAGS))
    return sites, unknown


def _key_names(image: ElfImage, addresses: set[int]) -> set[int]:
    """The addresses among ``addresses`` that a ``__SCK__`` symbol names (aliases too)."""
    return image.symbols.named_with_prefix(addresses, KEY_PREFIX)


def _site(image: ElfImage, index: int, addr: int, word: int, key: StaticCallKey
          ) -> StaticCallSite:
    sec = image.section_at(addr, 5)
    code = image.try_read(addr, 6)
    if code is not None and not _is_jcc(code):
        code = code[:5]
    site = StaticCallSite(index, addr, key.name, key.address, bool(word & SITE_TAIL),
                          bool(word & SITE_INIT), sec.name if sec else None, code,
                          symbols=image.symbols)
    if code is not None:
        site.text = text_of(decode(code, addr, image.bits))
        site.branch_target = _branch_target(addr, code, image.bits)
    problem = _site_problem(sec, site, key)
    if problem:
        site.problems.append(problem)
    return site


def _is_jcc(code: bytes) -> bool:
    """``__is_Jcc()``: 0f 8x, a Jcc.d32 (a conditional tail call)."""
    return len(code) >= 6 and code[0] == JCC0 and code[1] & 0xF0 == 0x80


def _branch_target(addr: int, code: bytes, bits: int) -> int | None:
    if code[0] in (CALL, JMP32):
        return rel32_target(addr, code, 1, bits)
    if _is_jcc(code):
        return rel32_target(addr, code, 2, bits)
    return None


def _site_problem(sec: Section | None, site: StaticCallSite, key: StaticCallKey) -> str | None:
    """What ``__static_call_validate()`` would refuse, plus a call of another trampoline."""
    if sec is None or not sec.is_exec:
        return f"{site.address:#x} is not in an executable section"
    if site.code is None:
        return f"{site.address:#x} has no bytes in the file"
    wanted = ("jmp.d32 or Jcc.d32", (JMP32, JCC0)) if site.tail else ("call", (CALL,))
    if site.code[0] not in wanted[1] or site.branch_target is None:  # 0f not followed by 8x
        kind = "tail-call" if site.tail else "call"
        return f"{kind} site holds {site.text or site.code.hex()}, not a {wanted[0]}"
    if key.tramp is not None and site.branch_target != key.tramp:
        return (f"branches to {site.branch_target:#x}, not {TRAMP_PREFIX}{key.name} "
                f"({key.tramp:#x})")
    return None
