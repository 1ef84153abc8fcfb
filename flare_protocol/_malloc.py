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
not grown).

The settings hold for the whole process, so they are applied only in processes we own:
the ``flare server`` and ``flare site`` daemons call :func:`tune` at start. A Session
(in a user's notebook) and the Client API (in a user's training script) call
:func:`tune_if_requested`, which changes nothing unless the user asks for it.
``FLARE_MALLOC_TUNING`` decides: unset, the daemons tune and other processes do not;
``1`` tunes every flare process (a script or notebook that moves big models may want
it); ``0`` tunes none. Either way it is a no-op (returning False) on anything but Linux
with glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = [
    "ARENA_MAX",
    "ENV",
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "applied",
    "tune",
    "tune_if_requested",
]

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

#: The environment variable that turns the tuning on (``1``) or off (``0``) everywhere.
ENV = "FLARE_MALLOC_TUNING"

_lock = threading.Lock()
_result: bool | None = None


def tune() -> bool:
    """Apply the settings once per process, unless ``FLARE_MALLOC_TUNING=0``.

    For the daemons (``flare server``, ``flare site``). Returns True when glibc accepted
    all of them.
    """
    if os.environ.get(ENV) == "0":
        return False
    global _result
    with _lock:
        if _result is None:
            _result = _apply()
        return _result


def tune_if_requested() -> bool:
    """Apply the settings only when ``FLARE_MALLOC_TUNING=1``: for processes users own."""
    return os.environ.get(ENV) == "1" and tune()


def applied() -> bool:
    """True when this process's malloc settings were changed by :func:`tune`."""
    return bool(_result)


_SETTINGS = (
    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
    (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    (_M_ARENA_MAX, ARENA_MAX),
)


def _apply(library: str | None = None, settings: tuple[tuple[int, int], ...] = _SETTINGS) -> bool:
    """``mallopt`` each (parameter, value) through ``library`` (the C library by default);
    False when the library is not glibc or refuses a value (the seams the tests use)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        name = library or ctypes.util.find_library("c") or "libc.so.6"
        libc = ctypes.CDLL(name, use_errno=True)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt is a stub)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in settings)
