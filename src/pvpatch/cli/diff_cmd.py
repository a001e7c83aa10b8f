"""``pvpatch diff``: what changed at every pv site between two images of the same kernel."""

from __future__ import annotations

import json
from collections import Counter

import click

from pvpatch.cli.common import cpu_options, image_options, keep_until_exit, say_progress
from pvpatch.cli.filters import filter_options, select_by_site, select_static
from pvpatch.cpu import resolve_cpu
from pvpatch.errors import InputError, UsageError
from pvpatch.image.elf import ElfImage
from pvpatch.image.loader import open_image
from pvpatch.kernel.model import KernelModel
from pvpatch.kernel.same_build import build_difference
from pvpatch.kernel.sites import site_bytes
from pvpatch.kernel.static_calls import StaticCallSite
from pvpatch.patch.boot_nops import NopChoice
from pvpatch.patch.observe import observe, observe_static_site, observe_trampoline, padded_with
from pvpatch.patch.plan import OUTCOMES, SitePatch, nop_choice
from pvpatch.patch.recognise import recognise
from pvpatch.patch.static_calls import StaticCallPatch
from pvpatch.render.apply import patch_dict, per_op, render_ops, render_sites
from pvpatch.render.nops import nops_dict
from pvpatch.render.static_calls import (
    plan_section,
    render_plan_keys,
    render_plan_lines,
    render_plan_sites,
)


@click.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("patched", type=click.Path(dir_okay=False))
@click.option("--sites", "list_sites", is_flag=True, help="List every site: before → after.")
@click.option("--changed", is_flag=True, help="With --sites, only the sites that differ.")
@filter_options("Only the rows shown (op table, --sites, --json's sites and ops) are "
                "narrowed; the counts are of every site.")
@cpu_options()
@image_options()
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/apply.md).")
def diff(original: str, patched: str, list_sites: bool, changed: bool, ops: tuple[str, ...],
         functions: tuple[str, ...], cpu_spec: str | None, cpuinfo: str | None,
         system_map: str | None, btf: str | None, as_json: bool) -> None:
    """Show what PATCHED holds at every paravirt site of ORIGINAL, classified.

    ORIGINAL is the unpatched vmlinux (its .parainstructions name the sites, its
    .static_call_sites and __SCT__ symbols the pv static calls); PATCHED is an image of the
    same build: a `pvpatch apply` output, or one patched by another tool. Two builds are
    refused (exit 2): by build-id when both carry one, else by linux_banner and section
    layout. Either may be a bzImage (/boot/vmlinuz-*); --system-map and --btf are for
    ORIGINAL.

    The padding is judged against the NOP table ORIGINAL's kernel pads with on the boot CPU
    (--cpu/--cpuinfo; up to 5.12 it depends on the CPU), and that table's NOPs count as NOPs.

    \b
    Examples:
      pvpatch diff vmlinux vmlinux.xen
      pvpatch diff vmlinux vmlinux.xen --sites --changed | less
      pvpatch diff vmlinux vmlinux.xen --op 'irq.*' --json | jq '.sites[].after_text'
      pvpatch diff vmlinux-5.10 vmlinux.qemu64 --cpu amd:15:107    padded with K8 NOPs?
    """
    if changed and not list_sites:
        raise UsageError("--changed narrows the --sites listing: add --sites")
    if list_sites and as_json:
        raise UsageError("--sites lists sites in the text output; the --json document always "
                         "has every site: drop --sites")
    cpu = resolve_cpu(cpu_spec, cpuinfo)
    say = say_progress()
    with KernelModel.open(original, system_map=system_map, btf=btf, progress=say) as model, \
            open_image(patched, progress=say) as other:
        keep_until_exit((model, other))
        _same_build(model.image, other, original, patched)
        recognised = recognise(model)
        if recognised is not None:
            raise InputError(recognised.refusal(original, "diff needs the unpatched vmlinux "
                                                          "as ORIGINAL"))
        nops = nop_choice(model, cpu)
        patches = _observe_all(model, other, nops)
        statics = _observe_static_calls(model, other)
        bits = model.image.bits
        ids = {"build_id": model.image.build_id, "patched_build_id": other.build_id}
    shown = select_by_site(patches, lambda x: x.site, ops, functions)
    shown_static = select_static(statics, ops, functions)
    counts = Counter(p.outcome for p in patches)
    padding = padding_counts(patches, nops, bits)
    if as_json:
        click.echo(json.dumps({
            "schema": "pvpatch.diff/1", "original": original, "patched": patched, **ids,
            "nops": nops_dict(nops), "padding": padding,
            "counts": dict(counts), "changed_sites": sum(p.changed for p in patches),
            "selected": len(shown),
            "ops": {op: dict(c) for op, c in sorted(per_op(shown).items())},
            "sites": [patch_dict(p, bits) for p in shown],
            "static_calls": plan_section(shown_static, bits, [])}))
        return
    click.echo(f"{original} → {patched}")
    click.echo(f"  sites     {len(patches)}, {sum(p.changed for p in patches)} differ"
               + ("" if shown is patches else f"; {len(shown)} shown (--op/--function)"))
    click.echo("  outcomes  " + ", ".join(f"{k} {counts[k]}" for k in OUTCOMES if counts[k]))
    for line in render_plan_lines(statics, []):
        click.echo(line)
    click.echo(f"  padding   {padding['as_table']} sites padded with {nops.table.name} NOPs, "
               f"{padding['other']} otherwise, {padding['not_judged']} not judged (unchanged or "
               "no padding)")
    click.echo(f"  nops      {nops.why}")
    click.echo("")
    click.echo(render_ops(shown))
    if shown_static:
        click.echo("")
        click.echo(render_plan_keys(shown_static))
    if list_sites:
        listed = [p for p in shown if p.changed] if changed else shown
        click.echo("")
        click.echo(render_sites(listed, bits))
        listed_static = [p for p in shown_static if p.changed] if changed else shown_static
        if listed_static:
            click.echo("")
            click.echo(render_plan_sites(listed_static, bits))


