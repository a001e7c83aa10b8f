"""Just enough ELF to aim mutations: headers, named sections, symbols, and one more section.

Deliberately not pvpatch's reader: it must keep working on an image that earlier mutations
already broke (every offset is checked against the buffer), and it must not share the
reader's mistakes.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.image import layouts as L


@dataclass(frozen=True)
class Symbol:
    """One .symtab entry: where the entry is in the file, and what it says."""

    entry: int  # file offset of the Elf_Sym
    name: str
    value: int
    size: int


@dataclass(frozen=True)
class Elf:
    """The header fields of a (possibly already broken) image that locate everything else."""

    bits: int
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int
    phoff: int
    phentsize: int
    phnum: int

    @classmethod
    def parse(cls, buf: bytes | bytearray) -> Elf | None:
        if len(buf) < 64 or buf[:4] != b"\x7fELF" or buf[4] not in (1, 2):
            return None
        bits = 32 if buf[4] == 1 else 64
        h = L.EHDR_TAIL[bits].unpack(buf, 16)
        return cls(bits, h["e_shoff"], h["e_shentsize"], h["e_shnum"], h["e_shstrndx"],
                   h["e_phoff"], h["e_phentsize"], h["e_phnum"])

    def sections(self, buf: bytes | bytearray) -> list[tuple[int, dict[str, int]]]:
        """(header offset, fields) of each section header that lies inside the buffer."""
        out = []
        layout = L.SHDR[self.bits]
        for i in range(min(self.shnum, 512)):
            at = self.shoff + i * self.shentsize
            if self.shentsize >= layout.size and at > 0 and at + layout.size <= len(buf):
                out.append((at, layout.unpack(buf, at)))
        return out

    def section_names(self, buf: bytes | bytearray) -> list[tuple[bytes, dict[str, int]]]:
        """(name, fields) of each section, named through .shstrtab (b"" when unreadable)."""
        secs = self.sections(buf)
        if not 0 < self.shstrndx < len(secs):
            return [(b"", s) for _a, s in secs]
        strtab = secs[self.shstrndx][1]["sh_offset"]
        out = []
        for _at, s in secs:
            off = strtab + s["sh_name"]
            end = buf.find(b"\0", off, off + 256) if off < len(buf) else -1
            out.append((bytes(buf[off:end]) if end >= 0 else b"", s))
        return out

    def named(self, buf: bytes | bytearray, name: bytes) -> tuple[int, int] | None:
        """(file offset, size) of the section called ``name``."""
        for got, s in self.section_names(buf):
            if got == name:
                return s["sh_offset"], s["sh_size"]
        return None

    def symbols(self, buf: bytes | bytearray) -> list[Symbol]:
        """The .symtab entries with a name, each with its entry's file offset."""
        layout = L.SYM[self.bits]
        secs = self.sections(buf)
        for _at, s in secs:
            if s["sh_type"] != L.SHT_SYMTAB or not 0 < s["sh_link"] < len(secs):
                continue
            strs = secs[s["sh_link"]][1]["sh_offset"]
            out = []
            end = min(s["sh_offset"] + s["sh_size"], len(buf))
            for at in range(s["sh_offset"], end - layout.size + 1, layout.size):
                f = layout.unpack(buf, at)
                name_at = strs + f["st_name"]
                stop = buf.find(b"\0", name_at) if f["st_name"] else -1
                if stop > name_at:
                    out.append(Symbol(at, buf[name_at:stop].decode("latin-1"), f["st_value"],
                                      f["st_size"]))
            return out
        return []

    def file_offset(self, buf: bytes | bytearray, addr: int) -> int | None:
        """Where the byte at virtual address ``addr`` is in the file (allocated sections)."""
        for _at, s in self.sections(buf):
            if s["sh_flags"] & L.SHF_ALLOC and s["sh_type"] != L.SHT_NOBITS and \
                    s["sh_addr"] <= addr < s["sh_addr"] + s["sh_size"]:
                return s["sh_offset"] + addr - s["sh_addr"]
        return None

    def add_code_section(self, buf: bytearray, addr: int, code: bytes) -> bool:
        """Append an executable section at ``addr`` holding ``code``, in a PT_LOAD segment
        of its own (pvpatch reads memory through the segments): both header tables are
        moved to the end of the file with one more entry each (the section named like
        .text). False when the header tables cannot be found intact."""
        secs = self.sections(buf)
        if len(secs) != self.shnum or not secs or self.shentsize != L.SHDR[self.bits].size \
                or self.phentsize != L.PHDR[self.bits].size or \
                self.phoff + self.phnum * self.phentsize > len(buf):
            return False
        text = next((s for _a, s in secs if s["sh_flags"] & L.SHF_EXECINSTR), None)
        if text is None:
            return False
        buf += b"\0" * (-len(buf) % 16)
        code_at = len(buf)
        buf += code
        buf += b"\0" * (-len(buf) % 8)
        table = bytes(buf[self.shoff:self.shoff + self.shnum * self.shentsize])
        new = {**text, "sh_addr": addr, "sh_offset": code_at, "sh_size": len(code)}
        layout = L.SHDR[self.bits]
        shoff = len(buf)
        buf += table + layout.fmt.pack(*(new[f] for f in layout.fields))
        phdrs = bytes(buf[self.phoff:self.phoff + self.phnum * self.phentsize])
        load = {"p_type": L.PT_LOAD, "p_flags": 5, "p_offset": code_at, "p_vaddr": addr,
                "p_paddr": addr, "p_filesz": len(code), "p_memsz": len(code), "p_align": 16}
        ph = L.PHDR[self.bits]
        phoff = len(buf)
        buf += phdrs + ph.fmt.pack(*(load[f] for f in ph.fields))
        h = L.EHDR_TAIL[self.bits]
        fields = h.unpack(buf, 16)
        fields.update(e_shoff=shoff, e_shnum=self.shnum + 1, e_phoff=phoff,
                      e_phnum=self.phnum + 1)
        buf[16:16 + h.size] = h.fmt.pack(*(fields[f] for f in h.fields))
        return True
