"""The job runner: the scheduler's launcher, one :class:`JobRun` per running job.

It routes what sites send to the run of its job (as typed events), tells runs of site
connects and disconnects, aborts on a site the jobs it reports that do not run there, and
owns what the runs share: the model buffers and the blob registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flare_protocol import errors
from flare_protocol._generated import site_pb2
from flare_protocol.models import BufferPool
from flare_protocol.site_topics import JobAbort
from flare_server.authz import Policy
from flare_server.blobs import BlobRegistry
from flare_server.job_runner.checkpoint import LoadedCheckpoint, remove_checkpoint
from flare_server.job_runner.driver import DriverRelay
from flare_server.job_runner.events import (
    Aborted,
    ServerStopping,
    SiteConnected,
    SiteDisconnected,
)
from flare_server.job_runner.flow import run_job
from flare_server.job_runner.messages import envelope, job_message
from flare_server.job_runner.run import JobRun, RunContext
from flare_server.jobs import JobRepository, JobStatus
from flare_server.results import (
    MESSAGES,
    METRICS,
    PARAMS,
    SUMMARY,
    VALIDATIONS,
    ResultFolder,
    RowSignals,
    seal_jsonl,
)
from flare_server.settings import ServerSettings
from flare_server.sites import SiteRegistry

__all__ = ["IDLE_TRIM_SECONDS", "JobRunner"]

log = logging.getLogger("flare_server.jobs.runner")

#: Seconds without a running job after which the pooled model buffers are released.
IDLE_TRIM_SECONDS = 60.0


class JobRunner:
    """The scheduler's launcher: one :class:`JobRun` per running job.

    ``owns_jobs``: False when another launcher (a test seam) runs the jobs; then the jobs
    a site reports running are not aborted as strays (that launcher knows which are live).
    """

    def __init__(
        self,
        store: JobRepository,
        registry: SiteRegistry,
        settings: ServerSettings,
        policy: Policy,
        result_rows: RowSignals,
        *,
        owns_jobs: bool = True,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.policy = policy
        #: Told when a job's run appends metric or validation rows (its watchers).
        self.result_rows = result_rows
        self.owns_jobs = owns_jobs
        #: Model-sized buffers shared by the jobs: updates are received or loaded into
        #: them, round models aggregated and serialized into them, so a round does not
        #: fault in ~100s of MB of fresh memory (a buffer is reused only once nothing
        #: refers to it; see BufferPool).
        self.buffers = BufferPool()
        self.blobs = BlobRegistry(self.buffers, settings.update_memory_bytes)
        self.context = RunContext(
            store, registry, settings, policy, self.blobs, self.buffers, result_rows, self.run_ended
        )
        self.runs: dict[str, JobRun] = {}
        #: (site, job) -> when the site was last told to abort a job it should not run.
        self._stray: dict[tuple[str, str], float] = {}
        self._trim: asyncio.TimerHandle | None = None
        self._run_ended: tuple[Callable[[], None], ...] = ()
        registry.subscribe(self._on_site_event)
        registry.subscribe_messages(self.on_site_message)

    def subscribe_run_ended(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time a run ended and freed its sites' slots (the
        scheduler looks at the waiting jobs again)."""
        self._run_ended = (*self._run_ended, callback)

    def run_ended(self, job_id: str) -> None:
        """A run is over: forget it, and tell the subscribers (called by the run as it
        releases what it held)."""
        self.runs.pop(job_id, None)
        self.trim_when_idle()
        for callback in self._run_ended:
            try:
                callback()
            except Exception:
                log.exception("a run-ended callback failed")

    def trim_when_idle(self, delay: float = IDLE_TRIM_SECONDS) -> None:
        """Once no job has run for ``delay`` seconds, give the model buffers back: a
        server that ran one big job does not keep its GiBs, and back-to-back jobs still
        reuse them."""
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(delay, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim = None
        if not self.runs:
            freed = self.buffers.trim()
            if freed:
                log.info("no job for a while: %d MiB of model buffers released", freed >> 20)

    async def launch(self, job_id: str, meta: Mapping[str, Any], sites: tuple[str, ...]) -> None:
        """Dispatch ``job_id`` to ``sites`` and start running it."""
        await asyncio.to_thread(
            self.store.update, job_id, schedule_reason="", deployed_sites=list(sites)
        )
        await asyncio.to_thread(
            self.store.set_status,
            job_id,
            JobStatus.DISPATCHED,
            reason=f"dispatched to {', '.join(sites) or 'no site'}",
        )
        run = JobRun(self.context, job_id, dict(meta), tuple(sites))
        self.runs[job_id] = run
        run.task = asyncio.get_running_loop().create_task(run_job(run), name=f"job-{job_id}")

    def resume(self, job_id: str, meta: Mapping[str, Any], loaded: LoadedCheckpoint) -> None:
        """Resume a job a server crash interrupted (still RUNNING in the store), from its
        checkpoint: its run waits for its sites, then goes on (:mod:`.resume`). Called at
        start-up, before the site endpoint listens, so that no returning site is told to
        abort the job."""
        run = JobRun(self.context, job_id, dict(meta), loaded.checkpoint.sites)
        run.resumed = loaded
        self.runs[job_id] = run
        run.task = asyncio.get_running_loop().create_task(run_job(run), name=f"job-{job_id}")

    def close_interrupted(self, jobs: Iterable[tuple[str, str]]) -> None:
        """Finish the result folders of jobs a crash interrupted (the store ended them
        ABNORMAL on open): mark the logs complete, write summary.json, drop the work area.
        Runs in a worker thread at start-up."""
        for job_id, was in jobs:
            try:
                meta = self.store.get(job_id)
                job_dir = self.store.job_dir(job_id)
                shutil.rmtree(job_dir / "work", ignore_errors=True)
                remove_checkpoint(job_dir)
                result = self.store.result_dir(job_id)
                for name in (METRICS, VALIDATIONS, PARAMS, MESSAGES):
                    if (result / name).is_file():
                        seal_jsonl(result / name)
                if (result / SUMMARY).exists():
                    continue
                folder = ResultFolder(result)
                folder.close()
                history = meta.get("status_history") or [{}]
                folder.write_summary(
                    {
                        "job_id": job_id,
                        "name": meta.get("name"),
                        "status": meta.get("status"),
                        "reason": history[-1].get("reason"),
                        "interrupted_while": was,
                        "rounds_completed": meta.get("rounds_completed", 0),
                        "sites": meta.get("deployed_sites") or [],
                        "has_final_model": False,
                        "complete": True,
                    }
                )
            except Exception:
                log.exception("job %s: cannot close its interrupted result folder", job_id)

    def free_slots(self) -> dict[str, int]:
        """Jobs each connected site with a ``max_jobs`` resource can still take."""
        free: dict[str, int] = {}
        for name in self.registry.names():
            site = self.registry.get(name)
            try:
                limit = int(site.resources.get("max_jobs", "")) if site else 0
            except ValueError:
                continue
            if limit > 0:
                running = sum(1 for r in self.runs.values() if name in r.sites)
                free[name] = max(0, limit - running)
        return free

    def on_site_message(self, site: str, message: site_pb2.Envelope) -> None:
        """Route a site's job message to its run (messages for no run are dropped)."""
        run = self.runs.get(message.job_id)
        if run is None or site not in run.sites:
            log.debug(
                "site %s sent %s for job %s, which is not running here; dropped",
                site,
                message.topic[:64],
                message.job_id[:64],
            )
            return
        event = job_message(site, message)
        if event is not None:
            run.post(event)

    def driver(self, job_id: str) -> DriverRelay | None:
        """The relay of a running driver job (None: no such run, or not a driver job)."""
        run = self.runs.get(job_id)
        relay = run.driver if run is not None else None
        return relay if isinstance(relay, DriverRelay) else None

    def workflow(self, job_id: str) -> str | None:
        """The workflow of a running job once it is prepared (None before, or no run)."""
        run = self.runs.get(job_id)
        return run.plan.config.workflow if run is not None and run.plan is not None else None

    def abort(self, job_id: str, reason: str) -> None:
        """An admin aborted the job (its status is already FINISHED:ABORTED)."""
        run = self.runs.get(job_id)
        if run is not None:
            run.abort_reason = reason
            run.post(Aborted(reason))

    def notify_abort(self, meta: Mapping[str, Any], reason: str = "aborted by an admin") -> None:
        """Tell the job's run and its sites that it was aborted (best effort)."""
        job_id = str(meta["job_id"])
        self.abort(job_id, reason)
        for site in meta.get("deployed_sites") or ():
            if site in self.registry:
                self.registry.send(site, envelope(job_id, JobAbort(reason)))

    async def wait_result(self, job_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the job's run (if one is active) to finish
        its result folder; False when it is still being written."""
        run = self.runs.get(job_id)
        if run is None or run.task is None or run.task.done():
            return True
        done, _ = await asyncio.wait({run.task}, timeout=timeout)
        return bool(done)

    async def stop(self) -> None:
        """The server is stopping: end every run ABNORMAL and tell its sites."""
        for run in list(self.runs.values()):
            run.server_stopping = True
            run.post(ServerStopping("the server stopped while the job was running"))
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._trim is not None:
            self._trim.cancel()

    def _on_site_event(self, event: str, name: str) -> None:
        if event in ("connected", "disconnected"):
            change = SiteConnected(name) if event == "connected" else SiteDisconnected(name)
            for run in list(self.runs.values()):
                if name in run.sites:
                    run.post(change)
        if event == "disconnected":
            self._stray = {k: t for k, t in self._stray.items() if k[0] != name}
        elif event in ("connected", "running_jobs"):
            self._abort_stray_jobs(name, at_connect=event == "connected")

    def _abort_stray_jobs(self, name: str, *, at_connect: bool) -> None:
        """Tell ``name`` to abort every job it reports running that does not run there.

        The site's own job end may have been lost, or it came back after the job ended
        (or after a server restart): its processes must not live on. At Register, a job
        whose run is ending counts too (the site missed its ``job.end``); on heartbeats it
        does not (the site is ending it). Each stray job is told again at most every
        ``heartbeat_timeout`` seconds while the site keeps reporting it.
        """
        site = self.registry.get(name)
        if site is None or not self.owns_jobs:
            return  # another launcher (a test seam) runs the jobs: it knows which are live
        now = time.monotonic()
        self._stray = {
            k: t for k, t in self._stray.items() if k[0] != name or k[1] in site.running_jobs
        }
        for job_id in site.running_jobs:
            owner = self.runs.get(job_id)
            if owner is not None and name in owner.sites and not (at_connect and owner.ending):
                continue
            told = self._stray.get((name, job_id))
            if told is not None and now - told < self.settings.heartbeat_timeout:
                continue
            self._stray[(name, job_id)] = now
            log.info(
                "site %s still runs job %s, which is not running there: abort it",
                name,
                job_id[:64],
            )
            with contextlib.suppress(errors.InvalidTarget):
                self.registry.send(
                    name, envelope(job_id, JobAbort("the server no longer runs this job"))
                )
