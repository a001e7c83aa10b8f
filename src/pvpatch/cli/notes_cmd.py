"""``pvpatch notes``: decode the Xen ELF notes and check them as Xen's domain builders do."""

from __future__ import annotations

import json

import click

from pvpatch.image.elf import ElfImage
from pvpatch.kernel.xen_checks import run_checks
from pvpatch.kernel.xen_notes import read_xen_notes
from pvpatch.render.notes import render_checks, render_notes, to_json

EXIT_OK, EXIT_CHECK_FAILED = 0, 1


@click.command()
@click.argument("vmlinux", type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True,
              help="Also run Xen's loader checks and give a verdict per guest kind; exit 1 "
                   "if the image would load as no kind of guest.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/notes.md).")
def notes(vmlinux: str, check: bool, as_json: bool) -> None:
    """Decode the Xen ELF notes of VMLINUX as Xen's loader (libelf) reads them.

    Notes are searched where Xen searches: PT_NOTE segments, then SHT_NOTE sections if the
    segments hold no Xen note, then the legacy __xen_guest string. Each note is shown with its
    type number, its XEN_ELFNOTE_ name and its value as libelf reads it: strings up to the
    first NUL (even past descsz), numbers only for descriptor sizes 1/2/4/8, FEATURES split
    into required (!) and supported names, addresses named after their symbols.

    --check runs the checks of libelf, the toolstack (domU) and the hypervisor (dom0) and says
    whether the image loads as a PV domU, PV dom0, PVH domU and PVH dom0.

    \b
    Exit status:
      0  decoded (with --check: the image loads as at least one kind of guest)
      1  with --check: it loads as no kind of guest (e.g. no Xen notes at all)
      2  the file is not a readable x86 ELF image

    \b
    Examples:
      pvpatch notes vmlinux
      pvpatch notes vmlinux --check
      pvpatch notes vmlinux --json | jq '.notes[] | select(.name == "XEN_ELFNOTE_FEATURES")'
      pvpatch notes vmlinux --check --json | jq '.verdicts[] | {label, loads, failed}'
    """
    with ElfImage(vmlinux) as image:
        xen = read_xen_notes(image)
        report = run_checks(xen) if check else None
        if as_json:
            click.echo(json.dumps(to_json(image, xen, report), indent=1))
        else:
            click.echo(render_notes(image, xen))
            if report is not None:
                click.echo("")
                click.echo(render_checks(report))
    if report is not None and not report.loads_any:
        raise click.exceptions.Exit(EXIT_CHECK_FAILED)
