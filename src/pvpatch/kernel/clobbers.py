"""The CLBR_* bits of a site's clobber mask, per architecture and era.

On x86_64 bits 3 and 4 swapped meaning in 2.6.30, and the i386 mask grew EDI in 2.6.30.
Source: ``paravirt.h`` / ``paravirt_types.h`` at 2.6.25, 2.6.30, 4.19, 6.1 (fact sheet §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClobberBits:
    versions: str
    bits: int
    names: tuple[str, ...]  # names[i] is the register of bit i

    def decode(self, mask: int) -> list[str]:
        regs = [n for i, n in enumerate(self.names) if mask >> i & 1]
        unknown = mask >> len(self.names)
        if unknown:
            regs.append(f"unknown:{unknown << len(self.names):#x}")
        return regs

    @property
    def any(self) -> int:
        return (1 << len(self.names)) - 1


CLOBBER_TABLES = (
    ClobberBits("2.6.20–2.6.29", 32, ("eax", "ecx", "edx")),
    ClobberBits("2.6.30–6.1", 32, ("eax", "ecx", "edx", "edi")),
    ClobberBits("2.6.25–2.6.29", 64, ("rax", "rcx", "rdx", "rsi", "rdi",
                                      "r8", "r9", "r10", "r11")),
    ClobberBits("2.6.30–6.1", 64, ("rax", "rcx", "rdx", "rdi", "rsi",
                                   "r8", "r9", "r10", "r11")),
)


def clobber_bits(bits: int, major: int | None, minor: int | None) -> ClobberBits:
    """The table for an ELF class and kernel version (2.6.30+ when the version is unknown)."""
    old = major == 2 and minor is not None and minor < 30
    for table in CLOBBER_TABLES:
        if table.bits == bits and table.versions.startswith("2.6.2") == old:
            return table
    raise AssertionError("clobber tables cover both classes")
