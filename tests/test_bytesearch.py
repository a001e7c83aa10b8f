"""find_all (glibc memmem) must give exactly what repeated bytes.find gives."""

from hypothesis import given
from hypothesis import strategies as st

from pvpatch.image import bytesearch
from pvpatch.image.bytesearch import find_all


def _reference(haystack: bytes, needle: bytes, start: int) -> list[int]:
    out, pos = [], haystack.find(needle, start)
    while pos >= 0:
        out.append(pos)
        pos = haystack.find(needle, pos + 1)
    return out


@given(st.binary(max_size=300), st.binary(min_size=1, max_size=4), st.integers(0, 310))
def test_matches_bytes_find(haystack, needle, start):
    # a small alphabet so that needles occur, overlap and sit at both ends
    haystack = haystack.translate(bytes(i % 3 for i in range(256)))
    needle = needle.translate(bytes(i % 3 for i in range(256)))
    assert list(find_all(haystack, needle, start)) == _reference(haystack, needle, start)


def test_the_library_is_used_and_the_fallback_agrees(monkeypatch):
    strtab = b"\0__pfx_xen_init_mmu_ops\0xen_init_mmu_ops\0mmu_ops\0" * 3
    assert bytesearch._memmem() is not None  # glibc: the fast path is the one exercised
    fast = list(find_all(strtab, b"mmu_ops\0"))
    assert len(fast) == 9 and all(strtab[p:p + 8] == b"mmu_ops\0" for p in fast)
    monkeypatch.setattr(bytesearch, "_memmem", lambda: None)
    assert list(find_all(strtab, b"mmu_ops\0")) == fast
    assert list(find_all(bytearray(strtab), b"mmu_ops\0")) == fast  # not bytes: find()
