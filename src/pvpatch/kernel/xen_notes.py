"""Xen ELF notes as Xen's domain builder reads them: the note types, the XENFEAT bits, typed
decoding, the legacy ``__xen_guest`` string, and libelf's parameter block.

Everything here mirrors libelf, the ELF reader shared by the toolstack and the hypervisor, so that
a reader of pvpatch's output sees what Xen sees (including its quirks), not what a generic ELF
dumper shows. Sources, in the Xen tree:

* ``xen/include/public/elfnote.h`` — type numbers and what each note means;
* ``xen/include/public/features.h`` (and Linux's ``include/xen/interface/features.h``) — XENFEAT
  bit numbers;
* ``xen/common/libelf/libelf-dominfo.c`` — which types libelf reads and how, the order in which
  note areas are searched, the FEATURES grammar and the ``__xen_guest`` parser;
* ``xen/common/libelf/libelf-tools.c`` — numeric and string descriptor reading;
* ``xen/include/xen/libelf.h`` — ``UNSET_ADDR``, the PAE modes and the 16-byte string buffers.

Three libelf generations were compared: the 3.x/early-4.x one (no PVH, no ``hvm`` argument),
the 4.x one with the ``hvm`` argument (PHYS32_ENTRY, git 01a5814d) and the 4.19+ one with a typed
note table (PHYS32_RELOC). Where they differ, the table says so in ``xen``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvpatch.image import layouts as L
from pvpatch.image.elf import ElfImage
from pvpatch.image.notes import Note, iter_notes, note_areas

# -- limits and markers (xen/include/xen/libelf.h, libelf-dominfo.c) ---------------------------

UNSET_ADDR = (1 << 64) - 1  # "not given" for 64-bit parameters: an all-ones note reads as absent
UNSET_ADDR32 = (1 << 32) - 1  # the same for PHYS32_ENTRY, kept in a uint32_t
MAX_STRING_LENGTH = 4096  # ELF_MAX_STRING_LENGTH: elf_strval gives up beyond this
PARMS_STRING_MAX = 15  # loader/guest_os/guest_ver/xen_ver are char[16] in elf_dom_parms
FEATURE_TOKEN_MAX = 63  # elf_xen_parse_features: char feature[64]
LEGACY_NAME_MAX, LEGACY_VALUE_MAX = 31, 127  # elf_xen_parse_guest_info: name[32], value[128]
MAX_TOTAL_NOTES = 65536  # ELF_MAX_TOTAL_NOTE_COUNT, over all areas together
LEGACY_SECTION = "__xen_guest"
PAGE_SHIFT = 12

# XEN_PAE_* (libelf.h) and what each means to the toolstack and dom0 builder
PAE_NO, PAE_YES, PAE_EXTCR3, PAE_BIMODAL = 0, 1, 2, 3
PAE_NAMES = {PAE_NO: "no", PAE_YES: "yes", PAE_EXTCR3: "yes (extended-cr3)",
             PAE_BIMODAL: "bimodal"}
PAE_TOKENS = {PAE_NO: "no", PAE_YES: "yes", PAE_EXTCR3: "extended-cr3", PAE_BIMODAL: "bimodal"}

# how libelf reads a descriptor
STR, INT, SPECIAL, IGNORED = "str", "int", "special", "ignored"
ALL_LIBELF = "every libelf version compared"


@dataclass(frozen=True)
class NoteType:
    """One ``XEN_ELFNOTE_*`` type: what it means and how libelf reads it."""

    number: int
    name: str  # without the XEN_ELFNOTE_ prefix
    kind: str  # STR, INT, SPECIAL (custom parsing) or IGNORED (libelf logs "unknown")
    meaning: str
    legacy_key: str | None = None  # the __xen_guest key it replaces
    xen: str = ALL_LIBELF  # which Xen versions read it this way

    @property
    def full_name(self) -> str:
        return "XEN_ELFNOTE_" + self.name


# Source: elfnote.h (numbers, meaning, legacy keys); libelf-dominfo.c note_desc[] (kind).
NOTE_TYPES: dict[int, NoteType] = {t.number: t for t in (
    NoteType(0, "INFO", IGNORED, "NAME=VALUE pair (string); not in libelf's table",
             xen="never read by libelf"),
    NoteType(1, "ENTRY", INT, "virtual address of the PV entry point (default e_entry)",
             "VIRT_ENTRY"),
    NoteType(2, "HYPERCALL_PAGE", INT, "virtual address of the hypercall page",
             "HYPERCALL_PAGE (a page number there)"),
    NoteType(3, "VIRT_BASE", INT, "virtual address the image is mapped at (default 0)",
             "VIRT_BASE"),
    NoteType(4, "PADDR_OFFSET", INT, "offset of ELF p_paddr from the pseudo-physical address "
             "(default 0; VIRT_BASE with __xen_guest)", "ELF_PADDR_OFFSET"),
    NoteType(5, "XEN_VERSION", STR, "Xen interface version; must start with xen-3.0", "XEN_VER"),
    NoteType(6, "GUEST_OS", STR, "guest operating system name", "GUEST_OS"),
    NoteType(7, "GUEST_VERSION", STR, "guest operating system version", "GUEST_VER"),
    NoteType(8, "LOADER", STR, "loader type; generic is the one Xen accepts", "LOADER"),
    NoteType(9, "PAE_MODE", STR, "x86-32 PAE support: yes, no or bimodal", "PAE"),
    NoteType(10, "FEATURES", STR, "'|'-separated XENFEAT names, '!' marks a required one",
             "FEATURES"),
    NoteType(11, "BSD_SYMTAB", STR, "yes: load the symbol table after the kernel",
             "BSD_SYMTAB (presence means yes)"),
    NoteType(12, "HV_START_LOW", INT, "lowest start of the hypervisor hole (32-bit PV)"),
    NoteType(13, "L1_MFN_VALID", SPECIAL, "maddr-sized mask/value pairs recognising L1 entries "
             "that carry valid MFNs", xen="ignored by the oldest libelf; read as a number by "
             "the 4.x one with PVH (any descsz but 1/2/4/8 gives 0); logged by name only in "
             "4.19+; never used for loading"),
    NoteType(14, "SUSPEND_CANCEL", INT, "guest supports cooperative suspend cancellation"),
    NoteType(15, "INIT_P2M", INT, "virtual address for the initial P2M table (x86-64)"),
    NoteType(16, "MOD_START_PFN", INT, "non-zero: the initrd may be passed unmapped"),
    NoteType(17, "SUPPORTED_FEATURES", SPECIAL, "bitmap of XENFEAT bits, OR-ed into the "
             "supported set", "FEATURES", xen="merged since Xen 4.2 (elfnote.h); only the "
             "first 32-bit word is used (XENFEAT_NR_SUBMAPS = 1)"),
    NoteType(18, "PHYS32_ENTRY", INT, "32-bit physical entry point for PVH",
             xen="libelf with PVH support (the hvm argument) onward; kept in 32 bits"),
    NoteType(19, "PHYS32_RELOC", SPECIAL, "PVH kernel is relocatable: align, min, max (u32)",
             xen="Xen 4.19+ libelf; older libelf logs it as unknown"),
    NoteType(0x1000001, "CRASH_INFO", IGNORED, "kexec/kdump crash information",
             xen="written by Xen's crash code; never read by the loader"),
    NoteType(0x1000002, "CRASH_REGS", IGNORED, "per-CPU crash registers",
             xen="written by Xen's crash code; never read by the loader"),
    NoteType(0x2000000, "DUMPCORE_NONE", IGNORED, "marks an xm dump-core file",
             xen="dump-core files only"),
    NoteType(0x2000001, "DUMPCORE_HEADER", IGNORED, "dump-core header", xen="dump-core files only"),
    NoteType(0x2000002, "DUMPCORE_XEN_VERSION", IGNORED, "dump-core: the Xen version",
             xen="dump-core files only"),
    NoteType(0x2000003, "DUMPCORE_FORMAT_VERSION", IGNORED, "dump-core format version",
             xen="dump-core files only"),
)}
ENTRY, HYPERCALL_PAGE, VIRT_BASE, PADDR_OFFSET = 1, 2, 3, 4
XEN_VERSION, GUEST_OS, GUEST_VERSION, LOADER, PAE_MODE, FEATURES, BSD_SYMTAB = range(5, 12)
HV_START_LOW, L1_MFN_VALID, SUSPEND_CANCEL, INIT_P2M, MOD_START_PFN = range(12, 17)
SUPPORTED_FEATURES, PHYS32_ENTRY, PHYS32_RELOC = 17, 18, 19


@dataclass(frozen=True)
class XenFeature:
    """One XENFEAT bit. ``in_string``: libelf's FEATURES parser knows the name."""

    bit: int
    name: str
    in_string: bool = False
    note: str = ""


