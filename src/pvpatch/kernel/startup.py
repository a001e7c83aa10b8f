"""What a backend's start-up code leaves in the pv-op tables and the static-call keys.

A backend (Xen PV, and later KVM, Hyper-V, …) is a list of start-up functions the kernel runs
before it patches itself, each with the condition under which it runs (:class:`Step`): that
much is a fact of each kernel's boot order that the code alone does not show. Everything else
is read from the image: each function is decoded (:mod:`pvpatch.kernel.stores`) and its stores
are applied, in program order, to a copy of the watched memory (the pv-op slots, the static-call
keys). A listed function that another calls directly is applied at its call, so the order of
the stores is the order the boot makes them; the rest run in the order listed.

The result says, for every watched word, its final value and where it came from: the image's
initialiser, or the store that made it (function+offset and the instruction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pvpatch.kernel.pvops import SPLIT_MEMBERS
from pvpatch.kernel.stores import Call, Effects, Store, StoreReader

if TYPE_CHECKING:
    from pvpatch.kernel.model import KernelModel


@dataclass(frozen=True)
class Guard:
    """A store that happens only under a run-time test *inside* its function.

    The store decoder follows every path at once, so it reports the stores of both arms of
    ``if (kvm_para_has_feature(KVM_FEATURE_STEAL_TIME)) static_call_update(pv_steal_clock,
    kvm_steal_clock);``. A guard names the stored function (``kvm_steal_clock``) and the
    condition the backend evaluates: a store of that value is applied only when it holds.
    Where the store lands is still read from the code.
    """

    value: str  # the symbol whose address the store writes
    condition: str  # a name the backend evaluates, like a Step's condition


@dataclass(frozen=True)
class Step:
    """One start-up function, when it runs and how the boot reaches it (for reports)."""

    function: str
    reached: str
    condition: str = "always"  # a name the backend evaluates ("vcpus>1", …)
    before_patching: bool = True  # False: runs later; only its static-call updates count
    inlined_ok: bool = True  # a static function the compiler may fold into its caller
    guards: tuple[Guard, ...] = ()  # stores in its code (or a callee's) that need a test


@dataclass(frozen=True)
class Region:
    """A watched range: one pv-op table or static-call key (its initial bytes are read)."""

    name: str
    address: int
    size: int
    static_call: bool = False  # a key: updates count whenever they happen before /init


@dataclass
class Origin:
    value: int | None
    how: str  # "initialiser", or "xen_init_mmu_ops+0x3c: movq $…, …(%rip)"
    step: str | None = None  # the step whose code made the store
    condition: str | None = None  # the step's condition and the store's guard, if any


@dataclass
class StartupResult:
    words: dict[int, Origin]  # word address → final value and where it came from
    ran: list[str] = field(default_factory=list)  # steps applied, in order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (step, why)
    problems: list[str] = field(default_factory=list)
    # stores not applied because their guard's condition is false: (where, value, condition)
    guarded_off: list[tuple[str, str, str]] = field(default_factory=list)

    def value(self, address: int) -> Origin | None:
        return self.words.get(address)


class _Memory:
    """The watched regions' bytes, each with a known/unknown mark and its last writer."""

    def __init__(self, regions: Sequence[Region], read: Callable[[int, int], bytes | None],
                 ptr: int) -> None:
        self.ptr = ptr
        self.regions = sorted(regions, key=lambda r: r.address)
        self.data: dict[str, bytearray] = {}
        self.known: dict[str, bytearray] = {}
        self.writer: dict[int, Origin] = {}  # word address → last store to it
        for r in self.regions:
            raw = read(r.address, r.size)
            self.data[r.name] = bytearray(raw if raw is not None else bytes(r.size))
            self.known[r.name] = bytearray([raw is not None]) * r.size

    def region_of(self, address: int, size: int) -> list[tuple[Region, int, int]]:
        """(region, start offset, end offset) of each region the range overlaps."""
        out = []
        for r in self.regions:
            lo, hi = max(address, r.address), min(address + size, r.address + r.size)
            if lo < hi:
                out.append((r, lo - r.address, hi - r.address))
        return out

    def apply(self, store: Store, origin: Origin, static_only: bool) -> bool:
        """Write the store into the regions it touches; True if it touched any."""
        hit = False
        for r, lo, hi in self.region_of(store.address, store.size):
            if static_only and not r.static_call:
                continue
            hit = True
            skip = r.address + lo - store.address
            if store.value is not None:
                self.data[r.name][lo:hi] = store.value[skip:skip + hi - lo]
                self.known[r.name][lo:hi] = b"\x01" * (hi - lo)
            else:
                self.known[r.name][lo:hi] = bytes(hi - lo)
            first = (r.address + lo) // self.ptr * self.ptr
            for word in range(first, r.address + hi, self.ptr):
                self.writer[word] = origin
        return hit

    def words(self) -> dict[int, Origin]:
        out: dict[int, Origin] = {}
        for r in self.regions:
            data, known = self.data[r.name], self.known[r.name]
            for off in range(0, r.size - self.ptr + 1, self.ptr):
                addr = r.address + off
                whole = all(known[off:off + self.ptr])
                value = int.from_bytes(data[off:off + self.ptr], "little") if whole else None
                writer = self.writer.get(addr)
                how = writer.how if writer else "initialiser"
                if writer is not None and value is None:
                    how += " (a value the decoder could not follow)"
                out[addr] = Origin(value, how, writer.step if writer else None,
                                   writer.condition if writer else None)
        return out


