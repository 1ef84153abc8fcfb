"""Phase 2 of a run, deploy: the app to every site, then RUNNING once enough answered.

``job.deploy`` (client config, ``total_rounds``, the app zip as a blob) goes to every
site; the run waits ``deploy_timeout`` for ``job.status deployed`` from all of them. A
site that answers ``failed``, disconnects for good or does not answer is left out (and
sent ``job.abort``) while at least ``min_clients`` and ``min_responses`` sites remain and
no ``mandatory_clients`` site failed; otherwise the job ends ``FINISHED:FAILED_TO_RUN``
naming the sites and their errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from flare_protocol import errors
from flare_protocol._generated import site_pb2
from flare_protocol.site_topics import (
    DriverReply,
    JobAbort,
    JobDeploy,
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
from flare_server.job_runner.run import FAILED_TO_RUN, Finish, JobRun
from flare_server.jobs import JobStatus
from flare_server.workflows import ABNORMAL, ABORTED

__all__ = ["Deployment"]


class Deployment:
    """Deploys one run's apps and waits for its sites' answers (see the module doc)."""

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.failures: dict[str, str] = {}
        self.waiting = set(run.sites)
        self.deploys: dict[str, site_pb2.Envelope] = {}

    async def __call__(self) -> None:
        """Deploy; return once the job is RUNNING.

        Raises:
            Finish: the deployment failed (FAILED_TO_RUN), or the job was aborted or the
                server is stopping meanwhile.
        """
        run = self.run
        assert run.plan is not None
        plan = run.plan
        if run.abort_reason is not None:  # aborted while preparing: start nothing on sites
            raise Finish(ABORTED, run.abort_reason)
        if run.server_stopping:
            raise Finish(ABNORMAL, "the server stopped while the job was being prepared")
        refs = {
            app: run.blobs.serve(
                run.job_id,
                path,
                [s for s, a in plan.site_apps.items() if a == app],
                name=f"{app}.zip",
                sha256=sha,
                size=size,
                content_type="application/zip",
            ).ref()
            for app, (path, sha, size) in plan.app_zips.items()
        }
        for site in run.sites:
            app = plan.site_apps[site]
            body = JobDeploy(app, plan.client_configs[app], plan.config.num_rounds)
            self.deploys[site] = envelope(run.job_id, body, refs[app])
            try:
                run.registry.send(site, self.deploys[site])
            except errors.InvalidTarget:
                self.failures[site] = "not connected"
                self.waiting.discard(site)
        run.log.info("job %s: deploying app(s) to %s", run.job_id, ", ".join(run.sites))
        needed = max(int(run.meta.get("min_clients") or 1), plan.config.min_responses or 0)
        mandatory = set(run.meta.get("mandatory_clients") or ())

        def hopeless() -> bool:
            failed = self.failures.keys()
            return bool(mandatory & failed) or len(run.sites) - len(failed) < needed

        timeout = run.settings.deploy_timeout
        deadline = time.monotonic() + timeout
        while self.waiting and not hopeless():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for site in self.waiting:
                    self.failures[site] = f"no answer to the deployment within {timeout:g} s"
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
                case SiteDisconnected(site):
                    run.site_left(site)
                case SiteConnected(site):
                    run.site_back(site)
                    if site in self.waiting and site in run.registry:
                        run.registry.send(site, self.deploys[site])  # it may have been lost
                case SiteLost(site, reason):
                    if site in self.waiting and site in run.disconnected:
                        self.failures[site] = f"disconnected during the deployment: {reason}"
                        self.waiting.discard(site)
                case SiteMessage():
                    self._message(event)
                case MalformedMessage(site, topic, error):
                    run.log.warning(
                        "job %s: %s sent a malformed %s: %s", run.job_id, site, topic.value, error
                    )
                case TimerFired():
                    pass  # no workflow timer exists before the rounds start
                case (
                    DriverPushed() | DriverWatch() | DriverLeft() | DriverSeen() | DriverFinished()
                ):
                    refuse_driver(
                        event,
                        errors.JobNotRunning(
                            f"job {run.job_id} is still being deployed; wait until it runs",
                            job_id=run.job_id,
                        ),
                    )
                case _:
                    unhandled(event)
        if self.failures:
            self._exclude_failed(needed, mandatory)
        # The total shows as "round k of n" in monitors, before the first round starts (a
        # driver decides its rounds as it goes: it has no total).
        if plan.config.workflow != "driver":
            await asyncio.to_thread(run.store.update, run.job_id, num_rounds=plan.config.num_rounds)
        failed = (
            f"; deployment failed on {', '.join(sorted(run.deploy_failures))}"
            if run.deploy_failures
            else ""
        )
        try:
            await asyncio.to_thread(
                run.store.set_status,
                run.job_id,
                JobStatus.RUNNING,
                reason=f"deployed to {', '.join(run.sites)}{failed}",
            )
        except errors.InvalidTransition:
            raise Finish(ABORTED, "aborted during the deployment") from None
        run.log.info("job %s: running on %s", run.job_id, ", ".join(run.sites))

    def _message(self, message: SiteMessage) -> None:
        run, site, body = self.run, message.site, message.body
        match body:
            case JobStatusReport(status, error, stderr_tail):
                if site not in self.waiting:
                    return
                if status == "deployed":
                    self.waiting.discard(site)
                elif status in ("failed", "aborted"):
                    tail = (stderr_tail or "")[-4000:]
                    if tail:
                        run.site_errors[site] = tail
                    self.failures[site] = (error or status)[:2000]
                    self.waiting.discard(site)
            case JobLog():
                keep_log(run, site, body, message.blob_ids)
            case Metric():  # a started script may log before round 1
                keep_record(run, site, body)
            case TaskResult() | DriverReply():
                pass  # no task or driver message was sent yet
            case _:
                unhandled(body)

    def _exclude_failed(self, needed: int, mandatory: set[str]) -> None:
        """Go on without the sites whose deployment failed, or end the job if it cannot."""
        run, failures = self.run, self.failures
        detail = "; ".join(f"{s}: {why}" for s, why in sorted(failures.items()))
        left = [s for s in run.sites if s not in failures]
        if mandatory & failures.keys():
            why = f"mandatory_clients {', '.join(sorted(mandatory & failures.keys()))} failed"
        elif len(left) < needed:
            why = f"{len(left)} site(s) left, the job needs {needed} (min_clients, min_responses)"
        else:
            why = ""
        if why:
            raise Finish(
                FAILED_TO_RUN, f"deployment failed on {detail}; {why}", tuple(sorted(failures))
            )
        for site in failures:  # it may still finish deploying later: it must not run the job
            with contextlib.suppress(errors.InvalidTarget):
                run.registry.send(site, envelope(run.job_id, JobAbort("deployment failed")))
        run.deploy_failures = dict(failures)
        run.sites = tuple(left)
        run.log.warning(
            "job %s: deployment failed on %s; running on the other %d site(s) (%d needed)",
            run.job_id,
            detail,
            len(left),
            needed,
        )
