"""A run from start to end: prepare, deploy, rounds (or a driver job's relay), finish,
whatever goes wrong; or, for a job a server crash interrupted, prepare, wait for its
sites, and the rounds from its last completed one (:mod:`.resume`)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from flare_server.disk_full import disk_full, is_disk_full
from flare_server.job_runner.checkpoint import Checkpoint, CheckpointWriter
from flare_server.job_runner.deploy import Deployment
from flare_server.job_runner.driver import DriverRelay
from flare_server.job_runner.finish import finish
from flare_server.job_runner.prepare import prepare
from flare_server.job_runner.resume import Reconnect, resume_point
from flare_server.job_runner.rounds import Rounds
from flare_server.job_runner.run import Finish, JobRun
from flare_server.workflows import ABNORMAL, JobFinished

__all__ = ["run_job"]


async def run_job(run: JobRun) -> None:
    """Run the job through its phases; it always ends with a final status and a released
    run (an unexpected error ends it ``FINISHED:ABNORMAL``, logged with its traceback)."""
    finished: JobFinished | None = None
    try:
        try:
            await prepare(run)
            assert run.plan is not None
            if run.resumed is not None:
                finished = await _resume(run)
            else:
                # Made before the deployment, so that the Admin service finds a driver
                # job's relay as soon as the job shows RUNNING.
                relay = DriverRelay(run) if run.plan.config.workflow == "driver" else None
                await Deployment(run)()
                await _first_checkpoint(run)
                finished = await (relay or Rounds(run))()
        except Finish as stop:
            model = run.controller.global_model if run.controller else None
            finished = JobFinished(stop.status, stop.reason, model or None, stop.failed_sites)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_disk_full(exc):  # a result file (metrics, logs) could not be written
                run.log.error("job %s: the server's disk is full: %s", run.job_id, exc)
                where = getattr(exc, "filename", None) or getattr(exc, "path", None) or run.work
                full = disk_full(exc, "write the job's results", where)
                reason = f"the server could not go on with the job: {full.message}"
            else:
                run.log.exception("job %s: the server failed running it", run.job_id)
                reason = f"the server failed running the job: {type(exc).__name__}: {exc}"
            finished = JobFinished(ABNORMAL, reason, None)
        try:
            await finish(run, finished)
        except Exception:
            run.log.exception("job %s: ending it failed", run.job_id)
    finally:
        run.cleanup()


async def _first_checkpoint(run: JobRun) -> None:
    """The job is deployed: save its resume point before round 1 (its sites, its
    workflow: a driver job's says that it is not resumed)."""
    assert run.plan is not None and run.results is not None
    job_dir = run.work.parent
    run.checkpoints = CheckpointWriter(run.job_id, job_dir, run.results.root)
    checkpoint = Checkpoint(
        job_id=run.job_id,
        workflow=run.plan.config.workflow,
        sites=run.sites,
        round=0,
        deploy_failures=dict(run.deploy_failures),
        started=run.started,
    )
    await run.checkpoints.save(checkpoint)


async def _resume(run: JobRun) -> JobFinished:
    """Wait for the sites of a job a server crash interrupted, then go on from its
    checkpoint (see :mod:`.resume`)."""
    loaded = run.resumed
    assert loaded is not None and run.results is not None
    checkpoint = loaded.checkpoint
    run.started = checkpoint.started or run.started
    run.deploy_failures = dict(checkpoint.deploy_failures)
    run.rounds = [dict(r) for r in checkpoint.rounds]
    run.interruptions = list(run.meta.get("interruptions") or [])
    gone = await Reconnect(run, loaded)()
    point = await asyncio.to_thread(resume_point, run, loaded, gone)
    if loaded.model_npz is not None and checkpoint.model_sha256 is not None:
        # Served to the sites as it is (its sha256 checked on loading), not serialized again.
        run.round_model = (checkpoint.round, memoryview(loaded.model_npz), checkpoint.model_sha256)
    run.resumed = dataclasses.replace(loaded, model_npz=None, optimizer=None)  # memory
    run.checkpoints = CheckpointWriter(run.job_id, run.work.parent, run.results.root)
    # The resume point, now with the sites that did not come back: a second crash
    # resumes from it without waiting for them again.
    lost = {**checkpoint.lost, **gone}
    await run.checkpoints.save(dataclasses.replace(checkpoint, lost=lost, saved=time.time()))
    rounds = Rounds(run, point)
    del loaded, point  # the controller holds what it needs of them
    return await rounds()
