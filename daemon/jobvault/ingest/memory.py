"""Keep large temporary buffers from fragmenting the heap (glibc only).

Reading transcripts allocates many short-lived buffers of one to several megabytes (read
batches, long lines, archive chunks and their compressed copies). glibc raises its mmap
threshold dynamically up to 32 MB after the first such buffer is freed, so later ones are
carved out of the heap, where small long-lived objects pin them: about 20 MB of peak memory
on the benchmark's imports. A fixed 2 MB threshold returns every larger buffer to the system
when it is freed, at no measurable cost in import time; 1 MB (every read block) cost about
15 % (docs/benchmarks.md).

A user's own MALLOC_MMAP_THRESHOLD_ wins; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
MMAP_THRESHOLD = 2 * 1024 * 1024  # above the 1 MB read blocks, which the heap reuses well


def limit_fragmentation(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold; return whether it was set."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
