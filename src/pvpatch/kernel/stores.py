"""What a function's code stores: the decoder backends read their pv-op values from.

A backend installs its functions by code: ``pv_ops.cpu.cpuid = xen_cpuid;`` in
``xen_start_kernel``, a struct copy ``pv_ops.irq = xen_irq_ops`` (5.x), ``static_call_update()``.
Compilers turn that into many shapes — ``movq $imm32, slot(%rip)``, a store through a register
that holds the table's address, ``rep movs`` from a const table, ``rep stos`` zeroing followed
by stores, 16-byte SSE copies, a table folded into immediates (GCC 10 in Debian 5.10) — and a
version table of "what Xen sets" breaks whenever they change. So the image's code is read:
each function is decoded (capstone), split into basic blocks, and the constant value of every
general and SSE register is followed forward through the blocks (a value survives a join only
when every path agrees). Every store whose value and destination are then known is reported,
with the instruction that made it; what cannot be followed is reported as unknown, never
guessed.

Calls are reported with the known values of their argument registers, and a call into a
small helper is summarised by decoding the helper with its arguments as symbols (e.g.
``paravirt_set_sched_clock(f)`` → ``static_call_update(pv_sched_clock, f)``), so callers see
the stores it makes. ``__static_call_update(key, tramp, func)`` is the primitive: it stores
``func`` into ``key->func``. Which functions run, and when, is not in the code; backends say it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property

from pvpatch.disasm import _capstone, _decoder
from pvpatch.image.elf import ElfImage

MAX_FUNCTION = 64 * 1024  # bytes decoded of one function at most (a lying symbol size)
SUMMARY_LIMIT = 48  # instructions: helpers at most this long are summarised at their calls
SUMMARY_DEPTH = 2
MAX_PASSES = 8  # dataflow passes over a function's blocks before giving up on a loop

# the primitive behind static_call_update() (kernel/static_call_inline.c): key->func = func
STATIC_CALL_UPDATE = "__static_call_update"

ARGS64 = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
CALLER_SAVED64 = frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"})
CALLER_SAVED32 = frozenset({"eax", "ecx", "edx"})


@dataclass(frozen=True)
class Arg:
    """A function's incoming argument register, while its summary is being made."""

    reg: str


Value = int | Arg


@dataclass(frozen=True)
class Store:
    """``size`` bytes written at ``address`` by the instruction at ``at``."""

    at: int
    address: int
    size: int
    value: bytes | None  # little-endian bytes; None when the decoder could not follow them
    how: str  # the instruction, for reports
    symbolic: Arg | None = None  # in a helper's summary: the value is this argument
    symbolic_address: Arg | None = None  # … and the address (then ``address`` is 0)
    via: int | None = None  # made by the helper called here (its address), not the function

    def word(self, offset: int, size: int) -> int | None:
        """The ``size``-byte value this store leaves at ``address + offset`` (None: unknown)."""
        if self.value is None or offset < 0 or offset + size > len(self.value):
            return None
        return int.from_bytes(self.value[offset:offset + size], "little")


@dataclass(frozen=True)
class Call:
    at: int
    target: int
    args: tuple[Value | None, ...]  # the argument registers' known values, in ABI order
    tail: bool = False  # a jmp out of the function


@dataclass
class Effects:
    """What one function does, in address order: its stores and its direct calls."""

    name: str
    address: int
    size: int
    events: list[Store | Call] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def stores(self) -> list[Store]:
        return [e for e in self.events if isinstance(e, Store)]


# -- registers --------------------------------------------------------------------------------

_GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
          *(f"r{i}" for i in range(8, 16)))
_LEGACY = {"rax": ("eax", "ax", "al"), "rbx": ("ebx", "bx", "bl"), "rcx": ("ecx", "cx", "cl"),
           "rdx": ("edx", "dx", "dl"), "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"),
           "rbp": ("ebp", "bp", "bpl"), "rsp": ("esp", "sp", "spl")}


