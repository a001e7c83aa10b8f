"""Era detection: which boot-patching algorithm an image runs, read from the image itself."""

from __future__ import annotations

from conftest import assemble

from pvpatch.kernel.model import KernelModel


def test_btf_without_init_member_is_5_13_to_6_7():
    with KernelModel.open(str(assemble("pv_kernel61.S", 64))) as m:
        assert m.era.era.key == "G5" and m.era.evidence == "pv_ops has no init member (btf)"
        assert m.era.conflict is None


def test_no_parainstructions_is_6_8_plus():
    with KernelModel.open(str(assemble("pv_kernel61.S", 64, defsyms={"ERA612": 1}))) as m:
        assert m.era.era.key == "G6"


def test_banner_decides_only_when_the_image_is_silent():
    # pv_sites.S: pv_ops without types or patcher symbols; its banner says 6.1
    with KernelModel.open(str(assemble("pv_sites.S", 64))) as m:
        assert m.era.era.key == "G5" and m.era.evidence == "linux_banner version 6.1"
    with KernelModel.open(str(assemble("pv_sites.S", 64, defsyms={"NO_BANNER": 1}))) as m:
        assert m.era is None
