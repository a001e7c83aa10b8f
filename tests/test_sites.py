"""`.parainstructions` decoding on assembled fixtures that mirror the kernel's macros."""

from __future__ import annotations

import pytest
from conftest import assemble

from pvpatch.errors import InputError
from pvpatch.kernel.model import KernelModel


def model_of(bits: int = 64, **defsyms: int) -> KernelModel:
    if bits == 32:
        defsyms["I386"] = 1
    return KernelModel.open(str(assemble("pv_sites.S", bits, defsyms=defsyms)))


def test_x86_64_records_with_stale_clobber_word():
    with model_of() as m:
        table = m.sites
        assert table.layout.name == "x86_64+stale-clobbers"  # pv_ops exists: 4.20+
        assert "validated against the code" in table.layout_reason
        sites = table.sites
        assert len(sites) == 8
        assert [s.type for s in sites] == [0, 1, 2, 3, 4, 5, 1, 0]
        assert all(s.length == 6 and s.insns[0].raw[:2] == b"\xff\x15" for s in sites)
        assert [s.function for s in sites[:2]] == ["_start", "_start+0x6"]
        assert sites[-1].function == "helper"
        assert [s.native_name for s in sites[:6]] == [
            "native_io_delay", "native_save_fl", "native_irq_disable", "_paravirt_ident_64",
            "_paravirt_nop", "NULL"]
        assert sites[1].clobbers == 0x1 and m.clobber_bits.decode(0x1) == ["rax"]
        assert m.clobber_bits.decode(sites[0].clobbers) == [
            "rax", "rcx", "rdx", "rdi", "rsi", "r8", "r9", "r10", "r11"]
        assert not any(s.problems for s in sites)
        assert all(s.call_target == s.slot.address for s in sites)


def test_x86_64_records_without_clobber_word():
    with model_of(CLOBBERS=0) as m:
        assert m.sites.layout.name == "x86_64"
        assert all(s.clobbers is None for s in m.sites.sites)


def test_absolute_sib_call_encoding_of_2_6_30_to_5_17():
    with model_of(CALL_ABS=1) as m:
        s = m.sites.sites[2]
        assert s.length == 7 and s.insns[0].raw[:3] == b"\xff\x14\x25"
        assert s.call_target == s.slot.address and not s.problems


def test_i386_records():
    with model_of(32) as m:
        table = m.sites
        assert table.layout.name == "i386+stale-clobbers" and table.layout.stride == 8
        assert len(table.sites) == 8
        assert m.clobber_bits.decode(table.sites[0].clobbers) == ["eax", "ecx", "edx", "edi"]
        assert table.sites[5].native_name == "NULL"
        assert not any(s.problems for s in table.sites)


def test_type_that_disagrees_with_the_call_is_reported():
    with model_of(BAD_TYPE=1) as m:
        s = m.sites.sites[2]
        assert s.problems == ["type 3 names pv_ops+0x18 but the call reads pv_ops+0x10"]


def test_record_pointing_at_data_fails_every_layout():
    with model_of(BAD_PTR=1) as m, pytest.raises(InputError) as e:
        _ = m.sites
    assert "no record layout validates" in str(e.value)
    assert "record 8" in str(e.value) and "not in an executable section" in str(e.value)


@pytest.mark.parametrize("bits,size", [(64, 133), (32, 69)])
def test_section_size_that_fits_no_layout(bits, size):
    with model_of(bits, BAD_SIZE=1) as m, pytest.raises(InputError) as e:
        _ = m.sites
    assert str(e.value).endswith(f".parainstructions is {size} bytes, not a multiple of any "
                                 "known record size (8, 16)")


def test_forced_layout_and_unknown_forced_layout():
    with model_of() as m:
        m.layout_name = "x86_64"
        assert m.sites.layout.name == "x86_64"
        assert m.sites.sites[0].clobbers is None
    with model_of() as m:
        m.layout_name = "nonsense"
        with pytest.raises(InputError, match="layout 'nonsense' does not exist"):
            _ = m.sites


def test_version_from_banner():
    with model_of() as m:
        assert m.version.release == "6.1.0-fixture"
        assert (m.version.major, m.version.minor) == (6, 1)
        assert m.version.source == "linux_banner"
    with model_of(NO_BANNER=1) as m:
        assert m.version.source == "not found" and m.version.short == "unknown"


def test_a_symbol_name_no_table_can_hold_is_simply_absent():
    """Found by the fuzzer: a member name from damaged BTF (U+FFFD) asked as a symbol."""
    with model_of() as m:
        assert m.image.symbols.get("pv_\ufffd_ops") is None
        assert m.image.symbols.lookup("\u2603") == []
