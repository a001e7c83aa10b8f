#!/usr/bin/env python3
"""Fetch a Debian debug vmlinux (and its bootable vmlinuz) into the cache; see fetch-kernel.sh.

Everything apt does here runs on a private configuration under ``$PVPATCH_CACHE/apt``, built
from the machine's own Debian mirror entry, so any Debian suite can be reached without editing
/etc/apt, updating the host's package lists or adding a dpkg architecture. Standard library
only: the script runs before the project's venv exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

USAGE = """\
usage: scripts/fetch-kernel.sh [SUITE:]FLAVOUR [--with-vmlinuz] [--no-download]

  FLAVOUR   a Debian kernel flavour: cloud-amd64 (the default), amd64, rt-amd64, 686-pae, 686,
            or a series-qualified one such as 6.12-amd64
  SUITE     an archive suite: bullseye, bookworm, bookworm-backports, bookworm-security,
            trixie, trixie-backports, sid, ...; several joined by '+' take the newest kernel
            among them. Without SUITE: bookworm+bookworm-security, what a bookworm machine
            installs (and what this script resolved before suites existed).
  --with-vmlinuz  also extract the bootable image, as kernels/vmlinuz-RELEASE
  --no-download   resolve only: print the path if the kernel is cached, else exit 3
                  saying what would be downloaded

examples: bullseye:amd64 (5.10), bookworm:amd64 (6.1), trixie-backports:amd64, bookworm:686-pae
"""

DEFAULT_SUITES = ("bookworm", "bookworm-security")
DEFAULT_FLAVOUR = "cloud-amd64"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
FALLBACK_URIS = {"main": "http://deb.debian.org/debian",
                 "security": "http://deb.debian.org/debian-security"}
LISTS_MAX_AGE = 24 * 3600  # refresh the private package lists when older than this
ARCHES = ("amd64", "i386")  # the x86 architectures the flavours map to

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class Unavailable(Exception):
    """The registry cannot be reached or has no such package: exit 3, callers skip."""


class Failure(Exception):
    """Something went wrong after the package was found (disk, a corrupt .deb): exit 1."""


def say(message: str) -> None:
    print(f"fetch-kernel: {message}", file=sys.stderr, flush=True)


# -- what was asked for ------------------------------------------------------------------------

_SERIES_PREFIX = re.compile(r"^\d+(?:\.\d+)+-")
_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


@dataclass(frozen=True)
class Request:
    suites: tuple[str, ...]
    flavour: str  # as Debian names it, e.g. 6.12-cloud-amd64
    arch: str  # the Debian architecture of its packages

    @property
    def base(self) -> str:
        """The flavour without a series prefix: what the release name ends with."""
        return _SERIES_PREFIX.sub("", self.flavour)

    @property
    def meta(self) -> str:
        return f"linux-image-{self.flavour}-dbg"


def flavour_arch(flavour: str) -> str:
    """amd64 for the 64-bit flavours, i386 for 686/686-pae; anything else is not x86."""
    if flavour.endswith("amd64"):
        return "amd64"
    if "686" in flavour:
        return "i386"
    raise ValueError(f"cannot tell the x86 architecture of flavour {flavour!r} "
                     "(expected …amd64 or …686…)")


def parse_request(spec: str) -> Request:
    """``[SUITE[+SUITE…]:]FLAVOUR`` → Request; no suite means bookworm with its security
    updates, so the old bare spellings keep resolving what they did."""
    suite_part, sep, flavour = spec.rpartition(":")
    flavour = flavour or DEFAULT_FLAVOUR
    suites = tuple(s for s in suite_part.split("+") if s) if sep else DEFAULT_SUITES
    if sep and not suites:
        raise ValueError(f"no suite before ':' in {spec!r}")
    for name in (*suites, flavour):
        if not _NAME.match(name):
            raise ValueError(f"bad suite or flavour name {name!r} in {spec!r}")
    return Request(suites, flavour, flavour_arch(flavour))


# -- the machine's Debian mirror ---------------------------------------------------------------


@dataclass(frozen=True)
class SourceEntry:
    uri: str
    suites: tuple[str, ...]
    signed_by: str  # a keyring path, an inline key, or ""


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key:
            value = line.strip()
            stanza[key] += "\n" + ("" if value == "." else value)
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()
    if stanza:
        yield stanza


def parse_deb822(text: str) -> list[SourceEntry]:
    """The binary (``deb``) entries of a deb822 ``.sources`` file, one per URI."""
    out = []
    for st in _deb822_stanzas(text):
        if st.get("enabled", "yes").lower() == "no" or "deb" not in st.get("types", "").split():
            continue
        suites = tuple(st.get("suites", "").split())
        for uri in st.get("uris", "").split():
            out.append(SourceEntry(uri, suites, st.get("signed-by", "").strip()))
    return out


def parse_one_line(text: str) -> list[SourceEntry]:
    """The ``deb`` lines of a one-line-style ``sources.list``."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            opts, _, rest = rest[1:].partition("]")
            for opt in opts.split():
                k, _, v = opt.partition("=")
                options[k.lower()] = v
        words = rest.split()
        if len(words) >= 2:
            out.append(SourceEntry(words[0], (words[1],), options.get("signed-by", "")))
    return out


