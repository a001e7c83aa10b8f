"""``pvpatch inspect``: what paravirt sites a kernel has and where each op goes natively."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from pvpatch.backends import BACKENDS, VCPU_BACKENDS, load_backend
from pvpatch.cli.common import (
    cpu_options,
    given,
    guest_options,
    image_options,
    keep_until_exit,
    make_guest_options,
    refuse_inapplicable_guest_options,
    say_progress,
)
from pvpatch.cli.filters import select, select_static_keys, select_static_sites
from pvpatch.cpu import resolve_cpu
from pvpatch.errors import UsageError
from pvpatch.image.loader import describe_input, input_line
from pvpatch.kernel.model import KernelModel
from pvpatch.render.inspect import inspect_dict, render_all_sites, render_summary
from pvpatch.types.loader import describe_types

if TYPE_CHECKING:
    from pvpatch.cpu import Cpu
    from pvpatch.patch.boot_nops import NopChoice
    from pvpatch.patch.recognise import Recognition


@click.command()
@click.argument("vmlinux", type=click.Path(dir_okay=False))
@click.option("--sites", "list_sites", is_flag=True,
              help="List every site, not just the summary (with --json: add the sites array).")
@click.option("--op", "ops", multiple=True, metavar="GLOB",
              help="Only sites of ops matching GLOB (e.g. 'irq.*', 'cpu.cpuid'); repeatable.")
@click.option("--function", "functions", multiple=True, metavar="GLOB",
              help="Only sites inside functions matching GLOB (e.g. 'native_*'); repeatable.")
@click.option("--layout", metavar="NAME",
              help="Force a .parainstructions record layout instead of detecting it "
                   "(e.g. x86_64+stale-clobbers, i386+clobbers).")
@click.option("--backend", type=click.Choice(BACKENDS),
              help="Also resolve every op for a backend and say why it gets that target.")
@click.option("--vcpus", type=click.IntRange(1, 4096), default=2, show_default=True,
              help="Xen, KVM, Hyper-V, VMware: vCPUs the guest boots with.")
@guest_options()
@cpu_options()
@image_options()
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/inspect.md).")
def inspect(vmlinux: str, list_sites: bool, ops: tuple[str, ...], functions: tuple[str, ...],
            layout: str | None, backend: str | None, vcpus: int, cpu_spec: str | None,
            cpuinfo: str | None, system_map: str | None, btf: str | None,
            as_json: bool, **guest: str | None) -> None:
    """Show the paravirt call sites of VMLINUX and where each pv op points natively.

    VMLINUX may also be a bzImage (/boot/vmlinuz-*): its compressed vmlinux is read, with
    symbols from its kallsyms tables (or --system-map) and types from its .BTF (or --btf).

    The summary gives the kernel version, the .parainstructions record layout and how it was
    detected, the number of sites per section, and one row per op: how many sites call it and
    which function the image's own pv_ops initialiser holds for it. The pv static calls
    (pv_steal_clock, pv_sched_clock, xen_hypercall, 7.3's spinlock hooks) follow as sites of
    their own kind: one row per key with its sites and trampoline; --op also takes their names.

    \b
    Examples:
      pvpatch inspect vmlinux
      pvpatch inspect vmlinux --sites --op 'irq.*'
      pvpatch inspect vmlinux --sites --function 'native_flush_tlb*'
      pvpatch inspect vmlinux --backend xen --vcpus 1     every op's Xen target and why
      pvpatch inspect vmlinux --backend kvm --kvm-features steal_time,pv_unhalt
      pvpatch inspect vmlinux-5.10 --backend native --cpu amd:15:107   and its NOP table
      pvpatch inspect vmlinux --json | jq '.ops[] | select(.native_target == "NULL")'
      pvpatch inspect vmlinux --json --sites | jq '.sites[] | select(.op == "cpu.cpuid")'
      pvpatch inspect /boot/vmlinuz-$(uname -r) --btf /sys/kernel/btf/vmlinux
    """
    if (cpu_spec or cpuinfo) and not backend:
        raise UsageError(f"{'--cpu' if cpu_spec else '--cpuinfo'} only means something with "
                         "--backend (the boot it plans pads with that CPU's NOPs)")
    if given("vcpus") and backend not in VCPU_BACKENDS:
        raise UsageError(f"--vcpus is the vCPU count of a guest: it needs --backend "
                         f"{', '.join(VCPU_BACKENDS[:-1])} or {VCPU_BACKENDS[-1]}")
    refuse_inapplicable_guest_options(guest, [backend] if backend else [])
    cpu = resolve_cpu(cpu_spec, cpuinfo)
    options = make_guest_options(**guest, cpu=cpu)
    with KernelModel.open(vmlinux, layout, system_map=system_map, btf=btf,
                          progress=say_progress()) as model:
        keep_until_exit(model)
        if layout and model.records is None:
            raise UsageError(f"--layout: {vmlinux} has no .parainstructions (6.8+ kernels "
                             "record pv calls in .altinstructions): no record layout to force")
        patched = _recognised(model)
        sites = select(model.sites.sites, ops, functions)
        static_sites = select_static_sites(model.static_calls.sites, ops, functions)
        static_keys = select_static_keys(model.static_calls.keys, static_sites, ops, functions)
        be = load_backend(model, backend, vcpus, options) if backend else None
        nops = _nops(model, cpu) if backend else None
        if as_json:
            doc = inspect_dict(model, sites, be, with_sites=list_sites,
                               static_sites=static_sites, nops=nops, patched=patched,
                               static_keys=static_keys)
            doc["input"] = describe_input(model.image)
            doc["input"]["types"] = model_types(model, btf)
            click.echo(json.dumps(doc))
            return
        head, _, rest = render_summary(model, sites, be, static_sites, nops, patched,
                                       static_keys).partition("\n")
        click.echo("\n".join([head, f"  input     {input_line(model.image)}",
                              f"  types     {model_types(model, btf)}", rest]))
        if list_sites:
            click.echo("")
            click.echo(render_all_sites(model, sites, static_sites, be))


def _nops(model: KernelModel, cpu: Cpu) -> NopChoice:
    """The padding a --backend boot uses (imported here: plain inspect never plans)."""
    from pvpatch.patch.plan import nop_choice

    return nop_choice(model, cpu)


def _recognised(model: KernelModel) -> Recognition | None:
    """Which configuration an already-patched image matches (its 6.8+ sites then get their
    slots back). A pristine image pays nothing, not even the planner's import (capstone)."""
    if model.sites.patched is None:
        return None
    from pvpatch.patch.recognise import recognise, restore_slots

    found = recognise(model)
    if found is not None:
        restore_slots(model, found)
    return found


def model_types(model: KernelModel, btf: str | None) -> str:
    b = model.builtin
    return describe_types(model.types, btf, b.described if b else None,
                          b.detail if b and b.table else None)