@cache
def _reg_map() -> dict[str, tuple[str, int]]:
    """Register name → (the full register it is part of, its size in bytes). 8-bit high
    registers (ah …) are left out: a write to one makes the full register unknown."""
    out: dict[str, tuple[str, int]] = {}
    for full in _GPR64:
        out[full] = (full, 8)
        d, w, b = _LEGACY.get(full, (f"{full}d", f"{full}w", f"{full}b"))
        out[d], out[w], out[b] = (full, 4), (full, 2), (full, 1)
    for i in range(32):
        out[f"xmm{i}"] = (f"xmm{i}", 16)
    return out


class State:
    """Known register contents: full register → (value, how many low bytes are known)."""

    __slots__ = ("regs",)

    def __init__(self, regs: dict[str, tuple[Value, int]] | None = None) -> None:
        self.regs = dict(regs or {})

    def copy(self) -> State:
        return State(self.regs)

    def meet(self, other: State) -> State:
        return State({r: v for r, v in self.regs.items() if other.regs.get(r) == v})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and self.regs == other.regs

    def get(self, name: str, size: int | None = None) -> Value | None:
        full, width = _reg_map().get(name, (name, 0))
        got = self.regs.get(full)
        if got is None:
            return None
        value, known = got
        need = size or width
        if isinstance(value, Arg):
            return value if need == known and width == known else None
        if need > known:
            return None
        return value & ((1 << (8 * need)) - 1)

    def set(self, name: str, value: Value | None, bits: int = 64) -> None:
        """Write ``name``: a 32-bit write zero-extends (64-bit mode), 8/16-bit ones merge."""
        full, width = _reg_map().get(name, (name, 0))
        if value is None or width == 0:
            self.regs.pop(full, None)
            return
        if isinstance(value, Arg):
            self.regs[full] = (value, width)
            return
        value &= (1 << (8 * width)) - 1
        if width == 4 and bits == 64:
            self.regs[full] = (value, 8)
        elif width >= 4 or full.startswith("xmm"):
            self.regs[full] = (value, width)
        else:
            old = self.regs.get(full)
            if old is None or isinstance(old[0], Arg):
                self.regs[full] = (value, width)
            else:
                keep = old[0] & ~((1 << (8 * width)) - 1)
                self.regs[full] = (keep | value, max(old[1], width))

    def forget(self, names: frozenset[str] | set[str]) -> None:
        for n in names:
            self.regs.pop(_reg_map().get(n, (n, 0))[0], None)


# -- the decoder ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mem:
    """A memory operand: base and index register names (None: absent), scale, displacement.
    RIP-relative operands arrive resolved: no base, the absolute address as displacement."""

    base: str | None
    index: str | None
    scale: int
    disp: int
    per_cpu: bool = False  # %gs/%fs: not an address of the image


@dataclass(frozen=True)
class Op:
    """One decoded instruction, reduced to what the dataflow needs (decoded once: capstone's
    operand objects are slow to walk, and a function is walked several times)."""

    address: int
    size: int
    text: str
    succ: tuple[int, ...]  # successors inside the function (after a call: the next one)
    kind: str  # set | lea | zero | call | clobber | nop
    dst: str | None = None  # the register written (set, lea, zero)
    src: tuple[object, ...] | None = None  # ("imm", v) | ("reg", name) | ("mem", Mem)
    width: int = 0  # operand size in bytes
    written: frozenset[str] = frozenset()  # clobber: registers made unknown
    event: tuple[object, ...] | None = None  # ("call", target, tail) | ("store", Mem, src)
    #                                           | ("stos", width) | ("movs", width)