def source_files(sourcelist: Path, sourceparts: Path) -> list[Path]:
    """The files apt reads, in apt's order: sources.list, then the parts by name."""
    files = [sourcelist] if sourcelist.is_file() else []
    if sourceparts.is_dir():
        files += sorted(p for p in sourceparts.iterdir()
                        if p.suffix in (".list", ".sources") and p.is_file())
    return files


def read_entries(files: Iterable[Path]) -> list[SourceEntry]:
    out = []
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        out += parse_deb822(text) if f.suffix == ".sources" else parse_one_line(text)
    return out


def archive_kind(uri: str) -> str | None:
    """"main" for a Debian archive URI (its last path part is ``debian``), "security" for
    ``debian-security``; a ``mirror+file:`` list named so counts the same."""
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".list", ".txt"):
        last = last.removesuffix(ext)
    return {"debian": "main", "debian-security": "security"}.get(last)


@dataclass(frozen=True)
class Archive:
    uri: str
    keyring: str  # path of the keyring apt checks the Release signature with
    origin: str  # where the URI came from, for the log


def pick_archives(entries: Iterable[SourceEntry], *, key_dir: Path | None = None,
                  default_keyring: str = DEFAULT_KEYRING) -> dict[str, Archive]:
    """The machine's main and security Debian archives, with the keyring each names.

    An inline key in Signed-By is written to ``key_dir``; a missing or unreadable one falls back
    to the Debian archive keyring. An archive the machine does not list falls back to
    deb.debian.org (the log says so)."""
    found: dict[str, Archive] = {}
    for e in entries:
        kind = archive_kind(e.uri)
        if kind is None or kind in found or e.uri.startswith("cdrom:"):
            continue
        found[kind] = Archive(e.uri, _keyring(e.signed_by, kind, key_dir, default_keyring),
                              "the machine's apt sources")
    for kind, uri in FALLBACK_URIS.items():
        if kind not in found:
            found[kind] = Archive(uri, default_keyring, "the default, not in the machine's apt "
                                  "sources")
    return found


def _keyring(signed_by: str, kind: str, key_dir: Path | None, default: str) -> str:
    if "BEGIN PGP PUBLIC KEY BLOCK" in signed_by and key_dir is not None:
        key_dir.mkdir(parents=True, exist_ok=True)
        path = key_dir / f"{kind}.asc"
        path.write_text(signed_by.strip() + "\n")
        return str(path)
    for word in signed_by.split():
        if word.startswith("/") and os.path.isfile(word):
            return word
    return default


def suite_kind(suite: str) -> str:
    return "security" if suite.endswith("-security") else "main"


def render_sources(archives: dict[str, Archive], suites: dict[str, set[str]]) -> str:
    """The private sources.list: one line per suite, only main, only the Packages indexes and
    only the architectures asked for (so no translations, contents or DEP-11 are fetched)."""
    lines = ["# written by scripts/fetch-kernel.sh from the machine's Debian mirror entry;",
             "# used only through -o Dir::Etc::SourceList=<this file>"]
    for suite in sorted(suites):
        a = archives[suite_kind(suite)]
        arch = ",".join(sorted(suites[suite]))
        lines.append(f"deb [arch={arch} lang=none target=Packages signed-by={a.keyring}] "
                     f"{a.uri} {suite} main")
    return "\n".join(lines) + "\n"


