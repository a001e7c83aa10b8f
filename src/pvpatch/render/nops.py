"""Describe the boot CPU and the NOP table chosen for it (apply, check, inspect, diff)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only types: plain inspect must not import the NOP rules
    from pvpatch.cpu import Cpu
    from pvpatch.patch.boot_nops import NopChoice


def cpu_dict(cpu: Cpu) -> dict:
    return {"vendor": cpu.vendor, "vendor_id": cpu.vendor_id.strip(), "family": cpu.family,
            "model": cpu.model, "source": cpu.source, "assumed": cpu.assumed or None,
            "flags": None if cpu.flags is None else sorted(cpu.flags)}


def nops_dict(choice: NopChoice | None) -> dict | None:
    """Which table padded the sites and why (schema: docs/apply.md)."""
    if choice is None:
        return None
    return {"table": choice.table.name, "why": choice.why, "cpu_matters": choice.cpu_matters,
            "cpu": cpu_dict(choice.cpu)}


def nops_line(choice: NopChoice | None) -> list[str]:
    return [] if choice is None else [f"  nops      {choice.why}"]
