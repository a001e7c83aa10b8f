"""Where the kernel sits in a memory image, what its .text holds there, and whether it is this
build at all.

Each question is answered from the best source the memory image has, and the answer says
which it was:

1. **The core's VMCOREINFO note** (a kdump vmcore, ``/proc/kcore`` from 4.19, QEMU's
   ``dump-guest-memory`` with ``-device vmcoreinfo`` once the guest's ``qemu_fw_cfg`` driver
   has handed it over): ``KERNELOFFSET=`` is the KASLR slide, ``NUMBER(phys_base)=`` where
   the image lies physically, ``BUILD-ID=`` (5.9+) and ``OSRELEASE=`` which build it is.
2. **The memory itself**: .text is looked for by content — a fingerprint of windows no patch
   table names, tried at every placement KASLR can choose (2 MiB steps) — and the kernel's own
   VMCOREINFO is then read where the kernel keeps it from boot on, asked for or not
   (``vmcoreinfo_note``, a direct-map pointer, through ``page_offset_base``); failing that the
   slide is the shift the absolute operands of ``.rela.text`` show.
3. **Machine memory in no order** (a Xen PV dom0 seen from QEMU): the page locator.

A raw image has virtual addresses and nothing else: the slide is where .text is found in it.

Then .text as memory holds it is compared with the vmlinux outside every table boot patches
(``kernel.boot_writes``): another build differs almost everywhere (71% of the bytes between
two Debian 6.1 point releases whose .text has the same size), the same build only where
something changed it — which is reported, for integrity checkers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pvpatch.errors import InputError
from pvpatch.image import layouts as L
from pvpatch.image.memory import AddressSpace, MemoryImage, parse_vmcoreinfo
from pvpatch.image.notes import build_id
from pvpatch.image.relocations import Relocations, slid_operands
from pvpatch.kernel.model import KernelModel
from pvpatch.verify.locate import PAGE, Locator, PageSample

KASLR_ALIGN = 2 << 20  # CONFIG_PHYSICAL_ALIGN on Debian; x86-64 requires a multiple of 2 MiB
MAX_SLIDE = 1 << 30  # KERNEL_IMAGE_SIZE with KASLR (x86-64): the slide stays below it
ANOTHER_BUILD = 10  # percent of compared .text bytes that may differ before it is not this build
VMCOREINFO_NAME = b"VMCOREINFO\0"
MAX_VMCOREINFO = 4096  # VMCOREINFO_BYTES (one page)
RUNS_KEPT = 20
SEARCH_BUDGET = 512  # page searches (each a scan of the dump) before the locator gives up


@dataclass
class Outside:
    """The .text bytes no patch table names that differ from the vmlinux."""

    compared: int
    differing: int
    runs: list[tuple[int, int]]  # (link address, length), the first RUNS_KEPT
    relocations: str  # how bytes the KASLR slide moved were told apart


@dataclass
class Placement:
    """The kernel in a memory image: everything later steps read comes from here."""

    slide: int
    slide_how: str
    space: str  # "virtual", "physical" or "machine frames"
    text_at: int | None  # where .text starts in that space (None: scattered)
    text_how: str
    text: bytes  # .text as memory holds it; zero where it holds nothing
    missing: set[int] = field(default_factory=set)  # .text pages memory does not hold
    vmcoreinfo: dict[str, str] | None = None
    vmcoreinfo_how: str = ""
    identity: list[str] = field(default_factory=list)  # each check made, and what it said
    outside: Outside | None = None
    relocations: Relocations | None = None
    notes: list[str] = field(default_factory=list)


def place(model: KernelModel, memory: MemoryImage) -> Placement:
    """Find the kernel of ``model`` in ``memory``; InputError when it is another build.

    What this proves of the build: the core's or the kernel's own VMCOREINFO (build-id,
    release), linux_banner where memory holds the kernel's data, and sampled pages of .text;
    :func:`check_text` compares all of .text."""
    info = memory.vmcoreinfo
    said = [] if info is None else \
        check_vmcoreinfo(model, info, "the core's VMCOREINFO note", memory.path)
    sample = _fingerprint(model)
    found = _from_note(model, memory, info) if info and "KERNELOFFSET" in info else None
    if found is not None and not sample.holds(lambda off, n: found.text[off:off + n]):
        raise InputError("memory of another build: where the VMCOREINFO note puts .text, "
                         "memory holds other code", memory.path)
    if found is None and memory.virtual:
        found = _search_virtual(model, memory, sample)
    if found is None and memory.physical:
        found = _search_physical(model, memory, sample)
    if found is None:
        raise InputError(f"the .text of {model.version.release or 'this kernel'} is nowhere "
                         "in this memory image: another build, or not a dump of its memory",
                         memory.path)
    if info is not None:
        found.vmcoreinfo, found.vmcoreinfo_how = info, "the core's VMCOREINFO note"
    content = (f".text: {len(sample.pages)} sampled pages hold this build's code"
               if found.space != "machine frames" else
               ".text: located page by page, each holding this build's code")
    found.identity[:0] = [*said, content]
    _check_banner(model, memory, found)
    return found


# -- identity ---------------------------------------------------------------------------------

def check_vmcoreinfo(model: KernelModel, info: dict[str, str], where: str, path: str
                     ) -> list[str]:
    """The build VMCOREINFO names must be the image's (InputError otherwise): by build-id
    (5.9+), else by release. Returns what was checked."""
    said = []
    mine = build_id(model.image)
    theirs = info.get("BUILD-ID")
    if theirs and mine:
        if theirs.lower() != mine.lower():
            raise InputError(f"memory of another build: {where} says BUILD-ID={theirs}, "
                             f"{model.image.path} has build-id {mine}", path)
        said.append(f"build-id {mine}: {where} agrees")
    release = model.version.release
    theirs = info.get("OSRELEASE")
    if theirs and release:
        if theirs != release:
            raise InputError(f"memory of another kernel: {where} says OSRELEASE={theirs}, "
                             f"{model.image.path} is {release}", path)
        said.append(f"release {release}: {where} agrees")
    return said


def _check_banner(model: KernelModel, memory: MemoryImage, p: Placement) -> None:
    """linux_banner as memory holds it, where memory holds the kernel's data too."""
    sym = model.image.symbols.get("linux_banner")
    banner = model.version.banner
    if sym is None or not banner:
        return
    size = min(sym.size or 256, 512)
    got = _read_image(model, memory, p, sym.value, size)
    if got is None:
        return
    text = got.split(b"\0", 1)[0].decode("latin-1").strip()
    if text != banner:
        raise InputError(f"memory of another build: its linux_banner is {text[:100]!r}, "
                         f"{model.image.path}'s is {banner[:100]!r}", memory.path)
    p.identity.append("linux_banner: memory holds the image's")