class StoreReader:
    """Decodes functions of one image and reports their stores; results are cached."""

    def __init__(self, image: ElfImage, memory: Callable[[int, int], bytes | None] | None
                 = None) -> None:
        """``memory(address, size)``: what loads read; the image's bytes by default."""
        _init_ids()
        self.image = image
        self.bits = image.bits
        self.ptr = image.ptr_size
        self.mask = (1 << image.bits) - 1
        self.read = memory or image.try_read
        self._cache: dict[tuple[int, int, int], Effects] = {}
        self._summaries: dict[tuple[int, int], Effects | None] = {}
        self._names: dict[int, str | None] = {}
        self._screens: dict[tuple[int, int], str] = {}
        # functions a caller applies on its own (start-up steps): never worth a summary
        self.not_summarised: set[int] = set()

    # public ----------------------------------------------------------------------------

    def code_name(self, address: int | None) -> str | None:
        """The function at exactly ``address`` (sorted code index; cached)."""
        if address is None:
            return None
        if address not in self._names:
            sym = self.image.symbols.at(address)
            self._names[address] = sym.name if sym is not None else None
        return self._names[address]

    def function(self, name: str) -> Effects | None:
        """The effects of the function called ``name`` (None: no such symbol)."""
        sym = self.image.symbols.get(name)
        if sym is None:
            return None
        return self.effects(sym.value, sym.size, name)

    def effects(self, address: int, size: int, name: str = "", depth: int = 0,
                args: bool = False) -> Effects:
        key = (address, size, depth * 2 + args)
        if key not in self._cache:
            self._cache[key] = self._decode(address, size, name or f"{address:#x}", depth,
                                            args)
        return self._cache[key]

    # decoding --------------------------------------------------------------------------

    def _decode(self, address: int, size: int, name: str, depth: int, args: bool) -> Effects:
        out = Effects(name, address, size)
        size = min(size or MAX_FUNCTION, MAX_FUNCTION)
        code = self.image.try_read(address, size)
        if code is None:
            out.problems.append(f"{name}: no bytes in the file at {address:#x}")
            return out
        parts = [(address, code, name), *self._cold_part(name)]
        decoded = [(a, list(_decoder(self.bits).disasm(c, a)), c, n) for a, c, n in parts]
        ranges = []
        for a, raw, c, n in decoded:
            end = raw[-1].address + raw[-1].size if raw else a
            ranges.append((a, end))
            if end < a + len(c) and not _padding(c[end - a:]):
                out.problems.append(f"{n}+{end - a:#x}: bytes capstone cannot decode; "
                                    "stores after them are not seen")
        ops = [self._op(i, ranges) for _a, raw, _c, _n in decoded for i in raw]
        entry = State()
        if args and self.bits == 64:
            for reg in ARGS64:
                entry.set(reg, Arg(reg), self.bits)
        for op, state in zip(ops, self._dataflow(ops, entry), strict=True):
            if op.event is not None:
                self._event(op, state, out, depth)
        return out

    def _cold_part(self, name: str) -> list[tuple[int, bytes, str]]:
        """GCC moves a function's unlikely paths to ``name.cold``, reached only by jumps
        from the function (``if (!(hints & RECOMMENDED)) return; pv_ops.mmu.x = …`` puts
        the stores there): it is decoded as part of the function."""
        if f"{name}.cold" not in self._cold_names:
            return []
        cold = self.image.symbols.get(f"{name}.cold")
        if cold is None or not cold.size:
            return []
        code = self.image.try_read(cold.value, min(cold.size, MAX_FUNCTION))
        return [] if code is None else [(cold.value, code, cold.name)]

    @cached_property
    def _cold_names(self) -> frozenset[str]:
        """Every ``*.cold`` symbol name, from one pass over the string table (a lookup by
        name costs a search of it: ~1 ms each, for every function decoded)."""
        return frozenset(self.image.symbols.names_ending(".cold"))

    def _op(self, i: object, ranges: list[tuple[int, int]]) -> Op:
        """Reduce one capstone instruction (see :class:`Op`)."""
        _, X = _capstone()
        nxt = i.address + i.size
        text = _DECIMAL.sub(lambda m: f"${int(m.group(1)):#x}", f"{i.mnemonic} {i.op_str}".strip())
        base = dict(address=i.address, size=i.size, text=text)
        route = _route(i)
        if route == "stop":
            return Op(**base, succ=(), kind="nop")
        if route == "branch":
            return self._branch(i, base, nxt, ranges)
        ops = i.operands
        succ = (nxt,)
        rep = 0xF3 in i.prefix or 0xF2 in i.prefix
        if rep and i.id in _STRING_STORES:
            return Op(**base, succ=succ, kind="clobber", written=_REP_REGS,
                      event=("stos", _STRING_STORES[i.id]))
        if rep and i.id in _STRING_MOVES and "xmm" not in i.op_str:
            return Op(**base, succ=succ, kind="clobber", written=_REP_REGS,
                      event=("movs", _STRING_MOVES[i.id]))
        event = None
        # capstone leaves the access flags of some SSE moves unset: a move's last operand is
        # its destination all the same
        moves_to_memory = i.id in _MOVES and len(ops) == 2
        if ops and ops[-1].type == X.X86_OP_MEM and (ops[-1].access & _WRITE or
                                                       moves_to_memory):
            src = self._src(i, ops[0]) if i.id in _MOVES and len(ops) == 2 else None
            event = ("store", self._mem(i, ops[-1]), src, ops[-1].size)
        if len(ops) == 2 and ops[1].type == X.X86_OP_REG:
            dst = i.reg_name(ops[1].reg)
            if i.id in _MOVES:
                return Op(**base, succ=succ, kind="set", dst=dst, src=self._src(i, ops[0]),
                          width=ops[1].size, event=event)
            if i.id == X.X86_INS_LEA:
                return Op(**base, succ=succ, kind="lea", dst=dst,
                          src=("mem", self._mem(i, ops[0])), event=event)
            if i.id in _ZEROING and ops[0].type == X.X86_OP_REG and ops[0].reg == ops[1].reg:
                return Op(**base, succ=succ, kind="zero", dst=dst, event=event)
        return Op(**base, succ=succ, kind="clobber", written=self._written(i), event=event)

    def _branch(self, i: object, base: dict, nxt: int, ranges: list[tuple[int, int]]) -> Op:
        _, X = _capstone()
        target = _branch_target(i, self.mask)
        inside = target is not None and any(lo <= target < hi for lo, hi in ranges)
        if i.id == X.X86_INS_CALL:
            name = self.code_name(target)
            if name in _PRESERVING:
                return Op(**base, succ=(nxt,), kind="nop")
            noreturn = name in _NORETURN
            event = ("call", target, False) if target is not None else None
            return Op(**base, succ=() if noreturn else (nxt,), kind="call", event=event)
        if i.id == X.X86_INS_JMP:
            if inside:
                return Op(**base, succ=(target,), kind="nop")
            event = ("call", target, True) if target is not None else None
            return Op(**base, succ=(), kind="nop", event=event)
        return Op(**base, succ=(nxt, target) if inside else (nxt,), kind="nop")

    def _src(self, i: object, op: object) -> tuple[object, ...] | None:
        _, X = _capstone()
        if op.type == X.X86_OP_IMM:
            return ("imm", op.imm & ((1 << (8 * op.size)) - 1) if op.size else op.imm)
        if op.type == X.X86_OP_REG:
            return ("reg", i.reg_name(op.reg))
        if op.type == X.X86_OP_MEM:
            return ("mem", self._mem(i, op))
        return None

    def _mem(self, i: object, op: object) -> Mem:
        _, X = _capstone()
        m = op.mem
        per_cpu = m.segment not in (0, X.X86_REG_DS)
        index = i.reg_name(m.index) if m.index else None
        if m.base == X.X86_REG_RIP:
            return Mem(None, index, m.scale, (i.address + i.size + m.disp) & self.mask, per_cpu)
        return Mem(i.reg_name(m.base) if m.base else None, index, m.scale, m.disp, per_cpu)

    def _written(self, i: object) -> frozenset[str]:
        try:
            _read, written = i.regs_access()
        except Exception:  # capstone cannot say: assume the worst
            return _ALL_REGS
        return frozenset(i.reg_name(r) for r in written)

    # the dataflow ----------------------------------------------------------------------

    def _dataflow(self, ops: list[Op], entry: State) -> list[State]:
        """The register state before each instruction: forward dataflow over the basic
        blocks, to a fixed point (a join keeps what every predecessor agrees on)."""
        if not ops:  # not one instruction decodes (_decode reports the bytes as a problem)
            return []
        index = {op.address: k for k, op in enumerate(ops)}
        leaders = {0}
        for k, op in enumerate(ops):
            if k and ops[k - 1].address + ops[k - 1].size != op.address:
                leaders.add(k)  # a part of its own (the .cold code)
            if op.succ != (op.address + op.size,) or op.kind == "call":
                leaders.update(index[s] for s in op.succ if s in index)
                if k + 1 < len(ops):
                    leaders.add(k + 1)
        starts = sorted(leaders)
        blocks = [(a, b) for a, b in zip(starts, [*starts[1:], len(ops)], strict=True)]
        block_of = {s: n for n, (s, _e) in enumerate(blocks)}
        succs = [[block_of[index[s]] for s in ops[e - 1].succ if s in index]
                 for _s, e in blocks]
        inputs: list[State | None] = [None] * len(blocks)
        inputs[0] = entry
        work = [0]
        passes = 0
        while work and passes < MAX_PASSES * len(blocks):
            passes += 1
            n = work.pop(0)
            state = inputs[n].copy()
            for k in range(*blocks[n]):
                self._step(ops[k], state)
            for m in succs[n]:
                old = inputs[m]
                new = state.copy() if old is None else old.meet(state)
                if old is None or new != old:
                    inputs[m] = new
                    if m not in work:
                        work.append(m)
        before: list[State] = []
        for n, (s, e) in enumerate(blocks):
            state = (inputs[n] or State()).copy()  # no known path in: assume nothing
            for k in range(s, e):
                before.append(state.copy() if ops[k].event is not None else state)
                self._step(ops[k], state)
        return before

    def _step(self, op: Op, st: State) -> None:
        kind = op.kind
        if kind == "nop":
            return
        if kind == "call":
            st.forget(CALLER_SAVED64 if self.bits == 64 else CALLER_SAVED32)
            st.forget(_XMM)
        elif kind == "set":
            st.set(op.dst, self._value(op.src, op.width, st), self.bits)
        elif kind == "lea":
            st.set(op.dst, self._address(op.src[1], st), self.bits)
        elif kind == "zero":
            st.set(op.dst, 0, self.bits)
        else:
            st.forget(op.written)

    def _value(self, src: tuple[object, ...] | None, size: int, st: State) -> Value | None:
        if src is None:
            return None
        if src[0] == "imm":
            return src[1] & ((1 << (8 * size)) - 1) if size else src[1]
        if src[0] == "reg":
            return st.get(src[1], size)
        addr = self._address(src[1], st)
        if not isinstance(addr, int):
            return None
        raw = self.read(addr, size)
        return None if raw is None else int.from_bytes(raw, "little")

    def _address(self, m: Mem, st: State) -> Value | None:
        """The absolute address a memory operand names (None: not constant)."""
        if m.per_cpu:
            return None
        base: Value | None = 0 if m.base is None else st.get(m.base)
        if isinstance(base, Arg):
            return base if m.disp == 0 and m.index is None else None
        if base is None:
            return None
        scaled = 0
        if m.index is not None:
            index = st.get(m.index)
            if not isinstance(index, int):
                return None
            scaled = index * m.scale
        return (base + scaled + m.disp) & self.mask

    # memory effects --------------------------------------------------------------------

    def _event(self, op: Op, st: State, out: Effects, depth: int) -> None:
        ev = op.event
        if ev[0] == "call":
            args = tuple(st.get(r) for r in ARGS64) if self.bits == 64 else ()
            self._call(Call(op.address, ev[1], args, ev[2]), out, depth)
        elif ev[0] == "stos":
            self._rep_stos(op, ev[1], st, out)
        elif ev[0] == "movs":
            self._rep_movs(op, ev[1], st, out)
        else:
            _, mem, src, size = ev
            addr = self._address(mem, st)
            if isinstance(addr, int):
                value = self._value(src, size, st)
                raw = value.to_bytes(size, "little") if isinstance(value, int) else None
                out.events.append(Store(op.address, addr, size, raw, op.text,
                                        value if isinstance(value, Arg) else None))
            elif isinstance(addr, Arg):
                value = self._value(src, size, st)
                out.events.append(Store(op.address, 0, size,
                                        value.to_bytes(size, "little") if isinstance(value, int)
                                        else None, op.text,
                                        value if isinstance(value, Arg) else None, addr))

    def _rep_stos(self, op: Op, width: int, st: State, out: Effects) -> None:
        acc = {1: "al", 2: "ax", 4: "eax", 8: "rax"}[width]
        r = ("rdi", "rcx") if self.bits == 64 else ("edi", "ecx")
        dst, count, value = st.get(r[0]), st.get(r[1]), st.get(acc, width)
        if not isinstance(dst, int) or not isinstance(count, int) or count > MAX_FUNCTION * 16:
            return  # somewhere not known: no table of ours can be told apart
        raw = value.to_bytes(width, "little") * count if isinstance(value, int) else None
        out.events.append(Store(op.address, dst, width * count, raw, op.text))

    def _rep_movs(self, op: Op, width: int, st: State, out: Effects) -> None:
        r = ("rsi", "rdi", "rcx") if self.bits == 64 else ("esi", "edi", "ecx")
        src, dst, count = (st.get(x) for x in r)
        if not isinstance(dst, int) or not isinstance(count, int) or count > MAX_FUNCTION * 16:
            return
        raw = self.read(src, width * count) if isinstance(src, int) else None
        how = op.text + (f" (from {self.image.symbols.describe_data(src)})"
                         if isinstance(src, int) else "")
        out.events.append(Store(op.address, dst, width * count, raw, how))

    # calls -----------------------------------------------------------------------------

    def _call(self, call: Call, out: Effects, depth: int) -> None:
        out.events.append(call)
        if self.code_name(call.target) == STATIC_CALL_UPDATE and self.bits == 64:
            key, func = call.args[0], call.args[2]
            raw = func.to_bytes(self.ptr, "little") if isinstance(func, int) else None
            sym = func if isinstance(func, Arg) else None
            how = f"{STATIC_CALL_UPDATE}(key, tramp, func)"
            if isinstance(key, int):
                out.events.append(Store(call.at, key, self.ptr, raw, how, sym))
            elif isinstance(key, Arg):
                out.events.append(Store(call.at, 0, self.ptr, raw, how, sym, key))
            return
        if depth >= SUMMARY_DEPTH:
            return
        summary = self._summary(call.target, depth + 1)
        if summary is None:
            return
        for e in summary.events:
            if isinstance(e, Store):
                bound = _bind_store(e, call, self.ptr)
                if bound is not None:
                    out.events.append(Store(call.at, bound.address, bound.size, bound.value,
                                            f"{e.how} in {summary.name}", bound.symbolic,
                                            bound.symbolic_address, call.target))
            else:
                out.events.append(_bind(e, call))

    def _summary(self, target: int, depth: int) -> Effects | None:
        """A small helper's effects with its arguments as symbols (None: too big, or not a
        function the symbols know)."""
        if target in self.not_summarised:
            return None
        if (target, depth) in self._summaries:  # by depth: a deeper one summarises less
            return self._summaries[target, depth]
        hit = self.image.symbols.containing(target)
        result = None
        if hit is not None and hit[1] == 0 and 0 < hit[0].size <= SUMMARY_LIMIT * 15:
            sym = hit[0]
            shape = _screen(self, sym.value, sym.size, depth)
            if shape == "quiet":  # writes no memory and calls nothing: nothing to report
                result = Effects(sym.name, sym.value, sym.size)
            elif shape == "small":
                result = self.effects(sym.value, sym.size, sym.name, depth, args=True)
        self._summaries[target, depth] = result
        return result