def suites_in(sources_text: str) -> dict[str, set[str]]:
    """The suites (and their architectures) a private sources.list already carries."""
    out: dict[str, set[str]] = {}
    for raw in sources_text.splitlines():
        m = re.match(r"^deb \[([^\]]*)\] \S+ (\S+) ", raw)
        if not m:
            continue
        opts = dict(o.partition("=")[::2] for o in m.group(1).split())
        out.setdefault(m.group(2), set()).update(a for a in opts.get("arch", "").split(",") if a)
    return out


# -- package contents --------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    path: str  # as the tar has it, ./usr/...
    kind: str  # "-" file, "l" symlink, "h" hard link, "d" directory, ...
    size: int
    target: str = ""  # of a link


def parse_listing_line(line: str) -> Member | None:
    """One line of ``dpkg-deb -c`` (``tar -tv``): perms owner size date time path [-> target]."""
    parts = line.split(None, 5)
    if len(parts) < 6 or not parts[2].isdigit():
        return None
    kind, path, target = parts[0][0], parts[5], ""
    if kind == "l" and " -> " in path:
        path, target = path.split(" -> ", 1)
    elif kind == "h" and " link to " in path:
        path, target = path.split(" link to ", 1)
    return Member(path, kind, int(parts[2]), target)


def _norm(path: str) -> str:
    return "./" + os.path.normpath(path.removeprefix("./")).lstrip("/")


def vmlinux_candidates(release: str) -> tuple[str, ...]:
    """Where a ``-dbg`` package may keep the debug vmlinux (5.10–6.x in /usr/lib/debug/boot,
    7.x in the modules tree; the other names are links)."""
    return (f"./usr/lib/debug/boot/vmlinux-{release}",
            f"./usr/lib/debug/lib/modules/{release}/vmlinux",
            f"./usr/lib/debug/vmlinux-{release}")


def vmlinuz_candidates(release: str) -> tuple[str, ...]:
    """Where an image package may keep the bootable kernel (/boot up to 6.x, the modules tree
    from 7.x)."""
    return (f"./boot/vmlinuz-{release}",
            f"./usr/lib/modules/{release}/vmlinuz.unsigned",
            f"./usr/lib/modules/{release}/vmlinuz")


def find_member(lines: Iterable[str], candidates: Iterable[str]) -> Member | None:
    """The first regular file among ``candidates`` in a package listing, following links.

    Reads only as far as that file, so a caller streaming ``dpkg-deb -c`` can stop there: a
    package holds one real image, and every other candidate name is a link to it."""
    wanted = {_norm(c) for c in candidates}
    for line in lines:
        m = parse_listing_line(line.rstrip("\n"))
        if m is None or _norm(m.path) not in wanted:
            continue
        if m.kind == "-":
            return m
        if m.kind == "l":
            wanted.add(_norm(os.path.join(os.path.dirname(m.path.removeprefix("./")),
                                          m.target)))
        elif m.kind == "h":
            wanted.add(_norm(m.target))
    return None


# -- Debian versions ---------------------------------------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


_RUNS = re.compile(r"(\D*)(\d*)")


