"""Boot test: what a real x86 kernel holds in memory after it patched itself at boot.

Boots Debian kernels under QEMU (natively, and as a Xen PV dom0), dumps the kernel's ``.text``
from guest memory and compares the bytes at every paravirt site with what ``pvpatch apply``
writes. See docs/boot-test.md. The runnable pieces:

    scripts/boottest/run.py        everything, as ``make boot-test`` runs it
    scripts/boottest/boot.py       one boot + dump (native, xen1, xen2)
    scripts/boottest/locate.py     find a kernel's .text in a raw guest-RAM dump
    scripts/boottest/compare.py    compare a patched ELF (or the vmlinux) with a dump
    scripts/boottest/initramfs.py  build the tiny initramfs
"""
