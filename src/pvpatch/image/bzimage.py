"""The x86 boot image (bzImage, ``/boot/vmlinuz-*``): its header and compressed vmlinux.

The layout is the one of the x86 boot protocol, Documentation/arch/x86/boot.rst ("THE REAL-MODE
KERNEL HEADER"; Documentation/x86/boot.rst before 6.5). All fields are little-endian:

=======  =====  ===============  ===========================================================
offset   size   field            use here
=======  =====  ===============  ===========================================================
0x1F1    1      setup_sects      real-mode setup size in 512-byte sectors (0 means 4); the
                                 protected-mode kernel starts at (setup_sects + 1) * 512
0x1FE    2      boot_flag        0xAA55
0x202    4      header           "HdrS" (protocol 2.00+)
0x206    2      version          protocol version, e.g. 0x020F = 2.15
0x248    4      payload_offset   (2.08+) the compressed kernel, from the protected-mode start
0x24C    4      payload_length   (2.08+) its length
=======  =====  ===============  ===========================================================

The payload is ``vmlinux.bin`` (the vmlinux run through ``objcopy -S``: no .symtab, no DWARF,
but every allocated section, .BTF and the kernel's own kallsyms tables), followed by the
boot-time relocations, compressed with one method and followed by its uncompressed size as a
32-bit little-endian word (arch/x86/boot/compressed/Makefile; gzip's own trailer holds it).
Before protocol 2.08 there are no payload fields: the payload is found by its gzip magic.

Methods: gzip, bzip2, lzma (the .lzma "alone" format), xz from the standard library; zstd with
``zstandard``; LZ4 with ``lz4.block``, since the kernel writes LZ4's *legacy* frame format
(``lz4 -l``): the magic 0x184C2102, then blocks each prefixed by a 32-bit compressed size and
decompressing to at most 8 MiB, all blocks but the last exactly 8 MiB. LZO is the ``lzop -9``
file format (lib/decompress_unlzo.c reads it at boot): a header, then blocks of at most 256 KiB
each as LZO1X, decoded with the optional ``lzallright`` package (``pip install pvpatch[lzo]``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pvpatch.errors import InputError

SETUP_SECTS, BOOT_FLAG, HEADER, VERSION = 0x1F1, 0x1FE, 0x202, 0x206
PAYLOAD_OFFSET, PAYLOAD_LENGTH = 0x248, 0x24C
MIN_HEADER = 0x250  # through payload_length
HDRS = b"HdrS"

LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
LZO_BLOCK = 256 << 10  # lzop's block size; the kernel's unlzo refuses larger blocks
# lzop header flags (lzop's conf.h) that change the layout
LZOP_ADLER32_D, LZOP_ADLER32_C, LZOP_CRC32_D, LZOP_CRC32_C = 0x1, 0x2, 0x100, 0x200
LZOP_EXTRA_FIELD, LZOP_FILTER = 0x40, 0x800

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20
MAX_KERNEL = 1 << 31  # refuse to inflate past 2 GiB: no vmlinux.bin is that large
MAX_RATIO = 16  # kernels compress 3–8x: a larger appended size is not trusted (see decompress)
CHUNK = 1 << 20

# payload magic → method; checked in this order at the payload's first byte
MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (LZOP_MAGIC, "lzo"),
    (struct.pack("<I", LZ4_LEGACY_MAGIC), "lz4"),
    (ZSTD_MAGIC, "zstd"),
    (b"\x7fELF", "none"),
)
METHODS = ("gzip", "xz", "bzip2", "lzma", "lz4", "zstd", "lzo")

Progress = Callable[[float], None]  # fraction of the payload consumed, 0.0–1.0


@dataclass(frozen=True)
class BootImage:
    """Where the compressed kernel sits in a bzImage and how it is compressed."""

    path: str
    size: int  # of the file
    protocol: tuple[int, int]
    setup_sects: int
    payload_offset: int  # file offset of the compressed payload
    payload_length: int
    method: str
    size_hint: int | None  # the uncompressed size appended to the payload

    @property
    def protocol_text(self) -> str:
        return f"{self.protocol[0]}.{self.protocol[1]:02d}"

    def describe(self) -> str:
        return (f"bzImage (boot protocol {self.protocol_text}), {self.method} payload of "
                f"{mib(self.payload_length)}")

    def to_json(self) -> dict[str, object]:
        return {"format": "bzImage", "boot_protocol": self.protocol_text,
                "compression": self.method, "payload_offset": self.payload_offset,
                "payload_length": self.payload_length}


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def is_bzimage(head: bytes) -> bool:
    """True when ``head`` (the file's first 0x210+ bytes) carries the boot protocol header."""
    return len(head) >= HEADER + 4 and head[HEADER:HEADER + 4] == HDRS


def parse_header(data: bytes | memoryview, path: str) -> BootImage:
    """Read the boot header and find the payload; InputError if it is not a usable bzImage."""
    size = len(data)
    if size < HEADER + 6 or bytes(data[HEADER:HEADER + 4]) != HDRS:
        raise InputError("not an x86 bzImage (no HdrS boot header at 0x202)", path)
    version = struct.unpack_from("<H", data, VERSION)[0]
    protocol = (version >> 8, version & 0xFF)
    setup_sects = data[SETUP_SECTS] or 4
    pm_start = (setup_sects + 1) * 512
    if pm_start >= size:
        raise InputError(f"truncated bzImage: the setup code claims {setup_sects} sectors "
                         f"(to {pm_start:#x}), the file is {size} bytes", path)
    if version >= 0x0208:
        if size < MIN_HEADER:
            raise InputError(f"truncated bzImage: {size} bytes, the boot header alone needs "
                             f"{MIN_HEADER:#x}", path)
        off, length = struct.unpack_from("<II", data, PAYLOAD_OFFSET)
        start = pm_start + off
        if length == 0 or start + length > size:
            raise InputError(f"truncated bzImage: the payload ({length} bytes at {start:#x}) "
                             f"ends past the end of the file ({size} bytes)", path)
    else:  # 2.00–2.07: no payload fields; the compressed kernel follows the decompressor
        found = bytes(data[pm_start:]).find(b"\x1f\x8b\x08\x00")
        if found < 0:
            raise InputError(f"boot protocol {protocol[0]}.{protocol[1]:02d} has no payload "
                             "fields and no gzip payload was found", path)
        start, length = pm_start + found, size - pm_start - found
    head = bytes(data[start:start + 16])
    method = next((m for magic, m in MAGICS if head.startswith(magic)), None)
    if method is None:
        raise InputError(f"unknown compression: the payload at {start:#x} starts with "
                         f"{head[:8].hex(' ')} (not gzip, xz, bzip2, lzma, lzo, lz4, zstd)", path)
    hint = struct.unpack_from("<I", data, start + length - 4)[0] \
        if length >= 8 and version >= 0x0208 else None  # before 2.08 the end is unknown
    return BootImage(path, size, protocol, setup_sects, start, length, method, hint)


def decompress(data: bytes | memoryview, boot: BootImage,
               progress: Progress | None = None) -> bytes | bytearray:
    """The payload of ``boot`` uncompressed: vmlinux.bin (and whatever the build appended)."""
    payload = memoryview(data)[boot.payload_offset:boot.payload_offset + boot.payload_length]
    hint = boot.size_hint if boot.size_hint and boot.size_hint < MAX_KERNEL else None
    if progress is None and hint is not None:
        whole = _one_shot(payload, boot.method, hint)
        if whole is not None:
            return whole
    out = _Output(hint if hint is not None and boot.method != "none"
                  and hint <= len(payload) * MAX_RATIO else None, boot)
    import lzma  # here, not at module import: only a bzImage needs it (~1.5 ms; bz2 too)

    try:
        if boot.method == "none":
            out.write(payload)
        elif boot.method == "lz4":
            _lz4_legacy(payload, out, boot, progress)
        elif boot.method == "lzo":
            _lzop(payload, out, boot, progress)
        else:
            _stream(payload, _decompressor(boot.method), out, boot, progress)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as e:
        raise InputError(f"the {boot.method} payload does not decompress ({e}): "
                         "truncated or corrupt", boot.path) from None
    except Exception as e:  # zstandard.ZstdError, lz4's LZ4BlockError, lzallright.LZOError
        if type(e).__module__.split(".")[0] not in ("zstandard", "lz4", "_lz4", "lzallright"):
            raise
        raise InputError(f"the {boot.method} payload does not decompress ({e}): "
                         "truncated or corrupt", boot.path) from None
    result = out.result()
    if progress:
        progress(1.0)
    if hint is not None and len(result) != hint and boot.method != "none":
        raise InputError(f"the {boot.method} payload decompressed to {len(result)} bytes, "
                         f"its trailer says {hint}: truncated or corrupt", boot.path)
    return result


def _one_shot(payload: memoryview, method: str, size: int) -> bytes | None:
    """The payload inflated by one call, if that yields exactly the appended ``size``.

    With no progress to report nothing needs chunks, and one call saves joining them (a copy
    of the whole vmlinux; zstd even writes straight into an output of that size). The size
    comes from the file, so it is trusted only up to ``MAX_RATIO`` times the payload; any
    surprise (an error, another length, no end of stream) gives None, and the streaming
    path decompresses again and says what is wrong.
    """
    if method not in ("zstd", "gzip", "xz", "lzma", "bzip2") \
            or size > len(payload) * MAX_RATIO:
        return None
    try:
        if method == "zstd":
            import zstandard

            sized = _zstd_with_size(payload, size)
            dctx = zstandard.ZstdDecompressor()
            out = dctx.decompress(payload, max_output_size=size) if sized is None \
                else dctx.decompress(sized)
        else:
            dec = _decompressor(method)
            out = dec.decompress(payload, size + 1)  # type: ignore[attr-defined]
            if not _at_eof(dec):
                return None
    except Exception:  # any failure: the streaming path says what it is
        return None
    return out if len(out) == size else None


def _zstd_with_size(payload: memoryview, size: int) -> bytes | None:
    """The zstd frame of ``payload`` with ``size`` written into its header as its content size.

    The kernel's build pipes vmlinux.bin into ``zstd``, so the frame header has no content
    size (RFC 8878, 3.1.1.1): libzstd then decodes through its window buffer (128 MiB at
    ``--ultra -22``) and copies out, touching the vmlinux's size of memory twice. Given the
    size it decodes in one pass straight into the output (~11k page faults fewer on 6.12);
    a wrong size is a decoding error there (the caller then streams). The header has no
    checksum: Frame_Header_Descriptor gets Frame_Content_Size_flag 2, and a 4-byte
    Frame_Content_Size goes after the window descriptor and dictionary ID. None when the
    header already says a size, is single-segment or sets the reserved bit.
    """
    if len(payload) < 6 or bytes(payload[:4]) != ZSTD_MAGIC or payload[4] & 0xE8:
        return None
    descriptor = payload[4]
    end = 6 + (0, 1, 2, 4)[descriptor & 3]  # past the window descriptor and dictionary ID
    return b"".join((ZSTD_MAGIC, bytes([descriptor | 0x80]), payload[5:end],
                     struct.pack("<I", size), payload[end:]))


class _Output:
    """Where the uncompressed blocks go: into a buffer of the size the trailer gives, when
    that is plausible, else kept and joined once at the end. Copied in, each block can be
    freed at once and its memory reused: joining 8 MiB LZ4 blocks at the end held the
    vmlinux twice (53 MB more peak memory, 30k page faults instead of 17k)."""

    def __init__(self, size: int | None, boot: BootImage) -> None:
        self.buf = bytearray(size) if size is not None else None
        self.chunks: list[bytes] = []
        self.pos = 0
        self.boot = boot

    def write(self, chunk: bytes | memoryview) -> None:
        end = self.pos + len(chunk)
        if end > MAX_KERNEL:
            raise InputError(f"the {self.boot.method} payload inflates past "
                             f"{MAX_KERNEL >> 20} MiB: not a kernel", self.boot.path)
        if self.buf is not None and end <= len(self.buf):
            self.buf[self.pos:end] = chunk
        else:
            if self.buf is not None:  # more than the trailer said: keep what is there
                self.chunks.append(bytes(memoryview(self.buf)[:self.pos]))
                self.buf = None
            self.chunks.append(bytes(chunk) if isinstance(chunk, memoryview) else chunk)
        self.pos = end

    def result(self) -> bytes | bytearray:
        if self.buf is not None:
            buf, self.buf = self.buf, None
            return buf if self.pos == len(buf) else bytes(memoryview(buf)[:self.pos])
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        return data


def _decompressor(method: str) -> object:
    if method == "gzip":
        return zlib.decompressobj(wbits=31)
    if method in ("xz", "lzma"):
        import lzma

        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ if method == "xz" else
                                     lzma.FORMAT_ALONE)
    if method == "bzip2":
        import bz2

        return bz2.BZ2Decompressor()
    if method == "zstd":
        try:
            import zstandard
        except ImportError:
            raise InputError("zstd-compressed kernel, and the zstandard package is not "
                             "installed (pip install zstandard)") from None
        return zstandard.ZstdDecompressor().decompressobj()
    raise AssertionError(method)


