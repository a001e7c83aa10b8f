#!/usr/bin/env python3
"""Build the boot test's initramfs: a newc cpio whose /init prints a marker and waits forever.

/init is a static binary without libc (gcc -static -nostdlib, raw syscalls): it opens
/dev/console (falling back to fd 1), writes MARKER, then sleeps in pause() for ever, so the
kernel is idle, finished with every boot-time patching step, and never panics for a dying init.
The cpio is written here, no cpio tool needed. Cached by content under <cache>/boot/.

The kcore variant (x86-64) first mounts /proc and copies out of the guest what `pvpatch verify
VMLINUX /proc/kcore` reads there: the head of /proc/kcore (ELF header, program headers, notes
with VMCOREINFO) and the first 32 MiB of its segment of the kernel image (KCORE_TEXT: .text, then
.rodata with linux_banner; debugcon moves ~0.5 MB/s under TCG), streamed to QEMU's debugcon
(port 0xe9, `-debugcon file:…`) as records (u64 file offset, u64 length, bytes) after an
8-byte magic, ended by offset ~0. kcore.py turns the stream into a core file.

    scripts/boottest/initramfs.py          build (if needed) and print the path
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boottest.common import BOOT_CACHE, BootError, say

MARKER = "PVPATCH-INIT-READY"

INIT_C = r"""
/* The boot test's /init: say MARKER on the console, then sleep for ever. No libc. */
#ifdef __x86_64__
#define NR_OPEN 2
#define NR_WRITE 1
#define NR_PAUSE 34
static long sys3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c)
             : "rcx", "r11", "memory");
    return ret;
}
#else /* i386: int $0x80 and the 32-bit syscall numbers */
#define NR_OPEN 5
#define NR_WRITE 4
#define NR_PAUSE 29
static long sys3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}
#endif

static const char msg[] = "\n@MARKER@\n";

void _start(void)
{
#ifdef KCORE
    kcore();
#endif
    long fd = sys3(NR_OPEN, (long)"/dev/console", 1 /* O_WRONLY */, 0);

    if (fd < 0)
        fd = 1;
    for (int i = 0; i < 3; i++)
        sys3(NR_WRITE, fd, (long)msg, sizeof(msg) - 1);
    /* Also into the kernel log: a kernel without the Xen console driver (cloud flavour as
       dom0) has no /dev/console on the serial line, but its boot console still prints. */
    fd = sys3(NR_OPEN, (long)"/dev/kmsg", 1 /* O_WRONLY */, 0);
    if (fd >= 0)
        sys3(NR_WRITE, fd, (long)(msg + 1), sizeof(msg) - 2);
    for (;;)
        sys3(NR_PAUSE, 0, 0, 0);
}
""".replace("@MARKER@", MARKER)

KCORE_MAGIC = b"PVKCORE1"

KCORE_C = r"""
/* kcore: copy the head of /proc/kcore and its kernel-image segment to port 0xe9. */
#define NR_OPEN 2
#define NR_PREAD64 17
#define NR_MKDIR 83
#define NR_MOUNT 165
#define NR_IOPL 172
static long sys6(long nr, long a, long b, long c, long d, long e)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10),
             "r"(r8) : "rcx", "r11", "memory");
    return ret;
}

static void out(const void *p, unsigned long n)
{
    __asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"(0xe9) : "memory");
}

/* debugcon moves ~0.5 MB/s under TCG: the image's first 32 MiB (.text, then .rodata with
   linux_banner) are what verify reads, not all of _text.._end */
#define KCORE_IMAGE_BYTES (32ULL << 20)
static unsigned char buf[1 << 18];
static unsigned char ph[64 * 1024];

static void record(unsigned long long off, const void *p, unsigned long n)
{
    unsigned long long h[2] = {off, n};
    out(h, sizeof(h));
    out(p, n);
}