# Source: features.h (bits); libelf-dominfo.c elf_xen_feature_names[] (in_string).
XEN_FEATURES: tuple[XenFeature, ...] = (
    XenFeature(0, "writable_page_tables", True),
    XenFeature(1, "writable_descriptor_tables", True),
    XenFeature(2, "auto_translated_physmap", True),
    XenFeature(3, "supervisor_mode_kernel", True),
    XenFeature(4, "pae_pgdir_above_4gb", True),
    XenFeature(5, "mmu_pt_update_preserve_ad"),
    XenFeature(6, "highmem_assist"),
    XenFeature(7, "gnttab_map_avail_bits"),
    XenFeature(8, "hvm_callback_vector", True, "not in the oldest libelf's name list"),
    XenFeature(9, "hvm_safe_pvclock"),
    XenFeature(10, "hvm_pirqs"),
    XenFeature(11, "dom0", True),
    XenFeature(12, "grant_map_identity", note="deprecated"),
    XenFeature(13, "memory_op_vnode_supported"),
    XenFeature(14, "ARM_SMCCC_supported"),
    XenFeature(15, "linux_rsdp_unrestricted"),
    XenFeature(16, "not_direct_mapped"),
    XenFeature(17, "direct_mapped"),
    XenFeature(18, "dm_msix_all_writes"),
)
FEATURE_BY_BIT = {f.bit: f for f in XEN_FEATURES}
STRING_FEATURE_BITS = {f.name: f.bit for f in XEN_FEATURES if f.in_string}
XENFEAT_NR_SUBMAPS = 1
XENFEAT_SUPERVISOR_MODE_KERNEL, XENFEAT_DOM0 = 3, 11


