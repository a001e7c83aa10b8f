#!/usr/bin/env python3
"""``make boot-test``: boot real kernels, then hold ``pvpatch apply`` to what they hold.

For the generic Debian kernel (native, Xen PV dom0 with 1 and with 2 vCPUs) and the cloud
kernel (native): fetch it, boot it under QEMU and dump its patched .text (boot.py; cached per
kernel release, --refresh reboots), write ``pvpatch apply VMLINUX -o OUT --backend B
[--vcpus N] --cpu C`` (C: the CPU QEMU showed the guest) and compare every .text pv site,
pv static-call site and pv trampoline (compare.py). Prints a table (static calls as
matched/total sites, then trampolines); exits 1 if any site differs or a step failed. If
``pvpatch apply`` is unavailable, the dumps are still made and the comparison is skipped,
loudly.

    scripts/boottest/run.py [--refresh] [--only amd64:xen2] [--describe] [--keep-patched]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boottest import boot as bootmod
from boottest import compare as cmp
from boottest.common import BootError, ensure_tools, fetch_kernel, say, tool_versions, write_json

# (flavour, mode[, QEMU -cpu]): Debian's current 6.1 kernels, then 6.12 (the ALT_FLAG_DIRECT_CALL
# era), generic and cloud; bullseye's 5.10 (whose padding NOPs depend on the boot CPU: qemu64
# gives K8 NOPs, EPYC P6 ones); trixie-backports' 7.3 and sid's newest 7.x (pv_ops_lock, grouped
# alternatives, the Xen tables gone, 7.3's spinlock static calls).
PLAN = (("amd64", "native"), ("amd64", "xen1"), ("amd64", "xen2"), ("cloud-amd64", "native"),
        ("cloud-amd64", "xen1"), ("cloud-amd64", "xen2"),
        ("6.12-amd64", "native"), ("6.12-amd64", "xen1"), ("6.12-amd64", "xen2"),
        # 6.12 cloud has no dom0 support (Xen: "Kernel does not support Dom0 operation", as
        # `pvpatch notes --check` predicts), so it is booted natively only
        ("6.12-cloud-amd64", "native"),
        # PREEMPT_RT, natively only: as a Xen PV dom0 under QEMU it stalls before init
        # (docs/boot-test.md)
        ("rt-amd64", "native"), ("6.12-rt-amd64", "native"),
        # 32-bit x86 (ELF32, 8-byte records, i386 NOPs); 32-bit Xen PV left Linux in 5.9
        ("686-pae", "native"), ("686", "native"),
        ("bullseye:amd64", "native"), ("bullseye:amd64", "native", "EPYC"),
        ("bullseye:amd64", "xen1"), ("bullseye:amd64", "xen2"),
        ("trixie-backports:amd64", "native"), ("trixie-backports:amd64", "xen1"),
        ("trixie-backports:amd64", "xen2"),
        ("sid:amd64", "native"), ("sid:amd64", "xen1"), ("sid:amd64", "xen2"))


def row_name(row: tuple[str, ...]) -> str:
    """``bullseye:amd64:native@EPYC``: what --only takes."""
    return f"{row[0]}:{row[1]}" + (f"@{row[2]}" if len(row) > 2 else "")


def apply_available(pvpatch: str) -> bool:
    try:
        r = subprocess.run([pvpatch, "apply", "--help"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def apply_args(mode: str, meta: dict) -> list[str]:
    """The backend of the boot, and its CPU: kernels before 5.13 pad for the boot CPU (a
    qemu64 and a Xen boot on max,-smap,-smep are both AuthenticAMD family 15: K8 NOPs)."""
    cpu = meta.get("guest_cpu", {}).get("pvpatch_cpu")
    on = ["--cpu", cpu] if cpu else []
    if mode == "native":
        return ["--backend", "native", *on]
    return ["--backend", "xen", "--vcpus", mode.removeprefix("xen"), *on]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--pvpatch", default=str(Path(sys.executable).parent / "pvpatch"),
                    help="the pvpatch command (default: next to this python)")
    ap.add_argument("--refresh", action="store_true", help="reboot even where dumps are cached")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per boot")
    ap.add_argument("--only", action="append", metavar="FLAVOUR:MODE",
                    help="run only these (repeatable), e.g. amd64:xen1 or, for a "
                         "suite-qualified flavour, bullseye:amd64:native")
    ap.add_argument("--describe", action="store_true",
                    help="also print each dump's per-op ground truth")
    ap.add_argument("--keep-patched", action="store_true",
                    help="keep the patched ELFs (about 600 MB each) in the cache")
    ap.add_argument("--max-list", type=int, default=20, metavar="N",
                    help="differing sites listed per run (0: all)")
    a = ap.parse_args()
    plan = [p for p in PLAN if not a.only or row_name(p) in a.only]
    if not plan:
        ap.error(f"--only matches nothing in {', '.join(row_name(p) for p in PLAN)}")

    try:
        ensure_tools(xen=any(p[1] != "native" for p in plan))
    except BootError as e:
        print(f"boot-test: {e}", file=sys.stderr)
        return 2
    for k, v in tool_versions().items():
        say(f"{k}: {v}")
    can_apply = apply_available(a.pvpatch)
    if not can_apply:
        say(f"`{a.pvpatch} apply --help` failed: pvpatch apply is not available yet. "
            "SKIPPING apply and comparison; the boot dumps are still made.")

    rows = []
    kernels: dict[str, object] = {}
    described: dict[str, dict[str, dict]] = {}
    for entry in plan:
        flavour, mode = entry[:2]
        cpu = entry[2] if len(entry) > 2 else None
        label = mode + (f"@{cpu}" if cpu else "")
        row = {"flavour": flavour, "mode": label, "release": "?", "boot_s": None,
               "result": ""}
        rows.append(row)
        try:
            if flavour not in kernels:
                kernels[flavour] = fetch_kernel(flavour)
            kernel = kernels[flavour]
            row["release"] = kernel.release
            meta = bootmod.boot(kernel, mode, refresh=a.refresh, timeout=a.timeout, cpu=cpu)
            row["boot_s"] = meta["boot_seconds"]
            dump = bootmod.paths(kernel, mode, cpu)[0]
            if a.describe:
                described.setdefault(kernel.release, {})[label] = cmp.compare(
                    kernel.vmlinux, dump, None, True)
            if not can_apply:
                row["result"] = "dump ok; apply skipped"
                continue
            out = kernel.boot_dir / f"patched-{bootmod.stem(mode, cpu)}.vmlinux"
            argv = [a.pvpatch, "apply", str(kernel.vmlinux), "-o", str(out),
                    *apply_args(mode, meta)]
            say(" ".join(argv))
            t = time.monotonic()
            r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
            row["apply_s"] = round(time.monotonic() - t, 1)
            if r.returncode:
                row["result"] = f"apply failed (exit {r.returncode})"
                say(f"pvpatch apply failed:\n{r.stderr[-3000:]}")
                continue
            try:
                res = cmp.compare(kernel.vmlinux, dump, out, False)
            finally:
                if not a.keep_patched:
                    out.unlink(missing_ok=True)
            write_json(kernel.boot_dir / f"compare-{bootmod.stem(mode, cpu)}.json", res)
            row.update(res["total"])
            t, sc = res["total"], res["static_calls"]
            row["static"] = (f"{sc['sites']['match']}/{sc['sites']['sites']} "
                             f"{sc['trampolines']['match']}/{sc['trampolines']['sites']}")
            same = t["match"] == t["sites"] and sc["total"]["match"] == sc["total"]["sites"]
            row["result"] = "ok" if same else "DIFFERS"
            if not same:
                print(f"\n== {kernel.release} {label}: sites that differ (full list: "
                      f"{kernel.boot_dir / f'compare-{bootmod.stem(mode, cpu)}.json'})")
                differing = {op: c for op, c in res["counts"].items() if c["match"] != c["sites"]}
                cmp.print_report({**res, "counts": differing}, a.max_list)
        except BootError as e:
            row["result"] = "FAILED: " + str(e).splitlines()[0][:60]
            say(f"{flavour} {label}: {e}")

    for release, results in described.items():
        cmp.print_side_by_side(release, results)
    print()
    print(f"{'kernel':<22} {'boot':<12} {'boot s':>6} {'sites':>6} {'match':>6} {'differ':>6} "
          f"{'no-data':>7}  {'static calls':<13} result")
    for r in rows:
        boot_s = f"{r['boot_s']:.1f}" if r["boot_s"] is not None else "-"
        print(f"{r['release']:<22} {r['mode']:<12} {boot_s:>6} {r.get('sites', '-'):>6} "
              f"{r.get('match', '-'):>6} {r.get('differ', '-'):>6} {r.get('no_data', '-'):>7}"
              f"  {r.get('static', '-'):<13} {r['result']}")
    if not can_apply:
        print("\npvpatch apply is not available: nothing was compared (dumps are cached).")
    failed = [r for r in rows if r["result"] not in ("ok", "dump ok; apply skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
