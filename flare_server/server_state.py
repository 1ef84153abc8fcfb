"""The server's lifecycle: one state, one table of legal moves, one function that checks them.

Theory of operation. A :class:`~flare_server.app.Server` is born ``NEW``; ``start()`` moves
it to ``STARTING`` while it opens the store and binds its ports, then ``SERVING``. A stop
(a signal, the ``shutdown``/``restart`` command, or a start that failed half-way) moves it
to ``STOPPING`` while its parts stop in reverse order, then ``STOPPED``, which is
terminal: a restart builds a new ``Server``. Stopping a server that never started goes
straight to ``STOPPED``. :data:`TRANSITIONS` is the only place that says which move is
legal and :func:`check_server_transition` the only function that enforces it, as
:mod:`flare_server.jobs.lifecycle` does for jobs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from flare_protocol.errors import InvalidTransition

__all__ = ["TRANSITIONS", "ServerState", "check_server_transition"]


class ServerState(enum.Enum):
    """Where a server is in its life."""

    NEW = "NEW"
    STARTING = "STARTING"
    SERVING = "SERVING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


S = ServerState

#: Every legal move; STOPPED is terminal.
TRANSITIONS: Mapping[ServerState, frozenset[ServerState]] = MappingProxyType(
    {
        S.NEW: frozenset({S.STARTING, S.STOPPED}),
        S.STARTING: frozenset({S.SERVING, S.STOPPING}),
        S.SERVING: frozenset({S.STOPPING}),
        S.STOPPING: frozenset({S.STOPPED}),
        S.STOPPED: frozenset(),
    }
)


def check_server_transition(old: ServerState, new: ServerState) -> ServerState:
    """``new``, if a server may move there from ``old``.

    Raises:
        InvalidTransition: naming both states (a bug in the caller, e.g. a second start).
    """
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "nothing (terminal)"
        raise InvalidTransition(
            f"the server cannot move from {old.value} to {new.value}; from {old.value} it "
            f"may move to {allowed}",
            old=old.value,
            new=new.value,
        )
    return new
