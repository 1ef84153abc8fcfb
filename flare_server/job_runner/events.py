"""What a running job reacts to: one typed event per kind, consumed by its run in order.

Everything that can happen to a running job becomes one of these and goes through the
run's one queue (:meth:`~flare_server.job_runner.run.JobRun.post`), so only the run's
coroutine ever touches the job's state. Each phase dispatches with ``match`` over
:data:`Event` and ends in :func:`unhandled`: mypy proves every kind is handled, and an
event of a kind no phase knows is a bug that fails loudly (an AssertionError ends the job
``FINISHED:ABNORMAL`` with a traceback in the server log), never one silently ignored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, NoReturn

from flare_protocol.models import Params
from flare_protocol.site_topics import (
    DriverReply,
    JobLog,
    JobStatusReport,
    Metric,
    SiteTopic,
    TaskResult,
)
from flare_server.job_runner.driver_types import Outgoing

__all__ = [
    "DRIVER_EVENTS",
    "END",
    "Aborted",
    "DriverFinished",
    "DriverLeft",
    "DriverPushed",
    "DriverSeen",
    "DriverWatch",
    "DriverEvent",
    "Event",
    "JobMessage",
    "MalformedMessage",
    "ServerStopping",
    "SiteConnected",
    "SiteDisconnected",
    "SiteLost",
    "SiteMessage",
    "TimerFired",
    "refuse_driver",
    "unhandled",
]

#: The bodies of the messages a site sends about a job.
JobMessage = JobStatusReport | TaskResult | Metric | JobLog | DriverReply


@dataclass(frozen=True)
class SiteMessage:
    """A site sent a message about the job (its body parsed and checked)."""

    site: str
    body: JobMessage
    #: The ids of the blobs it names (an update, a log), in order.
    blob_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class MalformedMessage:
    """A site sent a message about the job whose body is not what its topic requires."""

    site: str
    topic: SiteTopic
    error: str
    #: The task it answers, when that much could be read (a ``task.result``).
    task_id: str | None = None


@dataclass(frozen=True)
class SiteConnected:
    """One of the job's sites (re)connected."""

    site: str


@dataclass(frozen=True)
class SiteDisconnected:
    """One of the job's sites disconnected (it has ``reconnect_grace`` to come back)."""

    site: str


@dataclass(frozen=True)
class SiteLost:
    """A disconnected site did not come back in time."""

    site: str
    reason: str


@dataclass(frozen=True)
class TimerFired:
    """A timer the workflow asked for (``StartTimer``) fired."""

    token: str


@dataclass(frozen=True)
class Aborted:
    """An admin aborted the job (its status is already ``FINISHED:ABORTED``)."""

    reason: str


@dataclass(frozen=True)
class ServerStopping:
    """The server is stopping: the job ends ``FINISHED:ABNORMAL`` now."""

    reason: str


# -- the job's driver (the Driver API; only a driver job's relay acts on these) ----------


@dataclass(frozen=True, eq=False)
class DriverPushed:
    """The driver pushed checked messages; the run answers their ids through ``done``."""

    who: str
    messages: tuple[Outgoing, ...]
    #: Replies the driver already has (the run drops them).
    acks: tuple[str, ...]
    done: asyncio.Future[list[str]]


@dataclass(frozen=True, eq=False)
class DriverWatch:
    """A driver stream wants the replies to ``message_ids``: the run puts those that
    arrived on ``sink``, then (``wait``) each as it arrives, then :data:`END`."""

    who: str
    message_ids: tuple[str, ...]
    acks: tuple[str, ...]
    wait: bool
    sink: asyncio.Queue[Any]


@dataclass(frozen=True, eq=False)
class DriverLeft:
    """A driver stream ended (its ``sink`` wants nothing more)."""

    sink: asyncio.Queue[Any]


@dataclass(frozen=True)
class DriverSeen:
    """The driver called (it is there: the idle timeout starts again)."""

    who: str


@dataclass(frozen=True, eq=False)
class DriverFinished:
    """The driver ends the job with ``status`` (a final job status) and, optionally, the
    final global model; ``done`` resolves once the run took it."""

    who: str
    status: str
    reason: str
    model: Params | None
    done: asyncio.Future[None]


#: Put on a driver stream's sink after its last reply.
END = object()


Event = (
    SiteMessage
    | MalformedMessage
    | SiteConnected
    | SiteDisconnected
    | SiteLost
    | TimerFired
    | Aborted
    | ServerStopping
    | DriverPushed
    | DriverWatch
    | DriverLeft
    | DriverSeen
    | DriverFinished
)
DriverEvent = DriverPushed | DriverWatch | DriverLeft | DriverSeen | DriverFinished
DRIVER_EVENTS = (DriverPushed, DriverWatch, DriverLeft, DriverSeen, DriverFinished)


def refuse_driver(event: DriverEvent, error: Exception) -> None:
    """Answer a driver event in a phase (or a job) that takes none: whoever waits on it
    gets ``error``."""
    if isinstance(event, (DriverPushed, DriverFinished)):
        if not event.done.done():
            event.done.set_exception(error)
    elif isinstance(event, DriverWatch):
        event.sink.put_nowait(error)


def unhandled(event: NoReturn) -> NoReturn:
    """The end of every dispatch: mypy proves it unreachable; reached, it is a bug."""
    raise AssertionError(f"unhandled job event {event!r}")
