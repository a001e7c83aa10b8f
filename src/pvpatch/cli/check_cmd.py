"""``pvpatch check``: every defect pvpatch can see in an image, for CI (docs/check.md)."""

from __future__ import annotations

import json

import click

from pvpatch.backends import VCPU_BACKENDS
from pvpatch.checks.baseline import Baseline, KernelKind, load_baseline, mark_known
from pvpatch.checks.model import SEVERITIES
from pvpatch.checks.runner import CheckRun, parse_backends, run_checks
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
from pvpatch.cpu import resolve_cpu
from pvpatch.errors import UsageError
from pvpatch.kernel.model import KernelModel
from pvpatch.outputs import OutputFiles
from pvpatch.render.check import check_dict, failing, render_junit, render_text, verdict_line

EXIT_OK, EXIT_FAILED = 0, 1


@click.command()
@click.argument("vmlinux", type=click.Path(dir_okay=False))
@click.option("--backend", "backends", metavar="LIST",
              help="Comma-separated backends to check for: native, xen, kvm, hyperv, vmware, "
                   "lguest.  [default: native,xen; xen is skipped for kernels built "
                   "without it]")
@click.option("--vcpus", type=click.IntRange(1, 4096), default=2, show_default=True,
              help="Xen, KVM, Hyper-V, VMware: vCPUs the guest boots with (1 keeps native "
                   "spinlocks under Xen and KVM). Giving it asks for those backends: a kernel "
                   "without Xen PV is then an error, not a skipped backend.")
@guest_options()
@click.option("--format", "fmt", type=click.Choice(("text", "json", "junit")), default="text",
              show_default=True, help="Report format (json: schema pvpatch.check/1).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "--output", metavar="FILE",
              help="Write the report to FILE and only the verdict to stdout.")
@click.option("--fail-on", type=click.Choice(SEVERITIES), default="error", show_default=True,
              help="Lowest severity of a new finding that makes the exit status 1.")
@click.option("--baseline", metavar="OLD",
              help="An earlier image or --format json report: its findings become 'known' "
                   "and do not count toward the exit status.")
@cpu_options()
@image_options()
def check(vmlinux: str, backends: str | None, vcpus: int, fmt: str, as_json: bool,
          output: str | None, fail_on: str, baseline: str | None, cpu_spec: str | None,
          cpuinfo: str | None, system_map: str | None, btf: str | None,
          **guest: str | None) -> None:
    """Check the paravirt sites, slots, alternatives and Xen notes of VMLINUX.

    Each finding names its check id, severity, backend, site (address, function+offset, op)
    and what is wrong; docs/check.md lists every check.

    \b
    Exit status:
      0  no new finding at or above --fail-on
      1  at least one
      2  bad usage or an unreadable image / baseline

    \b
    Examples:
      pvpatch check vmlinux
      pvpatch check vmlinux --backend xen --vcpus 1 --fail-on warning
                                        warnings fail too: exits 1 on Debian 6.1 (NULL Xen slots)
      pvpatch check vmlinux-5.10 --cpu intel:6:94       pre-5.13: plan for that boot CPU
      pvpatch check vmlinux --format junit -o pvpatch-junit.xml
      pvpatch check vmlinux --json -o old.json; pvpatch check new/vmlinux --baseline old.json
    """
    if as_json and given("fmt") and fmt != "json":
        raise UsageError(f"--json and --format {fmt} exclude each other")
    fmt = "json" if as_json else fmt
    names, explicit = parse_backends(backends)
    if given("vcpus") and not set(VCPU_BACKENDS) & set(names):
        raise UsageError("--vcpus is the vCPU count of a guest: it needs xen, kvm, hyperv or "
                         "vmware in --backend")
    refuse_inapplicable_guest_options(guest, names)
    explicit = explicit or given("vcpus")  # asks for a guest: never skipped without a word
    cpu = resolve_cpu(cpu_spec, cpuinfo)
    options = make_guest_options(**guest, cpu=cpu)
    with OutputFiles([vmlinux, baseline, system_map, btf, cpuinfo]) as outs:
        target = outs.claim(output, "-o") if output else None
        with KernelModel.open(vmlinux, system_map=system_map, btf=btf,
                               progress=say_progress()) as model:
            keep_until_exit(model)
            run = run_checks(model, names, vcpus, explicit, cpu, options)
        base = load_baseline(baseline, names, vcpus, cpu,
                             KernelKind(vmlinux, run.machine, run.release)) if baseline else None
        run.findings = mark_known(run.findings, base)
        report = _render(fmt, run, fail_on, base)
        if target is not None:
            target.write_text(report)
        outs.commit()
    if output:
        click.echo(f"pvpatch check: {verdict_line(run, fail_on)} (report: {output})")
    else:
        click.echo(report, nl=not report.endswith("\n"))
    if failing(run.findings, fail_on):
        raise click.exceptions.Exit(EXIT_FAILED)


def _render(fmt: str, run: CheckRun, fail_on: str, base: Baseline | None) -> str:
    """The report text in the chosen format (JSON and JUnit end with a newline)."""
    if fmt == "json":
        return json.dumps(check_dict(run, fail_on, base), indent=1) + "\n"
    if fmt == "junit":
        return render_junit(run, fail_on)
    return render_text(run, fail_on, base)