def feature_names(bits: int) -> list[str]:
    """XENFEAT names of the set bits, ``bit N`` for bits no header names."""
    out, bit = [], 0
    while bits >> bit:
        if bits >> bit & 1:
            f = FEATURE_BY_BIT.get(bit)
            out.append(f.name if f else f"bit {bit}")
        bit += 1
    return out


# -- typed descriptor values -------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureString:
    """A FEATURES string split as ``elf_xen_parse_features`` splits it."""

    required: tuple[str, ...]  # names after '!' that libelf knows
    supported: tuple[str, ...]  # plain names that libelf knows
    unknown_required: tuple[str, ...]  # '!name' libelf does not know: the parse fails
    unknown_supported: tuple[str, ...]  # plain names libelf silently ignores
    supported_bits: int  # what libelf ORs into f_supported (up to the first error)
    required_bits: int
    error: str | None  # why libelf rejects the string


@dataclass(frozen=True)
class FeatureBitmap:
    """A SUPPORTED_FEATURES descriptor: its 32-bit words and the one libelf uses."""

    words: tuple[int, ...]
    used: int  # word 0, or 0 when descsz is not a multiple of 4 (elf_note_numeric_array)

    @property
    def names(self) -> list[str]:
        return feature_names(self.used)


@dataclass(frozen=True)
class MfnPairs:
    """L1_MFN_VALID: (mask, value) pairs, ``unit`` bytes each."""

    unit: int
    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Phys32Reloc:
    """PHYS32_RELOC as given (None: not in the descriptor) and as Xen 4.19+ applies it."""

    align: int | None
    min: int | None
    max: int | None
    effective: tuple[int, int, int]  # align, min, max after defaults


@dataclass(frozen=True)
class PaeMode:
    mode: int  # PAE_*

    @property
    def name(self) -> str:
        return PAE_NAMES[self.mode]


Detail = FeatureString | FeatureBitmap | MfnPairs | Phys32Reloc | PaeMode


