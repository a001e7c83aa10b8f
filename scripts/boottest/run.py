#!/usr/bin/env python3
"""``make boot-test``: boot real kernels, then hold pvpatch's plan to what they hold.

For the generic Debian kernel (native, Xen PV dom0 with 1 and with 2 vCPUs, native with KASLR,
and with KASLR copying out its own /proc/kcore) and the cloud kernel (native): fetch it, boot
it under QEMU and dump its patched .text (boot.py; cached per kernel release, --refresh
reboots; a kaslr or kcore boot is saved whole as an ELF core), then
``pvpatch verify VMLINUX DUMP [--raw-start <.text vaddr>] --backend B [--vcpus N] --cpu C
--json`` (C: the CPU QEMU showed the guest) compares every .text pv site, pv static-call site
and pv trampoline with what that boot configuration leaves there. Prints a table (static calls
as matched/total sites, then trampolines); exits 1 if any site differs or a step failed. If
``pvpatch verify`` is unavailable, the dumps are still made and the comparison is skipped,
loudly. --describe prints compare.py's ground truth per op beside it.

    scripts/boottest/run.py [--refresh] [--only amd64:xen2] [--describe]
"""

from __future__ import annotations

import argparse
import json
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
PLAN = (("amd64", "native"), ("amd64", "xen1"), ("amd64", "xen2"), ("amd64", "kaslr"),
        ("amd64", "kcore"), ("cloud-amd64", "native"),
        ("cloud-amd64", "xen1"), ("cloud-amd64", "xen2"),
        ("6.12-amd64", "native"), ("6.12-amd64", "xen1"), ("6.12-amd64", "xen2"),
        ("6.12-amd64", "kaslr"), ("6.12-amd64", "kcore"),
        # 6.12 cloud has no dom0 support (Xen: "Kernel does not support Dom0 operation", as
        # `pvpatch notes --check` predicts), so it is booted natively only
        ("6.12-cloud-amd64", "native"),
        # PREEMPT_RT, natively only: as a Xen PV dom0 under QEMU it stalls before init
        # (docs/boot-test.md)
        ("rt-amd64", "native"), ("6.12-rt-amd64", "native"),
        # 32-bit x86 (ELF32, 8-byte records, i386 NOPs); 32-bit Xen PV left Linux in 5.9
        ("686-pae", "native"), ("686", "native"),
        ("bullseye:amd64", "native"), ("bullseye:amd64", "native", "EPYC"),
        ("bullseye:amd64", "xen1"), ("bullseye:amd64", "xen2"), ("bullseye:amd64", "kaslr"),
        ("bullseye:amd64", "kcore"),
        ("trixie-backports:amd64", "native"), ("trixie-backports:amd64", "xen1"),
        ("trixie-backports:amd64", "xen2"), ("trixie-backports:amd64", "kaslr"),
        ("trixie-backports:amd64", "kcore"),
        ("trixie-backports:cloud-amd64", "native"),  # no dom0 support, as 6.12 cloud
        ("sid:amd64", "native"), ("sid:amd64", "xen1"), ("sid:amd64", "xen2"),
        # trixie's own 6.12, built by GCC 14 (bookworm-backports' by GCC 12): the same
        # release series, another compiler's code to read Xen's values from
        ("trixie:amd64", "native"), ("trixie:amd64", "xen1"), ("trixie:amd64", "xen2"))


# Modes saved as ELF cores (KASLR on): QEMU's dump of guest memory, and the guest's own
# /proc/kcore copied out (what `pvpatch verify VMLINUX /proc/kcore` reads inside a guest).
CORES = ("kaslr", "kcore")


def row_name(row: tuple[str, ...]) -> str:
    """``bullseye:amd64:native@EPYC``: what --only takes."""
    return f"{row[0]}:{row[1]}" + (f"@{row[2]}" if len(row) > 2 else "")