def _bind_store(store: Store, outer: Call, ptr: int) -> Store | None:
    """A helper's store with its symbolic address or value replaced by the caller's
    arguments (None: the address stays unknown)."""
    by_reg = dict(zip(ARGS64, outer.args, strict=False))
    address = store.address
    if store.symbolic_address is not None:
        bound = by_reg.get(store.symbolic_address.reg)
        if not isinstance(bound, int):
            return None
        address = bound
    value, symbolic = store.value, store.symbolic
    if symbolic is not None:
        bound_value = by_reg.get(symbolic.reg)
        symbolic = bound_value if isinstance(bound_value, Arg) else None
        value = bound_value.to_bytes(store.size, "little") \
            if isinstance(bound_value, int) else None
    return Store(store.at, address, store.size, value, store.how, symbolic, None, store.via)


def _bind(call: Call, outer: Call) -> Call:
    """A helper's call with its symbolic arguments replaced by the caller's values."""
    by_reg = dict(zip(ARGS64, outer.args, strict=False))
    args = tuple(by_reg.get(a.reg) if isinstance(a, Arg) else a for a in call.args)
    return Call(outer.at, call.target, args, call.tail)


def _screen(reader: StoreReader, address: int, size: int, depth: int = 1) -> str:
    """A helper at a glance, from capstone's cheap text-only mode: "big" (past
    SUMMARY_LIMIT instructions), "quiet" (decoding it in detail would report nothing a caller
    can use: it writes memory only on the stack or per CPU, and the only functions it calls
    are quiet too), else "small"."""
    key = (address, depth)
    if key in reader._screens:
        return reader._screens[key]
    reader._screens[key] = "quiet"  # a recursive call back into it adds nothing
    code = reader.image.try_read(address, min(size, MAX_FUNCTION))
    shape = "big" if code is None else _screen_code(reader, code, address, size, depth)
    reader._screens[key] = shape
    return shape