def _compare_part(a: str, b: str) -> int:
    """dpkg's rule: alternate non-digit runs (char by char) and digit runs (as numbers)."""
    ra, rb = _RUNS.findall(a), _RUNS.findall(b)
    for i in range(max(len(ra), len(rb))):
        sa, da = ra[i] if i < len(ra) else ("", "")
        sb, db = rb[i] if i < len(rb) else ("", "")
        for j in range(max(len(sa), len(sb))):
            ca = _order(sa[j]) if j < len(sa) else 0
            cb = _order(sb[j]) if j < len(sb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        if int(da or 0) != int(db or 0):
            return -1 if int(da or 0) < int(db or 0) else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """Debian's version order (epoch, upstream, revision; '~' sorts before everything)."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return int(epoch or 0), upstream, revision
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def newest(versions: Iterable[str]) -> str | None:
    best = None
    for v in versions:
        if best is None or compare_versions(v, best) > 0:
            best = v
    return best


# -- apt on private state ----------------------------------------------------------------------


def parse_madison(text: str) -> list[tuple[str, str, str]]:
    """``apt-cache madison`` → (package, version, suite) for each Packages index line."""
    out = []
    for line in text.splitlines():
        cols = [c.strip() for c in line.split("|")]
        if len(cols) < 3 or not cols[2].endswith("Packages"):
            continue
        words = cols[2].split()
        if len(words) >= 2:
            out.append((cols[0].split(":")[0], cols[1], words[1].rsplit("/", 1)[0]))
    return out


def parse_stanza(text: str) -> dict[str, str]:
    """The first stanza of ``apt-cache show`` as field → value."""
    return next(_deb822_stanzas(text.split("\n\n", 1)[0]), {})


def release_from_depends(depends: str, base: str) -> tuple[str, str] | None:
    """``linux-image-RELEASE-dbg (= VERSION)`` in a meta-package's Depends → (RELEASE,
    VERSION); RELEASE starts with a digit and ends with the flavour, e.g. 7.3.4+deb13-amd64."""
    for item in depends.split(","):
        for alt in item.split("|"):
            m = re.match(r"^\s*linux-image-(\d\S*)-dbg(?::\S+)?\s*(?:\(\s*=\s*([^)\s]+)\s*\))?",
                         alt)
            if m and is_release_of(m.group(1), base):
                return m.group(1), m.group(2) or ""
    return None


def is_release_of(release: str, base: str) -> bool:
    """``6.1.0-50-amd64`` and ``7.3.4+deb13-amd64`` are releases of flavour ``amd64``;
    ``6.1.0-50-cloud-amd64`` is not: every '-' part before the flavour starts with a digit."""
    abi, sep, rest = release.rpartition("-" + base)
    return bool(sep) and not rest and bool(abi) and all(p[:1].isdigit()
                                                        for p in abi.split("-"))


class PrivateApt:
    """apt-get/apt-cache run on a sources.list, lists and cache under ``root`` only.

    The host's apt.conf.d is included for its network settings (proxies), with its hooks
    cleared, so an update here never runs the host's update hooks."""

    def __init__(self, root: Path):
        self.root = root
        self.sources = root / "sources.list"
        self.lists = root / "lists"
        self.stamp = root / "updated"
        self.conf = root / "apt.conf"
        for d in (root / "sources.list.d", root / "apt.conf.d", root / "preferences.d",
                  self.lists / "partial", root / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        if not (root / "status").exists():  # touching it each run would void apt's cache
            (root / "status").touch()
        self.updated_now = False

    def write_conf(self, host_parts: str, host_main: str) -> None:
        lines = ["// written by scripts/fetch-kernel.sh (APT_CONFIG): the host's settings",
                 "// without its hooks, then everything apt keeps pointed under this directory"]
        if host_parts and os.path.isdir(host_parts):
            lines.append(f'#include "{host_parts.rstrip("/")}/";')
        if host_main and os.path.isfile(host_main):
            lines.append(f'#include "{host_main}";')
        for hook in ("APT::Update::Pre-Invoke", "APT::Update::Post-Invoke",
                     "APT::Update::Post-Invoke-Success", "DPkg::Pre-Invoke", "DPkg::Post-Invoke",
                     "DPkg::Pre-Install-Pkgs", "DPkg::Post-Invoke-Success"):
            lines.append(f"#clear {hook};")
        lines += [f'Dir::Etc::parts "{self.root}/apt.conf.d/";', 'Dir::Etc::main "/dev/null";']
        _write_if_changed(self.conf, "\n".join(lines) + "\n")

    def argv(self, tool: str, *args: str) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc::SourceList": self.sources,
            "Dir::Etc::SourceParts": r / "sources.list.d",
            "Dir::Etc::Preferences": r / "preferences",
            "Dir::Etc::PreferencesParts": r / "preferences.d",
            "Dir::State::Lists": self.lists,
            "Dir::State::status": r / "status",
            "Dir::State::extended_states": r / "extended_states",
            "Dir::Cache": r / "cache",
            "Dir::Cache::pkgcache": r / "cache" / "pkgcache.bin",
            "Dir::Cache::srcpkgcache": "",
            "Dir::Log": r / "log",
            "Debug::NoLocking": "1",
            "APT::Architecture": ARCHES[0],
        }
        out = [tool]
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        for a in ARCHES:  # set here, apt never asks dpkg for its foreign architectures
            out += ["-o", f"APT::Architectures::={a}"]
        if os.geteuid() == 0:  # _apt cannot reach a cache under /root; apt would fall back anyway
            out += ["-o", "APT::Sandbox::User=root"]
        return out + list(args)

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, APT_CONFIG=str(self.conf), LC_ALL="C")
        return subprocess.run(self.argv(tool, *args), env=env, capture_output=True, text=True)

    def fresh(self) -> bool:
        try:
            stamp = self.stamp.read_text().strip()
            age = time.time() - self.stamp.stat().st_mtime
        except OSError:
            return False
        return stamp == _digest(self.sources.read_text()) and age < LISTS_MAX_AGE

    def update(self) -> str | None:
        """``apt-get update`` on the private lists; the last error line, or None."""
        say(f"updating the private package lists in {self.lists}")
        t = time.monotonic()
        r = self.run("apt-get", "update")
        self.updated_now = True
        problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                    if ln.startswith(("E:", "W:", "Err:"))]
        for ln in problems:
            say(f"apt-get update: {ln}")
        if r.returncode == 0 and not any(p.startswith(("E:", "Err:")) for p in problems):
            self.stamp.write_text(_digest(self.sources.read_text()) + "\n")
            say(f"package lists updated in {time.monotonic() - t:.1f} s")
            return None
        failed = [p for p in problems if "Failed to fetch" in p]
        reason = (failed or problems or [f"apt-get update exited {r.returncode}"])[0]
        with contextlib.suppress(OSError):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.stamp.stat().st_mtime))
            say(f"using the package lists of {when}")
        return reason

    def madison(self, *packages: str) -> list[tuple[str, str, str]]:
        return parse_madison(self.run("apt-cache", "madison", *packages).stdout)

    def show(self, package: str) -> dict[str, str]:
        return parse_stanza(self.run("apt-cache", "show", "--no-all-versions", package).stdout)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