@dataclass(frozen=True)
class DecodedNote:
    """One Xen note, decoded. ``value`` is what libelf reads: the string, or the number (0 for
    a descriptor size libelf cannot read); None for notes it cannot or does not read (INFO
    shows its string although libelf ignores it: ``spec.kind`` says whether libelf uses it)."""

    type: int
    spec: NoteType | None
    area: str
    offset: int  # file offset of the note header
    descsz: int
    raw: bytes
    value: str | int | None
    detail: Detail | None = None
    observations: tuple[str, ...] = ()
    overruns: bool = False

    @property
    def name(self) -> str:
        return self.spec.full_name if self.spec else f"unknown type {self.type:#x}"


@dataclass(frozen=True)
class LegacyGuest:
    """The ``__xen_guest`` section string and its items as libelf splits it."""

    offset: int
    size: int
    text: str
    items: tuple[tuple[str, str], ...]
    observations: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadSpan:
    """p_paddr span of the loadable segments (libelf ``elf_parse_binary``) and their largest
    p_align; ``pstart``/``pend`` keep libelf's start values (all-ones, 0) when there are none."""

    pstart: int
    pend: int
    max_align: int
    segments: int


@dataclass
class XenNotes:
    """What Xen's loader finds in one image, and where it found it."""

    path: str
    bits: int
    machine: str
    e_entry: int
    source: str | None  # "PT_NOTE", "SHT_NOTE", "__xen_guest" or None
    areas: list[str]  # every note area libelf walked, in order
    notes: list[DecodedNote]
    legacy: LegacyGuest | None
    span: LoadSpan
    other_notes: list[tuple[str, int, str]] = field(default_factory=list)  # name, type, area
    problems: list[str] = field(default_factory=list)
    total_notes: int = 0
    note_area_seen: bool = False  # libelf's elf_note_start is set (matters for check 3)

    def first(self, number: int) -> DecodedNote | None:
        return next((n for n in self.notes if n.type == number), None)

    def last(self, number: int) -> DecodedNote | None:
        """The note libelf ends up using: a later note of a type overrides an earlier one."""
        return next((n for n in reversed(self.notes) if n.type == number), None)


# -- reading -----------------------------------------------------------------------------------

def read_xen_notes(image: ElfImage) -> XenNotes:
    """Find and decode the Xen notes the way ``elf_xen_parse`` does.

    PT_NOTE segments first; SHT_NOTE sections only if the segments held no Xen note; the legacy
    ``__xen_guest`` section only if still none (libelf reads it only for PV guests; the string
    is decoded here regardless and the checks decide who sees it).
    """
    span = load_span(image)
    out = XenNotes(image.path, image.bits, image.machine, image.entry, None, [], [], None, span)
    for kind, source in (("segments", "PT_NOTE"), ("sections", "SHT_NOTE")):
        out.note_area_seen = out.note_area_seen or _has_note_area(image, kind)
        for area in note_areas(image, kind):
            out.areas.append(area.label)
            for note in iter_notes(image, area, out.problems, like_libelf=True):
                _take(image, out, note)
        if out.notes:
            out.source = source
            break
    if out.total_notes >= MAX_TOTAL_NOTES:
        out.problems.append(f"{out.total_notes} notes: libelf stops at {MAX_TOTAL_NOTES} and "
                            "marks the image broken ('too many ELF notes')")
    if not out.notes:
        out.legacy = read_legacy(image)
        if out.legacy is not None:
            out.source = LEGACY_SECTION
    return out


def _has_note_area(image: ElfImage, kind: str) -> bool:
    """libelf walks even an empty area (and then counts as having seen notes), but skips
    PT_NOTE segments at file offset 0, a workaround for old binutils."""
    if kind == "segments":
        return any(p.type == L.PT_NOTE and p.offset for p in image.segments)
    return any(s.type == L.SHT_NOTE for s in image.sections[1:])


def _take(image: ElfImage, out: XenNotes, note: Note) -> None:
    out.total_notes += 1
    if note.name == "Xen":
        out.notes.append(decode_note(image, note, out.span))
    else:
        out.other_notes.append((note.name, note.type, note.area))


