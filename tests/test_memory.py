"""The glibc mmap threshold that keeps large temporary buffers out of the heap."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from jobvault import memory


def test_a_users_own_threshold_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.limit_fragmentation() is False


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mmapped_bytes() -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblkhd)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
    reason="glibc's mallopt is only on Linux",
)
def test_large_buffers_stay_out_of_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert memory.limit_fragmentation() is True
    big = bytearray(8 * 1024 * 1024)  # freed: glibc would now raise its threshold to 8 MB
    del big
    before = _mmapped_bytes()
    buffer = bytearray(2 * 1024 * 1024)  # so this one would come from the heap
    assert _mmapped_bytes() - before >= 2 * 1024 * 1024, "a 2 MB buffer is mmapped"
    del buffer
    assert _mmapped_bytes() - before < 1024 * 1024, "and given back when freed"
