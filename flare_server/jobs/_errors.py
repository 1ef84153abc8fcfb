"""One clear error for a failing disk or database under a job store."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from flare_protocol.errors import InternalError

_F = TypeVar("_F", bound=Callable[..., Any])


def storage_errors(method: _F) -> _F:
    """Turn a disk or database failure (disk full, I/O error) into one clear InternalError."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (OSError, sqlite3.Error) as exc:
            what = method.__name__.strip("_").replace("_", " ")
            raise InternalError(
                f"job store: {what} failed: {exc}; check the server's disk (space, permissions)"
            ) from exc

    return wrapper  # type: ignore[return-value]
