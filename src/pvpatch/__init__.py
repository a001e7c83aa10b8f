"""pvpatch: read, check and offline-patch the paravirt call sites of an x86 Linux kernel image.

The package flows one way: ``image`` (the mapped ELF) → ``types`` (struct layouts from BTF or
DWARF) → ``kernel`` (sites, pv_ops, Xen notes) → ``render`` (text and JSON) → ``cli``.
"""

__version__ = "0.1.0"
