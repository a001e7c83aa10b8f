"""Find a kernel's ``.text`` in a dump of machine memory, page by page, by content.

Where nothing says where the kernel sits — a Xen PV dom0's pseudo-physical pages lie on machine
frames the hypervisor chose, and QEMU sees machine memory only — each 4 KiB page of the
vmlinux's .text is searched for by content, never assuming contiguity:

1. The patch tables (``kernel.boot_writes``) say which bytes boot may have rewritten. A page
   *matches* a frame when the bytes that differ all lie in such places (at most ``SLACK``
   bytes elsewhere) and the page has at least ``MIN_CLEAN`` bytes no table names.
2. Anchors: a 64-byte fragment free of patch sites (and not padding) is taken from the pages
   with the most patch sites and searched for at its page offset. Candidate frames that match
   *and* show boot patches (explained changed bytes) give a displacement frame − page.
3. Sweep: each page is tried at the previous page's displacement, then every known one; pages
   that fit none are searched for on their own (64-, then 32- and 16-byte fragments). When
   several frames match, one that shows the page's patches wins, then the neighbours' run.
4. Stale copies: boot rewrites every pv site, so a displacement at which a page holding pv
   sites matches *unpatched* is a leftover copy (a loader's buffer); if there is one, the sweep
   is redone using it only as a last resort.
5. Pages still missing between two pages located by content at the same displacement are
   taken from that run ("contiguity") if no other page claimed the frame; their unexplained
   byte count is recorded. Featureless pages (int3 padding; static-call trampoline pages,
   whose only site-free bytes are 3-byte signatures) fit any look-alike frame, so they are
   placed last: beside the nearest page located by content if they match there, else at the
   first frame with identical bytes ("look-alike"). The rest are reported missing.

Moved here from the boot test's ``locate.py`` (which now drives it) so that ``pvpatch verify``
can find a kernel in a dump that records nothing of where it sits.
"""

from __future__ import annotations

import bisect
import collections
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field

PAGE = 4096
FRAGMENT = 64
SLACK = 16  # differing bytes outside every patch table tolerated in a matching page
MIN_CLEAN = 256  # a page matches only if it has this many bytes no patch table names
ANCHORS = 16
MAX_HITS = 64


@dataclass
class PageFit:
    frame: int
    equal: int  # bytes identical to the vmlinux
    unexplained: int  # differing bytes no patch table names
    size: int
    clean: int  # bytes of the page no patch table names

    @property
    def patched(self) -> int:
        return self.size - self.equal - self.unexplained

    @property
    def matches(self) -> bool:
        """Almost no byte differs where boot does not patch, and enough such bytes exist."""
        return self.unexplained <= SLACK and self.clean >= MIN_CLEAN


@dataclass
class Located:
    frames: list[int | None]  # frame of each .text page, counted from the searched area
    how: list[str]
    fits: list[PageFit | None]
    deltas: collections.Counter = field(default_factory=collections.Counter)
    ambiguous: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)  # displacements of unpatched copies

    def runs(self) -> list[dict]:
        """Contiguous stretches: page range → frame range."""
        out: list[dict] = []
        for i, f in enumerate(self.frames):
            if f is None:
                continue
            r = out[-1] if out else None
            if r and r["first_page"] + r["pages"] == i and r["first_frame"] + r["pages"] == f:
                r["pages"] += 1
            else:
                out.append({"first_page": i, "first_frame": f, "pages": 1})
        return out


