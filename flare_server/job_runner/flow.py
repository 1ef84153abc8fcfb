"""A run from start to end: prepare, deploy, rounds (or a driver job's relay), finish,
whatever goes wrong."""

from __future__ import annotations

import asyncio

from flare_server.disk_full import disk_full, is_disk_full
from flare_server.job_runner.deploy import Deployment
from flare_server.job_runner.driver import DriverRelay
from flare_server.job_runner.finish import finish
from flare_server.job_runner.prepare import prepare
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
            # Made before the deployment, so that the Admin service finds a driver job's
            # relay as soon as the job shows RUNNING.
            relay = DriverRelay(run) if run.plan.config.workflow == "driver" else None
            await Deployment(run)()
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