def _screen_code(reader: StoreReader, code: bytes, address: int, size: int,
                 depth: int) -> str:
    busy = False
    for count, (_at, _size, mnemonic, op_str) in enumerate(
            _decoder(reader.bits).disasm_lite(code, address), 1):
        if count > SUMMARY_LIMIT:
            return "big"
        if busy:
            continue
        if mnemonic.startswith(("call", "j")):
            busy = _calls_out(reader, op_str, address, size, depth)
        elif mnemonic.startswith(("rep", "stos", "movs")):
            busy = True
        else:
            busy = _stores_off_stack(op_str)
    return "small" if busy else "quiet"


def _calls_out(reader: StoreReader, op_str: str, address: int, size: int, depth: int) -> bool:
    """Does this branch leave the helper for somewhere that may store (indirectly: may)?"""
    if not (op_str.startswith("0x") and all(c in _HEX for c in op_str[2:])):
        return True
    target = int(op_str, 16)
    if address <= target < address + size:
        return False
    if reader.code_name(target) == STATIC_CALL_UPDATE:
        return True
    hit = reader.image.symbols.containing(target)
    if hit is None or hit[1] != 0 or depth >= SUMMARY_DEPTH:
        return False  # not summarised from here on: its stores are not seen either way
    return _screen(reader, hit[0].value, hit[0].size, depth + 1) != "quiet"


