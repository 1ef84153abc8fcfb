"""Resuming a job after a server crash: which interrupted jobs go on, and their sites' return.

Theory of operation. A server killed while jobs RUNNING (``kill -9``, a crash, a power
cut) finds them RUNNING at its next start (its store is opened with ``keep_running``).
:func:`triage` decides for each, before the site endpoint listens: a job with a usable
checkpoint (:mod:`.checkpoint`) of a built-in workflow is resumed; every other one ends
``FINISHED:ABNORMAL`` with the reason (a driver job: its driver is a client whose state
the restart broke; a job without a usable checkpoint; resuming turned off). A resumed
job's run (:func:`~flare_server.job_runner.flow.run_job`) prepares again (keeping the
job's log and result folder), then :class:`Reconnect` waits up to ``resume_grace``
seconds for the job's sites to register again still running it (a site keeps its jobs
running while it reconnects). The interruption is recorded in the job's meta
(``interruptions``) and, when the job ends, in ``summary.json``. With enough sites back
(``min_responses``, by default every site), the rounds go on from the last completed
round with those sites, the others counted lost; with too few, the job ends
``FINISHED:ABNORMAL`` naming the sites that did not come back. The resumed controller
numbers its tasks with the attempt (``r3.1-train-site-1``): an answer to a task sent
before the crash matches nothing, so no update is aggregated twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from flare_protocol import errors
from flare_protocol.models import load_params
from flare_protocol.site_topics import DriverReply, JobLog, JobStatusReport, Metric, TaskResult
from flare_server.job_runner.checkpoint import LoadedCheckpoint, load_checkpoint
from flare_server.job_runner.events import (
    Aborted,
    DriverFinished,
    DriverLeft,
    DriverPushed,
    DriverSeen,
    DriverWatch,
    MalformedMessage,
    ServerStopping,
    SiteConnected,
    SiteDisconnected,
    SiteLost,
    SiteMessage,
    TimerFired,
    refuse_driver,
    unhandled,
)
from flare_server.job_runner.records import keep_log, keep_record
from flare_server.job_runner.run import Finish, JobRun
from flare_server.jobs import JobRepository, JobStatus
from flare_server.jobs.meta import iso_time
from flare_server.results import VALIDATIONS, read_rows
from flare_server.workflows import ABNORMAL, ABORTED, EXECUTION_EXCEPTION, ResumePoint, RoundRecord

__all__ = ["RESTARTED", "Reconnect", "resume_point", "triage"]

log = logging.getLogger("flare_server.jobs.runner")

#: How every reason of a job a server restart interrupted begins.
RESTARTED = "server restarted while the job was RUNNING"
DRIVER_NOT_RESUMED = (
    "a driver job is not resumed: its rounds are decided by its driver, a client whose "
    "connection and state the restart broke; submit the job again"
)


def triage(
    store: JobRepository, job_ids: Iterable[str]
) -> tuple[list[tuple[str, LoadedCheckpoint]], list[tuple[str, str]]]:
    """Which RUNNING jobs a restarted server resumes, with their checkpoints; the others
    are ended ``FINISHED:ABNORMAL`` here, with the reason, and returned as
    ``(job_id, "RUNNING")`` for their result folders to be closed (blocking)."""
    resumable: list[tuple[str, LoadedCheckpoint]] = []
    ended: list[tuple[str, str]] = []
    for job_id in job_ids:
        try:
            loaded = load_checkpoint(store.job_dir(job_id), store.result_dir(job_id))
            why = DRIVER_NOT_RESUMED if loaded.checkpoint.workflow == "driver" else ""
        except errors.FlareError as exc:
            why = f"it cannot be resumed: {exc.message}"
        if not why:
            resumable.append((job_id, loaded))
            continue
        try:
            store.set_status(job_id, JobStatus.FINISHED_ABNORMAL, reason=f"{RESTARTED}; {why}")
            ended.append((job_id, JobStatus.RUNNING.value))
            log.warning("job %s: %s; %s", job_id, RESTARTED, why)
        except errors.FlareError:
            log.exception("job %s: cannot end it after the restart", job_id)
    return resumable, ended


class Reconnect:
    """Waits for a resumed job's sites to come back (see the module doc)."""

    def __init__(self, run: JobRun, loaded: LoadedCheckpoint) -> None:
        self.run = run
        self.checkpoint = loaded.checkpoint
        self.restarted = time.time()
        #: The sites expected back: those of the job not lost before the crash.
        self.waiting = {s for s in self.checkpoint.sites if s not in self.checkpoint.lost}
        self.back: set[str] = set()
        self.gone: dict[str, str] = {}

    async def __call__(self) -> dict[str, str]:
        """Wait; the sites that did not come back (site -> why), once the interruption is
        recorded.

        Raises:
            Finish: too few sites came back (ABNORMAL), an admin aborted the job, or the
                server is stopping.
        """
        run, checkpoint = self.run, self.checkpoint
        assert run.plan is not None
        grace = run.settings.resume_grace
        run.log.warning(
            "job %s: %s; resuming after round %d: waiting up to %g s for %s",
            run.job_id,
            RESTARTED,
            checkpoint.round,
            grace,
            ", ".join(sorted(self.waiting)) or "no site",
        )
        for site in sorted(self.waiting):
            if site in run.registry:
                self._connected(site)
        deadline = time.monotonic() + grace
        while self.waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(run.events.get(), remaining)
            except asyncio.TimeoutError:
                continue
            match event:
                case Aborted(reason):
                    raise Finish(ABORTED, reason)
                case ServerStopping(reason):
                    raise Finish(ABNORMAL, reason)
                case SiteConnected(site):
                    run.site_back(site)
                    if site in self.waiting:
                        self._connected(site)
                case SiteDisconnected(site):
                    if site in self.back:  # it has to come back again
                        self.back.discard(site)
                        self.waiting.add(site)
                case SiteMessage():
                    self._message(event)
                case MalformedMessage(site, topic, error):
                    run.log.warning(
                        "job %s: %s sent a malformed %s: %s", run.job_id, site, topic.value, error
                    )
                case SiteLost() | TimerFired():
                    pass  # no grace timer or workflow timer runs yet
                case (
                    DriverPushed() | DriverWatch() | DriverLeft() | DriverSeen() | DriverFinished()
                ):
                    refuse_driver(
                        event,
                        errors.InvalidArgumentError(
                            f"job {run.job_id} runs the {run.plan.config.workflow} workflow, "
                            "not a driver",
                            job_id=run.job_id,
                        ),
                    )
                case _:
                    unhandled(event)
        for site in sorted(self.waiting):
            self.gone[site] = f"did not reconnect within {grace:g} s of the server restart"
        needed = run.plan.config.min_responses or len(checkpoint.sites)
        rounds_left = checkpoint.round < run.plan.config.num_rounds
        resumed = not rounds_left or len(self.back) >= needed
        await self._record(resumed)
        if not resumed:
            detail = "; ".join(f"{site} {why}" for site, why in sorted(self.gone.items()))
            raise Finish(
                ABNORMAL,
                f"{RESTARTED}; {len(self.back)} of its {len(checkpoint.sites)} site(s) came "
                f"back within resume_grace ({grace:g} s), {needed} needed to go on after round "
                f"{checkpoint.round}: {detail or 'none expected'}",
                tuple(sorted(self.gone)),
            )
        run.log.warning(
            "job %s: resuming after round %d with %s%s",
            run.job_id,
            checkpoint.round,
            ", ".join(sorted(self.back)) or "no site",
            f" (lost: {', '.join(sorted(self.gone))})" if self.gone else "",
        )
        return dict(self.gone)

    def _connected(self, site: str) -> None:
        connected = self.run.registry.get(site)
        if connected is None:
            return
        self.waiting.discard(site)
        if self.run.job_id in connected.running_jobs:
            self.back.add(site)
            self.gone.pop(site, None)
            self.run.log.info(
                "job %s: site %s is back, still running the job", self.run.job_id, site
            )
        else:
            self.gone[site] = "came back no longer running the job"
            self.run.log.warning("job %s: site %s came back without the job", self.run.job_id, site)

    def _message(self, message: SiteMessage) -> None:
        run, site, body = self.run, message.site, message.body
        match body:
            case Metric():
                keep_record(run, site, body)
            case JobLog():
                keep_log(run, site, body, message.blob_ids)
            case JobStatusReport(status, error, tail):
                if status == "failed":
                    text = (error or status)[:4000]
                    if tail:
                        run.site_errors[site] = tail[-8000:]
                    raise Finish(
                        EXECUTION_EXCEPTION, f"user code failed on {site}: {text}", (site,)
                    )
                if status == "aborted":
                    self.waiting.discard(site)
                    self.back.discard(site)
                    self.gone[site] = f"the job was aborted on the site: {error or status}"
            case TaskResult() | DriverReply():
                # An answer to a task sent before the restart: its round is redone.
                for blob_id in message.blob_ids:
                    blob = run.blobs.uploaded(blob_id, run.job_id, site)
                    if blob is not None:
                        run.blobs.discard(blob.blob_id)
                run.log.info(
                    "job %s: %s answered a task sent before the restart; ignored", run.job_id, site
                )
            case _:
                unhandled(body)

    async def _record(self, resumed: bool) -> None:
        """The interruption, in the job's meta (``interruptions``) and the run's summary."""
        run, checkpoint = self.run, self.checkpoint
        entry: dict[str, Any] = {
            "restarted_at": self.restarted,
            "restarted_at_iso": iso_time(self.restarted),
            "last_checkpoint_at": checkpoint.saved,
            "resumed_from_round": checkpoint.round,
            "resumed": resumed,
            "sites_back": sorted(self.back),
            "sites_lost": dict(sorted(self.gone.items())),
        }
        run.interruptions.append(entry)
        run.attempt = len(run.interruptions)
        await asyncio.to_thread(run.store.update, run.job_id, interruptions=run.interruptions)


