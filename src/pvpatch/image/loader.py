"""Open whatever kernel image a user has: a vmlinux ELF, or a bzImage (``/boot/vmlinuz-*``).

Every command opens its input through :func:`open_image`, so each accepts a vmlinuz (and
refuses an ELF that is no kernel, :mod:`pvpatch.image.kernel_evidence`): the
compressed vmlinux is inflated into memory and read as an ELF like any other (see
:mod:`pvpatch.image.bzimage`). ``--system-map`` replaces the image's own symbols.
"""

from __future__ import annotations

from collections.abc import Callable

from pvpatch.errors import InputError
from pvpatch.image.bzimage import BootImage, decompress, is_bzimage, mib, parse_header
from pvpatch.image.elf import ElfImage
from pvpatch.image.kernel_evidence import require_kernel

Say = Callable[[str], None]


def open_image(path: str, *, system_map: str | None = None,
               progress: Say | None = None) -> ElfImage:
    """An :class:`ElfImage` of ``path``, a vmlinux or a vmlinuz.

    For a vmlinuz the image's ``origin`` is the :class:`BootImage` and ``path`` stays the
    vmlinuz's path (for messages). ``progress`` hears about the long steps (decompression,
    kallsyms recovery); it is meant to print only when a person watches.
    """
    head = _head(path)
    if head[:4] == b"\x7fELF" or not is_bzimage(head):
        if head[:4] != b"\x7fELF" and len(head) >= 16:
            raise InputError("not an ELF file nor an x86 bzImage (no \\x7fELF magic, no HdrS "
                             "boot header at 0x202)", path)
        image = ElfImage(path)  # also words the errors of short files
    else:
        image = open_bzimage(path, progress)
    image.progress = progress
    try:
        require_kernel(image)
        if system_map is not None:
            from pvpatch.image.sysmap import load_system_map

            image.use_symbols(load_system_map(system_map, image))
    except BaseException:
        image.close()
        raise
    return image


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(0x300)
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror}", path) from None


def open_bzimage(path: str, progress: Say | None = None) -> ElfImage:
    """Inflate the vmlinux inside the bzImage at ``path`` and open it from memory."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror}", path) from None
    boot = parse_header(data, path)
    elf = inflate(data, boot, progress)
    try:
        probe = ElfImage.from_bytes(elf, path, boot)
    except InputError as e:
        raise InputError(f"the decompressed {boot.method} payload is not a vmlinux: "
                         f"{e.message}", path) from None
    end = probe.elf_size  # vmlinux.bin, without the relocations the build appended
    if end == len(elf):
        return probe
    probe.close()
    return ElfImage.from_bytes(memoryview(elf)[:end], path, boot)


def inflate(data: bytes, boot: BootImage, progress: Say | None = None) -> bytes | bytearray:
    """Decompress the payload, telling ``progress`` how far it got every ~10%."""
    size = mib(boot.payload_length)
    if progress is None:
        return decompress(data, boot)
    progress(f"decompressing the {boot.method} payload ({size})")
    last = [0]

    def tick(frac: float) -> None:
        step = int(frac * 10)
        if step > last[0]:
            last[0] = step
            progress(f"decompressing the {boot.method} payload ({size}): {step * 10}%")

    return decompress(data, boot, tick)


def describe_input(image: ElfImage) -> dict[str, object]:
    """What the input was and where the symbols came from, for reports (JSON-ready)."""
    boot = image.origin if isinstance(image.origin, BootImage) else None
    syms = image.symbols
    out: dict[str, object] = {"format": "ELF"} if boot is None else dict(boot.to_json())
    if boot is not None:
        out["vmlinux_size"] = image.size
    out["symbols"] = syms.source
    out["symbol_count"] = len(syms)
    return out


def input_line(image: ElfImage) -> str:
    """One line: ``bzImage (…), xz payload of 7.7 MiB → ELF of 62.9 MiB; symbols from …``."""
    boot = image.origin if isinstance(image.origin, BootImage) else None
    syms = image.symbols
    where = f"symbols from {syms.source} ({len(syms)})" if syms.source != "none" \
        else "no symbols (no .symtab, no kallsyms found; try --system-map)"
    if boot is None:
        return where
    return f"{boot.describe()} → ELF of {mib(image.size)}; {where}"