def _stores_off_stack(op_str: str) -> bool:
    """Is the AT&T destination (the last operand) memory other than the stack or per-CPU?"""
    dest = op_str.rpartition(", ")[2]
    if dest.startswith("0x") and "," in op_str:
        return True  # an absolute address (the SIB no-base form capstone prints bare)
    if "(" not in dest:
        return False
    if dest.startswith(("%gs:", "%fs:")):
        return False
    base = dest[dest.index("(") + 1:].split(",")[0].rstrip(")")
    return base not in ("%rsp", "%rbp", "%esp", "%ebp")


_ROUTES: dict[int, str] = {}  # capstone instruction id → "stop" | "branch" | "other"


def _route(i: object) -> str:
    """How :meth:`StoreReader._op` treats an instruction, by its id: "stop" (ret, ud2,
    int3), "branch" (call, jmp and capstone's jump group), else "other". A property of the
    id, learnt from capstone's groups once per id: asking for an instruction's groups makes
    capstone build all its details (~35 µs), which a branch does not otherwise need."""
    route = _ROUTES.get(i.id)
    if route is None:
        _, X = _capstone()
        groups = i.groups
        route = "stop" if X.X86_GRP_RET in groups or i.id in (X.X86_INS_UD2, X.X86_INS_INT3) \
            else "branch" if i.id in (X.X86_INS_CALL, X.X86_INS_JMP) or X.X86_GRP_JUMP in groups \
            else "other"
        _ROUTES[i.id] = route
    return route


