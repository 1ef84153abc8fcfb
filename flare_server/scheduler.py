"""Scheduling plumbing: a submitted job waits until the sites it needs are connected.

Theory of operation. A job is *runnable* when every site its ``deploy_map`` names (and
every ``mandatory_clients`` site) is connected and at least ``min_clients`` sites are
connected. Until then it stays SUBMITTED and its meta carries ``schedule_reason``, e.g.
``waiting for sites: site-2 (deploy_map; not connected) / 1 of 2 min_clients connected``
(``list_jobs(detailed=True)``, ``get_job_meta`` and ``monitor_job`` show it). The waiting
jobs are re-evaluated whenever a job is submitted and whenever a site connects or
disconnects; evaluations are coalesced (one runs at a time, a request during a run
triggers one more run). A site that announced a ``max_jobs`` resource at Register and
already runs that many jobs counts as not available (the reason says so). A runnable job
is handed to a :class:`JobLauncher`: the server's :class:`~flare_server.job_runner.JobRunner`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flare_protocol.errors import InvalidTransition, JobNotFound
from flare_server.jobs import JobRepository, JobStatus
from flare_server.sites import SiteRegistry

log = logging.getLogger("flare_server.scheduler")

ALL_SITES = "@ALL"
SERVER_TARGET = "server"


@dataclass(frozen=True)
class Placement:
    """The sites a runnable job goes to (``None`` while it must wait, with the reason)."""

    sites: tuple[str, ...] | None
    reason: str


class JobLauncher(Protocol):
    """Starts a runnable job on its sites (the server's is the JobRunner)."""

    async def launch(self, job_id: str, meta: Mapping[str, Any], sites: tuple[str, ...]) -> None:
        """Take over a SUBMITTED job; must move it out of SUBMITTED (or raise)."""
        ...

    def free_slots(self) -> Mapping[str, int]:
        """Jobs each connected site with a job limit can still take (others: no limit)."""
        ...


def place(
    meta: Mapping[str, Any], connected: Collection[str], busy: Collection[str] = ()
) -> Placement:
    """Where a job can run given the sites that can take it, or why it must wait.

    ``connected``: the sites that can take a job now; ``busy``: connected sites at their
    ``max_jobs`` limit (the reason names them as such, not as not connected).
    """
    deploy_map = meta.get("deploy_map") or {}
    named: list[str] = []
    wants_all = False
    for targets in deploy_map.values():
        for target in targets or ():
            if target == ALL_SITES:
                wants_all = True
            elif target != SERVER_TARGET and target not in named:
                named.append(target)
    mandatory = [s for s in (meta.get("mandatory_clients") or ()) if s not in named]
    min_clients = int(meta.get("min_clients") or 1)

    def why(site: str) -> str:
        return "at its max_jobs limit" if site in busy else "not connected"

    missing = [f"{s} (deploy_map; {why(s)})" for s in named if s not in connected]
    missing += [f"{s} (mandatory_clients; {why(s)})" for s in mandatory if s not in connected]
    if wants_all:
        sites = sorted(connected)
    else:
        sites = [s for s in named if s in connected] + [s for s in mandatory if s in connected]
    if wants_all or not named:
        available = len(connected)
    else:
        available = len([s for s in set(named) | set(mandatory) if s in connected])
    short = available < min_clients
    if not missing and not short:
        return Placement(tuple(sites), "")
    parts = []
    if missing:
        parts.append("waiting for sites: " + ", ".join(missing))
    if short or missing:
        parts.append(f"{available} of {min_clients} min_clients connected")
    return Placement(None, " / ".join(parts))


class Scheduler:
    """Re-evaluates waiting jobs on submit and on site connect/disconnect."""

    def __init__(self, store: JobRepository, registry: SiteRegistry, launcher: JobLauncher) -> None:
        self.store = store
        self.registry = registry
        self.launcher = launcher
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        registry.subscribe(self._on_site_event)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self.poke()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _on_site_event(self, event: str, _name: str) -> None:
        if event in ("connected", "disconnected"):
            self.poke()

    def poke(self) -> None:
        """Ask for a re-evaluation (coalesced; cheap to call often)."""
        self._wake.set()

    async def evaluate(self) -> None:
        """One pass over every SUBMITTED job (store work in one worker-thread call)."""
        free = dict(self.launcher.free_slots())
        connected = frozenset(self.registry.names())
        runnable = await asyncio.to_thread(self._plan, connected, free)
        for job_id, meta, sites in runnable:
            try:
                log.info("job %s runnable on %s", job_id, ", ".join(sites))
                await self.launcher.launch(job_id, meta, sites)
            except (InvalidTransition, JobNotFound):
                log.info("job %s changed while being scheduled; skipped", job_id)
            except Exception:
                log.exception("launching job %s failed", job_id)

    def _plan(
        self, connected: frozenset[str], free: dict[str, int] | None = None
    ) -> list[tuple[str, dict[str, Any], tuple[str, ...]]]:
        """Record waiting reasons; return the runnable jobs (runs in a worker thread).

        ``free``: jobs a site with a ``max_jobs`` limit can still take (others: no limit).
        """
        free = dict(free or {})
        runnable = []
        for summary in self.store.list(statuses=[JobStatus.SUBMITTED]):
            job_id = summary.job_id
            try:
                meta = dict(self.store.get(job_id))
                if meta.get("status") != JobStatus.SUBMITTED.value:
                    continue
                full = sorted(s for s in connected if free.get(s, 1) <= 0)
                placement = place(meta, connected - frozenset(full), busy=full)
                if placement.sites is not None:
                    runnable.append((job_id, meta, placement.sites))
                    for site in placement.sites:  # count it against the jobs after it
                        if site in free:
                            free[site] -= 1
                    continue
                reason = placement.reason
                if full:
                    reason += f" / at their max_jobs limit: {', '.join(full)}"
                if meta.get("schedule_reason") != reason:
                    self.store.update(job_id, schedule_reason=reason)
            except (InvalidTransition, JobNotFound):
                log.info("job %s changed while being scheduled; skipped", job_id)
            except Exception:
                log.exception("scheduling job %s failed", job_id)
        return runnable

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.evaluate()
            except Exception:
                log.exception("scheduler pass failed")