def load_span(image: ElfImage) -> LoadSpan:
    """Span of p_paddr over PT_LOAD segments with any of R/W/X (``elf_phdr_is_loadable``)."""
    loads = [p for p in image.segments if p.type == L.PT_LOAD and p.flags & 7]
    if not loads:
        return LoadSpan(UNSET_ADDR, 0, 0, 0)
    return LoadSpan(min(p.paddr for p in loads), max(p.paddr + p.memsz for p in loads),
                    max(p.align for p in loads), len(loads))


def decode_note(image: ElfImage, note: Note, span: LoadSpan) -> DecodedNote:
    """Decode one Xen-named note into libelf's value plus a typed detail and observations."""
    spec = NOTE_TYPES.get(note.type)
    obs: list[str] = []
    if note.overruns:
        obs.append("runs past the end of its note area; Xen reads it from the file anyway")
    value: str | int | None = None
    detail: Detail | None = None
    if spec is None:
        obs.append("unknown type: libelf logs 'ELF: note: unknown' and skips it")
    elif spec.kind == STR:
        value = read_string(image, note.desc_offset, len(note.desc), obs)
        detail = _string_detail(note.type, value)
    elif note.type == 0:  # shown as the string it is meant to be; libelf never reads it
        value = read_string(image, note.desc_offset, len(note.desc), [])
    elif spec.kind == INT:
        value = _number(note, obs)
    elif note.type == SUPPORTED_FEATURES:
        detail = _bitmap(note.desc, obs)
        value = detail.used
    elif note.type == L1_MFN_VALID:
        detail = _mfn_pairs(note.desc, obs)
    elif note.type == PHYS32_RELOC:
        detail = _reloc(note.desc, span, obs)
    return DecodedNote(note.type, spec, note.area, note.offset, len(note.desc), note.desc,
                       value, detail, tuple(obs), note.overruns)


def read_string(image: ElfImage, start: int, descsz: int, obs: list[str]) -> str | None:
    """A string as ``elf_strval`` reads it: to the first NUL, bounded by the file and 4096
    bytes but not by ``descsz`` (Linux's FEATURES note has no NUL of its own)."""
    window = bytes(image.data[start:start + MAX_STRING_LENGTH + 1])
    nul = window.find(b"\0")
    if nul < 0:
        where = "the end of the file" if start + len(window) >= image.size else \
            f"{MAX_STRING_LENGTH} bytes"
        obs.append(f"no NUL within {where}: libelf marks the image broken and ignores the note")
        return None
    if nul >= descsz:
        if nul < _round4(descsz):
            obs.append(f"no NUL inside descsz ({descsz} bytes); libelf's string ends in the "
                       "padding")
        else:
            past = nul - descsz
            obs.append(f"no NUL inside descsz ({descsz} bytes) or its padding; libelf reads "
                       f"{past} byte{'s' if past != 1 else ''} past the descriptor")
    return window[:nul].decode("latin-1")


def _string_detail(number: int, text: str | None) -> Detail | None:
    if text is None:
        return None
    if number == FEATURES:
        return parse_features(text)
    if number == PAE_MODE:
        return PaeMode(pae_from_note(text))
    return None


def libelf_number(desc: bytes) -> int:
    """``elf_note_numeric``: little-endian for descsz 1, 2, 4 or 8, else 0."""
    return int.from_bytes(desc, "little") if len(desc) in (1, 2, 4, 8) else 0


def _number(note: Note, obs: list[str]) -> int:
    value = libelf_number(note.desc)
    if len(note.desc) not in (1, 2, 4, 8):
        obs.append(f"descsz {len(note.desc)} is not 1, 2, 4 or 8: libelf reads 0")
    if note.type == PHYS32_ENTRY and value > UNSET_ADDR32:
        obs.append(f"Xen keeps PHYS32_ENTRY in 32 bits: {value & UNSET_ADDR32:#x}")
        value &= UNSET_ADDR32
    unset = UNSET_ADDR32 if note.type == PHYS32_ENTRY else UNSET_ADDR
    if value == unset:
        obs.append("all-ones is libelf's 'unset' marker: Xen treats the note as absent")
    return value


def _words(desc: bytes, unit: int) -> list[int]:
    return [int.from_bytes(desc[i:i + unit], "little") for i in range(0, len(desc), unit)]