def _branch_target(i: object, mask: int) -> int | None:
    """:func:`_direct_target`, read from the text where capstone prints the target alone as
    a hex number (every direct near branch), without building the operand details."""
    op = i.op_str
    if op.startswith("0x") and len(op) > 2 and all(c in _HEX for c in op[2:]):
        return int(op, 16) & mask
    return _direct_target(i, mask)


def _direct_target(i: object, mask: int) -> int | None:
    """A direct branch's target (capstone gives it as a signed number)."""
    _, X = _capstone()
    if i.operands and i.operands[0].type == X.X86_OP_IMM:
        return i.operands[0].imm & mask
    return None


def _padding(rest: bytes) -> bool:
    return all(b in (0x90, 0xCC, 0x00) for b in rest)


_WRITE = 2  # capstone CS_AC_WRITE
_HEX = frozenset("0123456789abcdef")
_DECIMAL = re.compile(r"\$(\d{5,})")  # capstone prints big immediates in decimal
_XMM = frozenset(f"xmm{n}" for n in range(32))
_REP_REGS = frozenset({"rcx", "rsi", "rdi", "ecx", "esi", "edi"})
_ALL_REGS = frozenset(_reg_map())
# the ftrace entry: its trampoline keeps every register, so a call to it changes nothing
_PRESERVING = frozenset({"__fentry__", "mcount", "__mcount"})
_NORETURN = frozenset({"__stack_chk_fail", "panic", "BUG_func", "do_exit", "make_task_dead",
                       "__ubsan_handle_builtin_unreachable", "xen_raw_printk_panic"})


