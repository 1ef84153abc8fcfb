"""What a running job reacts to: one typed event per kind, consumed by its run in order.

Everything that can happen to a running job becomes one of these and goes through the
run's one queue (:meth:`~flare_server.job_runner.run.JobRun.post`), so only the run's
coroutine ever touches the job's state. Each phase dispatches with ``match`` over
:data:`Event` and ends in :func:`unhandled`: mypy proves every kind is handled, and an
event of a kind no phase knows is a bug that fails loudly (an AssertionError ends the job
``FINISHED:ABNORMAL`` with a traceback in the server log), never one silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from flare_protocol.site_topics import JobLog, JobStatusReport, Metric, SiteTopic, TaskResult

__all__ = [
    "Aborted",
    "Event",
    "JobMessage",
    "MalformedMessage",
    "ServerStopping",
    "SiteConnected",
    "SiteDisconnected",
    "SiteLost",
    "SiteMessage",
    "TimerFired",
    "unhandled",
]

#: The bodies of the messages a site sends about a job.
JobMessage = JobStatusReport | TaskResult | Metric | JobLog


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


Event = (
    SiteMessage
    | MalformedMessage
    | SiteConnected
    | SiteDisconnected
    | SiteLost
    | TimerFired
    | Aborted
    | ServerStopping
)


def unhandled(event: NoReturn) -> NoReturn:
    """The end of every dispatch: mypy proves it unreachable; reached, it is a bug."""
    raise AssertionError(f"unhandled job event {event!r}")