def _bitmap(desc: bytes, obs: list[str]) -> FeatureBitmap:
    if len(desc) % 4 or not desc:
        obs.append(f"descsz {len(desc)} is not a positive multiple of 4: libelf reads 0")
        return FeatureBitmap(tuple(_words(desc[:len(desc) & ~3], 4)), 0)
    words = _words(desc, 4)
    if any(words[XENFEAT_NR_SUBMAPS:]):
        obs.append("bits beyond the first 32-bit word are ignored (XENFEAT_NR_SUBMAPS = 1)")
    return FeatureBitmap(tuple(words), words[0])


def _mfn_pairs(desc: bytes, obs: list[str]) -> MfnPairs | None:
    unit = 8 if len(desc) % 16 == 0 else 4 if len(desc) % 8 == 0 else 0
    if not desc or not unit:
        obs.append(f"descsz {len(desc)} does not hold whole mask/value pairs")
        return None
    w = _words(desc, unit)
    obs.append("libelf does not use it: ignored (3.x), read as a number (4.x with PVH: "
               f"{'0' if len(desc) not in (1, 2, 4, 8) else 'the raw value'}), or logged by "
               "name (4.19+)")
    return MfnPairs(unit, tuple(zip(w[0::2], w[1::2], strict=True)))


def _reloc(desc: bytes, span: LoadSpan, obs: list[str]) -> Phys32Reloc:
    """Xen 4.19+: align if descsz >= 4, min if >= 8, max if >= 12, each read as u32 only when
    descsz is a multiple of 4 (else 0); the note's presence alone makes the kernel relocatable."""
    n = len(desc)
    whole = n % 4 == 0
    if not whole:
        obs.append(f"descsz {n} is not a multiple of 4: libelf reads every field as 0")
    given = [(int.from_bytes(desc[4 * i:4 * i + 4], "little") if whole else 0)
             if n >= 4 * (i + 1) else None for i in range(3)]
    align_default = span.max_align if span.max_align >= 0x1000 else 0x200000
    eff = (align_default if given[0] is None else given[0], given[1] or 0,
           UNSET_ADDR32 if given[2] is None else given[2])
    return Phys32Reloc(given[0], given[1], given[2], eff)


# -- the FEATURES grammar (elf_xen_parse_features) ---------------------------------------------

def feature_tokens(text: str) -> list[str]:
    """Split on '|'; a token longer than 63 characters is cut and the rest starts a new one."""
    out, pos = [], 0
    while pos < len(text):
        chunk = text[pos:pos + FEATURE_TOKEN_MAX]
        bar = chunk.find("|")
        out.append(chunk if bar < 0 else chunk[:bar])
        pos += len(chunk) if bar < 0 else bar + 1
    return out


def parse_features(text: str) -> FeatureString:
    """Known names set bits; unknown plain names are ignored; an unknown '!name' fails the
    parse (libelf stops there, so bits after it are never set). Empty tokens are skipped."""
    lists: dict[str, list[str]] = {"req": [], "sup": [], "ureq": [], "usup": []}
    sup = req = 0
    error = None
    for token in feature_tokens(text):
        if not token:
            continue
        required = token.startswith("!")
        name = token[1:] if required else token
        bit = STRING_FEATURE_BITS.get(name)
        key = ("req" if required else "sup") if bit is not None else \
            ("ureq" if required else "usup")
        lists[key].append(name)
        if error is not None:
            continue
        if bit is None and required:
            error = f"unknown required feature '!{name}'"
        elif bit is not None:
            sup |= 1 << bit
            req |= (1 << bit) if required else 0
    return FeatureString(tuple(lists["req"]), tuple(lists["sup"]), tuple(lists["ureq"]),
                         tuple(lists["usup"]), sup, req, error)


def pae_from_note(text: str) -> int:
    """PAE_MODE note: exactly "yes" means extended-cr3; "bimodal" anywhere wins; else no."""
    mode = PAE_EXTCR3 if text == "yes" else PAE_NO
    return PAE_BIMODAL if "bimodal" in text else mode


def pae_from_legacy(text: str) -> int:
    """Legacy PAE=: exactly "yes[extended-cr3]" or anything else starting "yes"; else no."""
    if text == "yes[extended-cr3]":
        return PAE_EXTCR3
    return PAE_YES if text.startswith("yes") else PAE_NO


