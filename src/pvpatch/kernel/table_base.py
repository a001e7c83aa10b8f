"""Where the pv-op table lies when no symbol names it: the address its call sites agree on.

Every ``.parainstructions`` site (up to 6.7) is an indirect call through
``table + type * sizeof(void *)`` — ``call *pv_ops+8*N(%rip)`` on x86-64, ``call *pv_ops+4*N``
on i386 (``PARAVIRT_CALL`` in paravirt_types.h). So ``memory operand - type * ptr`` is the
table's address, once per site; a bzImage whose kallsyms lacks data symbols (no
CONFIG_KALLSYMS_ALL) still tells where ``pv_ops`` is through its own code. A site that
disagrees is reported by the per-site cross-check, not hidden.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pvpatch.disasm import decode
from pvpatch.image.elf import ElfImage

# How many of the sites with a memory operand must name the same base: "all or nearly all".
# A quarter may disagree (corrupt records, hand-written asm); fewer than two sites prove nothing.
AGREEMENT = 0.75
MIN_SITES = 2
MAX_SITE_LEN = 32  # MAX_PATCH_LEN, as in kernel.sites


@dataclass(frozen=True)
class TableBase:
    address: int | None  # None: the sites agree on no address
    agreeing: int  # sites whose call names this base
    total: int  # sites whose call has an absolute memory operand
    highest_type: int | None  # the largest type byte of the agreeing sites
    reason: str = ""  # why no address, when address is None
    found_by: str = ""  # how the address was found when not from the call sites

    @property
    def described(self) -> str:
        if self.address is None:
            return self.reason
        if self.found_by:
            return self.found_by
        of = "" if self.agreeing == self.total else f" of {self.total}"
        return f"address derived from {self.agreeing}{of} call sites"


def derive_table_base(image: ElfImage, records: list) -> TableBase:
    """The base most sites' ``call *mem`` operands imply, if enough of them agree.

    ``records`` are the raw ``.parainstructions`` records (address, type, length)."""
    ptr = image.ptr_size
    votes: Counter[int] = Counter()
    highest: dict[int, int] = {}
    for r in records:
        if not 0 < r.length <= MAX_SITE_LEN:
            continue
        code = image.try_read(r.address, r.length)
        if code is None:
            continue
        target = next((i.mem_target for i in decode(code, r.address, image.bits)
                       if i.is_indirect_branch), None)
        if target is None:
            continue
        base = (target - r.type * ptr) & ((1 << image.bits) - 1)
        votes[base] += 1
        highest[base] = max(highest.get(base, 0), r.type)
    total = sum(votes.values())
    if not votes:
        return TableBase(None, 0, 0, None, "no call site reads its slot from a fixed address")
    base, n = votes.most_common(1)[0]
    if n < MIN_SITES or n < AGREEMENT * total:
        return TableBase(None, n, total, None,
                         f"the call sites agree on no table address (the most common, "
                         f"{base:#x}, is named by {n} of {total})")
    if image.section_at(base, (highest[base] + 1) * ptr) is None:
        return TableBase(None, n, total, None,
                         f"{n} call sites name a table at {base:#x}, which no section holds")
    return TableBase(base, n, total, highest[base])
