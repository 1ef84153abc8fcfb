"""The narrow interfaces between the server's parts: who needs what of whom.

The :class:`~flare_server.app.Server` builds its parts and hands each one only what it
uses: the job repository, the site registry, the policy, and these small protocols for
the parts that call back into another one. No part imports the server, so the parts can
be built and tested on their own and the module graph has no cycle
(``tests/flare_server/test_server_import_cycles.py``)::

    AdminService ──► Commands ──► StopControl (Server)
        │               │
        ├──► RunControl (JobRunner) ◄──┘        JobRunner ──► run ended ──► Scheduler.poke
        ├──► JobWaker (Scheduler)               Scheduler ──► JobLauncher (JobRunner)
        └──► JobRepository, SiteRegistry, Policy, RowSignals, receive_job (Server)
    SiteService ──► SiteRegistry.deliver ──► message listeners (JobRunner), BlobRegistry
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flare_server.job_runner.driver import DriverRelay

__all__ = ["JobWaker", "RunControl", "StopControl"]


class JobWaker(Protocol):
    """Asks the scheduler to look at the waiting jobs again (the Scheduler)."""

    def poke(self) -> None:
        """Re-evaluate soon (coalesced; cheap to call often)."""
        ...


class RunControl(Protocol):
    """What the Admin service and the commands ask of running jobs (the JobRunner)."""

    def notify_abort(self, meta: Mapping[str, Any], reason: str) -> None:
        """An admin aborted the job (its status is already FINISHED:ABORTED): end its run
        and tell its sites (best effort)."""
        ...

    async def wait_result(self, job_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the job's run to finish its result folder;
        False when it is still being written."""
        ...

    def driver(self, job_id: str) -> DriverRelay | None:
        """The relay of a running driver job (None: no such run, or not a driver job)."""
        ...

    def workflow(self, job_id: str) -> str | None:
        """The workflow of a running job once it is prepared (None before, or no run)."""
        ...


class StopControl(Protocol):
    """Stopping or restarting the whole server (the Server)."""

    def request_stop(self, *, restart: bool = False, by: str = "signal") -> None:
        """Ask the server to stop (or restart) soon; returns at once."""
        ...
