"""scripts/fetchkernel.py: sources, suite:flavour names, package layouts — and one cached fetch.

The parsing is tested on inline samples without network; one test runs the script with a fake
apt on PATH (so it is hermetic), and one runs it for real against the cache, skipping loudly
when Debian's registry cannot be reached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import fetchkernel as fk

SCRIPT = ROOT / "scripts" / "fetch-kernel.sh"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: {keyring}

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: {keyring}
"""

ONE_LINE = """\
# the machine's mirror
deb [arch=amd64 signed-by={keyring}] http://ftp.de.debian.org/debian/ bookworm main contrib
deb-src http://ftp.de.debian.org/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main  # security
"""


@pytest.fixture
def keyring(tmp_path) -> str:
    path = tmp_path / "machine-keyring.gpg"
    path.write_bytes(b"not really a keyring")
    return str(path)


# -- the machine's sources → the private sources.list -----------------------------------------


def test_deb822_sources_give_the_main_and_security_archive(tmp_path, keyring):
    f = tmp_path / "debian.sources"
    f.write_text(DEB822.format(keyring=keyring))
    archives = fk.pick_archives(fk.read_entries([f]))
    assert archives["main"].uri == "http://deb.debian.org/debian"
    assert archives["security"].uri == "http://deb.debian.org/debian-security"
    assert archives["main"].keyring == keyring
    text = fk.render_sources(archives, {"bullseye": {"amd64"}, "bookworm": {"amd64", "i386"},
                                        "bookworm-security": {"i386"}})
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == [
        f"deb [arch=amd64,i386 lang=none target=Packages signed-by={keyring}] "
        "http://deb.debian.org/debian bookworm main",
        f"deb [arch=i386 lang=none target=Packages signed-by={keyring}] "
        "http://deb.debian.org/debian-security bookworm-security main",
        f"deb [arch=amd64 lang=none target=Packages signed-by={keyring}] "
        "http://deb.debian.org/debian bullseye main",
    ]
    # the script reads back which suites and architectures its own list already carries
    assert fk.suites_in(text) == {"bullseye": {"amd64"}, "bookworm": {"amd64", "i386"},
                                  "bookworm-security": {"i386"}}


def test_one_line_sources_with_options_comments_and_deb_src(tmp_path, keyring):
    f = tmp_path / "sources.list"
    f.write_text(ONE_LINE.format(keyring=keyring))
    entries = fk.read_entries([f])
    assert [(e.uri, e.suites) for e in entries] == [
        ("http://ftp.de.debian.org/debian/", ("bookworm",)),
        ("http://security.debian.org/debian-security", ("bookworm-security",))]
    archives = fk.pick_archives(entries, default_keyring="/default.gpg")
    assert archives["main"] == fk.Archive("http://ftp.de.debian.org/debian/", keyring,
                                          "the machine's apt sources")
    # no signed-by: the Debian archive keyring (here the given default)
    assert archives["security"].keyring == "/default.gpg"


def test_other_archives_disabled_stanzas_and_inline_keys(tmp_path):
    text = ("Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
            "Components: main\n\n"
            "Enabled: no\nTypes: deb\nURIs: http://disabled.example/debian\nSuites: sid\n\n"
            "Types: deb-src\nURIs: http://src.example/debian\nSuites: sid\n\n"
            "Types: deb\nURIs: mirror+file:///etc/apt/mirrors/debian.list\nSuites: trixie\n"
            "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBF\n"
            " -----END PGP PUBLIC KEY BLOCK-----\n")
    entries = fk.parse_deb822(text)
    assert [e.uri for e in entries] == ["https://deb.nodesource.com/node_20.x",
                                        "mirror+file:///etc/apt/mirrors/debian.list"]
    archives = fk.pick_archives(entries, key_dir=tmp_path / "keys")
    assert archives["main"].uri == "mirror+file:///etc/apt/mirrors/debian.list"
    key = Path(archives["main"].keyring)
    assert key.parent == tmp_path / "keys" and key.suffix == ".asc"
    assert key.read_text().splitlines()[:3] == ["-----BEGIN PGP PUBLIC KEY BLOCK-----", "",
                                                "mQINBF"]
    # no security entry on the machine: the documented default, said to be one
    assert archives["security"].uri == fk.FALLBACK_URIS["security"]
    assert "not in the machine's apt sources" in archives["security"].origin