def _init_ids() -> None:
    """capstone's instruction ids, looked up once capstone is imported (it costs start-up
    time, so not at module import)."""
    global _MOVES, _ZEROING, _STRING_STORES, _STRING_MOVES
    if _STRING_STORES:
        return
    _, X = _capstone()
    _MOVES = frozenset({X.X86_INS_MOV, X.X86_INS_MOVABS, X.X86_INS_MOVQ, X.X86_INS_MOVD,
                        X.X86_INS_MOVUPS, X.X86_INS_MOVAPS,
                        X.X86_INS_MOVDQU, X.X86_INS_MOVDQA, X.X86_INS_VMOVUPS,
                        X.X86_INS_VMOVAPS, X.X86_INS_VMOVDQU, X.X86_INS_VMOVDQA})
    _ZEROING = frozenset({X.X86_INS_XOR, X.X86_INS_SUB, X.X86_INS_PXOR, X.X86_INS_XORPS})
    _STRING_STORES = {X.X86_INS_STOSB: 1, X.X86_INS_STOSW: 2, X.X86_INS_STOSD: 4,
                      X.X86_INS_STOSQ: 8}
    _STRING_MOVES = {X.X86_INS_MOVSB: 1, X.X86_INS_MOVSW: 2, X.X86_INS_MOVSD: 4,
                     X.X86_INS_MOVSQ: 8}


_MOVES: frozenset[int] = frozenset()
_ZEROING: frozenset[int] = frozenset()
_STRING_STORES: dict[int, int] = {}
_STRING_MOVES: dict[int, int] = {}
