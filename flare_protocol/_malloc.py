"""glibc malloc settings for processes that stream big transfers in 1 MiB messages.

Theory of operation. A transfer allocates several 1 MiB buffers per message (gRPC's
receive slices, the serialized bytes, the protobuf field, our own copies). With glibc's
defaults such a buffer is either served by ``mmap`` and returned with ``munmap`` or
carved from a heap that is trimmed back to the system as soon as its free top exceeds
a few MiB; either way the next buffer is *fresh* memory, and every 4 KiB page of it
costs a page fault. On the 2-vCPU VM the benchmarks run on, first-touch memory runs at
roughly 300 to 800 MB/s, so a 1 GiB upload paid for about a GiB of page faults in the
client (measured: 320,000 to 500,000 minor faults per GiB; 3,000 with these settings).

:func:`tune` keeps such buffers in the heap (``M_MMAP_THRESHOLD`` above the message
size), keeps freed heap memory for reuse instead of trimming it (``M_TRIM_THRESHOLD``),
and caps the number of arenas, so that buffers freed by one gRPC thread are reused by
another instead of each thread's arena holding its own freed megabytes
(``M_ARENA_MAX``). Peak RSS stays below what the defaults reach (the heap is reused,
not grown). It is called once at start by the server, the site and the admin Session;
it is a no-op (returning False) on anything but Linux with glibc, and when the
environment sets ``FLARE_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "ARENA_MAX", "tune"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Allocations below this come from the heap (glibc's ceiling for it is 32 MiB).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed memory kept at the top of a heap before it is given back to the system.
TRIM_THRESHOLD = 64 * 1024 * 1024
#: At most this many malloc arenas (glibc's default is 8 per core).
ARENA_MAX = 2

_lock = threading.Lock()
_result: bool | None = None


def tune() -> bool:
    """Apply the settings once per process; True when glibc accepted all of them."""
    global _result
    with _lock:
        if _result is None:
            _result = _apply()
        return _result


def _apply() -> bool:
    if os.environ.get("FLARE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt is a stub)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_ARENA_MAX, ARENA_MAX),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