def resume_point(run: JobRun, loaded: LoadedCheckpoint, gone: dict[str, str]) -> ResumePoint:
    """Where the controller goes on: the checkpoint, the sites lost, and the validations of
    the round's model already recorded (blocking: reads the model and validations.jsonl)."""
    checkpoint = loaded.checkpoint
    assert run.plan is not None and run.results is not None
    if checkpoint.round == 0:
        model = run.plan.initial_model or {}
    else:
        assert loaded.model_npz is not None
        model = load_params(loaded.model_npz)
    validated: set[str] = set()
    if run.plan.config.validate_every_round and checkpoint.round > 0:
        rows, _ = read_rows(run.results.root / VALIDATIONS, where={"round": checkpoint.round})
        validated = {str(row.get("site")) for row in rows}
    history = tuple(
        RoundRecord(
            round=int(r["round"]),
            global_model={},
            contributors=dict(r.get("participants") or {}),
            params_types=dict(r.get("params_types") or {}),
            site_metrics={},
            late_sites=tuple(r.get("late_sites") or ()),
            lost_sites=tuple(r.get("lost_sites") or ()),
        )
        for r in checkpoint.rounds
    )
    return ResumePoint(
        round=checkpoint.round,
        global_model=model,
        history=history,
        lost={**checkpoint.lost, **gone},
        validated=frozenset(validated),
        optimizer=loaded.optimizer,
    )
