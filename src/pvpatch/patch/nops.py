"""The kernel's NOP tables and ``add_nops``, as data with the versions they hold for.

Since 5.13 the table is fixed at build time (``x86_nops``: P6 NOPs on 64-bit, the GENERIC
table with ``ds`` prefixes on 32-bit); before that it was chosen per CPU at boot
(``ideal_nops``), so older kernels take the table as a parameter. Source:
``arch/x86/include/asm/nops.h`` (5.13–6.4 and 6.1 checked), ``arch/x86/kernel/alternative.c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class NopTable:
    name: str
    versions: str
    seqs: tuple[bytes, ...]  # seqs[n-1] is the n-byte NOP
    # texts[n-1]: the n-byte NOP as the source's comment names it (nops.h writes the bytes),
    # in AT&T syntax; tests/test_assembled.py assembles each (keystone)
    texts: tuple[str, ...] = ()

    @property
    def max(self) -> int:
        """ASM_NOP_MAX: longest single NOP; add_nops emits runs of these."""
        return len(self.seqs)

    def fill(self, n: int) -> bytes:
        """``add_nops(buf, n)``: the largest NOP that fits, repeatedly."""
        if n < len(self._fills):
            return self._fills[n]
        return self._fill(n)

    @cached_property
    def _fills(self) -> tuple[bytes, ...]:
        """Every fill up to a site's longest (MAX_PATCH_LEN, 32): thousands of sites ask."""
        return tuple(self._fill(n) for n in range(33))

    def _fill(self, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            k = min(n, self.max)
            out += self.seqs[k - 1]
            n -= k
        return bytes(out)


def _h(*seqs: str) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(s) for s in seqs)


P6_64 = NopTable("p6", "5.13–6.4 (64-bit; also ideal_nops on P6-class CPUs before 5.13)", _h(
    "90", "6690", "0f1f00", "0f1f4000", "0f1f440000", "660f1f440000", "0f1f8000000000",
    "0f1f840000000000"), (
    "nop", "xchg %ax,%ax", "nopl (%rax)", "nopl 0x0(%rax)", "nopl 0x0(%rax,%rax,1)",
    "nopw 0x0(%rax,%rax,1)", "nopl 0x00000000(%rax)", "nopl 0x00000000(%rax,%rax,1)"))
P6_64_LONG = NopTable("p6-11", "6.5+ (64-bit: ASM_NOP_MAX 11; the change lies in 6.3–6.5)",
                      P6_64.seqs + _h("2e0f1f840000000000", "662e0f1f840000000000",
                                      "66662e0f1f840000000000"),
                      (*P6_64.texts, "cs; nopl 0x00000000(%rax,%rax,1)",
                       "data16; cs; nopl 0x00000000(%rax,%rax,1)",
                       "data16; data16; cs; nopl 0x00000000(%rax,%rax,1)"))
GENERIC_32 = NopTable("generic32", "5.13–6.4 (32-bit)", _h(
    "90", "89f6", "8d7600", "8d742600", "3e8d742600", "8db600000000", "8db42600000000",
    "3e8db42600000000"), (
    "nop", "movl %esi,%esi", "leal 0x0(%esi),%esi", "leal 0x0(%esi,%eiz,1),%esi",
    "ds; leal 0x0(%esi,%eiz,1),%esi", "leal 0x00000000(%esi),%esi",
    "leal 0x00000000(%esi,%eiz,1),%esi", "ds; leal 0x00000000(%esi,%eiz,1),%esi"))
K8 = NopTable("k8", "≤5.12 (chosen at boot on K8-class CPUs)", _h(
    "90", "6690", "666690", "66666690", "6666906690", "666690666690", "66666690666690",
    "6666669066666690"), (
    "nop", "data16; nop", "data16; data16; nop", "data16; data16; data16; nop",
    "data16; data16; nop; data16; nop", "data16; data16; nop; data16; data16; nop",
    "data16; data16; data16; nop; data16; data16; nop",
    "data16; data16; data16; nop; data16; data16; data16; nop"))
K7 = NopTable("k7", "≤5.12 (32-bit, chosen at boot on K7)", _h(
    "90", "8bc0", "8d0420", "8d442000", "8d44200090", "8d8000000000", "8d040500000000",
    "8d04050000000090"), (
    "nop", "movl %eax,%eax", "leal (%eax,%eiz,1),%eax", "leal 0x0(%eax,%eiz,1),%eax",
    "leal 0x0(%eax,%eiz,1),%eax; nop", "leal 0x00000000(%eax),%eax",
    "leal 0x00000000(,%eax,1),%eax", "leal 0x00000000(,%eax,1),%eax; nop"))
INTEL = NopTable("intel", "≤5.12 (32-bit GENERIC)", _h(
    "90", "89f6", "8d7600", "8d742600", "908d742600", "8db600000000", "8db42600000000",
    "908db42600000000"), (
    "nop", "movl %esi,%esi", "leal 0x0(%esi),%esi", "leal 0x0(%esi,%eiz,1),%esi",
    "nop; leal 0x0(%esi,%eiz,1),%esi", "leal 0x00000000(%esi),%esi",
    "leal 0x00000000(%esi,%eiz,1),%esi", "nop; leal 0x00000000(%esi,%eiz,1),%esi"))

NOP_TABLES = {t.name: t for t in (P6_64, P6_64_LONG, GENERIC_32, K8, K7, INTEL)}


def default_nops(bits: int, version: tuple[int, int] | None = None) -> NopTable:
    """The build-time table of 5.13+ kernels (and a modern CPU's choice before that)."""
    if bits == 32:
        return GENERIC_32
    return P6_64_LONG if version is not None and version >= (6, 5) else P6_64
