"""``pvpatch diff``: what changed at every pv site between two images of the same kernel."""

from __future__ import annotations

import json
from collections import Counter

import click

from pvpatch.cli.common import image_options, keep_until_exit, say_progress
from pvpatch.cli.filters import filter_options, select_by_site
from pvpatch.errors import InputError, UsageError
from pvpatch.image.elf import ElfImage
from pvpatch.image.loader import open_image
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.same_build import build_difference
from pvpatch.kernel.sites import site_bytes
from pvpatch.patch.observe import observe
from pvpatch.patch.plan import OUTCOMES, SitePatch
from pvpatch.patch.recognise import recognise
from pvpatch.render.apply import patch_dict, per_op, render_ops, render_sites


@click.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("patched", type=click.Path(dir_okay=False))
@click.option("--sites", "list_sites", is_flag=True, help="List every site: before → after.")
@click.option("--changed", is_flag=True, help="With --sites, only the sites that differ.")
@filter_options("Only the rows shown (op table, --sites, --json's sites and ops) are "
                "narrowed; the counts are of every site.")
@image_options()
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/apply.md).")
def diff(original: str, patched: str, list_sites: bool, changed: bool, ops: tuple[str, ...],
         functions: tuple[str, ...], system_map: str | None, btf: str | None,
         as_json: bool) -> None:
    """Show what PATCHED holds at every paravirt site of ORIGINAL, classified.

    ORIGINAL is the unpatched vmlinux (its .parainstructions name the sites); PATCHED is an
    image of the same build: a `pvpatch apply` output, or one patched by another tool. Two
    builds are refused (exit 2): by build-id when both carry one, else by linux_banner and
    section layout. Either may be a bzImage (/boot/vmlinuz-*); --system-map and --btf are
    for ORIGINAL.

    \b
    Examples:
      pvpatch diff vmlinux vmlinux.xen
      pvpatch diff vmlinux vmlinux.xen --sites --changed | less
      pvpatch diff vmlinux vmlinux.xen --op 'irq.*' --json | jq '.sites[].after_text'
    """
    if changed and not list_sites:
        raise UsageError("--changed narrows the --sites listing: add --sites")
    if list_sites and as_json:
        raise UsageError("--sites lists sites in the text output; the --json document always "
                         "has every site: drop --sites")
    say = say_progress()
    with KernelModel.open(original, system_map=system_map, btf=btf, progress=say) as model, \
            open_image(patched, progress=say) as other:
        keep_until_exit((model, other))
        _same_build(model.image, other, original, patched)
        recognised = recognise(model)
        if recognised is not None:
            raise InputError(recognised.refusal(original, "diff needs the unpatched vmlinux "
                                                          "as ORIGINAL"))
        patches = _observe_all(model, other)
        bits = model.image.bits
        ids = {"build_id": model.image.build_id, "patched_build_id": other.build_id}
    shown = select_by_site(patches, lambda x: x.site, ops, functions)
    counts = Counter(p.outcome for p in patches)
    if as_json:
        click.echo(json.dumps({
            "schema": "pvpatch.diff/1", "original": original, "patched": patched, **ids,
            "counts": dict(counts), "changed_sites": sum(p.changed for p in patches),
            "selected": len(shown),
            "ops": {op: dict(c) for op, c in sorted(per_op(shown).items())},
            "sites": [patch_dict(p, bits) for p in shown]}))
        return
    click.echo(f"{original} → {patched}")
    click.echo(f"  sites     {len(patches)}, {sum(p.changed for p in patches)} differ"
               + ("" if shown is patches else f"; {len(shown)} shown (--op/--function)"))
    click.echo("  outcomes  " + ", ".join(f"{k} {counts[k]}" for k in OUTCOMES if counts[k]))
    click.echo("")
    click.echo(render_ops(shown))
    if list_sites:
        listed = [p for p in shown if p.changed] if changed else shown
        click.echo("")
        click.echo(render_sites(listed, bits))


def _same_build(image: ElfImage, other: ElfImage, original: str, patched: str) -> None:
    """Refuse two builds: every site of another build would 'differ' (docs/apply.md)."""
    if other.machine != image.machine:
        raise InputError(f"{patched} is {other.machine}, {original} is {image.machine}")
    why = build_difference(image, other)
    if why is not None:
        raise InputError(f"{patched} is not the build of {original} ({why}): diff compares "
                         "two images of one build")


def _observe_all(model: KernelModel, other: ElfImage) -> list[SitePatch]:
    out = []
    for s in model.sites.sites:
        after = other.try_read(s.address, s.length)
        if after is None:
            raise InputError(f"has no bytes at site {s.address:#x}: not the same kernel?",
                             other.path)
        out.append(observe(model.image, s, site_bytes(model.image, s), after))
    return out
