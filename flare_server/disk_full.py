"""A full disk, named: the one place the server turns ``ENOSPC`` into :class:`StorageFull`.

A write that runs out of space (``ENOSPC``, ``EDQUOT``, or SQLite's "database or disk is
full") must fail with an error that names what was being written, where, and the fix,
and must leave nothing partial: every writer of the server writes a temp file and renames
it when whole, removing the temp file on failure, so that a retry after freeing space
starts clean.
"""

from __future__ import annotations

import errno
import sqlite3

from flare_protocol.errors import StorageFull

__all__ = ["disk_full", "is_disk_full"]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """True for an OS or SQLite error that says the disk (or a quota) is full."""
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
    return False


def disk_full(exc: BaseException, doing: str, path: object) -> StorageFull:
    """The StorageFull error for ``exc``, raised while trying to ``doing`` under ``path``."""
    if isinstance(exc, StorageFull):
        return exc
    return StorageFull(
        f"the server's disk is full: cannot {doing} ({path}: no space left on device); "
        "nothing partial was kept; free space on that file system (or raise its quota) "
        "and try again",
        path=str(path),
        operation=doing,
    )