def test_no_debian_entry_at_all_falls_back_to_deb_debian_org():
    archives = fk.pick_archives([])
    assert archives["main"].uri == "http://deb.debian.org/debian"
    assert archives["main"].keyring == fk.DEFAULT_KEYRING


def test_source_files_in_apts_order_and_only_its_extensions(tmp_path):
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    for name in ("b.sources", "a.list", "c.list.disabled-by-farm", "d.sources.bak"):
        (parts / name).write_text("")
    main = tmp_path / "sources.list"
    main.write_text("")
    assert [p.name for p in fk.source_files(main, parts)] == ["sources.list", "a.list",
                                                              "b.sources"]
    assert fk.source_files(tmp_path / "missing", tmp_path / "none") == []


# -- [SUITE:]FLAVOUR ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec, suites, flavour, arch, base", [
    ("bullseye:amd64", ("bullseye",), "amd64", "amd64", "amd64"),
    ("trixie-backports:amd64", ("trixie-backports",), "amd64", "amd64", "amd64"),
    ("bookworm:686-pae", ("bookworm",), "686-pae", "i386", "686-pae"),
    ("sid:cloud-amd64", ("sid",), "cloud-amd64", "amd64", "cloud-amd64"),
    ("trixie+trixie-security:rt-amd64", ("trixie", "trixie-security"), "rt-amd64", "amd64",
     "rt-amd64"),
    # the old spellings: bookworm with its security updates, as the host's lists gave
    ("amd64", fk.DEFAULT_SUITES, "amd64", "amd64", "amd64"),
    ("cloud-amd64", fk.DEFAULT_SUITES, "cloud-amd64", "amd64", "cloud-amd64"),
    ("6.12-amd64", fk.DEFAULT_SUITES, "6.12-amd64", "amd64", "amd64"),
    ("6.12-cloud-amd64", fk.DEFAULT_SUITES, "6.12-cloud-amd64", "amd64", "cloud-amd64"),
    ("rt-amd64", fk.DEFAULT_SUITES, "rt-amd64", "amd64", "rt-amd64"),
    ("686", fk.DEFAULT_SUITES, "686", "i386", "686"),
    ("6.12-686-pae", fk.DEFAULT_SUITES, "6.12-686-pae", "i386", "686-pae"),
])
def test_parse_request(spec, suites, flavour, arch, base):
    r = fk.parse_request(spec)
    assert (r.suites, r.flavour, r.arch, r.base) == (suites, flavour, arch, base)
    assert r.meta == f"linux-image-{flavour}-dbg"


@pytest.mark.parametrize("spec", [":amd64", "bookworm:arm64", "Bookworm:amd64", "bookworm:a b",
                                  "bookworm:../amd64"])
def test_parse_request_refuses(spec):
    with pytest.raises(ValueError):
        fk.parse_request(spec)


def test_release_from_the_meta_packages_depends():
    # 5.10–6.x: one dependency; 7.x: linux-base first; a series flavour's meta names its own
    assert fk.release_from_depends("linux-image-5.10.0-32-amd64-dbg (= 5.10.223-1)",
                                   "amd64") == ("5.10.0-32-amd64", "5.10.223-1")
    assert fk.release_from_depends(
        "linux-base-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-amd64-dbg (= 7.2.13-1)",
        "amd64") == ("7.2.13+deb14-amd64", "7.2.13-1")
    assert fk.release_from_depends("linux-image-6.12.118+deb12-cloud-amd64-dbg",
                                   "cloud-amd64") == ("6.12.118+deb12-cloud-amd64", "")
    assert fk.release_from_depends("linux-image-6.1.0-50-cloud-amd64-dbg (= 6.1.176-1)",
                                   "amd64") is None
    assert fk.is_release_of("6.1.0-50-rt-amd64", "rt-amd64")
    assert not fk.is_release_of("6.1.0-50-rt-amd64", "amd64")
    assert not fk.is_release_of("amd64", "amd64")


