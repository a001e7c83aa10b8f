"""``pvpatch apply``: write the kernel as it looks after patching itself at boot."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING

import click

from pvpatch.backends import BACKENDS, VCPU_BACKENDS
from pvpatch.cli.common import (
    cpu_options,
    given,
    guest_options,
    image_options,
    keep_until_exit,
    make_guest_options,
    progress,
    refuse_inapplicable_guest_options,
    say_progress,
)
from pvpatch.cli.filters import filter_options, select_by_site, select_static
from pvpatch.cpu import resolve_cpu
from pvpatch.errors import InputError, UsageError
from pvpatch.image.elf import is_elf
from pvpatch.outputs import OutputFiles
from pvpatch.patch.writer import PatchedCopy

if TYPE_CHECKING:
    from pvpatch.patch.plan import SitePatch


@click.command()
@click.argument("vmlinux", type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="OUT", help="Where to write the patched ELF.")
@click.option("--backend", type=click.Choice(BACKENDS), default="native", show_default=True,
              help="Whose boot to reproduce: bare metal, a Xen PV guest, or a KVM, Hyper-V, "
                   "VMware or lguest guest (docs/backends.md).")
@click.option("--vcpus", type=click.IntRange(1, 4096), default=2, show_default=True,
              help="Xen, KVM, Hyper-V, VMware: vCPUs the guest boots with (with 1 Xen and KVM "
                   "keep native spinlocks).")
@guest_options()
@click.option("--dry-run", is_flag=True, help="Plan and report, write nothing.")
@click.option("--in-place", is_flag=True, help="Replace VMLINUX itself (atomically).")
@click.option("--report", "report_path", metavar="FILE.json",
              help="Also write the full JSON report to FILE.json.")
@click.option("--sites", "list_sites", is_flag=True, help="List every site: before → after.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report (docs/apply.md).")
@click.option("--check", is_flag=True,
              help="Exit 1 if any site has a problem (unmodelled alternative, clobber "
                   "violation, replacement too long, a static-call record the kernel refuses).")
@filter_options("Every site is still patched; only what is printed (the op table, --sites, "
                "--json's sites and ops) is narrowed, never the --report file.")
@cpu_options()
@image_options()
def apply(vmlinux: str, output: str | None, backend: str, vcpus: int, dry_run: bool,
          in_place: bool, report_path: str | None, list_sites: bool, as_json: bool,
          check: bool, ops: tuple[str, ...], functions: tuple[str, ...],
          cpu_spec: str | None, cpuinfo: str | None, system_map: str | None,
          btf: str | None, **guest: str | None) -> None:
    """Rewrite the paravirt call sites of VMLINUX exactly as the kernel does at boot.

    Each indirect `call *pv_ops+N(%rip)` becomes what the running kernel holds after
    apply_paravirt() and apply_alternatives(): a direct call, NOPs, the native inline
    instruction, or a call to the BUG function. The pv static calls (pv_steal_clock,
    pv_sched_clock, xen_hypercall, 7.3's spinlock hooks) get what static_call_init() and the
    backend's updates write: each site a direct call (or jmp, or inline code), each
    trampoline retargeted where the key changed. Only those bytes change; the result is
    verified and renamed into place, and the input is never modified (unless --in-place).

    \b
    VMLINUX may be a bzImage (/boot/vmlinuz-*): the output is then the patched vmlinux ELF
    inside it (repacking a bzImage is not supported), and --in-place is refused.

    \b
    Examples:
      pvpatch apply vmlinux -o vmlinux.native
      pvpatch apply vmlinux -o vmlinux.xen --backend xen --vcpus 1
      pvpatch apply vmlinux -o vmlinux.kvm --backend kvm --kvm-features steal_time,pv_unhalt
      pvpatch apply vmlinux-5.10 -o vmlinux.qemu64 --cpu amd:15:107    pre-5.13: NOPs by CPU
      pvpatch apply vmlinux-5.10 --dry-run --cpuinfo /proc/cpuinfo
      pvpatch apply vmlinux --backend xen --dry-run --sites --op 'lock.*'
      pvpatch apply vmlinux --dry-run --json | jq '.counts'
      pvpatch apply /boot/vmlinuz-$(uname -r) -o vmlinux.xen --backend xen
    """
    if not dry_run and not output and not in_place:
        raise UsageError("say where to write: -o OUT, --in-place, or --dry-run")
    if in_place and output:
        raise UsageError("--in-place and -o exclude each other")
    if dry_run and (output or in_place):
        raise UsageError(f"--dry-run writes nothing: drop {'-o' if output else '--in-place'}")
    if given("vcpus") and backend not in VCPU_BACKENDS:
        raise UsageError(f"--vcpus is the vCPU count of a guest: it needs --backend "
                         f"{', '.join(VCPU_BACKENDS[:-1])} or {VCPU_BACKENDS[-1]}")
    refuse_inapplicable_guest_options(guest, [backend])
    if list_sites and as_json:
        raise UsageError("--sites lists sites in the text output; the --json report always "
                         "has every site: drop --sites")
    cpu = resolve_cpu(cpu_spec, cpuinfo)
    options = make_guest_options(**guest, cpu=cpu)
    target = vmlinux if in_place else output
    with OutputFiles([vmlinux, system_map, btf, cpuinfo]) as outs:
        elf = None if target is None else outs.claim(
            target, "--in-place" if in_place else "-o", replaces_input=in_place,
            hint="use --in-place to replace it")
        rep = outs.claim(report_path, "--report") if report_path else None
        with contextlib.ExitStack() as stack:
            # the kernel copies the image while it is read and planned; an earlier output
            # at -o stays until the input is validated. An ELF is copied from the start,
            # a bzImage once the vmlinux is out of it.
            copy = None if elf is None or not is_elf(vmlinux) else stack.enter_context(
                PatchedCopy(vmlinux, elf, validated=False))
            # the model's modules load while the kernel copies (~50 ms of imports)
            from pvpatch.backends import load_backend
            from pvpatch.disasm import preload
            from pvpatch.image.bzimage import BootImage
            from pvpatch.image.loader import describe_input
            from pvpatch.kernel.model import KernelModel
            from pvpatch.parallel import Stream
            from pvpatch.patch.plan import nop_choice, plan, read_ahead
            from pvpatch.patch.recognise import recognise
            from pvpatch.patch.writer import file_pokes
            from pvpatch.render.apply import plan_dict

            model = stack.enter_context(KernelModel.open(vmlinux, system_map=system_map,
                                                         btf=btf, progress=say_progress()))
            keep_until_exit(model)
            boot = model.image.origin if isinstance(model.image.origin, BootImage) else None
            if boot is not None and in_place:
                raise UsageError(f"{vmlinux} is a bzImage: --in-place would replace it with "
                                 "an ELF vmlinux; write the result elsewhere with -o")
            if elf is not None and copy is None:
                data = None if boot is None else model.image.data  # the vmlinux inside it
                copy = stack.enter_context(PatchedCopy(vmlinux, elf, data=data,
                                                       validated=False))
            progress("resolving the backend and planning")
            # a guest backend reads its start-up code (Xen's: dozens of functions decoded):
            # a worker process does that while this one reads the sites
            if backend != "native":
                _ = model.era, model.static_call_keys  # what both sides read: symbols,
                # version, types, the pv-op table, the pv static-call keys
                preload(model.image.bits)  # and both decode with capstone
            resolving = None if backend == "native" else stack.enter_context(
                Stream([lambda: load_backend(model, backend, vcpus, options)]))
            patched = recognise(model)
            if patched is not None:
                raise InputError(patched.refusal(vmlinux, "apply needs the unpatched vmlinux"))
            nops = nop_choice(model, cpu)
            _ = model.alternatives  # what the plan reads, read while the worker resolves
            read_ahead(model, nops)
            be = load_backend(model, backend, vcpus, options) if resolving is None \
                else next(resolving)
            if copy is not None:  # the input is good (read_ahead has what plan refuses)
                copy.validated()
            p = plan(model, be, model.alternatives, nops)
            changes = p.changes()
            pokes = file_pokes(model.image, changes)
            bits = model.image.bits
            report = None
            if as_json or rep:
                report = plan_dict(p, bits, {"input": vmlinux, "output": target,
                                             "build_id": model.image.build_id,
                                             "relocations": "kept as built (docs/apply.md)",
                                             "input_format": describe_input(model.image),
                                             "output_format": "ELF vmlinux"})
            if copy is not None:
                progress(f"writing {target}")
                copy.commit(pokes)
        if rep is not None:
            rep.write_text(json.dumps(report, indent=1))
        outs.commit()
    from pvpatch.render.apply import render_sites, render_summary
    from pvpatch.render.static_calls import render_plan_sites

    shown = select_by_site(p.patches, lambda x: x.site, ops, functions)
    if as_json:
        click.echo(json.dumps(report if shown is p.patches else
                              narrowed(report, shown, bits, ops, functions)))
    else:
        head = [f"{vmlinux}" + ("" if dry_run else f" → {target}")]
        if boot is not None:
            head.append(f"  input     {boot.describe()}"
                        + ("" if dry_run else "; written: the patched vmlinux ELF, "
                                              "not a bzImage"))
        head.append(f"  sites     {len(p.patches)}, {sum(x.changed for x in p.patches)} changed"
                    + (" (dry run: nothing written)" if dry_run else ""))
        if shown is not p.patches:
            head.append(f"  shown     {len(shown)} of them (--op/--function)")
        click.echo(render_summary(p, head, shown))
        if list_sites:
            click.echo("")
            click.echo(render_sites(shown, bits))
            statics = select_static(p.static_calls, ops, functions)
            if statics:
                click.echo("")
                click.echo(render_plan_sites(statics, bits))
    if check and any(x.problems for x in [*p.patches, *p.static_calls]):
        sys.exit(1)


def narrowed(report: dict, shown: list[SitePatch], bits: int, ops: tuple[str, ...],
             functions: tuple[str, ...]) -> dict:
    """The report with only the selected sites in ``sites`` and ``ops`` (counts stay whole)."""
    from pvpatch.render.apply import patch_dict, per_op

    return {**report, "selected": len(shown), "filter": {"op": list(ops), "function":
                                                         list(functions)},
            "ops": {op: dict(c) for op, c in sorted(per_op(shown).items())},
            "sites": [patch_dict(x, bits) for x in shown]}
