"""Does ``--btf FILE`` describe this image? Checked before any of its layouts is used.

Raw BTF carries no build-id, so another kernel's ``/sys/kernel/btf/vmlinux`` reads as valid BTF
and then names every slot wrongly (``inspect`` exited 0 with wrong op names) or misreads a
table (``check`` failed on ``.altinstructions``). Every struct pvpatch takes from it has a
counterpart in the image, and the two must agree:

- ``struct paravirt_patch_template`` is the type of ``pv_ops``: as large as its symbol (a
  ``.symtab`` size is exact; kallsyms and System.map give only the distance to the next
  symbol, an upper bound);
- ``struct paravirt_patch_site`` exists exactly when the image has ``.parainstructions``, and
  its records tile that section (the last may lack its tail padding); ``struct alt_instr``'s
  tile ``.altinstructions``;
- the member names agree with the functions the image's own ``pv_ops`` initialiser holds,
  judged as a built-in table is (:mod:`pvpatch.kernel.builtin_choice`): a value agrees when a
  built-in table saw that function in that member, or when its name contains the member's;
  values many slots share (the nop function, the identity functions, NULL) have no say.
"""

from __future__ import annotations

from pvpatch.errors import InputError
from pvpatch.image.elf import ElfImage
from pvpatch.kernel.builtin_choice import agreement, known_targets
from pvpatch.kernel.pvops import PvOps
from pvpatch.types.model import StructLayout, TypeSource

TEMPLATE, PATCH_SITE, ALT_INSTR = "paravirt_patch_template", "paravirt_patch_site", "alt_instr"
# Values that prove nothing about the slot holding them: shared by many slots in every era.
SHARED_VALUES = frozenset({"NULL", "_paravirt_nop", "paravirt_nop", "nop_func",
                           "_paravirt_ident_32", "_paravirt_ident_64", "paravirt_BUG",
                           "BUG_func"})


def check_btf_fits(image: ElfImage, types: TypeSource, btf_path: str) -> None:
    """InputError naming both files when the BTF cannot be this image's."""
    why = _template(image, types) or _table(image, types, ".parainstructions", PATCH_SITE) \
        or _table(image, types, ".altinstructions", ALT_INSTR) or _members(image, types)
    if why is not None:
        raise InputError(f"{btf_path} does not describe {image.path}: {why} (the BTF of "
                         "another kernel?)")


def _template(image: ElfImage, types: TypeSource) -> str | None:
    sym = image.symbols.get("pv_ops")
    if sym is None or not sym.size:
        return None
    struct = types.struct(TEMPLATE)
    if struct is None:
        return f"it has no struct {TEMPLATE}, the type of the image's pv_ops"
    exact = image.symbols.source == ".symtab"
    if struct.size == sym.size or (not exact and struct.size < sym.size):
        return None
    return (f"its struct {TEMPLATE} is {struct.size} bytes, the image's pv_ops "
            f"{'is' if exact else 'has room for'} {sym.size}")


def _table(image: ElfImage, types: TypeSource, section: str, struct_name: str) -> str | None:
    """A table's record type must exist when the section does, and divide it."""
    sec = image.section(section)
    struct = types.struct(struct_name)
    if (sec is None or not sec.size) and struct is not None and struct_name == PATCH_SITE:
        return f"it has struct {struct_name}, but the image has no {section} (6.8+)"
    if sec is None or not sec.size:
        return None
    if struct is None:
        return (f"it has no struct {struct_name}, but the image has {section}"
                if struct_name == PATCH_SITE else None)
    if struct.size and _fits(sec.size, struct.size, _used(struct)):
        return None
    return f"its {struct.size}-byte struct {struct_name} does not tile the image's " \
           f"{sec.size}-byte {section}"


def _used(struct: StructLayout) -> int:
    """Bytes up to the end of the last member: the last record may lack its tail padding
    (kernels before 6.1 did not pad the final .parainstructions record)."""
    return max((f.offset + f.size for f in struct.fields), default=struct.size)


def _fits(size: int, record: int, used: int) -> bool:
    rest = size % record
    return rest == 0 or rest >= used


def _members(image: ElfImage, types: TypeSource) -> str | None:
    """The BTF's member names against the functions the image's initialiser stores."""
    if image.symbols.source == "none":
        return None  # nothing names the values
    pvops = PvOps(image, types)
    if pvops.layout is None or pvops.base is None:
        return None
    known = known_targets(image.bits)
    triples = [(s.name, s.name, pvops.initial_target(s)[1] or f"{s.address:#x}")
               for s in pvops.slots.values() if s.is_pointer and s.address is not None]
    verdict = agreement(triples, lambda member, got: _agrees(member, got, known))
    if verdict.plausible:
        return None
    slot, _member, got = verdict.wrong[0]
    return (f"only {verdict.matched} of {verdict.counted} pv_ops slots hold a function that "
            f"fits the member it names (e.g. {slot} holds {got})")


def _agrees(member: str, got: str, known: dict[str, frozenset[str]]) -> bool | None:
    if got in SHARED_VALUES:
        return None
    leaf = member.rsplit(".", 1)[-1]
    return got in known.get(member, ()) or leaf in got
