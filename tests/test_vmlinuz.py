"""bzImage (vmlinuz) input: every compression, extract, apply, System.map, --btf, bad input.

The bzImages are built here: a setup header as Documentation/arch/x86/boot.rst lays it out,
a filler "decompressor", and the payload — an assembled fixture ELF plus some bytes standing
for the appended relocations, compressed the way arch/x86/boot/compressed/Makefile does it
(the uncompressed size appended, except for gzip whose trailer holds it).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assemble

from pvpatch.cli import cli
from pvpatch.image import bzimage
from pvpatch.image.elf import ElfImage
from pvpatch.image.loader import open_image

RELOCS = b"\x00\x00\x00\x00relocations" * 8
PM_PAD = 0x180  # bytes of "decompressor" before the payload


def lz4_legacy(data: bytes, block: int = bzimage.LZ4_LEGACY_BLOCK) -> bytes:
    import lz4.block

    out = bytearray(struct.pack("<I", bzimage.LZ4_LEGACY_MAGIC))
    for pos in range(0, len(data), block):
        chunk = lz4.block.compress(data[pos:pos + block], store_size=False,
                                   mode="high_compression")
        out += struct.pack("<I", len(chunk)) + chunk
    return bytes(out)


def lzop(data: bytes, *, flags: int = 0x03000001, block: int = bzimage.LZO_BLOCK,
         extra: bytes | None = None) -> bytes:
    """What ``lzop -9`` writes (version 1.04 header, one Adler-32 of the data per block).

    LZO1X blocks from lzallright; an incompressible block is stored, as lzop does. ``flags``
    may add the compressed-data checksum (0x2) or CRC-32 instead of Adler-32 (0x100/0x200);
    ``extra`` adds an F_H_EXTRA_FIELD.
    """
    from lzallright import LZOCompressor

    if extra is not None:
        flags |= bzimage.LZOP_EXTRA_FIELD
    head = struct.pack(">HHHBBI", 0x1040, 0x20a0, 0x0940, 3, 9, flags)
    head += struct.pack(">IIIB", 0o100644, 1_700_000_000, 0, 7) + b"vmlinux"
    out = bytearray(bzimage.LZOP_MAGIC + head + struct.pack(">I", zlib.adler32(head)))
    if extra is not None:
        out += struct.pack(">I", len(extra)) + extra + struct.pack(">I", zlib.adler32(extra))
    crc = flags & (bzimage.LZOP_CRC32_D | bzimage.LZOP_CRC32_C)
    lzo = LZOCompressor()
    for pos in range(0, len(data), block):
        chunk = data[pos:pos + block]
        packed = lzo.compress(chunk)
        if len(packed) >= len(chunk):
            packed = chunk
        out += struct.pack(">II", len(chunk), len(packed))
        out += struct.pack(">I", zlib.crc32(chunk) if crc else zlib.adler32(chunk))
        if packed is not chunk and flags & (bzimage.LZOP_ADLER32_C | bzimage.LZOP_CRC32_C):
            out += struct.pack(">I", zlib.crc32(packed) if crc else zlib.adler32(packed))
        out += packed
    return bytes(out + b"\0\0\0\0")


def compress(data: bytes, method: str) -> bytes:
    size = struct.pack("<I", len(data))
    if method == "gzip":
        return gzip.compress(data, mtime=0)
    if method == "bzip2":
        return bz2.compress(data) + size
    if method == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE) + size
    if method == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size
    if method == "lz4":
        return lz4_legacy(data) + size
    if method == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(data) + size
    if method == "lzo":
        return lzop(data) + size
    raise AssertionError(method)


def make_bzimage(payload: bytes, *, version: int = 0x020F, setup_sects: int = 4) -> bytes:
    """A bzImage-shaped file: boot sector + setup header, then the protected-mode part."""
    pm = (setup_sects + 1) * 512
    head = bytearray(pm)
    head[bzimage.SETUP_SECTS] = setup_sects
    head[bzimage.BOOT_FLAG:bzimage.BOOT_FLAG + 2] = b"\x55\xaa"
    head[bzimage.HEADER:bzimage.HEADER + 4] = b"HdrS"
    struct.pack_into("<H", head, bzimage.VERSION, version)
    if version >= 0x0208:
        struct.pack_into("<II", head, bzimage.PAYLOAD_OFFSET, PM_PAD, len(payload))
    return bytes(head) + b"\x90" * PM_PAD + payload + b"\xcc" * 64


@pytest.fixture(scope="module")
def elf() -> Path:
    return assemble("pv_kernel61.S", 64)


@pytest.fixture(scope="module", params=bzimage.METHODS)
def vmlinuz(request, elf, tmp_path_factory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("bz") / f"vmlinuz-{request.param}"
    path.write_bytes(make_bzimage(compress(elf.read_bytes() + RELOCS, request.param)))
    return request.param, path


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0]


def without(doc: dict, *keys: str) -> dict:
    return {k: v for k, v in doc.items() if k not in keys}


# -- every compression ------------------------------------------------------------------------

def test_header_and_payload_are_found(vmlinuz):
    method, path = vmlinuz
    data = path.read_bytes()
    boot = bzimage.parse_header(data, str(path))
    assert boot.method == method and boot.protocol == (2, 15)
    assert boot.payload_offset == 5 * 512 + PM_PAD


def test_inspect_reads_the_vmlinux_inside(vmlinuz, elf):
    method, path = vmlinuz
    a = json.loads(run("inspect", "--json", "--sites", str(elf)).stdout)
    r = run("inspect", "--json", "--sites", str(path))
    assert r.exit_code == 0, r.stderr
    b = json.loads(r.stdout)
    assert without(a, "file", "input") == without(b, "file", "input")
    assert b["input"]["format"] == "bzImage" and b["input"]["compression"] == method
    assert b["input"]["symbols"] == ".symtab"  # the fixture ELF was not stripped
    text = run("inspect", str(path)).stdout
    assert f"{method} payload" in text.splitlines()[1]


def test_notes_and_extract(vmlinuz, elf, tmp_path):
    _method, path = vmlinuz
    a = json.loads(run("notes", "--json", str(elf)).stdout)
    b = json.loads(run("notes", "--json", str(path)).stdout)
    assert without(a, "file", "input") == without(b, "file", "input")
    out = tmp_path / "vmlinux"
    r = run("extract", str(path), "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes() == elf.read_bytes()  # the ELF, without the relocations after it
    assert f"{len(RELOCS)} bytes of boot-time relocations" in r.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pvpatch-")]


def test_apply_writes_the_patched_vmlinux(vmlinuz, elf, tmp_path):
    _method, path = vmlinuz
    r1 = run("apply", str(elf), "-o", str(tmp_path / "from-elf"), "--backend", "xen")
    r2 = run("apply", str(path), "-o", str(tmp_path / "from-bz"), "--backend", "xen")
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.stderr
    assert (tmp_path / "from-elf").read_bytes() == (tmp_path / "from-bz").read_bytes()
    assert "the patched vmlinux ELF, not a bzImage" in r2.stdout
    one_line_error(run("apply", str(path), "--in-place"), "--in-place", "bzImage")
    d = run("diff", str(path), str(tmp_path / "from-bz"), "--json")
    assert d.exit_code == 0 and json.loads(d.stdout)["changed_sites"] > 0


# -- decompression details ----------------------------------------------------------------------

def test_lz4_legacy_blocks_of_8_mib(tmp_path):
    data = bytes(range(256)) * (9 << 12)  # 9 MiB: two blocks
    payload = lz4_legacy(data) + struct.pack("<I", len(data))
    image = make_bzimage(payload)
    boot = bzimage.parse_header(image, "x")
    assert bzimage.decompress(image, boot) == data


@pytest.mark.parametrize("variant", ["stored-and-compressed", "crc32+c-sums", "extra-field"])
def test_lzop_header_and_block_variants(variant):
    # compressible bytes, then noise lzop stores as is
    data = bytes(range(256)) * 1500 + random.Random(6).randbytes(300_000)
    if variant == "crc32+c-sums":
        payload = lzop(data, flags=0x03000000 | bzimage.LZOP_CRC32_D | bzimage.LZOP_CRC32_C)
    elif variant == "extra-field":
        payload = lzop(data, extra=b"pvpatch")
    else:
        payload = lzop(data)
    image = make_bzimage(payload + struct.pack("<I", len(data)))
    boot = bzimage.parse_header(image, "x")
    assert boot.method == "lzo"
    assert bzimage.decompress(image, boot) == data


def test_real_lzop_output(elf, tmp_path):
    """The kernel's build runs `lzop -9`; read what the tool itself writes."""
    tool = shutil.which("lzop")
    if tool is None:
        pytest.skip("lzop not installed (apt-get install lzop): real lzop output not tested")
    payload = subprocess.run([tool, "-9", "-c"], input=elf.read_bytes() + RELOCS,
                             capture_output=True, check=True).stdout
    path = tmp_path / "vmlinuz"
    path.write_bytes(make_bzimage(payload + struct.pack("<I", len(elf.read_bytes()) +
                                                        len(RELOCS))))
    out = tmp_path / "vmlinux"
    r = run("extract", str(path), "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert "lzo payload" in r.stdout and out.read_bytes() == elf.read_bytes()


def test_lzo_without_lzallright_is_a_one_line_error(monkeypatch, elf, tmp_path):
    import sys

    path = tmp_path / "vmlinuz"
    path.write_bytes(make_bzimage(compress(elf.read_bytes(), "lzo")))
    monkeypatch.setitem(sys.modules, "lzallright", None)  # import fails
    one_line_error(run("inspect", str(path)), "LZO-compressed", "pip install")


def test_old_boot_protocol_is_searched_for_gzip(elf, tmp_path):
    path = tmp_path / "zImage"
    path.write_bytes(make_bzimage(gzip.compress(elf.read_bytes(), mtime=0), version=0x0206))
    with open_image(str(path)) as image:
        assert image.origin.protocol == (2, 6) and image.origin.method == "gzip"
        assert image.size == elf.stat().st_size


def test_progress_is_reported(vmlinuz):
    _method, path = vmlinuz
    said: list[str] = []
    with open_image(str(path), progress=said.append) as image:
        assert image.section(".text") is not None
    assert said[0].startswith("decompressing") and said[-1].endswith("100%")


# -- bad input: one line, exit status 2 ----------------------------------------------------------

def test_truncated(vmlinuz, tmp_path):
    _method, path = vmlinuz
    cut = tmp_path / "cut"
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    one_line_error(run("inspect", str(cut)), "truncated bzImage")


def test_corrupt_lz4_block(elf, tmp_path):
    """Found by the fuzzer: lz4's error class lives in a module named ``_block``."""
    payload = bytearray(compress(elf.read_bytes(), "lz4"))
    payload[16:48] = b"\xff" * 32  # inside the first block's sequences
    path = tmp_path / "corrupt"
    path.write_bytes(make_bzimage(bytes(payload)))
    one_line_error(run("inspect", str(path)), "lz4 payload does not decompress: block 0")


def test_truncated_stream_with_a_consistent_header(elf, tmp_path):
    payload = compress(elf.read_bytes(), "xz")
    path = tmp_path / "short"
    path.write_bytes(make_bzimage(payload[:len(payload) // 2]))
    one_line_error(run("notes", str(path)), "truncated bzImage", "xz stream ends early")


@pytest.mark.parametrize(("cut", "needle"), [
    (lambda p: p[:40], "lzo stream ends in the header"),
    (lambda p: p[:len(p) // 2], "lzo stream ends in block"),
    (lambda p: p[:-4], "lzo stream ends in block"),  # the end marker is missing
])
def test_truncated_lzo_stream(elf, tmp_path, cut, needle):
    path = tmp_path / "short"
    path.write_bytes(make_bzimage(cut(lzop(elf.read_bytes()))))
    one_line_error(run("inspect", str(path)), "truncated bzImage", needle)


def test_corrupt_lzo_block(elf, tmp_path):
    payload = bytearray(compress(elf.read_bytes(), "lzo"))
    payload[len(payload) // 2:len(payload) // 2 + 16] = b"\xa5" * 16
    path = tmp_path / "bad"
    path.write_bytes(make_bzimage(bytes(payload)))
    one_line_error(run("inspect", str(path)), "lzo payload does not decompress")


def test_corrupt_stream(elf, tmp_path):
    payload = bytearray(compress(elf.read_bytes(), "gzip"))
    payload[len(payload) // 2:len(payload) // 2 + 16] = b"\xa5" * 16
    path = tmp_path / "bad"
    path.write_bytes(make_bzimage(bytes(payload)))
    one_line_error(run("inspect", str(path)), "gzip payload does not decompress")


@pytest.mark.parametrize(("payload", "needle"), [
    (b"ABCDEFGH" * 64, "unknown compression"),
    (gzip.compress(b"not a kernel " * 100, mtime=0), "is not a vmlinux"),
])
def test_unusable_payloads(tmp_path, payload, needle):
    path = tmp_path / "vmlinuz"
    path.write_bytes(make_bzimage(payload))
    one_line_error(run("inspect", str(path)), needle)
    one_line_error(run("extract", str(path), "-o", str(tmp_path / "out")), needle)
    assert not (tmp_path / "out").exists()


def test_not_a_kernel(tmp_path):
    path = tmp_path / "random"
    path.write_bytes(b"just some words, no kernel here\n" * 64)
    one_line_error(run("inspect", str(path)), "not an ELF file nor an x86 bzImage")
    one_line_error(run("extract", str(path), "-o", str(tmp_path / "o")), "not an ELF file")


BAD_INPUTS = {  # name → (make the file from the fixture ELF, what the one line must say)
    "truncated": (lambda e: make_bzimage(compress(e, "xz"))[:3000], "truncated bzImage"),
    "unknown-compression": (lambda e: make_bzimage(b"ABCDEFGH" * 64), "unknown compression"),
    "payload-not-a-kernel": (lambda e: make_bzimage(gzip.compress(b"not a kernel " * 100,
                                                                    mtime=0)),
                             "is not a vmlinux"),
    "not-a-kernel": (lambda e: b"just some words, no kernel here\n" * 64,
                     "not an ELF file nor an x86 bzImage"),
}


@pytest.mark.parametrize("command", ["inspect", "notes", "apply", "check", "diff", "extract"])
@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_every_command_refuses_a_bad_vmlinuz_in_one_line(elf, tmp_path, command, bad):
    make, needle = BAD_INPUTS[bad]
    path = tmp_path / "vmlinuz"
    path.write_bytes(make(elf.read_bytes()))
    out = tmp_path / "out"
    args = {"apply": ["-o", str(out)], "extract": ["-o", str(out)], "diff": [str(elf)]}
    one_line_error(run(command, str(path), *args.get(command, [])), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vmlinuz"]  # nothing written


def test_extract_of_an_elf_copies_it(elf, tmp_path):
    r = run("extract", str(elf), "-o", str(tmp_path / "copy"))
    assert r.exit_code == 0 and "already an ELF" in r.stdout
    assert (tmp_path / "copy").read_bytes() == elf.read_bytes()


# -- symbols and types from elsewhere -------------------------------------------------------------

def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (binutils) not installed")
    return path


@pytest.fixture(scope="module")
def stripped(elf, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(stripped ELF, its System.map from nm -n, its .BTF as a raw file)."""
    d = tmp_path_factory.mktemp("strip")
    out, smap, btf = d / "vmlinux.stripped", d / "System.map", d / "vmlinux.btf"
    subprocess.run([_tool("objcopy"), "--strip-all", "--remove-section=.BTF", str(elf),
                    str(out)], check=True)
    subprocess.run([_tool("objcopy"), "-O", "binary", "--only-section=.BTF", str(elf),
                    str(btf)], check=True)
    nm = subprocess.run([_tool("nm"), "-n", str(elf)], check=True, capture_output=True,
                        text=True).stdout
    smap.write_text(nm)
    return out, smap, btf


def test_system_map_and_btf_for_a_stripped_image(elf, stripped):
    image, smap, btf = stripped
    with ElfImage(image) as im:
        assert im.section(".symtab") is None and im.section(".BTF") is None
    full = json.loads(run("inspect", "--json", "--sites", str(elf)).stdout)
    bare = run("inspect", str(image))
    assert bare.exit_code == 0
    assert "no type information" in bare.stdout and "--btf FILE" in bare.stdout
    assert "no symbols" in bare.stdout
    r = run("inspect", "--json", "--sites", str(image), "--system-map", str(smap),
            "--btf", str(btf))
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["input"]["symbols"] == "System.map"
    assert got["input"]["types"] == f"BTF from {btf}"
    assert without(full, "file", "input") == without(got, "file", "input")


def test_check_takes_the_same_image_options(elf, stripped):
    """check on a stripped image with --system-map and --btf finds what it finds on the
    full image (every command accepts the same image options)."""
    image, smap, btf = stripped
    full = json.loads(run("check", "--json", str(elf)).stdout)
    r = run("check", "--json", str(image), "--system-map", str(smap), "--btf", str(btf))
    assert r.exit_code in (0, 1), r.stderr
    assert without(json.loads(r.stdout), "input") == without(full, "input")


def test_debian_placeholder_system_map(stripped, tmp_path):
    image, _smap, _btf = stripped
    placeholder = tmp_path / "System.map-6.1.0-56-amd64"
    placeholder.write_text("ffffffffffffffff B The real System.map is in the "
                           "linux-image-<version>-dbg package\n")
    one_line_error(run("inspect", str(image), "--system-map", str(placeholder)),
                   "placeholder", "-dbg package")


def test_system_map_of_another_build(stripped, tmp_path):
    image, smap, _btf = stripped
    shifted = tmp_path / "System.map"
    lines = []
    for line in smap.read_text().splitlines():
        addr, kind, name = line.split()[:3]
        lines.append(f"{int(addr, 16) + 0x10000000:016x} {kind} {name}")
    shifted.write_text("\n".join(lines) + "\n")
    one_line_error(run("notes", str(image), "--system-map", str(shifted)), "does not match")


@pytest.mark.parametrize("address,needle", [
    ("1" + "0" * 16, "does not fit a 64-bit image"),  # 2^64: past any x86-64 register
    ("f" * 40, "does not fit a 64-bit image"),
    ("-1", "not a hex address"),  # int(…, 16) takes a sign …
    ("0x10", "not a hex address"),  # … a 0x …
    ("1_0", "not a hex address"),  # … and underscores; nm writes none of them
])
def test_system_map_address_that_no_symbol_can_hold(stripped, tmp_path, address, needle):
    """Found by the fuzzer: a huge or negative address reached the symbol table's unsigned
    array as an OverflowError traceback."""
    image, smap, _btf = stripped
    lines = smap.read_text().splitlines()
    lines[len(lines) // 2] = f"{address} T some_function"
    bad = tmp_path / "System.map"
    bad.write_text("\n".join(lines) + "\n")
    one_line_error(run("inspect", str(image), "--system-map", str(bad)),
                   f"line {len(lines) // 2 + 1}", needle)


def test_bad_btf_file(stripped, tmp_path):
    image, _smap, _btf = stripped
    junk = tmp_path / "btf"
    junk.write_bytes(b"\0" * 64)
    one_line_error(run("inspect", str(image), "--btf", str(junk)), "magic")