def run_startup(reader: StoreReader, steps: Sequence[Step], regions: Sequence[Region],
                conditions: dict[str, bool]) -> StartupResult:
    """Apply the steps' stores to the regions, as the boot makes them."""
    memory = _Memory(regions, reader.read, reader.ptr)
    result = StartupResult({})
    listed = {s.function: s for s in steps}
    for name in listed:  # a listed callee is applied as its own step, not summarised
        if (address := reader.image.symbols.address(name)) is not None:
            reader.not_summarised.add(address)
    done: set[str] = set()
    guards = _GuardValues(reader, steps)

    def holds(name: str) -> bool:
        return conditions.get(name, name == "always")

    def run(step: Step, static_only: bool, outer: tuple[str, ...] = ()) -> None:
        done.add(step.function)
        if not holds(step.condition):
            result.skipped.append((step.function, f"does not run: {step.condition} is false"))
            return
        effects = reader.function(step.function)
        if effects is None:
            why = ("not in the image (folded into its caller, whose code is read instead)"
                   if step.inlined_ok else "not in the image")
            result.skipped.append((step.function, why))
            if not step.inlined_ok:
                result.problems.append(f"{step.function} ({step.condition}) is not in the image: "
                                       "what it installs cannot be told apart")
            return
        result.ran.append(step.function)
        result.problems.extend(effects.problems)
        only = static_only or not step.before_patching
        tests = (*outer, step.condition) if step.condition != "always" else outer
        _walk(effects, step, only, tests)

    def _walk(effects: Effects, step: Step, static_only: bool, tests: tuple[str, ...]) -> None:
        handled: set[int] = set()
        for ev in effects.events:
            if isinstance(ev, Call):
                callee = reader.code_name(ev.target)
                if callee in listed:
                    handled.add(ev.target)
                    if callee not in done:
                        run(listed[callee], static_only, tests)
                continue
            if ev.via is not None and ev.via in handled:
                continue  # the listed helper's own stores, applied by its step
            if ev.symbolic_address is not None:
                continue
            where = f"{reader.image.symbols.describe(ev.at)}: {ev.how}"
            guard = guards.of(ev)
            if guard is not None and not holds(guard.condition):
                if memory.region_of(ev.address, ev.size):
                    result.guarded_off.append((where, guard.value, guard.condition))
                continue
            test = (*tests, guard.condition) if guard is not None else tests
            origin = Origin(None, where, step.function, " and ".join(test) or None)
            memory.apply(ev, origin, static_only)

    for step in steps:
        if step.function not in done:
            run(step, False)
    result.words = memory.words()
    return result


class _GuardValues:
    """Every step's guards by the address of the value they name. They are pooled: a static
    function the compiler folds into its caller brings its guarded stores along, and the
    guard must follow them. Absent symbols drop out: a build without the function cannot
    store it."""

    def __init__(self, reader: StoreReader, steps: Sequence[Step]) -> None:
        self.ptr = reader.ptr
        self.values: dict[bytes, Guard] = {}
        for step in steps:
            for g in step.guards:
                address = reader.image.symbols.address(g.value)
                if address is not None:
                    self.values[address.to_bytes(reader.ptr, "little")] = g

    def of(self, store: Store) -> Guard | None:
        """The guard whose value this one-word store writes, if any."""
        if not self.values or store.value is None or store.size != self.ptr:
            return None
        return self.values.get(bytes(store.value))


def pv_regions(model: KernelModel) -> list[Region]:
    """The memory a backend's start-up code writes: the pv-op tables (one global per op
    struct 2.6.24–4.19, else ``pv_ops`` and the ``pv_ops_*`` tables beside it) and the pv
    static-call keys. A table is watched only where the image holds its bytes."""
    pvops, image = model.pvops, model.image
    out = []
    if pvops.container is not None and pvops.container.storage == "per-member":
        for name in SPLIT_MEMBERS:
            sym = image.symbols.get(name)
            if sym is not None and sym.size and image.section_at(sym.value, sym.size):
                out.append(Region(name, sym.value, sym.size))
    if pvops.base is not None and pvops.main_size:
        out.append(Region("pv_ops", pvops.base, pvops.main_size))
    for name, address, size, _layout in pvops.extra_tables:
        out.append(Region(name, address, size))
    for key in model.static_call_keys.values():
        out.append(Region(f"__SCK__{key.name}", key.address, image.ptr_size, True))
    return out
