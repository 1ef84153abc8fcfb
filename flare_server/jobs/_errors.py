"""One clear error for a failing disk or database under a job store: StorageFull when the
disk is full (:mod:`flare_server.disk_full`), one InternalError for anything else."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from flare_protocol.errors import InternalError
from flare_server.disk_full import disk_full, is_disk_full

_F = TypeVar("_F", bound=Callable[..., Any])

#: What a caller was doing, by method name, for a disk-full message ("cannot <doing>").
_DOING = {
    "write": "write the uploaded job archive",
    "commit": "store the submitted job",
    "create_job_from_archive": "store the job archive",
    "clone_job": "store the cloned job",
}


def storage_errors(method: _F) -> _F:
    """Turn a disk or database failure into StorageFull (disk full) or one clear
    InternalError (an I/O error, a permission)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (OSError, sqlite3.Error) as exc:
            what = method.__name__.strip("_").replace("_", " ")
            if is_disk_full(exc):
                owner = args[0] if args else None
                where = getattr(owner, "root", None) or getattr(owner, "path", None)
                doing = _DOING.get(method.__name__, f"{what} in the job store")
                raise disk_full(exc, doing, where or "the job store") from exc
            raise InternalError(
                f"job store: {what} failed: {exc}; check the server's disk (space, permissions)"
            ) from exc

    return wrapper  # type: ignore[return-value]
