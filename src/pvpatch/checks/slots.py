"""Slot checks: what each site's slot holds when the kernel patches, per backend.

A NULL slot is what Linux itself does for ops a platform never uses (Xen PV leaves
``mmu.alloc_p4d`` NULL: it never runs 5-level paging): the site becomes ``call paravirt_BUG``,
harmless unless the op is called, so it is a warning. A slot pointing at something that is not
a function is always wrong: the site would become a direct call into it.
"""

from __future__ import annotations

from pvpatch.backends import Resolution
from pvpatch.checks.context import BackendRun, Context
from pvpatch.checks.model import Finding, finding
from pvpatch.image.elf import ElfImage
from pvpatch.kernel.sites import describe_target


def check_slots(ctx: Context, run: BackendRun) -> list[Finding]:
    """One finding per site whose slot is NULL, unknown or not a function for this backend."""
    verdicts: dict[int, tuple[str, str] | None] = {}  # slot index → (check, message), once
    out = []
    for s in ctx.model.sites.sites:
        res = run.backend.resolution(s.type)
        if res is None:
            continue  # the type names no slot: site.unknown-type says so
        if s.type not in verdicts:
            verdicts[s.type] = _verdict(ctx.model.image, run, res)
        v = verdicts[s.type]
        if v is not None:
            out.append(finding(v[0], run.backend.name, s.address, ctx.label(s), s.op, v[1]))
    return out


def _verdict(image: ElfImage, run: BackendRun, res: Resolution) -> tuple[str, str] | None:
    if res.value is None:
        return "slot.unresolved", f"value unknown ({res.reason}): the site is not modelled"
    if res.value == 0:
        return "slot.null", (f"slot is NULL ({res.reason}): the kernel patches in "
                             f"`{run.plan.null_text}`")
    if res.value == run.nop_function:
        return None
    problem = target_problem(image, res.value)
    if problem is None:
        return None
    return "slot.not-function", (f"slot holds {describe_target(image, res.value)} "
                                 f"({res.reason}), {problem}")


def target_problem(image: ElfImage, value: int) -> str | None:
    """Why ``value`` is not the entry of a function (None when it is)."""
    sec = image.section_at(value)
    if sec is None or not sec.is_exec:
        where = f"in {sec.name}" if sec else "outside every allocated section"
        return f"which is {where}, not executable code"
    sym = image.symbols.at(value)
    if sym is None:
        return f"which is inside {image.symbols.describe(value)}, not a function's start"
    return None  # STT_FUNC, or an untyped asm label (SYM_CODE_START) at the very address
