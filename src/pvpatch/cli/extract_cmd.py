"""``pvpatch extract``: write the vmlinux ELF that a bzImage (``/boot/vmlinuz-*``) carries."""

from __future__ import annotations

import json

import click

from pvpatch.cli.common import keep_until_exit, say_progress
from pvpatch.image.bzimage import BootImage
from pvpatch.image.loader import open_image
from pvpatch.outputs import OutputFiles
from pvpatch.patch.writer import PatchedCopy


@click.command()
@click.argument("vmlinuz", type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="OUT", required=True, help="Where to write the vmlinux.")
@click.option("--json", "as_json", is_flag=True, help="Describe the input and output as JSON.")
def extract(vmlinuz: str, output: str, as_json: bool) -> None:
    """Decompress the kernel of VMLINUZ and write it as an ELF vmlinux to OUT.

    The boot header says where the compressed kernel is (boot protocol 2.08+; older images
    are searched for a gzip payload); gzip, bzip2, lzma, xz, lz4 (legacy frames) and zstd
    are read. OUT is the vmlinux.bin the kernel build compressed: every allocated section,
    .BTF and the kallsyms tables, but no .symtab and no DWARF (they were stripped before
    compression); the boot-time relocations that follow it in the payload are not written.
    OUT is written to a temporary file and renamed into place once checked, like apply.
    If VMLINUZ is already an ELF file it is copied as it is.

    \b
    Examples:
      pvpatch extract /boot/vmlinuz-$(uname -r) -o vmlinux
      pvpatch extract vmlinuz --json -o vmlinux | jq .compression
    """
    with OutputFiles([vmlinuz]) as outs:
        target = outs.claim(output, "-o")
        image = open_image(vmlinuz, progress=say_progress())
        keep_until_exit(image)
        boot = image.origin if isinstance(image.origin, BootImage) else None
        data = None if boot is None else image.data
        with image, PatchedCopy(vmlinuz, target, data=data) as copy:
            copy.commit([])
            info: dict[str, object] = {"schema": "pvpatch.extract/1", "input": vmlinuz,
                                       "output": output, "build_id": image.build_id,
                                       "elf_class": image.bits,
                                       "machine": image.machine, "size": image.size}
            if boot is None:
                info.update({"format": "ELF", "note": "already an ELF image: copied as it is"})
            else:
                info.update(boot.to_json())
                info["dropped_trailer"] = (boot.size_hint or image.size) - image.size
        outs.commit()
    if as_json:
        click.echo(json.dumps(info))
        return
    if boot is None:
        click.echo(f"{vmlinuz} is already an ELF image: copied to {output}")
        return
    trailer = info["dropped_trailer"]
    click.echo(f"{vmlinuz}: {boot.describe()}")
    click.echo(f"  → {output}: ELF{image.bits} {image.machine} vmlinux, {image.size} bytes"
               + (f" ({trailer} bytes of boot-time relocations after it not written)"
                  if trailer else ""))