# -- the legacy __xen_guest string (elf_xen_parse_guest_info) ----------------------------------

def read_legacy(image: ElfImage) -> LegacyGuest | None:
    """The ``__xen_guest`` string: libelf reads it to the first NUL from the section start,
    bounded only by the file (not by the section size)."""
    sec = image.section(LEGACY_SECTION)
    if sec is None:
        return None
    raw = bytes(image.data[sec.offset:image.size]) if sec.has_file_data else b""
    nul = raw.find(b"\0")
    obs = []
    if nul < 0:
        obs.append("no NUL before the end of the file: libelf reads to the end of the file")
        nul = len(raw)
    if nul > sec.size:
        obs.append(f"the string runs {nul - sec.size} bytes past the section's end")
    text = raw[:nul].decode("latin-1")
    items = split_guest_info(text)
    obs += [f"item {i}: name or value cut at libelf's limit ({LEGACY_NAME_MAX}/"
            f"{LEGACY_VALUE_MAX} characters)" for i, (n, v) in enumerate(items)
            if len(n) >= LEGACY_NAME_MAX or len(v) >= LEGACY_VALUE_MAX]
    return LegacyGuest(sec.offset, sec.size, text, tuple(items), tuple(obs))


def split_guest_info(text: str) -> list[tuple[str, str]]:
    """Split ``NAME=VALUE,NAME,…`` exactly as libelf does, including its length cuts."""
    items, h = [], 0
    while h < len(text):
        name, h = _scan(text, h, LEGACY_NAME_MAX, stop_at_equals=True)
        value = ""
        if len(name) < LEGACY_NAME_MAX and h < len(text):  # a cut name leaves its delimiter
            if text[h] == "=":
                value, h = _scan(text, h + 1, LEGACY_VALUE_MAX, stop_at_equals=False)
            else:
                h += 1  # the ','
        items.append((name, value))
    return items


def _scan(text: str, h: int, limit: int, stop_at_equals: bool) -> tuple[str, int]:
    """Characters up to ',' (consumed), '=' (left for the caller) or ``limit`` (cut)."""
    start = h
    while h < len(text) and h - start < limit:
        c = text[h]
        if c == "," and not stop_at_equals:
            return text[start:h], h + 1
        if c in ",=" and stop_at_equals:
            return text[start:h], h
        h += 1
    return text[start:h], h


def strtoull(text: str) -> int:
    """C ``strtoull(text, NULL, 0)``: optional sign, 0x = hex, leading 0 = octal; stops at the
    first bad digit; overflow gives ULLONG_MAX; a minus sign negates modulo 2**64."""
    s = text.lstrip(" \t\n\v\f\r")
    neg = s[:1] == "-"
    s = s[1:] if s[:1] in "+-" else s
    base = 10
    if s[:2].lower() == "0x" and s[2:3] and s[2] in "0123456789abcdefABCDEF":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    n = 0
    while n < len(s) and s[n].lower() in digits:
        n += 1
    value = int(s[:n], base) if n else 0
    if value > UNSET_ADDR:
        return UNSET_ADDR
    return (-value) % (1 << 64) if neg else value


def _round4(n: int) -> int:
    return (n + 3) & ~3


# -- libelf's parameter block (struct elf_dom_parms) -------------------------------------------

@dataclass
class DomParms:
    """What ``elf_xen_parse`` leaves for the checks; None means libelf's "unset"."""

    hvm: bool
    source: str | None
    note_area_seen: bool
    legacy_used: bool = False
    loader: str = ""
    guest_os: str = ""
    guest_ver: str = ""
    xen_ver: str = ""
    pae: int = PAE_NO
    bsd_symtab: bool = False
    virt_base: int | None = None
    virt_entry: int | None = None
    virt_hypercall: int | None = None
    virt_hv_start_low: int | None = None
    p2m_base: int | None = None
    elf_paddr_offset: int | None = None
    phys_entry: int | None = None
    unmapped_initrd: bool = False
    f_supported: int = 0
    f_required: int = 0
    supported_features_note: bool = False
    phys_reloc: Phys32Reloc | None = None
    parse_error: str | None = None  # elf_xen_parse returns -1
    ignored_error: str | None = None  # a legacy FEATURES error elf_xen_parse ignores