def test_madison_rows_carry_the_suite():
    text = ("linux-image-amd64-dbg | 7.3.4-1~bpo13+1 | http://deb.debian.org/debian "
            "trixie-backports/main amd64 Packages\n"
            "linux-image-686-pae-dbg:i386 |  6.1.192-3 | http://deb.debian.org/debian-security "
            "bookworm-security/main i386 Packages\n"
            "   linux | 6.1.176-1 | http://deb.debian.org/debian bookworm/main Sources\n")
    assert fk.parse_madison(text) == [
        ("linux-image-amd64-dbg", "7.3.4-1~bpo13+1", "trixie-backports"),
        ("linux-image-686-pae-dbg", "6.1.192-3", "bookworm-security")]


@pytest.mark.parametrize("a, b, expected", [
    ("6.1.192-3", "6.1.176-1", 1), ("6.12.95-1~bpo12+1", "6.12.95-1", -1),
    ("7.3.4-1~bpo13+1", "7.2.13-1", 1), ("1:0.1", "9.9", 1), ("1.0~rc1", "1.0", -1),
    ("1.0a", "1.0+", -1), ("6.1.0", "6.1.0", 0), ("5.10.223-1", "5.10.262-1", -1)])
def test_debian_version_order(a, b, expected):
    assert fk.compare_versions(a, b) == expected
    assert fk.compare_versions(b, a) == -expected
    if shutil.which("dpkg"):
        op = {1: "gt", 0: "eq", -1: "lt"}[expected]
        assert subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0


# -- package layouts, from dpkg-deb -c ---------------------------------------------------------


def listing(*rows: tuple[str, str, int, str]) -> list[str]:
    out = []
    for kind, path, size, target in rows:
        perms = f"{kind}rwxr-xr-x" if kind != "-" else "-rw-r--r--"
        arrow = f" -> {target}" if target else ""
        out.append(f"{perms} root/root {size:>9} 2026-11-28 09:54 {path}{arrow}\n")
    return out


def test_layout_6x_debug_image_in_boot():
    rel = "6.12.118+deb12-amd64"
    lines = listing(("d", "./usr/lib/debug/boot/", 0, ""),
                    ("-", f"./usr/lib/debug/boot/vmlinux-{rel}", 354574744, ""),
                    ("l", f"./usr/lib/debug/lib/modules/{rel}/vmlinux", 0,
                     f"../../../boot/vmlinux-{rel}"),
                    ("l", f"./usr/lib/debug/vmlinux-{rel}", 0, f"boot/vmlinux-{rel}"))
    m = fk.find_member(lines, fk.vmlinux_candidates(rel))
    assert (m.path, m.kind, m.size) == (f"./usr/lib/debug/boot/vmlinux-{rel}", "-", 354574744)


def test_layout_7x_debug_image_in_the_modules_tree_behind_a_link():
    rel = "7.3.4+deb13-amd64"
    # the /boot name comes first and is the link; the real file is found through it
    lines = listing(("l", f"./usr/lib/debug/boot/vmlinux-{rel}", 0,
                     f"../lib/modules/{rel}/vmlinux"),
                    ("-", f"./usr/lib/debug/lib/modules/{rel}/kernel/fs/ext4.ko", 9, ""),
                    ("-", f"./usr/lib/debug/lib/modules/{rel}/vmlinux", 431104768, ""))
    m = fk.find_member(lines, fk.vmlinux_candidates(rel))
    assert (m.path, m.size) == (f"./usr/lib/debug/lib/modules/{rel}/vmlinux", 431104768)


