"""The files a command reads whole beside its image: ``--btf``, ``--system-map``,
``--cpuinfo`` and a ``--baseline`` report.

Each is small next to a kernel (Debian's 7.3 vmlinux: 6 MB of BTF, a 9 MB System.map), so it
is read at once; but a path is whatever the user typed, and ``--btf /dev/zero`` or a FIFO
fed by ``yes`` never ends. So every read stops at a bound, ten times and more what a real
file of the kind holds, and a larger file is refused instead of filling memory.
"""

from __future__ import annotations

from pvpatch.errors import InputError

MIB = 1 << 20
BTF_LIMIT = 64 * MIB  # vmlinux BTF: ~6 MB on a distribution kernel
SYSTEM_MAP_LIMIT = 64 * MIB  # ~9 MB for 200k symbols; /proc/kallsyms with modules ~15 MB
CPUINFO_LIMIT = 16 * MIB  # ~2 KB per CPU: 8 MB for 4096 CPUs
REPORT_LIMIT = 64 * MIB  # a check report: a few hundred bytes per finding


def read_bounded(path: str, limit: int, what: str) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them; InputError when it cannot be
    opened, or holds more (``what`` names what it should have been: "a BTF file")."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror}", path) from None
    if len(data) > limit:
        raise InputError(f"holds more than {limit // MIB} MiB: not {what}", path)
    return data
