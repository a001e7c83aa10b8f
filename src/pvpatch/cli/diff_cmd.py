"""``pvpatch diff``: what changed at every pv site between two images of the same kernel."""

from __future__ import annotations

import json
from collections import Counter

import click

from pvpatch.cli.common import image_options, keep_until_exit, say_progress
from pvpatch.errors import InputError
from pvpatch.image.loader import open_image
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.sites import site_bytes
from pvpatch.patch.observe import observe
from pvpatch.patch.plan import OUTCOMES
from pvpatch.render.apply import patch_dict, per_op, render_ops, render_sites


@click.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("patched", type=click.Path(dir_okay=False))
@click.option("--sites", "list_sites", is_flag=True, help="List every site: before → after.")
@click.option("--changed", is_flag=True, help="With --sites, only the sites that differ.")
@image_options()
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/apply.md).")
def diff(original: str, patched: str, list_sites: bool, changed: bool, system_map: str | None,
         btf: str | None, as_json: bool) -> None:
    """Show what PATCHED holds at every paravirt site of ORIGINAL, classified.

    ORIGINAL is the unpatched vmlinux (its .parainstructions name the sites); PATCHED is any
    image of the same kernel: a `pvpatch apply` output, or one patched by another tool.
    Either may be a bzImage (/boot/vmlinuz-*); --system-map and --btf are for ORIGINAL.

    \b
    Examples:
      pvpatch diff vmlinux vmlinux.xen
      pvpatch diff vmlinux vmlinux.xen --sites --changed | less
    """
    say = say_progress()
    with KernelModel.open(original, system_map=system_map, btf=btf, progress=say) as model, \
            open_image(patched, progress=say) as other:
        keep_until_exit((model, other))
        if other.machine != model.image.machine:
            raise InputError(f"is {other.machine}, the original is {model.image.machine}",
                             patched)
        patches = []
        for s in model.sites.sites:
            before = site_bytes(model.image, s)
            after = other.try_read(s.address, s.length)
            if after is None:
                raise InputError(f"has no bytes at site {s.address:#x}: not the same kernel?",
                                 patched)
            patches.append(observe(model.image, s, before, after))
        bits = model.image.bits
        ids = {"build_id": model.image.build_id, "patched_build_id": other.build_id}
    counts = Counter(p.outcome for p in patches)
    if as_json:
        click.echo(json.dumps({
            "schema": "pvpatch.diff/1", "original": original, "patched": patched, **ids,
            "counts": dict(counts), "changed_sites": sum(p.changed for p in patches),
            "ops": {op: dict(c) for op, c in sorted(per_op(patches).items())},
            "sites": [patch_dict(p, bits) for p in patches]}))
        return
    click.echo(f"{original} → {patched}")
    click.echo(f"  sites     {len(patches)}, {sum(p.changed for p in patches)} differ")
    click.echo("  outcomes  " + ", ".join(f"{k} {counts[k]}" for k in OUTCOMES if counts[k]))
    click.echo("")
    click.echo(render_ops(patches))
    if list_sites:
        shown = [p for p in patches if p.changed] if changed else patches
        click.echo("")
        click.echo(render_sites(shown, bits))