def verify_available(pvpatch: str) -> bool:
    try:
        r = subprocess.run([pvpatch, "verify", "--help"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def verify_args(mode: str, meta: dict) -> list[str]:
    """The boot's configuration, and its CPU: kernels before 5.13 pad for the boot CPU (a
    qemu64 and a Xen boot on max,-smap,-smep are both AuthenticAMD family 15: K8 NOPs). A
    .text dump starts at the .text link address (nokaslr); a kaslr core says where it is."""
    cpu = meta.get("guest_cpu", {}).get("pvpatch_cpu")
    on = ["--cpu", cpu] if cpu else []
    raw = [] if mode in CORES else ["--raw-start", meta["text"]["vaddr"]]
    if mode in ("native", *CORES):
        return [*raw, "--backend", "native", *on]
    return [*raw, "--backend", "xen", "--vcpus", mode.removeprefix("xen"), *on]


def run_verify(pvpatch: str, vmlinux: Path, dump: Path, mode: str, meta: dict
               ) -> tuple[int, dict | None, str]:
    """``pvpatch verify … --json``: (exit status, the report, stderr's tail)."""
    argv = [pvpatch, "verify", str(vmlinux), str(dump), *verify_args(mode, meta), "--json"]
    say(" ".join(argv))
    r = subprocess.run(argv, capture_output=True, text=True)
    doc = json.loads(r.stdout) if r.returncode in (0, 1) and r.stdout else None
    return r.returncode, doc, r.stderr[-3000:]


def row_counts(doc: dict, meta: dict) -> dict:
    """The table's columns from a verify report: pv sites matched and differing, those on
    pages the dump lacks (no-data: the locator found them nowhere), static calls."""
    kinds = doc["verdict"]["by_kind"]
    missing = {int(p["page"]) for p in meta.get("location", {}).get("missing_pages", [])}
    start = int(meta["text"]["vaddr"], 16)
    lacking = [u for u in doc["unexpected"]
               if (int(u["link_address"], 16) - start) // 4096 in missing]
    pv = kinds["pv_site"]
    no_data = sum(u["kind"] == "pv_site" for u in lacking)
    sc, tr = kinds["static_call_site"], kinds["trampoline"]
    return {"sites": pv["places"], "match": pv["matched"], "differ": pv["unexpected"] - no_data,
            "no_data": no_data,
            "static": f"{sc['matched']}/{sc['places']} {tr['matched']}/{tr['places']}"}


def print_unexpected(doc: dict, title: str, max_list: int) -> None:
    rows = doc["unexpected"]
    shown = rows if not max_list else rows[:max_list]
    print(f"\n== {title}: {len(rows)} place(s) differ" +
          (f" (first {len(shown)})" if len(shown) < len(rows) else "") +
          ": address function op (kind)")
    print("    plan:  bytes  instructions       (what the configuration leaves)")
    print("    boot:  bytes  instructions       (what the booted kernel holds)")
    for u in shown:
        print(f"{u['address']}  {u['function']}  {u['op']}  ({u['kind']})")
        print(f"    plan:  {u['expected'] or '-':<16} {u['expected_text'] or ''}")
        print(f"    boot:  {u['found'] or '-':<16} {u['found_text'] or u['note']}")


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
    ap.add_argument("--max-list", type=int, default=20, metavar="N",
                    help="differing sites listed per run (0: all)")
    a = ap.parse_args()
    plan = [p for p in PLAN if not a.only or row_name(p) in a.only]
    if not plan:
        ap.error(f"--only matches nothing in {', '.join(row_name(p) for p in PLAN)}")

    try:
        ensure_tools(xen=any(p[1].startswith("xen") for p in plan))
    except BootError as e:
        print(f"boot-test: {e}", file=sys.stderr)
        return 2
    for k, v in tool_versions().items():
        say(f"{k}: {v}")
    can_verify = verify_available(a.pvpatch)
    if not can_verify:
        say(f"`{a.pvpatch} verify --help` failed: pvpatch verify is not available. "
            "SKIPPING the comparison; the boot dumps are still made.")

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
            if a.describe and mode not in CORES:  # compare.py reads .text dumps, not cores
                described.setdefault(kernel.release, {})[label] = cmp.compare(
                    kernel.vmlinux, dump, None, True)
            if not can_verify:
                row["result"] = "dump ok; verify skipped"
                continue
            t = time.monotonic()
            rc, doc, err = run_verify(a.pvpatch, kernel.vmlinux, dump, mode, meta)
            row["verify_s"] = round(time.monotonic() - t, 1)
            if doc is None:
                row["result"] = f"verify failed (exit {rc})"
                say(f"pvpatch verify failed:\n{err}")
                continue
            name = bootmod.stem(mode, cpu)
            write_json(kernel.boot_dir / f"verify-{name}.json", doc)
            row.update(row_counts(doc, meta))
            row["result"] = "ok" if rc == 0 else "DIFFERS"
            if rc:
                print_unexpected(doc, f"{kernel.release} {label} (full report: "
                                      f"{kernel.boot_dir / f'verify-{name}.json'})", a.max_list)
        except BootError as e:
            row["result"] = "FAILED: " + str(e).splitlines()[0][:60]
            say(f"{flavour} {label}: {e}")

    for release, results in described.items():
        cmp.print_side_by_side(release, results)
    print()
    print(f"{'kernel':<22} {'boot':<12} {'boot s':>6} {'verify s':>8} {'sites':>6} {'match':>6} "
          f"{'differ':>6} {'no-data':>7}  {'static calls':<13} result")
    for r in rows:
        boot_s = f"{r['boot_s']:.1f}" if r["boot_s"] is not None else "-"
        print(f"{r['release']:<22} {r['mode']:<12} {boot_s:>6} {r.get('verify_s', '-'):>8} "
              f"{r.get('sites', '-'):>6} {r.get('match', '-'):>6} {r.get('differ', '-'):>6} "
              f"{r.get('no_data', '-'):>7}  {r.get('static', '-'):<13} {r['result']}")
    if not can_verify:
        print("\npvpatch verify is not available: nothing was compared (dumps are cached).")
    failed = [r for r in rows if r["result"] not in ("ok", "dump ok; verify skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