def _stream(payload: memoryview, dec: object, out: _Output, boot: BootImage,
            progress: Progress | None) -> None:
    """Feed the payload in chunks; stop at the end of the compressed stream."""
    total = len(payload)
    pos = 0
    while pos < total and not _at_eof(dec):
        chunk = payload[pos:pos + CHUNK]
        pos += len(chunk)
        out.write(dec.decompress(chunk))  # type: ignore[attr-defined]
        if progress:
            progress(pos / total)
    if not _at_eof(dec):
        raise InputError(f"truncated bzImage: the {boot.method} stream ends early "
                         f"({out.pos} bytes decompressed)", boot.path)


def _at_eof(dec: object) -> bool:
    return bool(getattr(dec, "eof", False))


def _lz4_legacy(payload: memoryview, out: _Output, boot: BootImage,
                progress: Progress | None) -> None:
    try:
        import lz4.block
    except ImportError:
        raise InputError("LZ4-compressed kernel, and the lz4 package is not installed "
                         "(pip install lz4)", boot.path) from None
    end = len(payload) - 4  # the appended uncompressed size
    pos = 0
    blocks = 0
    while pos + 4 <= end:
        n = struct.unpack_from("<I", payload, pos)[0]
        pos += 4
        if n == LZ4_LEGACY_MAGIC:  # a new legacy frame (concatenated streams)
            continue
        if n > LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16 or pos + n > len(payload):
            raise InputError(f"truncated bzImage: LZ4 block {blocks} claims {n} bytes at "
                             f"payload offset {pos - 4:#x}, {len(payload) - pos} remain",
                             boot.path)
        try:
            block = lz4.block.decompress(payload[pos:pos + n], uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError as e:  # its module is "_block": name it here
            raise InputError(f"the lz4 payload does not decompress: block {blocks} at payload "
                             f"offset {pos - 4:#x} ({e}): truncated or corrupt",
                             boot.path) from None
        out.write(block)
        pos += n
        blocks += 1
        if progress:
            progress(pos / len(payload))
    if blocks == 0:
        raise InputError("truncated bzImage: the LZ4 stream holds no block", boot.path)


def _lzop(payload: memoryview, out: _Output, boot: BootImage,
          progress: Progress | None) -> None:
    """The ``lzop`` file format, as lzop 1.0x writes it and lib/decompress_unlzo.c reads it.

    Header (big-endian): magic, version, library version, version needed to extract, method,
    level (version 0x0940+), flags, filter (F_H_FILTER), mode, mtime low, mtime high (0x0940+),
    name length and name, header checksum, an extra field (F_H_EXTRA_FIELD). Then blocks:
    uncompressed size (0 ends the stream), compressed size, the checksum of the uncompressed
    data (F_ADLER32_D or F_CRC32_D), that of the compressed data (F_ADLER32_C or F_CRC32_C,
    only for a block that is compressed), the data — stored as is when both sizes are equal.
    The kernel's build writes ``lzop -9`` (one Adler-32 of the data per block); the Adler-32
    or CRC-32 of the uncompressed data is checked here.
    """
    try:
        from lzallright import LZOCompressor
    except ImportError:
        raise InputError("LZO-compressed kernel (CONFIG_KERNEL_LZO), and the lzallright package "
                         "is not installed (pip install 'pvpatch[lzo]' or lzallright)",
                         boot.path) from None
    end = len(payload)

    def take(pos: int, n: int, what: str) -> int:
        if pos + n > end:
            raise InputError(f"truncated bzImage: the lzo stream ends in {what} at payload "
                             f"offset {pos:#x}", boot.path)
        return pos + n

    pos = take(0, len(LZOP_MAGIC) + 7, "the header")
    version = struct.unpack_from(">H", payload, len(LZOP_MAGIC))[0]
    if version >= 0x0940:
        pos = take(pos, 1, "the header")  # level
    pos = take(pos, 4, "the header")
    flags = struct.unpack_from(">I", payload, pos - 4)[0]
    if flags & LZOP_FILTER:
        pos = take(pos, 4, "the header")
    pos = take(pos, 8 + (4 if version >= 0x0940 else 0) + 1, "the header")
    pos = take(pos, payload[pos - 1] + 4, "the header")  # name, header checksum
    if flags & LZOP_EXTRA_FIELD:
        pos = take(pos, 4, "the header")
        pos = take(pos, struct.unpack_from(">I", payload, pos - 4)[0] + 4, "the header")
    d_sum = 4 if flags & (LZOP_ADLER32_D | LZOP_CRC32_D) else 0
    c_sum = 4 if flags & (LZOP_ADLER32_C | LZOP_CRC32_C) else 0
    blocks = 0
    while True:
        pos = take(pos, 4, f"block {blocks}")
        dst_len = struct.unpack_from(">I", payload, pos - 4)[0]
        if dst_len == 0:
            break
        pos = take(pos, 4, f"block {blocks}")
        src_len = struct.unpack_from(">I", payload, pos - 4)[0]
        if dst_len > LZO_BLOCK or not 0 < src_len <= dst_len:
            raise InputError(f"the lzo payload does not decompress: block {blocks} at payload "
                             f"offset {pos - 8:#x} claims {src_len} → {dst_len} bytes (at most "
                             f"{LZO_BLOCK}): truncated or corrupt", boot.path)
        pos = take(pos, d_sum, f"block {blocks}")
        want = struct.unpack_from(">I", payload, pos - 4)[0] if d_sum else None
        if src_len < dst_len:
            pos = take(pos, c_sum, f"block {blocks}")
        data_at = pos
        pos = take(pos, src_len, f"block {blocks}")
        block = payload[data_at:pos]
        if src_len < dst_len:
            block = LZOCompressor.decompress(block, output_size_hint=dst_len)
        if len(block) != dst_len or (want is not None and want != (
                zlib.crc32(block) if flags & LZOP_CRC32_D else zlib.adler32(block))):
            raise InputError(f"the lzo payload does not decompress: block {blocks} at payload "
                             f"offset {data_at:#x} fails its size or checksum: corrupt",
                             boot.path)
        out.write(block)
        blocks += 1
        if progress:
            progress(pos / end)
