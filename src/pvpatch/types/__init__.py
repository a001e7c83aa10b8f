"""Struct layouts the tool needs, read from the image's own type information (BTF, then DWARF)."""