def test_layout_bootable_images():
    old = listing(("-", "./boot/System.map-5.10.0-32-amd64", 9, ""),
                  ("-", "./boot/vmlinuz-5.10.0-32-amd64", 7071904, ""))
    assert fk.find_member(old, fk.vmlinuz_candidates("5.10.0-32-amd64")).path == \
        "./boot/vmlinuz-5.10.0-32-amd64"
    rel = "7.3.4+deb13-amd64"
    new = listing(("-", f"./usr/lib/modules/{rel}/vmlinuz.unsigned", 14504448, ""))
    assert fk.find_member(new, fk.vmlinuz_candidates(rel)).path == \
        f"./usr/lib/modules/{rel}/vmlinuz.unsigned"


def test_layout_none_and_dangling_links():
    rel = "6.1.0-50-amd64"
    lines = listing(("l", f"./usr/lib/debug/lib/modules/{rel}/vmlinux", 0, "../nowhere"),
                    ("-", "./usr/share/doc/linux/changelog.gz", 10, ""))
    assert fk.find_member(lines, fk.vmlinux_candidates(rel)) is None
    assert fk.parse_listing_line("not a listing line") is None


# -- the cache's names, as tests/conftest.py reads them -----------------------------------------


def test_real_kernel_finds_each_series_by_name(tmp_path, monkeypatch):
    import conftest

    names = ["5.10.0-32-amd64", "6.1.0-9-amd64", "6.1.0-57-amd64", "6.1.0-57-cloud-amd64",
             "6.1.0-57-rt-amd64", "6.12.118+deb12-amd64", "6.12.118+deb12-cloud-amd64",
             "7.3.4+deb13-amd64", "6.1.0-57-686-pae"]
    (tmp_path / "kernels").mkdir()
    for n in names:
        for kind in ("vmlinux", "vmlinuz"):
            (tmp_path / "kernels" / f"{kind}-{n}").touch()
    monkeypatch.setattr(conftest, "CACHE", tmp_path)
    got = {(f, s, k): conftest.real_kernel(f, s, k).name
           for f, s in [("amd64", "5.10"), ("amd64", "7.3"), ("amd64", "6.1"),
                        ("cloud-amd64", "6.1"), ("amd64", "6.12"), ("686-pae", "6.1")]
           for k in ("vmlinux", "vmlinuz")}
    assert got[("amd64", "5.10", "vmlinux")] == "vmlinux-5.10.0-32-amd64"
    assert got[("amd64", "7.3", "vmlinux")] == "vmlinux-7.3.4+deb13-amd64"
    assert got[("amd64", "7.3", "vmlinuz")] == "vmlinuz-7.3.4+deb13-amd64"
    assert got[("amd64", "6.1", "vmlinux")] == "vmlinux-6.1.0-57-amd64"  # not -9, not cloud
    assert got[("cloud-amd64", "6.1", "vmlinuz")] == "vmlinuz-6.1.0-57-cloud-amd64"
    assert got[("amd64", "6.12", "vmlinux")] == "vmlinux-6.12.118+deb12-amd64"
    assert got[("686-pae", "6.1", "vmlinux")] == "vmlinux-6.1.0-57-686-pae"
    with pytest.raises(pytest.skip.Exception):
        conftest.real_kernel("cloud-amd64", "5.10")


# -- the script --------------------------------------------------------------------------------

FAKE_APT = r"""#!/bin/sh
# a stand-in for apt-get/apt-cache: knows one meta-package, refuses to download
for a; do last=$a; done
url="http://deb.debian.org/debian"
case "$*" in
  *" update") exit 0 ;;
  *" download "*) echo "download $last" >> "$FAKE_LOG"; exit 100 ;;
  *" madison "*)
    echo "linux-image-amd64-dbg | 5.10.223-1 | $url bullseye/main amd64 Packages"
    echo "linux-image-amd64-dbg | 6.1.176-1 | $url bookworm/main amd64 Packages" ;;
  *" show "*)
    case "$last" in
      *=5.10.223-1) echo "Depends: linux-image-5.10.0-32-amd64-dbg (= 5.10.223-1)" ;;
      *) echo "Depends: linux-image-6.1.0-50-amd64-dbg (= 6.1.176-1)" ;;
    esac ;;
esac
"""


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)