static void kcore(void)
{
    sys6(NR_MKDIR, (long)"/proc", 0555, 0, 0, 0);
    sys6(NR_MOUNT, (long)"proc", (long)"/proc", (long)"proc", 0, 0);
    long fd = sys6(NR_OPEN, (long)"/proc/kcore", 0 /* O_RDONLY */, 0, 0, 0);
    if (fd < 0 || sys6(NR_IOPL, 3, 0, 0, 0, 0) < 0)
        return;
    out("@MAGIC@", 8);
    long n = sys6(NR_PREAD64, fd, (long)buf, sizeof(buf), 0, 0);
    if (n >= 64) {
        record(0, buf, n);
        unsigned long long phoff = *(unsigned long long *)(buf + 32);
        unsigned long ent = *(unsigned short *)(buf + 54), num = *(unsigned short *)(buf + 56);
        if (phoff + ent * num <= (unsigned long long)n && ent * num <= sizeof(ph)) {
            for (unsigned long i = 0; i < ent * num; i++)
                ph[i] = buf[phoff + i];
            for (unsigned long i = 0; i < num; i++) {
                unsigned char *p = ph + i * ent;
                unsigned long long off = *(unsigned long long *)(p + 8);
                unsigned long long vaddr = *(unsigned long long *)(p + 16);
                unsigned long long left = *(unsigned long long *)(p + 32);
                if (*(unsigned int *)p != 1 || vaddr < 0xffffffff80000000ULL ||
                    vaddr >= 0xffffffffc0000000ULL)
                    continue;  /* the kernel image's PT_LOAD (KCORE_TEXT), not the modules' */
                if (left > KCORE_IMAGE_BYTES)
                    left = KCORE_IMAGE_BYTES;
                while (left) {
                    long got = sys6(NR_PREAD64, fd, (long)buf,
                                    left < sizeof(buf) ? left : sizeof(buf), off, 0);
                    if (got <= 0)
                        break;
                    record(off, buf, got);
                    off += got;
                    left -= got;
                }
            }
        }
    }
    record(~0ULL, buf, 0);
}
""".replace("@MAGIC@", KCORE_MAGIC.decode())

CFLAGS = ["-Os", "-static", "-nostdlib", "-fno-pie", "-no-pie", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none"]

S_IFDIR, S_IFCHR, S_IFREG = 0o040000, 0o020000, 0o100000


def _newc(ino: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
          nlink: int = 1) -> bytes:
    """One "070701" (newc) cpio record: 13 fields of 8 hex digits, name, data, 4-byte padding."""
    nb = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0)
    rec = b"070701" + "".join(f"{f:08x}" for f in fields).encode() + nb
    rec += b"\0" * (-len(rec) % 4)
    return rec + data + b"\0" * (-len(data) % 4)


def cpio(init: bytes, proc: bool = False) -> bytes:
    out = b"".join([
        _newc(1, "dev", S_IFDIR | 0o755, nlink=2),
        _newc(2, "dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
        _newc(4, "dev/kmsg", S_IFCHR | 0o600, rdev=(1, 11)),
        *([_newc(5, "proc", S_IFDIR | 0o555, nlink=2)] if proc else []),
        _newc(3, "init", S_IFREG | 0o755, init),
        _newc(0, "TRAILER!!!", 0, nlink=1),
    ])
    return out + b"\0" * (-len(out) % 512)


def build_initramfs(bits: int = 64, kcore: bool = False) -> Path:
    """The initramfs for a kernel of ``bits`` (a 32-bit kernel runs only a 32-bit /init);
    ``kcore``: the variant that streams /proc/kcore out first (x86-64)."""
    flags = CFLAGS + (["-m32"] if bits == 32 else [])
    source = INIT_C
    if kcore:
        if bits != 64:
            raise BootError("the kcore /init is x86-64 only")
        source = KCORE_C + INIT_C
        flags = [*flags, "-DKCORE"]
    key = hashlib.sha256((source + repr(flags) + "newc/1").encode()).hexdigest()[:12]
    out = BOOT_CACHE / f"initrd-{key}.cpio"
    if out.is_file():
        return out
    BOOT_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pvpatch-init-") as tmp:
        src, exe = Path(tmp, "init.c"), Path(tmp, "init")
        src.write_text(source)
        r = subprocess.run(["gcc", *flags, "-o", str(exe), str(src)], capture_output=True,
                           text=True)
        if r.returncode:
            raise BootError(f"building /init failed:\n{r.stderr}")
        data = cpio(exe.read_bytes(), proc=kcore)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_bytes(data)
    os.replace(tmp_out, out)
    say(f"built initramfs {out} ({len(data)} bytes)")
    return out


def main() -> int:
    try:
        print(build_initramfs())
    except BootError as e:
        print(f"initramfs: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