class Locator:
    """The search over one area of a dump: ``ram[base:base+size]``, frames counted from base.

    ``mask`` has a 1 for every .text byte a patch table names; ``pv_pages`` are the .text
    pages holding pv sites (boot rewrites every one of those, which tells live from stale).
    """

    def __init__(self, text: bytes, mask: bytes | bytearray, pv_pages: set[int],
                 ram: bytes | mmap.mmap, base: int = 0, size: int | None = None,
                 say: Callable[[str], None] | None = None,
                 max_searches: int | None = None) -> None:
        self.text = text
        self.ram = ram
        self.base = base
        self.end = base + (len(ram) - base if size is None else size)
        self.npages = (len(text) + PAGE - 1) // PAGE
        self.nframes = (self.end - base) // PAGE
        self.flat = mask
        self.say = say or (lambda message: None)
        clean = bytes(mask).translate(bytes([0xFF]) + bytes(255))
        self.clean = [int.from_bytes(clean[i * PAGE:(i + 1) * PAGE], "little")
                      for i in range(self.npages)]
        self.clean_count = [clean.count(0xFF, i * PAGE, (i + 1) * PAGE)
                            for i in range(self.npages)]
        self.pages = [text[i * PAGE:(i + 1) * PAGE] for i in range(self.npages)]
        self.page_ints = [int.from_bytes(p, "little") for p in self.pages]
        self.searches = 0
        self.max_searches = max_searches  # a budget: searching another kernel's memory for
        # every page of this one would scan the whole dump thousands of times
        self.has_sites = [mask.find(1, i * PAGE, (i + 1) * PAGE) >= 0
                          for i in range(self.npages)]
        self.pv_pages = pv_pages

    def _clean(self, start: int, end: int) -> bool:
        return self.flat.find(1, start, end) < 0

    def frame_bytes(self, frame: int, n: int = PAGE) -> bytes:
        at = self.base + frame * PAGE
        return self.ram[at:at + n]

    def fit(self, page: int, frame: int) -> PageFit:
        a = self.pages[page]
        n = len(a)
        b = self.frame_bytes(frame, n)
        x = self.page_ints[page] ^ int.from_bytes(b, "little")
        equal = x.to_bytes(n, "little").count(0)
        unexplained = n - (x & self.clean[page]).to_bytes(n, "little").count(0)
        return PageFit(frame, equal, unexplained, n, self.clean_count[page])

    def fragments(self, page: int, limit: int = 3) -> list[tuple[int, bytes]]:
        """Up to ``limit`` site-free, varied windows of a page, most varied first.

        64 bytes if the page has such stretches; pages dense in patch sites fall back to 32 and
        16 bytes. A page without any (int3 padding) is *featureless*.
        """
        a = self.pages[page]
        base = page * PAGE
        for size, variety in ((FRAGMENT, 20), (FRAGMENT // 2, 12), (FRAGMENT // 4, 8)):
            cands = []
            for off in range(0, len(a) - size + 1, size // 2):
                if not self._clean(base + off, base + off + size):
                    continue
                frag = a[off:off + size]
                distinct = len(set(frag))
                if distinct >= variety:
                    cands.append((distinct, off, frag))
            if cands:
                cands.sort(key=lambda c: -c[0])
                return [(off, frag) for _, off, frag in cands[:limit]]
        return []

    def search(self, page: int) -> list[PageFit]:
        """The frames matching ``page`` that hold one of its fragments at its page offset.

        A fragment is free of patch sites, so every copy of the page holds it: the first
        fragment that finds a matching frame finds them all.
        """
        for off, frag in self.fragments(page):
            if self.max_searches is not None and self.searches >= self.max_searches:
                return []
            self.searches += 1
            frames: set[int] = set()
            pos = self.ram.find(frag, self.base, self.end)
            while pos >= 0 and len(frames) < MAX_HITS:
                rel = pos - self.base
                if rel % PAGE == off and (rel // PAGE + 1) * PAGE <= self.end - self.base:
                    frames.add(rel // PAGE)
                pos = self.ram.find(frag, pos + 1, self.end)
            fits = [f for f in (self.fit(page, fr) for fr in sorted(frames)) if f.matches]
            if fits:
                return fits
        return []

    def locate(self, need_anchor: bool = False) -> Located:
        """Every page's frame; with ``need_anchor``, none at all when no anchor page is found
        (another kernel's memory would otherwise cost a search per page)."""
        n = self.npages
        seed: collections.Counter = collections.Counter()
        # 2. anchors: pages that boot patches most densely tell a live copy from a stale one
        density = [self.flat.count(1, i * PAGE, (i + 1) * PAGE) for i in range(n)]
        agreed = 0
        for i in sorted(range(n), key=lambda i: -density[i])[:ANCHORS]:
            live = [f for f in self.search(i) if f.patched]
            if len(live) == 1:
                seed[live[0].frame - i] += 1
                agreed = max(agreed, seed[live[0].frame - i])
            if agreed >= 3:
                break
        if not seed:
            self.say("no anchor page found in the dump (is this the right kernel?)")
            if need_anchor:
                return Located([None] * n, [""] * n, [None] * n)
        featureless = {i for i in range(n) if not self.fragments(i, 1)}
        loc = self._sweep(seed, set(), featureless)
        # 4. a displacement at which a page holding pv sites matches unpatched is a stale copy
        #    (every pv site is rewritten at boot): sweep again, using it only as a last resort.
        stale = {d for d in loc.deltas if self._is_stale(d)}
        if stale:
            live = collections.Counter({d: c for d, c in loc.deltas.items() if d not in stale})
            loc = self._sweep(live, stale, featureless)
            loc.stale = sorted(stale)
        return loc

    def _is_stale(self, d: int) -> bool:
        pages = sorted(self.pv_pages)
        return any(0 <= i + d < self.nframes and (f := self.fit(i, i + d)).matches
                   and not f.patched for i in pages)

    def _sweep(self, seed: collections.Counter, stale: set[int], featureless: set[int]
               ) -> Located:
        n = self.npages
        loc = Located([None] * n, [""] * n, [None] * n, collections.Counter(seed))
        used: dict[int, int] = {}
        # 3. every page with a usable fragment: the previous page's displacement, the known
        #    ones, else a search; a frame that shows the page's patches beats one that does
        #    not. Featureless pages (int3 padding) match any look-alike frame: they wait for
        #    step 4.
        prev = None
        for i in range(n):
            if i in featureless:
                continue
            order = [prev] if prev is not None else []
            order += [d for d, _ in loc.deltas.most_common() if d != prev and d not in stale]
            best = None
            for d in order:
                if 0 <= i + d < self.nframes and i + d not in used:
                    f = self.fit(i, i + d)
                    better = best is None or (f.patched > 0 and not best.patched)
                    if better and self._plausible(i, f):
                        best = f
                        if f.patched or not self.has_sites[i]:
                            break  # nothing can beat a frame that shows this page's patches
            if best is not None:
                self._take(loc, used, i, best, "displacement")
                prev = best.frame - i
                continue
            cands = [f for f in self.search(i) if f.frame not in used and self._plausible(i, f)]
            if not cands:
                continue
            if len(cands) > 1:
                loc.ambiguous.append(i)
            best = max(cands, key=lambda f: (f.patched > 0, f.frame - i not in stale,
                                             f.frame - i == prev, -f.unexplained))
            self._take(loc, used, i, best, "search")
            prev = best.frame - i
            loc.deltas[prev] += 1
        # 5. gaps inside a run; featureless pages next to a located one, else anywhere
        for i in range(n):
            if loc.frames[i] is not None:
                continue
            d = self._neighbour_delta(loc, i)
            f = self.fit(i, i + d) if d is not None and 0 <= i + d < self.nframes else None
            if f is not None and f.frame not in used and (f.matches or i not in featureless):
                self._take(loc, used, i, f, "contiguity")
            elif i in featureless:
                f = self._featureless(loc, i)
                if f is not None:
                    loc.frames[i], loc.fits[i], loc.how[i] = f.frame, f, "look-alike"
        return loc

    def _featureless(self, loc: Located, i: int) -> PageFit | None:
        """A frame for a page without fragments: at the displacement of the nearest pages
        located by content on either side if it matches there (byte for byte if it has no
        patch site), else the first frame holding exactly its bytes."""
        for rng in (range(i - 1, -1, -1), range(i + 1, len(loc.frames))):
            j = next((j for j in rng if loc.frames[j] is not None
                      and loc.how[j] != "look-alike"), None)
            if j is not None and 0 <= i + loc.frames[j] - j < self.nframes:
                f = self.fit(i, i + loc.frames[j] - j)
                if f.equal == f.size or (self.has_sites[i] and f.matches):
                    return f
        page = self.pages[i]
        pos = self.ram.find(page, self.base, self.end)
        while pos >= 0 and (pos - self.base) % PAGE:
            pos = self.ram.find(page, pos + 1, self.end)
        return None if pos < 0 else self.fit(i, (pos - self.base) // PAGE)

    def _plausible(self, page: int, f: PageFit) -> bool:
        """The frame matches, and shows patches if the page holds a pv site: boot rewrites
        every pv site, so an unpatched copy of such a page is stale (a loader's buffer)."""
        return f.matches and (f.patched > 0 or page not in self.pv_pages)

    @staticmethod
    def _take(loc: Located, used: dict[int, int], i: int, f: PageFit, how: str) -> None:
        loc.frames[i], loc.fits[i], loc.how[i] = f.frame, f, how
        used[f.frame] = i

    @staticmethod
    def _neighbour_delta(loc: Located, i: int) -> int | None:
        """The displacement of the nearest pages located by content on both sides of ``i``,
        if they agree."""
        def nearest(rng: range) -> int | None:
            return next((loc.frames[j] - j for j in rng if loc.frames[j] is not None
                         and loc.how[j] in ("displacement", "search")), None)

        before, after = nearest(range(i - 1, -1, -1)), nearest(range(i + 1, len(loc.frames)))
        return before if before is not None and before == after else None


@dataclass(frozen=True)
class PageSample:
    """Pages of .text spread over it, each with the bytes no pv site covers: a cheap test of
    "does this kernel's .text start here?" for each placement a whole image may have.

    A page of the same build held in memory keeps most of its bytes even where boot patched
    ftrace calls and return thunks and KASLR moved absolute operands (97% of a Debian 6.1
    .text is unchanged); another build's page, or anything else, keeps few. The pv sites,
    densest in small images, are left out of the count."""

    pages: tuple[tuple[int, int, int, int], ...]  # (offset, length, bytes as int, mask as int)
    need: int  # pages that must look alike

    SIMILAR = 0.6  # share of a page's site-free bytes that must be equal

    @classmethod
    def of(cls, text: bytes, sites: list[tuple[int, int]], count: int = 16) -> PageSample:
        """``sites``: (offset in .text, length) of the pv sites, sorted."""
        starts = [o for o, _ in sites]
        npages = max(1, len(text) // PAGE)
        picked = []
        for k in sorted({npages * k // count for k in range(count)}):
            off = k * PAGE
            n = min(PAGE, len(text) - off)
            keep = bytearray(b"\xff" * n)
            i = bisect.bisect_left(starts, off - 32)
            while i < len(sites) and sites[i][0] < off + n:
                a, ln = sites[i]
                lo, hi = max(a, off) - off, min(a + ln, off + n) - off
                if hi > lo:
                    keep[lo:hi] = bytes(hi - lo)
                i += 1
            picked.append((off, n, int.from_bytes(text[off:off + n], "little"),
                           int.from_bytes(keep, "little")))
        return cls(tuple(picked), max(1, len(picked) * 3 // 4))

    def holds(self, read: Callable[[int, int], bytes | None]) -> bool:
        """``read(offset in .text, n)`` gives memory's bytes there for this placement."""
        misses = len(self.pages) - self.need
        for off, n, want, keep in self.pages:
            got = read(off, n)
            if got is None or not self._alike(got, n, want, keep):
                misses -= 1
                if misses < 0:
                    return False
        return bool(self.pages)

    @classmethod
    def _alike(cls, got: bytes, n: int, want: int, keep: int) -> bool:
        kept = n - keep.to_bytes(n, "little").count(0)
        if not kept:
            return True
        differ = n - ((int.from_bytes(got, "little") ^ want) & keep).to_bytes(n, "little") \
            .count(0)
        return kept - differ >= kept * cls.SIMILAR
