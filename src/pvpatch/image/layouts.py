"""ELF structure layouts, declared once per class (little-endian only: x86 kernels).

Declared as ``struct`` formats plus field names so readers never hand-compute offsets.
Source: the System V gABI, as also encoded by pyelftools' ``elftools/elf/structs.py``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    fmt: struct.Struct
    fields: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.fmt.size

    def unpack(self, buf: bytes | memoryview, offset: int = 0) -> dict[str, int]:
        return dict(zip(self.fields, self.fmt.unpack_from(buf, offset), strict=True))


def _layout(fmt: str, names: str) -> Layout:
    return Layout(struct.Struct("<" + fmt), tuple(names.split()))


EHDR_TAIL = {  # everything after e_ident[16]
    32: _layout("HHIIIIIHHHHHH", "e_type e_machine e_version e_entry e_phoff e_shoff e_flags "
                "e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx"),
    64: _layout("HHIQQQIHHHHHH", "e_type e_machine e_version e_entry e_phoff e_shoff e_flags "
                "e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx"),
}
SHDR = {
    32: _layout("IIIIIIIIII", "sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link "
                "sh_info sh_addralign sh_entsize"),
    64: _layout("IIQQQQIIQQ", "sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link "
                "sh_info sh_addralign sh_entsize"),
}
PHDR = {
    32: _layout("IIIIIIII", "p_type p_offset p_vaddr p_paddr p_filesz p_memsz p_flags p_align"),
    64: _layout("IIQQQQQQ", "p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align"),
}
# Symbol records are read in bulk with iter_unpack; field order differs between classes.
SYM = {
    32: _layout("IIIBBH", "st_name st_value st_size st_info st_other st_shndx"),
    64: _layout("IBBHQQ", "st_name st_info st_other st_shndx st_value st_size"),
}
NOTE_HEADER = _layout("III", "n_namesz n_descsz n_type")

EM_386 = 3
EM_X86_64 = 62
MACHINES = {EM_386: "i386", EM_X86_64: "x86_64"}

SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 0, 1, 2, 3, 4
SHT_NOTE, SHT_NOBITS, SHT_REL = 7, 8, 9
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
PT_LOAD, PT_NOTE = 1, 4
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
SHN_UNDEF, SHN_LORESERVE = 0, 0xFF00