def _read_image(model: KernelModel, memory: MemoryImage, p: Placement, addr: int, size: int
                ) -> bytes | None:
    """Bytes of the kernel image (any section) at link address ``addr``, if memory has them:
    by virtual address, or physically where .text was found contiguous (the decompressor
    loads the whole image in one piece)."""
    if p.space == "virtual":
        return memory.read(memory.virtual, addr + p.slide, size)
    if p.space == "physical" and p.text_at is not None:
        text = model.image.section(".text")
        return memory.read(memory.physical, p.text_at + (addr - text.addr), size)
    return None


# -- 1. the VMCOREINFO note --------------------------------------------------------------------

def _from_note(model: KernelModel, memory: MemoryImage, info: dict[str, str]
               ) -> Placement | None:
    slide = _hex(info.get("KERNELOFFSET"))
    if slide is None:
        return None
    text = model.image.section(".text")
    how = f"KERNELOFFSET={slide:x} of the core's VMCOREINFO note"
    at = text.addr + slide
    if memory.virtual.locate(at, text.size) is not None:
        return _whole(memory, memory.virtual, at, text.size, slide, how,
                      "at its runtime address (the note's slide)")
    phys_base = _hex(info.get("NUMBER(phys_base)"))
    delta = load_delta(model)
    if phys_base is None or delta is None or not memory.physical:
        return None
    at = text.addr + slide - delta + phys_base
    if memory.physical.locate(at, text.size) is None:
        return None
    return _whole(memory, memory.physical, at, text.size, slide, how,
                  f"physically at runtime − __START_KERNEL_map + phys_base ({phys_base:#x}, "
                  "the note's)")