# -- the fetch ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    release: str  # e.g. 6.1.0-50-amd64
    version: str  # the Debian version of the dbg (and image) package
    suite: str  # where the meta-package named it


def _host_apt_paths() -> dict[str, str]:
    """Where the host keeps its apt sources and config (read, never written)."""
    paths = {"S": "/etc/apt/sources.list", "SP": "/etc/apt/sources.list.d/",
             "P": "/etc/apt/apt.conf.d/", "M": "/etc/apt/apt.conf"}
    with contextlib.suppress(OSError):
        r = subprocess.run(["apt-config", "shell", "S", "Dir::Etc::sourcelist/f",
                            "SP", "Dir::Etc::sourceparts/d", "P", "Dir::Etc::parts/d",
                            "M", "Dir::Etc::main/f"], capture_output=True, text=True)
        for m in re.finditer(r"^(\w+)='([^']*)'$", r.stdout, re.M):
            paths[m.group(1)] = m.group(2)
    return paths


class Fetcher:
    def __init__(self, cache: Path):
        self.cache = cache
        self.kernels = cache / "kernels"
        self.tmp = cache / "tmp"
        self.apt = PrivateApt(cache / "apt")
        self.kernels.mkdir(parents=True, exist_ok=True)

    # housekeeping (under the lock, so no other run owns these)

    def clean_leftovers(self) -> None:
        old = sorted((self.cache / "debs").glob("*.deb"))
        if old:
            size = sum(p.stat().st_size for p in old)
            say(f"removing {len(old)} .deb files ({size / 1e9:.1f} GB) from {self.cache}/debs, "
                "kept by an earlier fetch-kernel.sh; the extracted kernels stay")
            for p in old:
                p.unlink()
        with contextlib.suppress(OSError):
            (self.cache / "debs").rmdir()
        for d in [*self.cache.glob("extract.*"), *(self.tmp.iterdir() if self.tmp.is_dir()
                                                     else [])]:
            say(f"removing {d}, left by an interrupted fetch")
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink()

    # resolution

    def prepare_sources(self, req: Request) -> None:
        host = _host_apt_paths()
        entries = read_entries(source_files(Path(host["S"]), Path(host["SP"])))
        archives = pick_archives(entries, key_dir=self.apt.root / "keys")
        for kind in sorted({suite_kind(s) for s in req.suites}):
            a = archives[kind]
            say(f"{kind} archive {a.uri} (from {a.origin}), keyring {a.keyring}")
            if not os.path.isfile(a.keyring):
                raise Unavailable(f"keyring {a.keyring} missing: install debian-archive-keyring")
        try:
            current = suites_in(self.apt.sources.read_text())
        except OSError:
            current = {}
        for s in req.suites:
            current.setdefault(s, set()).add(req.arch)
        _write_if_changed(self.apt.sources, render_sources(archives, current))
        self.apt.write_conf(host["P"], host["M"])

    def resolve(self, req: Request) -> Resolved:
        """The newest ``linux-image-FLAVOUR-dbg`` in the suites asked for, and the release it
        depends on; the private lists are refreshed when stale or when that fails."""
        error = None
        if not self.apt.fresh():
            error = self.apt.update()
        found = self._resolve(req)
        if found is None and not self.apt.updated_now:
            error = self.apt.update()
            found = self._resolve(req)
        if found is None:
            suites = "+".join(req.suites)
            if error:
                raise Unavailable(f"cannot resolve {req.meta} in {suites}: the registry could "
                                  f"not be reached ({error})")
            elsewhere = sorted({s for _, _, s in self.apt.madison(f"{req.meta}:{req.arch}")})
            hint = f" (the private lists have it in {', '.join(elsewhere)})" if elsewhere else ""
            raise Unavailable(f"no package {req.meta} ({req.arch}) in {suites}{hint}")
        return found

    def _resolve(self, req: Request) -> Resolved | None:
        rows = [r for r in self.apt.madison(f"{req.meta}:{req.arch}") if r[2] in req.suites]
        version = newest(v for _, v, _ in rows)
        if version is None:
            return None
        suite = next(s for _, v, s in rows if v == version)
        stanza = self.apt.show(f"{req.meta}:{req.arch}={version}")
        dep = release_from_depends(stanza.get("depends", ""), req.base)
        if dep is None:
            raise Unavailable(f"{req.meta} {version} in {suite} depends on no "
                              f"linux-image-*-{req.base}-dbg (Depends: {stanza.get('depends')})")
        release, dbg_version = dep
        return Resolved(release, dbg_version or version, suite)

    def image_package(self, req: Request, res: Resolved) -> str:
        """The package with the bootable image of the same build: the unsigned one where the
        kernel is signed (by either naming), else the plain image package."""
        names = (f"linux-image-{res.release}-unsigned", f"linux-binary-unsigned-{res.release}",
                 f"linux-image-{res.release}")
        have = {p for p, v, _ in self.apt.madison(*(f"{n}:{req.arch}" for n in names))
                if v == res.version}
        for n in names:
            if n in have:
                return n
        raise Unavailable(f"no image package for {res.release} {res.version} "
                          f"(looked for {', '.join(names)})")

    # download and extraction

    def fetch_member(self, package: str, req: Request, version: str,
                     candidates: tuple[str, ...], dest: Path) -> None:
        """Download ``package`` to a temporary directory, extract the one file ``dest`` needs
        (its place found in the package's file list), rename it into place, drop the .deb."""
        size = self.apt.show(f"{package}:{req.arch}={version}").get("size", "?")
        mb = f"{int(size) / 1e6:.0f} MB" if size.isdigit() else "size unknown"
        self.tmp.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="fetch-", dir=self.tmp))
        try:
            say(f"downloading {package} {version} ({mb})")
            t = time.monotonic()
            r = subprocess.run(self.apt.argv("apt-get", "download", "-q",
                                             f"{package}:{req.arch}={version}"),
                               cwd=work, stdout=sys.stderr,
                               env=dict(os.environ, APT_CONFIG=str(self.apt.conf), LC_ALL="C"))
            debs = list(work.glob("*.deb"))
            if r.returncode or len(debs) != 1:
                raise Unavailable(f"apt-get download {package}={version} failed "
                                  f"(exit {r.returncode})")
            say(f"downloaded in {time.monotonic() - t:.0f} s")
            member = self._locate(debs[0], candidates)
            say(f"extracting {member.path} ({member.size / 1e6:.0f} MB)")
            self._extract(debs[0], member, work / "root", dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _locate(self, deb: Path, candidates: tuple[str, ...]) -> Member:
        p = subprocess.Popen(["dpkg-deb", "-c", str(deb)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        try:
            member = find_member(p.stdout, candidates)
        finally:
            p.kill()
            p.wait()
        if member is None:
            raise Failure(f"{deb.name} holds none of {', '.join(candidates)}")
        return member

    def _extract(self, deb: Path, member: Member, root: Path, dest: Path) -> None:
        root.mkdir()
        feed = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "--occurrence=1", "-C", str(root), member.path],
                             stdin=feed.stdout, capture_output=True, text=True)
        feed.stdout.close()
        feed.kill()  # tar stopped at the member; the rest of the archive is not needed
        _, feed_err = feed.communicate()
        out = root / member.path
        if tar.returncode or not out.is_file() or out.stat().st_size != member.size:
            raise Failure(f"extracting {member.path} from {deb.name} failed: "
                          f"{(tar.stderr or feed_err.decode(errors='replace')).strip()[-300:]}")
        os.replace(out, dest)  # same filesystem: the file appears whole or not at all

    def fetch(self, req: Request, *, with_vmlinuz: bool, download: bool) -> Path:
        self.prepare_sources(req)
        res = self.resolve(req)
        vmlinux = self.kernels / f"vmlinux-{res.release}"
        vmlinuz = self.kernels / f"vmlinuz-{res.release}"
        say(f"{req.meta} in {res.suite} → {res.release} ({res.version})")
        todo = [] if vmlinux.is_file() else ["vmlinux"]
        if with_vmlinuz and not vmlinuz.is_file():
            todo.append("vmlinuz")
        if not todo:
            say(f"cached: {vmlinux}" + (f" and {vmlinuz.name}" if with_vmlinuz else ""))
            return vmlinux
        if not download:
            raise Unavailable(f"{' and '.join(todo)} of {res.release} not cached and "
                              "--no-download given")
        if "vmlinux" in todo:
            self.fetch_member(f"linux-image-{res.release}-dbg", req, res.version,
                              vmlinux_candidates(res.release), vmlinux)
        if "vmlinuz" in todo:
            self.fetch_member(self.image_package(req, res), req, res.version,
                              vmlinuz_candidates(res.release), vmlinuz)
        return vmlinux


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One fetch at a time per cache: they share the private lists and the temp directory."""
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another fetch-kernel.sh ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def main(argv: list[str]) -> int:
    flags = {a for a in argv if a.startswith("-")}
    specs = [a for a in argv if not a.startswith("-")]
    unknown = flags - {"--with-vmlinuz", "--no-download"}
    if flags & {"-h", "--help"}:
        print(USAGE, end="")
        return 0
    if unknown or len(specs) > 1:
        print(USAGE, end="", file=sys.stderr)
        say(f"unexpected arguments: {' '.join(sorted(unknown) or specs[1:])}")
        return EXIT_USAGE
    try:
        req = parse_request(specs[0] if specs else DEFAULT_FLAVOUR)
    except ValueError as e:
        say(str(e))
        return EXIT_USAGE
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "tar"):
        if shutil.which(tool) is None:
            say(f"{tool} not available: cannot fetch Debian kernels")
            return EXIT_UNAVAILABLE
    # a TERM unwinds like ^C, so the temporary .deb is removed now, not by the next run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    cache = Path(os.environ.get("PVPATCH_CACHE") or Path.home() / ".cache" / "pvpatch")
    fetcher = Fetcher(cache)
    try:
        with locked(cache / ".fetch.lock"):
            fetcher.clean_leftovers()
            path = fetcher.fetch(req, with_vmlinuz="--with-vmlinuz" in flags,
                                 download="--no-download" not in flags)
    except Unavailable as e:
        say(str(e))
        return EXIT_UNAVAILABLE
    except (Failure, OSError) as e:
        say(str(e))
        return 1
    except KeyboardInterrupt:
        say("interrupted; nothing half-written is left in the cache")
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
