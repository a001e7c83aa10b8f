"""Mutants of the option values a user types: ``--cpu SPEC`` and the guest options.

Each is built from the words the option knows (vendors, feature names) with the ways a
person or a script gets them wrong: a wrong case, a dash for an underscore, a name that does
not exist, an empty item, a trailing separator, a number too large, a newline or other
control character inside (which must not split the one-line error), or a very long value.
"""

from __future__ import annotations

import random

from pvpatch.backends.hyperv import HYPERV_FEATURES
from pvpatch.backends.kvm import KVM_FEATURES, KVM_HINTS
from pvpatch.backends.vmware import VMWARE_FEATURES

VENDOR_WORDS = ("intel", "amd", "hygon", "centaur", "zhaoxin", "AMD", "GenuineIntel",
                "AuthenticAMD", "Shanghai", "cyrix", "", " ", "other", "intel ")
NUMBER_WORDS = ("0", "6", "15", "0x19", "0X19", "107", "0xff", "0x10e", "270", "271", "256",
                "-1", "", "1e3", "0x", "9" * 5000, "1_5", "+6", "٣", "0b11", " 6")
ODD = ("\n", "\r", "\t", "\x1b[31m", "\u2028", "\x7f", "é", ",", ":", "'", '"', "\\", " ")

GUEST_WORDS: dict[str, tuple[str, ...]] = {
    "kvm_features": tuple(KVM_FEATURES),
    "kvm_hints": tuple(KVM_HINTS),
    "hyperv_features": tuple(HYPERV_FEATURES),
    "vmware_features": tuple(VMWARE_FEATURES),
    "cmdline": ("nopvspin", "hv_nopvspin", "no-kvmclock", "no-vmw-sched-clock", "quiet"),
}
# which backend each guest option speaks to (pvpatch.cli.common.GUEST_OPTION_BACKENDS)
GUEST_BACKENDS = {"kvm_features": ("kvm",), "kvm_hints": ("kvm",),
                  "hyperv_features": ("hyperv",), "vmware_features": ("vmware",),
                  "cmdline": ("kvm", "hyperv", "vmware")}


def _odd(word: str, rng: random.Random) -> str:
    """``word`` as it comes out wrong."""
    pick = rng.randrange(7)
    if pick == 0:
        return word.upper()
    if pick == 1:
        return word.replace("_", "-")
    if pick == 2:
        at = rng.randrange(len(word) + 1)
        return word[:at] + rng.choice(ODD) + word[at:]
    if pick == 3:
        return word + "x"
    if pick == 4:
        return word * rng.choice((2, 1000))
    if pick == 5:
        return ""
    return word


def cpu_spec(rng: random.Random) -> tuple[str, str]:
    parts = [rng.choice(VENDOR_WORDS)]
    for _ in range(rng.choice((0, 1, 2, 2, 2, 3, 5))):
        parts.append(rng.choice(NUMBER_WORDS))
    if rng.random() < 0.3:
        i = rng.randrange(len(parts))
        parts[i] = _odd(parts[i], rng)
    spec = rng.choice((":", ":", "::", ",")).join(parts)
    return spec, f"--cpu {spec!r}"


def guest_value(option: str, rng: random.Random) -> tuple[str, str]:
    """A value for the guest option ``option`` (its parameter name)."""
    words = list(GUEST_WORDS[option])
    items = [rng.choice(words) for _ in range(rng.choice((0, 1, 2, 3, 8)))]
    if rng.random() < 0.2:
        items.append("none")
    if items and rng.random() < 0.7:
        i = rng.randrange(len(items))
        items[i] = _odd(items[i], rng)
    sep = " " if option == "cmdline" else rng.choice((",", ",", ", ", ",,", ";"))
    value = sep.join(items) + (sep if rng.random() < 0.1 else "")
    return value, f"--{option.replace('_', '-')} {value!r}"