def _hex(value: str | None) -> int | None:
    try:
        return None if value is None else int(value, 16)
    except ValueError:
        return None


def load_delta(model: KernelModel) -> int | None:
    """Link address − load address of .text's segment: __START_KERNEL_map on x86-64
    (0xffffffff80000000), PAGE_OFFSET on i386."""
    text = model.image.section(".text")
    for seg in model.image.segments:
        if seg.type == L.PT_LOAD and seg.vaddr <= text.addr < seg.vaddr + seg.memsz:
            return (seg.vaddr - seg.paddr) & ((1 << model.image.bits) - 1)
    return None


def _whole(memory: MemoryImage, space: AddressSpace, at: int, size: int, slide: int,
           slide_how: str, text_how: str) -> Placement:
    """.text read in one piece from ``at`` of ``space``."""
    data = memory.read(space, at, size)
    if data is None:
        raise InputError(f"{space.kind} {at:#x}+{size:#x} is not wholly in the image",
                         memory.path)
    return Placement(slide, slide_how, space.kind, at, text_how, data)


# -- 2. found by content -------------------------------------------------------------------

def _fingerprint(model: KernelModel) -> PageSample:
    """Sample pages of .text, without the pv sites (plain data, cached on nothing: cheap)."""
    image = model.image
    text = image.section(".text")
    sites = sorted((s.address - text.addr, s.length) for s in model.sites.sites
                   if text.contains_addr(s.address, s.length))
    return PageSample.of(bytes(image.section_data(text)), sites)


def _search_virtual(model: KernelModel, memory: MemoryImage, fp: PageSample
                    ) -> Placement | None:
    """Virtual addresses (raw images, kcore without a note): the slide is where .text is."""
    text = model.image.section(".text")
    for slide in _virtual_slides(memory.virtual, text.addr, text.size):
        at = text.addr + slide
        if fp.holds(lambda off, n, at=at: memory.read(memory.virtual, at + off, n)):
            how = "none: .text is at its link address" if slide == 0 else \
                f"{slide:#x}: where .text was found by content"
            return _whole(memory, memory.virtual, at, text.size, slide, how,
                          "found by content" + (" at its link address" if not slide else ""))
    return None


