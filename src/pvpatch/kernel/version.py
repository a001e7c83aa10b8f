"""Which kernel is this? From ``linux_banner``, else the ``Linux`` build-salt note.

The banner carries the release string (``6.1.0-56-cloud-amd64``) and, on distribution kernels,
the package version (``Debian 6.1.192-2``); both are reported. ``(major, minor)`` drives era
detection only as a fallback to what the image's types and symbols say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pvpatch.image.elf import ElfImage
from pvpatch.image.notes import iter_notes, note_areas

LINUX_ELFNOTE_BUILD_SALT = 0x100  # include/linux/build-salt.h: the release string
_DISTRO = re.compile(r"(Debian|Ubuntu) (\d+\.\d+\.\d+[\w.+~-]*)")
_RELEASE = re.compile(rb"Linux version (\d+)\.(\d+)(?:\.(\d+))?(\S*)")
# The release's head before its flavour: the version, an -rc, then one ABI or package number
# (-50, +deb12, -300): Debian's 6.1.0-57-686-pae is flavour 686-pae, not pae.
_BEFORE_FLAVOUR = re.compile(r"\d+\.\d+(?:\.\d+)*(?:-rc\d+)?(?:[-+](?:deb\d+(?:u\d+)?|\d+))?"
                             r"[-+.~]?")


@dataclass(frozen=True)
class KernelVersion:
    release: str | None  # uname -r
    major: int | None
    minor: int | None
    patch: int | None
    banner: str | None
    source: str  # where it was read

    @property
    def distro(self) -> str | None:
        """The distribution's package version named in the banner, e.g. ``Debian 6.1.192-2``."""
        found = _DISTRO.findall(self.banner or "")
        return " ".join(found[-1]) if found else None

    @property
    def key(self) -> tuple[int, int, int] | None:
        """(major, minor, sub): 2.6.x kernels compare by x; later ones by major.minor only."""
        if self.major is None or self.minor is None:
            return None
        return (self.major, self.minor, (self.patch or 0) if self.major == 2 else 0)

    @property
    def flavour(self) -> str | None:
        """The build's configuration name at the end of the release: ``cloud-amd64`` of
        ``6.1.0-50-cloud-amd64``, ``amd64`` of ``6.12.118+deb12-amd64`` ("" when none)."""
        return None if self.release is None else release_flavour(self.release)

    @property
    def short(self) -> str:
        if self.major is None:
            return "unknown"
        return f"{self.major}.{self.minor}"


def detect_version(image: ElfImage) -> KernelVersion:
    banner_sym = image.symbols.get("linux_banner")
    if banner_sym is not None:
        raw = image.try_read(banner_sym.value, min(banner_sym.size or 256, 512))
        if raw:
            banner = raw.split(b"\0", 1)[0].decode("latin-1").strip()
            parsed = _parse(banner.encode("latin-1"))
            if parsed:
                return KernelVersion(*parsed, banner=banner, source="linux_banner")
    for area in note_areas(image, "segments") + note_areas(image, "sections"):
        for note in iter_notes(image, area):
            if note.name == "Linux" and note.type == LINUX_ELFNOTE_BUILD_SALT:
                salt = note.desc.split(b"\0", 1)[0]
                parsed = _parse(b"Linux version " + salt)
                if parsed:
                    return KernelVersion(*parsed, banner=None, source="Linux build-salt note")
    return KernelVersion(None, None, None, None, None, "not found")


def _parse(text: bytes) -> tuple[str, int, int, int | None] | None:
    m = _RELEASE.search(text)
    if not m:
        return None
    release = m.group(0)[len(b"Linux version "):].decode("latin-1")
    patch = int(m.group(3)) if m.group(3) else None
    return release, int(m.group(1)), int(m.group(2)), patch


def release_flavour(release: str) -> str:
    """``uname -r`` without its version and ABI number: what two builds of one kernel
    configuration share across updates (see :attr:`KernelVersion.flavour`)."""
    head = _BEFORE_FLAVOUR.match(release)
    return release[head.end():] if head else release


def release_series(release: str) -> str | None:
    """``major.minor`` of a release string (``6.1`` of ``6.1.0-50-cloud-amd64``)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return f"{m.group(1)}.{m.group(2)}" if m else None
