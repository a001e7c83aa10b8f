"""``pvpatch notes``: decode the Xen ELF notes and check them as Xen's domain builders do."""

from __future__ import annotations

import json

import click

from pvpatch.cli.common import image_options, keep_until_exit, say_progress
from pvpatch.image.loader import describe_input, open_image
from pvpatch.kernel.xen_checks import run_checks
from pvpatch.kernel.xen_notes import read_xen_notes
from pvpatch.render.notes import render_checks, render_notes, to_json

EXIT_OK, EXIT_CHECK_FAILED = 0, 1


@click.command()
@click.argument("vmlinux", type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True,
              help="Also run Xen's loader checks and give a verdict per guest kind; exit 1 "
                   "if the image would load as no kind of guest.")
@image_options(types=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/notes.md).")
def notes(vmlinux: str, check: bool, system_map: str | None, as_json: bool) -> None:
    """Decode the Xen ELF notes of VMLINUX as Xen's loader (libelf) reads them.

    VMLINUX may also be a bzImage (/boot/vmlinuz-*): the notes are those of the vmlinux
    inside it, which is what Xen loads (addresses are named from its kallsyms tables).

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
      pvpatch notes vmlinux --check --json | jq '.verdicts[] | {label: .label, loads, failed}'
    """
    with open_image(vmlinux, system_map=system_map, progress=say_progress()) as image:
        keep_until_exit(image)
        xen = read_xen_notes(image)
        report = run_checks(xen) if check else None
        if as_json:
            doc = to_json(image, xen, report)
            doc["input"] = describe_input(image)
            click.echo(json.dumps(doc, indent=1))
        else:
            click.echo(render_notes(image, xen))
            if report is not None:
                click.echo("")
                click.echo(render_checks(report))
    if report is not None and not report.loads_any:
        raise click.exceptions.Exit(EXIT_CHECK_FAILED)