@pytest.fixture
def fake_apt(tmp_path) -> dict[str, str]:
    """The environment of a run against the fake apt, with bullseye's 5.10 cached."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "apt-cache"):
        (bin_dir / tool).write_text(FAKE_APT)
        (bin_dir / tool).chmod(0o755)
    cache = tmp_path / "cache"
    (cache / "kernels").mkdir(parents=True)
    (cache / "kernels" / "vmlinux-5.10.0-32-amd64").write_bytes(b"\x7fELF")
    (cache / "kernels" / "vmlinuz-5.10.0-32-amd64").write_bytes(b"MZ")
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PVPATCH_CACHE": str(cache),
            "FAKE_LOG": str(tmp_path / "log")}


def test_cached_kernel_is_printed_without_a_download_hermetic(tmp_path, fake_apt):
    env = fake_apt
    cache = Path(env["PVPATCH_CACHE"])
    vmlinux = cache / "kernels" / "vmlinux-5.10.0-32-amd64"
    (cache / "debs").mkdir()
    (cache / "debs" / "linux-image-old-dbg_1_amd64.deb").write_bytes(b"old")
    r = run_script("bullseye:amd64", "--with-vmlinuz", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{vmlinux}\n"
    assert "in bullseye → 5.10.0-32-amd64" in r.stderr  # not bookworm's newer 6.1
    assert not (tmp_path / "log").exists()  # nothing downloaded
    assert not (cache / "debs").exists() and "removing 1 .deb" in r.stderr
    # the same with the bookworm release not cached: --no-download says so, exit 3
    r = run_script("bookworm:amd64", "--no-download", env=env)
    assert r.returncode == 3 and r.stdout == ""
    assert "6.1.0-50-amd64 not cached" in r.stderr.splitlines()[-1]


def test_boot_tests_fetch_kernel_takes_suite_qualified_names(fake_apt, monkeypatch):
    from boottest import common

    for k, v in fake_apt.items():
        monkeypatch.setenv(k, v)
    kernel = common.fetch_kernel("bullseye:amd64")
    assert (kernel.flavour, kernel.release) == ("bullseye:amd64", "5.10.0-32-amd64")
    assert kernel.vmlinuz.name == "vmlinuz-5.10.0-32-amd64"
    with pytest.raises(common.BootError, match="unreachable or has no such package"):
        common.fetch_kernel("trixie:amd64")  # the fake registry has no trixie


@pytest.mark.parametrize("path, release", [
    ("kernels/vmlinux-5.10.0-32-amd64", "5.10.0-32-amd64"),
    ("kernels/vmlinux-7.3.4+deb13-amd64", "7.3.4+deb13-amd64"),
    ("kernels/vmlinuz-6.12.118+deb12-cloud-amd64", "6.12.118+deb12-cloud-amd64"),
    ("usr/lib/debug/lib/modules/7.3.4+deb13-amd64/vmlinux", "7.3.4+deb13-amd64"),
    ("build/vmlinux", "vmlinux")])
def test_boot_tests_release_of(path, release):
    from boottest.common import release_of

    assert release_of(Path(path)) == release


def test_usage_errors_exit_2():
    for args in (["bookworm:arm64"], ["amd64", "--bogus"], ["amd64", "cloud-amd64"]):
        r = run_script(*args, env={"PVPATCH_CACHE": "/nonexistent/never-used"})
        assert r.returncode == 2, (args, r.stderr)
    assert "usage:" in run_script("--help").stdout


@pytest.mark.realkernel
def test_cached_kernel_is_printed_without_a_download_real():
    """bullseye's newest amd64 kernel, resolved in Debian's registry, found in the cache."""
    r = run_script("bullseye:amd64", "--with-vmlinuz", "--no-download")
    if r.returncode == 3:
        pytest.skip("REAL FETCH SKIPPED: " + r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.parent == CACHE / "kernels" and path.is_file()
    assert path.name.startswith("vmlinux-5.10.") and path.name.endswith("-amd64")
    assert path.with_name(path.name.replace("vmlinux-", "vmlinuz-")).is_file()
    assert "cached:" in r.stderr and "downloading" not in r.stderr
