#!/usr/bin/env bash
# Fetch a Debian debug vmlinux (and optionally its bootable vmlinuz) into the cache, outside git.
#
#   scripts/fetch-kernel.sh [SUITE:]FLAVOUR [--with-vmlinuz] [--no-download]
#
# FLAVOUR is a Debian kernel flavour: cloud-amd64 (the default), amd64, rt-amd64, 6.12-amd64,
# 6.12-cloud-amd64, or the 32-bit 686-pae / 686. SUITE is an archive suite (bullseye, bookworm,
# bookworm-backports, bookworm-security, trixie, trixie-backports, sid, ...), or several joined
# by '+' (the newest kernel among them wins); without one it is bookworm+bookworm-security,
# which is what a bookworm machine installs and what this script resolved before it knew suites.
# The release is resolved through the meta-package linux-image-FLAVOUR-dbg of exactly those
# suites (its Depends: linux-image-RELEASE-dbg), so a suite's newest kernel is fetched; when
# that changes, the new one is fetched and the old files stay.
#
# Prints the path of the vmlinux on stdout (progress goes to stderr) and exits 0; exits 3 with
# a one-line reason when Debian's registry cannot be reached or has no such package (callers
# skip loudly), 2 on a usage error, 1 when a download cannot be unpacked.
#
# What it downloads, all into $PVPATCH_CACHE (default ~/.cache/pvpatch):
#   apt/lists/      the InRelease and Packages index of each suite used (main only, only the
#                   architectures asked for; ~9-20 MB a suite per architecture), refreshed when
#                   older than a day or when a package cannot be resolved
#   the .debs       linux-image-RELEASE-dbg (0.3-1 GB) and, with --with-vmlinuz, the unsigned
#                   image package (15-110 MB), each into tmp/ and deleted once the one file
#                   needed is extracted from it
#   kernels/        what stays: vmlinux-RELEASE and vmlinuz-RELEASE (renamed into place whole)
# It also deletes $PVPATCH_CACHE/debs/*.deb, which earlier versions of this script kept.
#
# What it changes on the machine: nothing. apt-get and apt-cache run on a private source list,
# lists, cache and (empty) dpkg status under $PVPATCH_CACHE/apt, built from the machine's own
# Debian mirror entry and the keyring it names (read from /etc/apt/sources.list and
# sources.list.d; deb.debian.org if there is none). The host's apt.conf.d is read for its
# network settings with its update hooks cleared. It never writes /etc/apt, never updates the
# host's package lists, never runs dpkg --add-architecture (i386 packages come through the
# private APT::Architectures) and needs no root; PVPATCH_ALLOW_MACHINE_CHANGES is not needed.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/fetchkernel.py" "$@"