def _same_build(image: ElfImage, other: ElfImage, original: str, patched: str) -> None:
    """Refuse two builds: every site of another build would 'differ' (docs/apply.md)."""
    if other.machine != image.machine:
        raise InputError(f"{patched} is {other.machine}, {original} is {image.machine}")
    why = build_difference(image, other)
    if why is not None:
        raise InputError(f"{patched} is not the build of {original} ({why}): diff compares "
                         "two images of one build")


def _observe_all(model: KernelModel, other: ElfImage, nops: NopChoice) -> list[SitePatch]:
    out = []
    for s in model.sites.sites:
        after = other.try_read(s.address, s.length)
        if after is None:
            raise InputError(f"has no bytes at site {s.address:#x}: not the same kernel?",
                             other.path)
        out.append(observe(model.image, s, site_bytes(model.image, s), after, nops.table))
    return out


def _observe_static_calls(model: KernelModel, other: ElfImage) -> list[StaticCallPatch]:
    """What PATCHED holds at each pv static-call site and trampoline of ORIGINAL."""
    out = []
    table = model.static_calls
    spans = [(s.address, s.length, s) for s in table.sites] + \
        [(k.tramp, 5, k) for k in table.keys.values() if k.tramp is not None and k.tramp_code]
    for address, length, what in spans:
        after = other.try_read(address, length)
        if after is None:
            raise InputError(f"has no bytes at static call {address:#x}: not the same kernel?",
                             other.path)
        observe_one = observe_static_site if isinstance(what, StaticCallSite) else \
            observe_trampoline
        out.append(observe_one(model.image, what, after))
    return out


def padding_counts(patches: list[SitePatch], nops: NopChoice, bits: int) -> dict:
    """How many changed sites are padded with the expected table, and which are not."""
    judged = [(p, padded_with(p, nops.table, bits)) for p in patches]
    other = [p for p, ok in judged if ok is False]
    return {"table": nops.table.name,
            "as_table": sum(ok is True for _, ok in judged), "other": len(other),
            "not_judged": sum(ok is None for _, ok in judged),
            "other_sites": [f"{p.site.address:#x}" for p in other[:100]]}
