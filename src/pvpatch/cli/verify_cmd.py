"""``pvpatch verify``: does a running or crashed kernel hold, at every pv site, what it should?"""

from __future__ import annotations

import json

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
from pvpatch.cpu import resolve_cpu
from pvpatch.errors import UsageError
from pvpatch.image.memory import open_memory
from pvpatch.kernel.model import KernelModel
from pvpatch.render.verify import render_text, verify_dict

EXIT_OK, EXIT_UNEXPECTED = 0, 1


@click.command()
@click.argument("vmlinux", type=click.Path(dir_okay=False))
@click.argument("memory", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(BACKENDS),
              help="Compare with this backend's boot only.  [default: every backend the "
                   "image supports]")
@click.option("--vcpus", type=click.IntRange(1, 4096), default=2, show_default=True,
              help="Xen, KVM, Hyper-V, VMware: the vCPU count tried beside 1 (with --backend: "
                   "the only one).")
@guest_options()
@click.option("--raw-start", "raw_start", metavar="ADDR",
              help="MEMORY is raw bytes, the first at virtual address ADDR (hex), e.g. a "
                   "pmemsave of the kernel's .text.")
@click.option("--sites", "list_sites", is_flag=True,
              help="List every compared place: matched or unexpected.")
@click.option("--text", "whole_text", is_flag=True,
              help="Also compare every .text byte no patch table names (an integrity check; "
                   "~0.4 s more on a Debian kernel).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/verify.md).")
@cpu_options()
@image_options()
def verify(vmlinux: str, memory: str, backend: str | None, vcpus: int, raw_start: str | None,
           list_sites: bool, whole_text: bool, as_json: bool, cpu_spec: str | None,
           cpuinfo: str | None, system_map: str | None, btf: str | None,
           **guest: str | None) -> None:
    """Check that MEMORY holds, at every pv site of VMLINUX, what boot patching writes.

    MEMORY is an ELF core — /proc/kcore, a kdump vmcore, QEMU's or libvirt's
    dump-guest-memory — or, with --raw-start, raw bytes of kernel virtual memory. The kernel
    is found in it (its KASLR slide from VMCOREINFO, or by content), refused if it is another
    build, and every .text pv site, pv static-call site and trampoline is compared with what
    each configuration leaves there: native, Xen with 1 and with --vcpus vCPUs — and, when
    neither matches every place, KVM, Hyper-V, VMware (and lguest) guests with their
    default facts or the options given — and before 5.13, without --cpu, each CPU class
    whose NOP table differs. The configuration matching
    the most places is the verdict; places it does not match are listed with both bytes and
    disassemblies. Text freed after boot (.init.text) is not compared.

    \b
    Exit status:
      0  one configuration matches every place
      1  some place holds what the best-matching configuration does not
      2  bad input: unreadable image or memory, or memory of another build

    \b
    Examples:
      sudo pvpatch verify /usr/lib/debug/boot/vmlinux-$(uname -r) /proc/kcore
      pvpatch verify vmlinux vmcore                          a crash dump
      pvpatch verify vmlinux guest.core --backend xen --vcpus 4
      pvpatch verify vmlinux text.bin --raw-start 0xffffffff81000000 --json
    """
    if given("vcpus") and backend is not None and backend not in VCPU_BACKENDS:
        raise UsageError(f"--vcpus is the vCPU count of a guest: --backend {backend} has none")
    refuse_inapplicable_guest_options(guest, [backend] if backend else list(BACKENDS))
    cpu = resolve_cpu(cpu_spec, cpuinfo) if cpu_spec or cpuinfo else None
    options = make_guest_options(**guest, cpu=cpu)
    start = _address(raw_start) if raw_start is not None else None
    from pvpatch.verify.run import verify as run_verify

    with KernelModel.open(vmlinux, system_map=system_map, btf=btf,
                          progress=say_progress()) as model, \
            open_memory(memory, start, model.image.bits) as mem:
        keep_until_exit(model)
        progress("placing the kernel in memory and planning every configuration")
        v = run_verify(model, mem, backend=backend, vcpus=vcpus, cpu=cpu, text=whole_text,
                       options=options)
        symbols = model.image.symbols
        if as_json:
            click.echo(json.dumps(verify_dict(v, symbols, list_sites)))
        else:
            click.echo(render_text(v, symbols, list_sites))
    if not v.ok:
        raise click.exceptions.Exit(EXIT_UNEXPECTED)


def _address(text: str) -> int:
    """``--raw-start``: hex with or without 0x (addresses are always written in hex)."""
    try:
        value = int(text, 16)
    except ValueError:
        raise UsageError(f"--raw-start takes a hex address (got {text!r})") from None
    if not 0 < value < 1 << 64:
        raise UsageError(f"--raw-start {text} is not a 64-bit address")
    return value