def _virtual_slides(space: AddressSpace, link: int, size: int) -> list[int]:
    """0 first, then each range's start (a dump of exactly .text), then every KASLR step."""
    out = [0]
    for r in space.ranges:
        if 0 <= r.start - link < MAX_SLIDE:
            out.append(r.start - link)
        first = max(0, -(-(r.start - link) // KASLR_ALIGN) * KASLR_ALIGN)
        last = min(MAX_SLIDE, r.end - size - link)
        out += range(first, last + 1, KASLR_ALIGN)
    return list(dict.fromkeys(s for s in out if space.locate(link + s, size) is not None))


def _search_physical(model: KernelModel, memory: MemoryImage, fp: PageSample
                     ) -> Placement | None:
    """Physical addresses: .text whole at a KASLR step, else scattered page by page."""
    text = model.image.section(".text")
    delta = load_delta(model)
    built = None if delta is None else text.addr - delta
    for at in _physical_starts(memory.physical, text.size, built):
        if fp.holds(lambda off, n, at=at: memory.read(memory.physical, at + off, n)):
            p = _whole(memory, memory.physical, at, text.size, 0, "",
                       "found by content" + (" where the image asks to be loaded"
                                             if at == built else f", at a {KASLR_ALIGN >> 20} "
                                             "MiB step"))
            _slide_of_physical(model, memory, p)
            return p
    return _scattered(model, memory)


def _physical_starts(space: AddressSpace, size: int, built: int | None) -> list[int]:
    out = [] if built is None else [built]
    for r in space.ranges:
        first = -(-r.start // KASLR_ALIGN) * KASLR_ALIGN
        out += range(first, r.end - size + 1, KASLR_ALIGN)
    return list(dict.fromkeys(a for a in out if space.locate(a, size) is not None))


def _slide_of_physical(model: KernelModel, memory: MemoryImage, p: Placement) -> None:
    """The slide of a kernel found physically: its own VMCOREINFO, else its relocations."""
    info, how = kernel_vmcoreinfo(model, memory, p)
    if info is not None:
        p.identity += check_vmcoreinfo(model, info, how, memory.path)
        p.vmcoreinfo, p.vmcoreinfo_how = info, how
        slide = _hex(info.get("KERNELOFFSET"))
        if slide is not None:
            p.slide, p.slide_how = slide, f"{slide:#x}: KERNELOFFSET of {how}"
            return
    _slide_from_relocations(model, p)


def kernel_vmcoreinfo(model: KernelModel, memory: MemoryImage, p: Placement
                      ) -> tuple[dict[str, str] | None, str]:
    """The VMCOREINFO the kernel keeps in its memory from boot (crash_save_vmcoreinfo_init),
    reached through ``vmcoreinfo_note`` — a direct-map pointer from 4.15, the note itself
    before — and ``page_offset_base``, the direct map's (randomised) base."""
    syms = model.image.symbols
    note = syms.get("vmcoreinfo_note")
    if note is None:
        return None, ""
    ptr = model.image.ptr_size
    if note.size in (0, ptr):  # u32 *vmcoreinfo_note (4.15+): follow it
        value = _word(model, memory, p, note.value)
        base_sym = syms.get("page_offset_base")
        base = _word(model, memory, p, base_sym.value) if base_sym else None
        if value is None or base is None or value < base:
            return None, ""
        at = value - base

        def read(off: int, n: int) -> bytes | None:
            return memory.read(memory.physical, at + off, n)
    else:
        def read(off: int, n: int) -> bytes | None:
            return _read_image(model, memory, p, note.value + off, n)
    info = _note_text(read)
    return (info, "the VMCOREINFO the kernel keeps in memory (vmcoreinfo_note)") if info \
        else (None, "")


def _word(model: KernelModel, memory: MemoryImage, p: Placement, addr: int) -> int | None:
    raw = _read_image(model, memory, p, addr, model.image.ptr_size)
    return None if raw is None else int.from_bytes(raw, "little")


def _note_text(read: Callable[[int, int], bytes | None]) -> dict[str, str] | None:
    """The KEY=VALUE lines of a VMCOREINFO ELF note (name "VMCOREINFO", type 0)."""
    head = read(0, L.NOTE_HEADER.size + 12)
    if head is None:
        return None
    h = L.NOTE_HEADER.unpack(head)
    if h["n_namesz"] != len(VMCOREINFO_NAME) or head[12:23] != VMCOREINFO_NAME or \
            not 0 < h["n_descsz"] <= MAX_VMCOREINFO:
        return None
    desc = read(len(head), h["n_descsz"])
    info = parse_vmcoreinfo(desc) if desc else {}
    return info if "OSRELEASE" in info else None


def _slide_from_relocations(model: KernelModel, p: Placement) -> None:
    """The shift the absolute operands of .text show between the image and memory."""
    relocs = p.relocations = text_relocations(model)
    if relocs is None:
        p.slide_how = "assumed 0: no VMCOREINFO, and the image keeps no .text relocations"
        p.notes.append("KASLR slide unknown (no VMCOREINFO, no relocations): taken as 0")
        return
    text = model.image.section(".text")
    mask = model.boot_writes.mask
    image_text = model.image.section_data(text)
    deltas: Counter[int] = Counter()
    for addr, width in zip(relocs.addresses, relocs.widths, strict=True):
        off = addr - text.addr
        if width != 4 or not 0 <= off <= text.size - 4 or mask.find(1, off, off + 4) >= 0:
            continue
        got = int.from_bytes(p.text[off:off + 4], "little")
        built = int.from_bytes(image_text[off:off + 4], "little")
        deltas[(got - built) & 0xFFFFFFFF] += 1
        if sum(deltas.values()) >= 2000:
            break
    if not deltas:
        p.slide_how = f"assumed 0: {relocs.section} names no operand memory holds"
        return
    delta, count = deltas.most_common(1)[0]
    slide = delta - (1 << 32) if delta >= 1 << 31 else delta
    share = count * 100 // sum(deltas.values())
    p.slide, p.slide_how = slide, (f"{slide:#x}: the shift of {share}% of the absolute "
                                   f"operands {relocs.section} names")


def text_relocations(model: KernelModel) -> Relocations | None:
    """The .text operands the image's relocations say a KASLR move rewrites (None: it keeps
    no relocations)."""
    return slid_operands(model.image, model.image.section(".text"))


# -- 3. scattered -------------------------------------------------------------------------------

def _scattered(model: KernelModel, memory: MemoryImage) -> Placement | None:
    """.text page by page in each physical range of a mapped file (largest first)."""
    ram = memory.mapped()
    if ram is None:
        return None
    image = model.image
    text = image.section(".text")
    code = bytes(image.section_data(text))
    bw = model.boot_writes
    best = None
    _refuse_without_banner(model, memory, ram)
    for r in sorted(memory.physical.ranges, key=lambda r: -r.size):
        loc = Locator(code, bw.mask, bw.pages("pv"), ram, r.offset, r.size,
                      max_searches=SEARCH_BUDGET).locate(True)
        found = sum(f is not None for f in loc.frames)
        if best is None or found > best[0]:
            best = (found, loc, r)
        if found == len(loc.frames):
            break
    if best is None or best[0] < len(best[1].frames) // 2:
        return None
    found, loc, r = best
    data = bytearray(len(code))
    missing = set()
    for i, f in enumerate(loc.frames):
        n = min(PAGE, len(code) - i * PAGE)
        if f is None:
            missing.add(i)
        else:
            data[i * PAGE:i * PAGE + n] = ram[r.offset + f * PAGE:r.offset + f * PAGE + n]
    runs = loc.runs()
    first = r.start + runs[0]["first_frame"] * PAGE
    how = (f"page by page: {found} of {len(loc.frames)} pages in {len(runs)} run"
           f"{'s' if len(runs) != 1 else ''}, the first at {first:#x}")
    p = Placement(0, "", "machine frames", None, how, bytes(data), missing)
    _slide_from_relocations(model, p)
    return p


def _refuse_without_banner(model: KernelModel, memory: MemoryImage, ram: object) -> None:
    """Before a search page by page: memory of this kernel holds its linux_banner somewhere
    (one scan of the file); memory holding none, or only another kernel's, is refused."""
    banner = model.version.banner
    if not banner or ram.find(banner.encode("latin-1")) >= 0:  # type: ignore[attr-defined]
        return
    other = ram.find(b"Linux version ")  # type: ignore[attr-defined]
    seen = ""
    if other >= 0:
        raw = bytes(ram[other:other + 80])  # type: ignore[index]
        seen = "; it holds " + repr(raw.split(b"\0", 1)[0].split(b"\n", 1)[0]
                                    .decode("latin-1"))
    raise InputError(f"memory of another build: the .text of {model.version.release} is not "
                     f"at any KASLR placement, and its linux_banner is nowhere{seen}",
                     memory.path)


# -- the rest of .text --------------------------------------------------------------------------

def check_text(model: KernelModel, memory: MemoryImage, p: Placement) -> Outside:
    """Compare all of .text outside every patch table (``p.outside``); refuse what is
    clearly another build. ~0.4 s of a Debian kernel: the mask of every table, and the
    relocations when the kernel was moved."""
    image = model.image
    text = image.section(".text")
    built = bytes(image.section_data(text))
    mask = bytearray(model.boot_writes.mask)
    how = "the slide moves none" if p.slide == 0 else ""
    if p.slide:
        p.relocations = p.relocations or text_relocations(model)
        if p.relocations is not None:
            _mark(mask, text.addr, p.relocations)
            how = (f"{len(p.relocations)} operands {p.relocations.section} says the slide moves "
                   "excluded")
    for page in p.missing:
        mask[page * PAGE:(page + 1) * PAGE] = b"\1" * len(mask[page * PAGE:(page + 1) * PAGE])
    n = len(p.text)
    clean = int.from_bytes(mask.translate(bytes([0xFF]) + bytes(255)), "little")
    x = int.from_bytes(p.text, "little") ^ int.from_bytes(built, "little")
    diff = (x & clean).to_bytes(n, "little")
    compared = n - mask.count(1)
    differing = n - diff.count(0)
    runs = _runs(diff) if differing else []
    if p.slide and p.relocations is None:
        runs, moved = _unmoved(runs, p.text, built, p.slide)
        differing = sum(b - a for a, b in runs)
        how = (f"the image keeps no relocations: {moved} operands that differ by exactly the "
               "slide taken as moved by it")
    p.outside = Outside(compared, differing, [(text.addr + a, b - a) for a, b in
                                              runs[:RUNS_KEPT]], how)
    if compared and differing * 100 > compared * ANOTHER_BUILD:
        raise InputError(f"memory of another build: {differing} of the {compared} .text bytes "
                         "no patch table names differ from the image's "
                         f"({differing * 100 // compared}%)", memory.path)
    p.identity.append(f".text: {differing} of {compared} bytes outside the patch tables differ")
    return p.outside


def _runs(diff: bytes) -> list[tuple[int, int]]:
    """(start, end) of every run of non-zero bytes, looked for only in the pages that have
    one (a regular expression crawls over 14 MB of zeros at a tenth of memcmp's speed)."""
    zero = bytes(PAGE)
    out: list[tuple[int, int]] = []
    for base in range(0, len(diff), PAGE):
        if diff[base:base + PAGE] == zero[:min(PAGE, len(diff) - base)]:
            continue
        for m in _NONZERO.finditer(diff, base, base + PAGE):
            a, b = m.start(), m.end()
            if out and out[-1][1] == a:  # a run across the page boundary
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return out


_NONZERO = re.compile(rb"[^\x00]+")


def _unmoved(runs: list[tuple[int, int]], mem: bytes, built: bytes, slide: int
             ) -> tuple[list[tuple[int, int]], int]:
    """Without relocations: the runs of differing bytes that are not an operand the slide
    moved — a 4-byte window around the run whose value is the image's plus (or, for an
    x86-64 per-CPU reference, minus) the slide. Returns them and how many were."""
    plus, minus = slide & 0xFFFFFFFF, -slide & 0xFFFFFFFF
    out, moved = [], 0
    for a, b in runs:
        if b - a <= 4 and any(
                (int.from_bytes(mem[s:s + 4], "little") - int.from_bytes(built[s:s + 4],
                                                                         "little"))
                & 0xFFFFFFFF in (plus, minus) for s in range(max(0, b - 4), a + 1)):
            moved += 1
        else:
            out.append((a, b))
    return out, moved


def _mark(mask: bytearray, start: int, relocs: Relocations) -> None:
    """Mark each absolute operand of ``relocs`` in a .text mask."""
    size = len(mask)
    ones = (b"", b"\1", b"\1\1", b"\1\1\1", b"\1" * 4, b"", b"", b"", b"\1" * 8)
    for addr, width in zip(relocs.addresses, relocs.widths, strict=True):
        off = addr - start
        if 0 <= off <= size - width:
            mask[off:off + width] = ones[width]
    for addr in relocs.inverse:
        off = addr - start
        if 0 <= off <= size - 4:
            mask[off:off + 4] = ones[4]

