"""Kernels without type information: the record layout chosen by version."""

from __future__ import annotations

import pytest
from conftest import assemble

from pvpatch.kernel.model import KernelModel


def model_of(bits: int = 64, **defsyms: int) -> KernelModel:
    if bits == 32:
        defsyms["I386"] = 1
    ld = ("-x",) if defsyms.get("NO_PVOPS_SYM") else ()
    return KernelModel.open(str(assemble("pv_sites.S", bits, defsyms=defsyms, ld_args=ld)))


# -- the record layout by version ------------------------------------------------------------

@pytest.mark.parametrize(("defsyms", "layout", "why"), [
    ({}, "i386+stale-clobbers", "kernel 6.1 names the variant"),
    ({"NO_PVOPS_SYM": 1}, "i386+stale-clobbers", "kernel 6.1 names the variant"),
    ({"RELEASE": 419, "NO_PVOPS_SYM": 1}, "i386+clobbers", "kernel 4.19 names the variant"),
    ({"RELEASE": 65, "CLOBBERS": 0}, "i386", "kernel 6.5 names the variant"),
    ({"CLOBBERS": 0}, "i386", "kernel 6.1 would mean i386+stale-clobbers, but the clobber "
                              "words are all zero"),
    ({"NO_BANNER": 1}, "i386+stale-clobbers", "validated against the code"),  # pv_ops: 4.20+
    ({"NO_BANNER": 1, "NO_PVOPS_SYM": 1}, "i386+clobbers", "validated against the code"),
], ids=["6.1", "6.1-nosym", "4.19", "6.5-bare", "6.1-bare", "nover", "nover-nosym"])
def test_layout_follows_the_version_when_there_are_no_types(defsyms, layout, why):
    with model_of(32, **defsyms) as m:
        assert m.sites.layout.name == layout
        assert m.sites.layout_reason.endswith(why)
