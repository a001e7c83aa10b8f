"""``pvpatch notes``: decode and check the Xen ELF notes. (Being built.)"""

from __future__ import annotations

import click


@click.command()
@click.argument("vmlinux", type=click.Path(dir_okay=False))
def notes(vmlinux: str) -> None:
    """Decode the Xen ELF notes of VMLINUX."""
    raise click.ClickException("not implemented yet")