def dom_parms(notes: XenNotes, hvm: bool) -> DomParms:
    """Fill the parameter block as libelf does for a PV (``hvm=False``) or PVH guest: notes in
    order (later ones override), stopping at a FEATURES parse failure; the ``__xen_guest``
    string only for PV and only when no Xen note was found."""
    p = DomParms(hvm, notes.source, notes.note_area_seen)
    for n in notes.notes:
        _apply_note(p, n)
        if p.parse_error:
            break
    if notes.legacy is not None and not notes.notes and not hvm:
        p.legacy_used, p.note_area_seen = True, False
        _apply_legacy(p, notes.legacy)
    elif notes.source == LEGACY_SECTION:
        p.source = None
    return p


def _unset(value: int, marker: int = UNSET_ADDR) -> int | None:
    return None if value == marker else value


_NUMERIC_FIELDS = {ENTRY: "virt_entry", HYPERCALL_PAGE: "virt_hypercall",
                   VIRT_BASE: "virt_base", PADDR_OFFSET: "elf_paddr_offset",
                   HV_START_LOW: "virt_hv_start_low", INIT_P2M: "p2m_base"}
_STRING_FIELDS = {LOADER: "loader", GUEST_OS: "guest_os", GUEST_VERSION: "guest_ver",
                  XEN_VERSION: "xen_ver"}


def _apply_note(p: DomParms, n: DecodedNote) -> None:
    if isinstance(n.value, int) and n.type in _NUMERIC_FIELDS:
        setattr(p, _NUMERIC_FIELDS[n.type], _unset(n.value))
    elif isinstance(n.value, str) and n.type in _STRING_FIELDS:
        setattr(p, _STRING_FIELDS[n.type], n.value[:PARMS_STRING_MAX])
    elif n.type == MOD_START_PFN and isinstance(n.value, int):
        p.unmapped_initrd = n.value != 0
    elif n.type == PHYS32_ENTRY and isinstance(n.value, int):
        p.phys_entry = _unset(n.value, UNSET_ADDR32)
    elif n.type == BSD_SYMTAB and isinstance(n.value, str):
        p.bsd_symtab = p.bsd_symtab or n.value == "yes"
    elif isinstance(n.detail, PaeMode):
        p.pae = n.detail.mode if n.detail.mode != PAE_NO else p.pae
    elif isinstance(n.detail, FeatureString):
        p.f_supported |= n.detail.supported_bits
        p.f_required |= n.detail.required_bits
        p.parse_error = n.detail.error
    elif isinstance(n.detail, FeatureBitmap):
        p.f_supported |= n.detail.used
        p.supported_features_note = True
    elif isinstance(n.detail, Phys32Reloc):
        p.phys_reloc = n.detail


def _apply_legacy(p: DomParms, legacy: LegacyGuest) -> None:
    legacy_strings = {"LOADER": "loader", "GUEST_OS": "guest_os", "GUEST_VER": "guest_ver",
                      "XEN_VER": "xen_ver"}
    legacy_numbers = {"VIRT_BASE": "virt_base", "VIRT_ENTRY": "virt_entry",
                      "ELF_PADDR_OFFSET": "elf_paddr_offset"}
    for name, value in legacy.items:
        if name in legacy_strings:
            setattr(p, legacy_strings[name], value[:PARMS_STRING_MAX])
        elif name in legacy_numbers:
            setattr(p, legacy_numbers[name], _unset(strtoull(value)))
        elif name == "HYPERCALL_PAGE":
            p.virt_hypercall = _unset((strtoull(value) << PAGE_SHIFT) & UNSET_ADDR)
        elif name == "PAE":
            p.pae = pae_from_legacy(value) or p.pae
        elif name == "BSD_SYMTAB":
            p.bsd_symtab = True
        elif name == "FEATURES":
            fs = parse_features(value)
            p.f_supported |= fs.supported_bits
            p.f_required |= fs.required_bits
            if fs.error:  # libelf stops reading the string; elf_xen_parse ignores the error
                p.ignored_error = fs.error
                break
    if p.virt_base is not None and p.virt_hypercall is not None:
        p.virt_hypercall = (p.virt_hypercall + p.virt_base) & UNSET_ADDR
