"""The mapped kernel image: ELF headers, sections, segments, symbols and notes."""

from pvpatch.image.elf import ElfImage, Section, Segment
from pvpatch.image.symbols import Symbol, SymbolTable

__all__ = ["ElfImage", "Section", "Segment", "Symbol", "SymbolTable"]
