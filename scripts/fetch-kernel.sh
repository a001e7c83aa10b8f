#!/usr/bin/env bash
# Fetch a Debian debug vmlinux (and optionally its bootable vmlinuz) into the cache, outside git.
#
#   scripts/fetch-kernel.sh [FLAVOUR] [--with-vmlinuz]
#
# FLAVOUR is a Debian kernel flavour (cloud-amd64, amd64, rt-amd64, 6.12-amd64, or the 32-bit
# 686-pae / 686, which adds dpkg's i386 architecture if needed). The version is resolved through the
# meta-package linux-image-FLAVOUR-dbg, so this always fetches the current kernel of the
# configured Debian release. Prints the path of the vmlinux on stdout; progress goes to stderr.
# Exits 3 (and says why) when Debian's registry cannot be reached, so callers can skip loudly.
set -euo pipefail
flavour=${1:-cloud-amd64}
with_vmlinuz=${2:-}
cache=${PVPATCH_CACHE:-$HOME/.cache/pvpatch}
mkdir -p "$cache/debs" "$cache/kernels"

say() { echo "fetch-kernel: $*" >&2; }

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    say "apt-get/dpkg-deb not available: cannot fetch Debian kernels"; exit 3
fi

arch=""  # apt's :ARCH suffix for foreign-architecture (32-bit) flavours
case $flavour in
    *686*)
        arch=":i386"
        if ! dpkg --print-foreign-architectures | grep -qx i386; then
            say "adding dpkg's i386 architecture for the $flavour kernel"
            dpkg --add-architecture i386 >&2 || { say "cannot add the i386 architecture"; exit 3; }
            apt-get update -qq >&2 2>&1 || true
        fi ;;
esac

resolve() {  # meta-package -> versioned image package name
    apt-cache depends "linux-image-$flavour-dbg$arch" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*-dbg\)\(:i386\)\{0,1\}$/\1/p' | head -n1
}
pkg=$(resolve || true)
if [ -z "$pkg" ]; then
    say "package lists do not know linux-image-$flavour-dbg; running apt-get update"
    apt-get update -qq >&2 2>&1 || true
    pkg=$(resolve || true)
fi
if [ -z "$pkg" ]; then
    say "cannot resolve linux-image-$flavour-dbg (no registry access?)"; exit 3
fi
release=${pkg#linux-image-}; release=${release%-dbg}          # e.g. 6.1.0-56-cloud-amd64
vmlinux="$cache/kernels/vmlinux-$release"

fetch_deb() {  # package -> path of its .deb in the cache
    local p=$1 deb
    deb=$(ls "$cache/debs/${p}_"*.deb 2>/dev/null | tail -n1 || true)
    if [ -z "$deb" ]; then
        say "downloading $p"
        (cd "$cache/debs" && apt-get download -q "$p$arch" >&2) || { say "download of $p failed"; exit 3; }
        deb=$(ls "$cache/debs/${p}_"*.deb | tail -n1)
    fi
    echo "$deb"
}

if [ ! -s "$vmlinux" ]; then
    deb=$(fetch_deb "$pkg")
    say "extracting vmlinux-$release"
    tmp=$(mktemp -d "$cache/extract.XXXXXX")
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "./usr/lib/debug/boot/vmlinux-$release"
    mv "$tmp/usr/lib/debug/boot/vmlinux-$release" "$vmlinux"
    rm -rf "$tmp"
fi
if [ "$with_vmlinuz" = "--with-vmlinuz" ] && [ ! -s "$cache/kernels/vmlinuz-$release" ]; then
    # amd64 ships the unsigned image apart from the signed one; i386 has only the plain one
    unsigned="linux-image-$release-unsigned"
    apt-cache show "$unsigned$arch" >/dev/null 2>&1 || unsigned="linux-image-$release"
    deb=$(fetch_deb "$unsigned")
    tmp=$(mktemp -d "$cache/extract.XXXXXX")
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "./boot/vmlinuz-$release"
    mv "$tmp/boot/vmlinuz-$release" "$cache/kernels/vmlinuz-$release"
    rm -rf "$tmp"
fi
echo "$vmlinux"
