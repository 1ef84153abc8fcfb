"""Which server a log record belongs to, when several servers share one process.

Theory of operation. Every server module logs to a ``flare_server.*`` logger, and Python
has one logger tree per process: two :class:`~flare_server.app.Server` objects in one
process (the tests' and benchmarks' ``ServerThread``) would each write the other's
records into their ``server.log`` and error list. :func:`claim` marks what belongs to a
server while it starts: its event loop, and the context of the starting task (which the
tasks it creates and the worker threads of ``asyncio.to_thread`` inherit). The
:class:`OwnRecords` filter on each server's handlers keeps a record emitted on the
server's loop or in its context, drops one that belongs to another server, and keeps one
that no server can be told from (a plain thread), as a process with one server would.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref

__all__ = ["OwnRecords", "claim"]

_context_owner: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "flare_server_log_owner", default=None
)
_loop_owner: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object] = (
    weakref.WeakKeyDictionary()
)


def claim(owner: object) -> None:
    """Mark the running loop and the current context as ``owner``'s (call on its loop)."""
    _context_owner.set(owner)
    _loop_owner[asyncio.get_running_loop()] = owner


def _current_owner() -> object | None:
    owner = _context_owner.get()
    if owner is not None:
        return owner
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return _loop_owner.get(loop)


class OwnRecords(logging.Filter):
    """Passes the records of ``owner`` and those no server can be told from."""

    def __init__(self, owner: object) -> None:
        super().__init__()
        self._owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        current = _current_owner()
        return current is None or current is self._owner
