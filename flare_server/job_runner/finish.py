"""Phase 4 of a run, finish: the final model, the sites' logs, the result folder, the status.

The final model is saved (a hard link to the last round's file), ``job.end`` goes to the
connected sites and the run waits up to ``log_wait`` for their ``job.log`` uploads (a site
answers ``job.end`` at once, so this is short unless a site does not answer at all); then
the ``.jsonl`` files are completed, ``logs/server.log`` and ``summary.json`` written, and
only then the final status, so a caller who sees ``FINISHED:*`` can download a complete
result. When the server itself stops, the sites get ``job.abort`` instead and nothing is
waited for. An admin abort was written first (by the Admin service); the lifecycle table
refuses any later status, so a late result cannot overwrite it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Protocol, runtime_checkable

from flare_protocol import errors
from flare_protocol.models import Params, save_params
from flare_protocol.site_topics import (
    DriverReply,
    JobAbort,
    JobEnd,
    JobLog,
    JobStatusReport,
    Metric,
    TaskResult,
)
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
from flare_server.job_runner.messages import envelope
from flare_server.job_runner.records import keep_log, keep_record
from flare_server.job_runner.run import JobRun
from flare_server.workflows import ABNORMAL, ABORTED, COMPLETED, JobFinished

__all__ = ["finish"]


async def finish(run: JobRun, finished: JobFinished) -> None:
    """End the job: see the module doc. Failures of each step are logged, and the final
    status is written whatever happened before."""
    run.ending = True
    for handle in [*run.timers, *run.grace.values()]:
        handle.cancel()
    status, reason = finished.status, finished.reason
    run.log.info("job %s: ending %s: %s", run.job_id, status, reason)
    results = run.results
    if run.writes:  # the round models must be on disk before the job can end
        outcomes = await asyncio.gather(*run.writes, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        for outcome in failed:
            run.log.error("job %s: a round model was not saved: %s", run.job_id, outcome)
        if failed and status == COMPLETED:  # its result would lack a model: not COMPLETED
            status = ABNORMAL
            reason = f"the server could not save a round's model: {failed[0]}"
            finished = JobFinished(status, reason, None, finished.failed_sites)
    run.round_model = None
    if results is not None and finished.final_model is not None and status == COMPLETED:
        try:
            await asyncio.to_thread(_save_final, run, finished.final_model)
        except Exception as exc:  # e.g. a full disk: the job cannot count as completed
            run.log.exception("job %s: cannot save the final model", run.job_id)
            status = ABNORMAL
            reason = f"the server could not save the final model: {exc}"
            finished = JobFinished(status, reason, None, finished.failed_sites)
    try:
        await _end_sites(run, status)
    except Exception:
        run.log.exception("job %s: ending the job on its sites failed", run.job_id)
    if results is not None:
        try:
            await asyncio.to_thread(_write_results, run, finished)
        except Exception:
            run.log.exception("job %s: writing the result folder failed", run.job_id)
    if status not in (COMPLETED, ABORTED):
        entry = {"time": time.time(), "sites": list(finished.failed_sites), "message": reason}
        try:  # what show_errors reports for the server
            await asyncio.to_thread(_add_error, run, entry)
        except Exception:
            run.log.exception("job %s: cannot record its error", run.job_id)
    final = await _set_final(run, status, reason)
    if results is not None and final != status:
        try:
            await asyncio.to_thread(_write_summary, run, finished, final)
        except Exception:
            run.log.exception("job %s: rewriting summary.json failed", run.job_id)
    run.log.info("job %s: %s", run.job_id, final)


def _save_final(run: JobRun, model: Params) -> None:
    assert run.results is not None
    target = run.results.final_model_path
    history = run.controller.history if run.controller is not None else []
    if history and history[-1].global_model is model:
        source = run.results.round_model_path(history[-1].round)
        if source.is_file():
            tmp = target.with_name(f".{target.name}.link")
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)  # round files are never modified: share the inode
            os.replace(tmp, target)
            return
    save_params(model, target)


async def _end_sites(run: JobRun, status: str) -> None:
    if run.server_stopping:  # no time for logs: tell the sites to stop user code now
        for site in run.sites:
            try:
                run.registry.send(site, envelope(run.job_id, JobAbort("the server stopped")))
            except errors.InvalidTarget:
                pass
        return
    ended: list[str] = []
    for site in run.sites:
        if site in run.registry and site not in run.disconnected:
            try:
                run.registry.send(site, envelope(run.job_id, JobEnd(status)))
                ended.append(site)
            except errors.InvalidTarget:
                pass
    deadline = time.monotonic() + run.settings.log_wait
    while any(site not in run.logs for site in ended):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            event = await asyncio.wait_for(run.events.get(), remaining)
        except asyncio.TimeoutError:
            break
        match event:
            case SiteMessage(site, body, blob_ids):
                match body:
                    case JobLog():
                        keep_log(run, site, body, blob_ids)
                    case Metric():
                        if run.controller is not None:
                            keep_record(run, site, body)
                    case JobStatusReport(stderr_tail=tail):
                        if tail:
                            run.site_errors[site] = tail[-8000:]
                    case TaskResult() | DriverReply():
                        pass  # too late: the job is ending (its uploads go with the run)
                    case _:
                        unhandled(body)
            case SiteDisconnected(site):
                if site in ended:
                    run.logs.setdefault(site, "the site disconnected before sending its log")
            case (
                MalformedMessage()
                | SiteConnected()
                | SiteLost()
                | TimerFired()
                | Aborted()
                | ServerStopping()
            ):
                pass  # the job's end is decided
            case DriverPushed() | DriverWatch() | DriverLeft() | DriverSeen() | DriverFinished():
                refuse_driver(
                    event,
                    errors.JobNotRunning(
                        f"job {run.job_id} is ending ({status})", job_id=run.job_id, status=status
                    ),
                )
            case _:
                unhandled(event)
    for site in ended:
        run.logs.setdefault(site, f"no log within {run.settings.log_wait:g} s")


def _write_results(run: JobRun, finished: JobFinished) -> None:
    results = run.results
    assert results is not None
    for site, item in run.logs.items():
        if isinstance(item, str):
            results.write_log(site, f"(no log from {site}: {item})\n".encode())
        else:
            try:
                os.replace(item.path, results.root / "logs" / f"{site}.log")
            except OSError as exc:
                run.log.warning("job %s: cannot keep the log of %s: %s", run.job_id, site, exc)
    results.complete()
    _write_summary(run, finished, finished.status)
    if run.log_handler is not None:
        run.log_handler.flush()
    try:
        data = (run.work / "server.log").read_bytes()
    except OSError:
        data = b""
    results.write_log("server", data)


def _write_summary(run: JobRun, finished: JobFinished, status: str) -> None:
    assert run.results is not None
    config = run.plan.config if run.plan else None
    run.results.write_summary(
        {
            "job_id": run.job_id,
            "name": run.meta.get("name"),
            "workflow": config.workflow if config else None,
            "num_rounds": config.num_rounds if config and config.workflow != "driver" else None,
            "rounds_completed": len(run.rounds),
            "status": status,
            "reason": finished.reason,
            "failed_sites": list(finished.failed_sites),
            "sites": list(run.sites),
            "deploy_failures": run.deploy_failures,
            "initial_model": run.plan.initial_source if run.plan else None,
            "has_final_model": run.results.final_model_path.is_file(),
            "rounds": run.rounds,
            "interruptions": run.interruptions,
            **({"driver": run.driver.summary()} if isinstance(run.driver, _Summarized) else {}),
            "site_errors": run.site_errors,
            "metrics_dropped": run.results.metrics.dropped,
            "start_time": run.started,
            "end_time": time.time(),
            "complete": True,
        }
    )


@runtime_checkable
class _Summarized(Protocol):
    def summary(self) -> dict[str, object]: ...


def _add_error(run: JobRun, entry: dict[str, object]) -> None:
    errors_so_far = list(run.store.get(run.job_id).get("errors") or [])
    run.store.update(run.job_id, errors=[*errors_so_far, entry][-100:])


async def _set_final(run: JobRun, status: str, reason: str) -> str:
    try:
        await asyncio.to_thread(run.store.set_status, run.job_id, status, reason=reason[:8000])
        return status
    except errors.InvalidTransition:
        meta = await asyncio.to_thread(run.store.get, run.job_id)
        return str(meta.get("status"))
    except errors.JobNotFound:
        return status
