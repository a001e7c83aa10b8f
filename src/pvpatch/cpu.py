"""The CPU a kernel boots on, as far as its boot patching asks: vendor, family, model, flags.

Kernels before 5.13 chose their padding NOPs from the boot CPU (``patch.boot_nops``), so a
plan for such a kernel needs one. It comes from ``--cpu VENDOR[:FAMILY[:MODEL]]``, from a
``/proc/cpuinfo`` (``--cpuinfo``), or is the default: a current Intel core. This module only
describes the machine; which table a release picks for it is a kernel fact, kept with the
patch planners. It imports nothing from the layers that read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvpatch.errors import InputError, UsageError
from pvpatch.inputs import CPUINFO_LIMIT, read_bounded


@dataclass(frozen=True)
class VendorInfo:
    """One vendor as CPUID leaf 0 names it, and the part assumed when only the vendor is given."""

    name: str  # what --cpu takes
    cpuid: str  # the vendor_id string (CPUID leaf 0, /proc/cpuinfo)
    family: int
    model: int
    example: str  # the part the default family/model describe


# The defaults are current parts of each vendor; what the kernel does with them is in
# patch.native_tables. Zhaoxin's vendor string really has the spaces.
VENDORS = (
    VendorInfo("intel", "GenuineIntel", 6, 0x9E, "a Kaby/Coffee Lake core"),
    VendorInfo("amd", "AuthenticAMD", 0x19, 0x01, "a Zen 3 EPYC"),
    VendorInfo("hygon", "HygonGenuine", 0x18, 0x00, "a Dhyana"),
    VendorInfo("centaur", "CentaurHauls", 6, 0x0F, "a VIA Nano"),
    VendorInfo("zhaoxin", "  Shanghai  ", 7, 0x3B, "a KaiXian KX-6000"),
)
BY_NAME = {v.name: v for v in VENDORS}
BY_CPUID = {v.cpuid.strip(): v for v in VENDORS}
OTHER = "other"  # a vendor_id no --cpu name covers (Cyrix, Transmeta, …): the kernel's default

MAX_FAMILY = 0xF + 0xFF  # base family 0xf plus the 8-bit extended family
MAX_MODEL = 0xFF  # 4-bit model plus the 4-bit extended model
CPU_SPEC = "VENDOR[:FAMILY[:MODEL]]"


@dataclass(frozen=True)
class Cpu:
    vendor: str  # a VENDORS name, or OTHER
    vendor_id: str  # the CPUID string, e.g. AuthenticAMD
    family: int  # as /proc/cpuinfo's "cpu family" (extended family added)
    model: int  # as its "model" (extended model added)
    flags: frozenset[str] | None  # /proc/cpuinfo flag names; None: not known (--cpu)
    source: str  # where it came from, for reports: "--cpu amd:15:107", "default", …
    assumed: str = ""  # what was filled in, e.g. "family 0x19 model 0x1 assumed"

    @property
    def is_default(self) -> bool:
        return self.source == "default"

    def describe(self) -> str:
        """``AuthenticAMD family 0xf model 0x6b``, the way the kernel's boot log counts."""
        return f"{self.vendor_id.strip()} family {self.family:#x} model {self.model:#x}"

    def origin(self) -> str:
        """Where the CPU came from and what was assumed, for the end of a report line."""
        if self.is_default:
            return ("default: a current x86 CPU, taken as GenuineIntel family 6 model 0x9e; "
                    "--cpu or --cpuinfo for another")
        return self.source + (f"; {self.assumed}" if self.assumed else "")


DEFAULT = Cpu("intel", "GenuineIntel", 6, 0x9E, None, "default")


def parse_number(text: str, what: str, limit: int) -> int:
    """Decimal or 0x-hex, 0 … limit; anything else is a usage error."""
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise UsageError(f"--cpu: {what} {text!r} is not a number (decimal or 0x-hex)") \
            from None
    if not 0 <= value <= limit:
        raise UsageError(f"--cpu: {what} {text} is outside 0–{limit:#x}")
    return value


def parse_cpu(spec: str) -> Cpu:
    """``--cpu amd:15:107``: the vendor, then family and model (defaults said in ``assumed``)."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise UsageError(f"--cpu takes {CPU_SPEC} (got {spec!r}), e.g. amd:15:107")
    info = BY_NAME.get(parts[0].lower()) or BY_CPUID.get(parts[0])
    if info is None:
        raise UsageError(f"--cpu: unknown vendor {parts[0]!r} (one of "
                         f"{', '.join(v.name for v in VENDORS)})")
    if len(parts) == 1:
        family, model = info.family, info.model
        note = f"family {family:#x} model {model:#x} assumed ({info.example})"
    else:
        family = parse_number(parts[1], "family", MAX_FAMILY)
        model = parse_number(parts[2], "model", MAX_MODEL) if len(parts) == 3 else 0
        note = "" if len(parts) == 3 else "model 0 assumed"
    return Cpu(info.name, info.cpuid, family, model, None, f"--cpu {spec}", note)


def parse_cpuinfo(path: str) -> Cpu:
    """The first processor of a ``/proc/cpuinfo``: vendor_id, cpu family, model, flags."""
    text = read_bounded(path, CPUINFO_LIMIT, "a /proc/cpuinfo").decode(errors="replace")
    fields = _first_processor(text)
    missing = [k for k in ("vendor_id", "cpu family", "model") if k not in fields]
    if missing:
        raise InputError(f"not a /proc/cpuinfo: no {', '.join(missing)} line", path)
    vendor_id = fields["vendor_id"]
    info = BY_CPUID.get(vendor_id.strip())
    family = _cpuinfo_number(fields, "cpu family", MAX_FAMILY, path)
    model = _cpuinfo_number(fields, "model", MAX_MODEL, path)
    flags = frozenset(fields.get("flags", "").split()) if "flags" in fields else None
    return Cpu(info.name if info else OTHER, vendor_id, family, model, flags,
               f"--cpuinfo {path}")


def _cpuinfo_number(fields: dict[str, str], key: str, limit: int, path: str) -> int:
    """A decimal field, as the kernel prints it, inside what CPUID can say (0 … ``limit``):
    the NOP rules cover every family and model a CPU can report, and nothing else."""
    text = fields[key]
    if not text.isascii() or not text.isdigit():
        raise InputError(f"not a /proc/cpuinfo: {key} {text[:40]!r} is not a decimal number",
                         path)
    value = int(text[:12])  # past 12 digits it is out of range anyway
    if value > limit or len(text) > 12:
        raise InputError(f"not a /proc/cpuinfo: {key} {text[:40]} is outside 0–{limit} "
                         "(what CPUID can report)", path)
    return value


def _first_processor(text: str) -> dict[str, str]:
    """``key : value`` lines up to the first blank line after a processor's lines."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def resolve_cpu(spec: str | None, cpuinfo: str | None) -> Cpu:
    """The CPU the options name (they exclude each other), else :data:`DEFAULT`."""
    if spec and cpuinfo:
        raise UsageError("--cpu and --cpuinfo exclude each other")
    if spec:
        return parse_cpu(spec)
    if cpuinfo:
        return parse_cpuinfo(cpuinfo)
    return DEFAULT
