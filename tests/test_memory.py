"""The glibc mmap threshold that keeps large temporary buffers out of the heap."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from jobvault.ingest import memory


def test_a_users_own_threshold_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.limit_fragmentation() is False


CHECK = """
import ctypes, ctypes.util, sys
from jobvault.ingest import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
if not hasattr(libc, "mallinfo2"):
    print("no mallinfo2")
    sys.exit(0)
libc.mallinfo2.restype = MallInfo2
fixed = sys.argv[1] == "fixed" and memory.limit_fragmentation()
big = bytearray(8 * 1024 * 1024)  # freed: glibc would now raise its threshold to 8 MB
del big
before = libc.mallinfo2().hblkhd
buffer = bytearray(3 * 1024 * 1024)  # so this one would come from the heap
during = libc.mallinfo2().hblkhd
del buffer
after = libc.mallinfo2().hblkhd
print(fixed, during - before, after - before)
"""


def _check(mode: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run(
        [sys.executable, "-c", CHECK, mode], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    if out == ["no", "mallinfo2"]:
        pytest.skip("glibc < 2.33 has no mallinfo2")
    return out


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
    reason="glibc's mallopt is only on Linux",
)
def test_large_buffers_stay_out_of_the_heap() -> None:
    # A fresh interpreter: in this one, earlier tests left free heap space a buffer could reuse.
    fixed, during, after = _check("fixed")
    assert fixed == "True"
    assert int(during) >= 3 * 1024 * 1024, "a 3 MB buffer is mmapped"
    assert int(after) < 1024 * 1024, "and given back when freed"
    unfixed, during, _ = _check("dynamic")
    assert unfixed == "False" and int(during) == 0, "without the fix it comes from the heap"
