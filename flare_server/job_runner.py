"""The job runner: takes a runnable job from the scheduler and runs it on its sites.

Theory of operation. :class:`JobRunner` is the scheduler's :class:`JobLauncher`. For each
job it starts one :class:`JobRun`, a coroutine that owns everything of that job and
consumes one event queue (site messages, site connects and disconnects, timers, an
admin abort), so the job's state is only ever touched by that coroutine:

1. **Prepare** (worker thread): extract the stored archive into the job's work area
   (``<job dir>/work/``), parse the server app's config and each site app's client
   config, load the initial model (the app's, or another job's final model when
   ``initial_model_job_id`` is set, once the submitter's download right on that job is
   checked again: :mod:`flare_server.model_source`), zip each site app.
2. **Deploy**: ``job.deploy`` with the app archive to every site, then wait for
   ``job.status deployed`` from all of them (``deploy_timeout``); a failure, a lost site
   or the timeout ends the job ``FINISHED:FAILED_TO_RUN`` naming the sites. Then RUNNING.
3. **Rounds**: the pure :class:`~flare_server.workflows.RoundController` decides; the run
   carries out its actions (tasks with the global model as a blob, timers, round models,
   validations). Every controller call that may aggregate runs in a worker thread, so a
   100 MB model never blocks the event loop. A site that disconnects gets
   ``reconnect_grace`` seconds to come back still running the job (its results arrive
   after the reconnect; an unanswered task is sent again); otherwise it is lost.
4. **End**: the final model is saved, ``job.end`` goes to the connected sites, their
   ``job.log`` uploads are awaited (``log_wait``), the result folder is finalized
   (:mod:`flare_server.results`), and only then the final status is written, so a
   caller who sees ``FINISHED:*`` can download a complete result. An admin abort is
   written to the store first (by the Admin service) and cannot be overwritten: the
   lifecycle table refuses any later move.

Blobs are served and received by :mod:`flare_server.blobs`: a site may fetch only its own
job's blobs and may upload an update only for a task it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare_protocol import errors
from flare_protocol._generated import site_pb2
from flare_protocol.app_config import (
    SERVER_CONFIG,
    ServerConfig,
    client_config_json,
    folder_reader,
    parse_server_config,
)
from flare_protocol.hashing import sha256_file
from flare_protocol.models import (
    MAX_ARRAYS,
    BufferPool,
    Params,
    check_params,
    dump_params_into,
    load_params,
    save_params,
)
from flare_protocol.npz_layout import view_params
from flare_protocol.tracking import MAX_RECORD_CHARS, METRIC, RECORD_KINDS
from flare_server.authz import Principal
from flare_server.blobs import BlobRegistry, ServedBlob, UploadedBlob
from flare_server.jobs import JobStatus, safe_extract
from flare_server.model_source import authorize_model_source
from flare_server.results import (
    METRICS,
    PARAMS,
    SUMMARY,
    VALIDATIONS,
    ResultFolder,
    round_model_name,
    seal_jsonl,
    write_atomic,
)
from flare_server.workflows import (
    ABNORMAL,
    ABORTED,
    COMPLETED,
    EXECUTION_EXCEPTION,
    Action,
    JobFinished,
    ModelUpdate,
    RoundAggregated,
    RoundController,
    SendTasks,
    StartTimer,
    ValidationRecorded,
)

if TYPE_CHECKING:
    from flare_server.app import Server

__all__ = ["FAILED_TO_RUN", "JobRun", "JobRunner"]

log = logging.getLogger("flare_server.jobs.runner")

FAILED_TO_RUN = JobStatus.FINISHED_FAILED_TO_RUN.value
SERVER_TARGET = "server"
ALL_SITES = "@ALL"
LOG_CAP = 256 * 1024 * 1024
MAX_LOG_UPLOADS = 3
#: Seconds without a running job after which the pooled model buffers are released.
IDLE_TRIM_SECONDS = 60.0
_KEY_MAX = 256


@dataclass(frozen=True)
class Plan:
    """What :meth:`JobRun._prepare` found in the job's archive."""

    config: ServerConfig
    server_app: str
    site_apps: Mapping[str, str]  # site -> app name
    client_configs: Mapping[str, Any]  # app -> parsed client config JSON
    app_zips: Mapping[str, tuple[Path, str, int]]  # app -> (zip, sha256, size)
    initial_model: Params | None = field(repr=False)
    initial_source: str


class _Finish(Exception):
    """Ends a run early with a status (deployment failures, aborts)."""

    def __init__(self, status: str, reason: str, failed_sites: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.failed_sites = failed_sites


def _envelope(job_id: str, topic: str, body: Mapping[str, Any], *refs: Any) -> site_pb2.Envelope:
    return site_pb2.Envelope(
        message_id=uuid.uuid4().hex,
        job_id=job_id,
        topic=topic,
        body_json=json.dumps(dict(body), separators=(",", ":")),
        blobs=list(refs),
    )


def _zip_folder(folder: Path, target: Path) -> tuple[str, int]:
    """Zip the content of ``folder`` (regular files only) into ``target``; (sha256, size)."""
    tmp = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    zf.write(path, path.relative_to(folder).as_posix())
    os.replace(tmp, target)
    return sha256_file(target)


def _npz_and_sha256(model: Params, pool: BufferPool) -> tuple[memoryview, str]:
    data = dump_params_into(model, pool)
    return data, hashlib.sha256(data).hexdigest()


def _targets_of(deploy_map: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    return [(str(app), [str(t) for t in (targets or [])]) for app, targets in deploy_map.items()]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class JobRunner:
    """The scheduler's launcher: one :class:`JobRun` per running job."""

    def __init__(self, server: Server) -> None:
        self.server = server
        #: Model-sized buffers shared by the jobs: updates are received or loaded into
        #: them, round models aggregated and serialized into them, so a round does not
        #: fault in ~100s of MB of fresh memory (a buffer is reused only once nothing
        #: refers to it; see BufferPool).
        self.buffers = BufferPool()
        self.blobs = BlobRegistry(self.buffers, server.settings.update_memory_bytes)
        self.runs: dict[str, JobRun] = {}
        #: (site, job) -> when the site was last told to abort a job it should not run.
        self._stray: dict[tuple[str, str], float] = {}
        self._trim: asyncio.TimerHandle | None = None
        server.registry.subscribe(self._on_site_event)

    @property
    def store(self) -> Any:
        return self.server.store

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
        run = JobRun(self, job_id, dict(meta), tuple(sites))
        self.runs[job_id] = run
        run.task = asyncio.get_running_loop().create_task(run.main(), name=f"job-{job_id}")

    def close_interrupted(self, jobs: Iterable[tuple[str, str]]) -> None:
        """Finish the result folders of jobs a crash interrupted (the store ended them
        ABNORMAL on open): mark the logs complete, write summary.json, drop the work area.
        Runs in a worker thread at start-up."""
        for job_id, was in jobs:
            try:
                meta = self.store.get(job_id)
                job_dir = self.store.job_dir(job_id)
                shutil.rmtree(job_dir / "work", ignore_errors=True)
                result = self.store.result_dir(job_id)
                for name in (METRICS, VALIDATIONS, PARAMS):
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
        for name in self.server.registry.names():
            site = self.server.registry.get(name)
            try:
                limit = int(site.resources.get("max_jobs", "")) if site else 0
            except ValueError:
                continue
            if limit > 0:
                running = sum(1 for r in self.runs.values() if name in r.sites)
                free[name] = max(0, limit - running)
        return free

    def on_site_message(self, site: str, envelope: site_pb2.Envelope) -> None:
        """Route a site's job message to its run (messages for no run are dropped)."""
        run = self.runs.get(envelope.job_id)
        if run is None or site not in run.sites:
            log.debug(
                "site %s sent %s for job %s, which is not running here; dropped",
                site,
                envelope.topic,
                envelope.job_id[:64],
            )
            return
        run.post(("message", site, envelope))

    def abort(self, job_id: str, reason: str) -> None:
        """An admin aborted the job (its status is already FINISHED:ABORTED)."""
        run = self.runs.get(job_id)
        if run is not None:
            run.abort_reason = reason
            run.post(("abort", reason))

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
            run.post(("abort_server", "the server stopped while the job was running"))
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
            for run in list(self.runs.values()):
                if name in run.sites:
                    run.post((event, name))
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
        site = self.server.registry.get(name)
        if site is None or getattr(self.server, "launcher", self) is not self:
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
            if told is not None and now - told < self.server.settings.heartbeat_timeout:
                continue
            self._stray[(name, job_id)] = now
            log.info(
                "site %s still runs job %s, which is not running there: abort it",
                name,
                job_id[:64],
            )
            with contextlib.suppress(errors.InvalidTarget):
                self.server.registry.send(
                    name,
                    _envelope(
                        job_id, "job.abort", {"reason": "the server no longer runs this job"}
                    ),
                )


class JobRun:
    """One running job; see the module docstring."""

    def __init__(
        self, runner: JobRunner, job_id: str, meta: dict[str, Any], sites: tuple[str, ...]
    ) -> None:
        self.runner = runner
        self.server = runner.server
        self.registry = runner.server.registry
        self.settings = runner.server.settings
        self.store = runner.server.store
        self.blobs = runner.blobs
        self.job_id = job_id
        self.meta = meta
        self.sites = sites
        #: Sites whose deployment failed while enough others deployed: site -> why.
        self.deploy_failures: dict[str, str] = {}
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.ending = False
        self.server_stopping = False
        self.abort_reason: str | None = None
        self.controller: RoundController | None = None
        self.plan: Plan | None = None
        self.results: ResultFolder | None = None
        self.work = Path()
        self.log = logging.getLogger(f"flare_server.job.{job_id}")
        self._log_handler: logging.Handler | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._disconnected: set[str] = set()
        self._outstanding: dict[str, str] = {}  # train task id -> site (may upload)
        self._uploaded_tasks: set[str] = set()
        self._log_uploads: dict[str, int] = {}
        self._sent: dict[str, tuple[site_pb2.Envelope, str]] = {}  # task id -> (env, session)
        self._model_blobs: dict[int, ServedBlob] = {}
        # latest (round, npz, sha256); the npz is a view of a pooled buffer
        self._round_model: tuple[int, memoryview, str] | None = None
        self._writes: list[asyncio.Task[None]] = []  # round models being written
        self._logs: dict[str, Any] = {}  # site -> uploaded log blob or an error text
        self._site_errors: dict[str, str] = {}
        self._rounds: list[dict[str, Any]] = []
        self._forced: JobFinished | None = None
        self._started = time.time()

    def post(self, event: tuple[Any, ...]) -> None:
        self.events.put_nowait(event)

    # -- upload policy (BlobRegistry) ------------------------------------------------------
    def upload_target(self, site: str, kind: str, task_id: str) -> tuple[Path, int]:
        if site not in self.sites:
            raise errors.AuthorizationError(f"job {self.job_id} does not run on site {site}")
        if kind == "update":
            if task_id in self._uploaded_tasks:
                raise errors.InvalidArgumentError(
                    f"task {task_id[:128]!r} of job {self.job_id}: its update was already uploaded"
                )
            if self._outstanding.get(task_id) != site:
                raise errors.InvalidArgumentError(
                    f"task {task_id[:128]!r} of job {self.job_id} is not awaiting an update "
                    f"from {site}"
                )
            return self.work / "uploads", self.settings.max_blob_bytes
        if kind == "log":
            if self._log_uploads.get(site, 0) >= MAX_LOG_UPLOADS:
                raise errors.InvalidArgumentError(
                    f"site {site} already sent {MAX_LOG_UPLOADS} logs for job {self.job_id}"
                )
            return self.work / "uploads", LOG_CAP
        raise errors.InvalidArgumentError(
            f"unknown upload kind {kind[:32]!r}; expected update or log"
        )

    def on_uploaded(self, blob: UploadedBlob) -> None:
        if blob.kind == "update":
            self._uploaded_tasks.add(blob.task_id)
        else:
            self._log_uploads[blob.site] = self._log_uploads.get(blob.site, 0) + 1

    # -- main ------------------------------------------------------------------------------
    async def main(self) -> None:
        finished: JobFinished | None = None
        try:
            try:
                await self._prepare()
                await self._deploy()
                finished = await self._rounds_loop()
            except _Finish as stop:
                model = self.controller.global_model if self.controller else None
                finished = JobFinished(stop.status, stop.reason, model or None, stop.failed_sites)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.exception("job %s: the server failed running it", self.job_id)
                finished = JobFinished(
                    ABNORMAL,
                    f"the server failed running the job: {type(exc).__name__}: {exc}",
                    None,
                )
            try:
                await self._finish(finished)
            except Exception:
                self.log.exception("job %s: ending it failed", self.job_id)
        finally:
            self._cleanup()

    # -- 1. prepare ------------------------------------------------------------------------
    async def _prepare(self) -> None:
        self.work = await asyncio.to_thread(self._make_work_area)
        handler = logging.FileHandler(self.work / "server.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)
        self._log_handler = handler
        result_dir = await asyncio.to_thread(self.store.result_dir, self.job_id)
        on_rows = functools.partial(self.server.result_rows.notify, self.job_id)  # watchers
        self.results = await asyncio.to_thread(ResultFolder, result_dir, on_rows)
        self.blobs.allow_uploads(self.job_id, self)
        self.log.info("job %s: preparing for %s", self.job_id, ", ".join(self.sites))
        try:
            self.plan = await asyncio.to_thread(self._plan)
        except errors.FlareError as exc:
            raise _Finish(FAILED_TO_RUN, f"the job cannot run: {exc.message}") from None
        missing = [s for s in self.sites if s not in self.plan.site_apps]
        if missing:
            raise _Finish(
                FAILED_TO_RUN, f"no app is deployed to {', '.join(missing)}", tuple(missing)
            )

    def _make_work_area(self) -> Path:
        work = self.store.job_dir(self.job_id) / "work"
        if work.exists():
            shutil.rmtree(work)
        for sub in ("", "uploads", "models", "apps"):
            (work / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        return work

    def _plan(self) -> Plan:
        extracted = self.work / "job"
        safe_extract(self.store.job_archive(self.job_id), extracted, self.store.limits)
        deploy_map = _targets_of(self.meta.get("deploy_map") or {})
        server_apps = [a for a, t in deploy_map if SERVER_TARGET in t or ALL_SITES in t]
        if not server_apps:
            raise errors.InvalidJobDefinition("no app is deployed to the server (deploy_map)")
        server_app = server_apps[0]
        config = parse_server_config(
            (extracted / server_app / SERVER_CONFIG).read_bytes(),
            source=f"{server_app}/{SERVER_CONFIG}",
        )
        site_apps: dict[str, str] = {}
        for site in self.sites:
            for app, targets in deploy_map:
                if site in targets or ALL_SITES in targets:
                    site_apps[site] = app
                    break
        client_configs: dict[str, Any] = {}
        app_zips: dict[str, tuple[Path, str, int]] = {}
        for app in sorted(set(site_apps.values())):
            # None for a compute package: the site reads its scaleout.yaml from the app
            client_configs[app] = client_config_json(folder_reader(extracted / app))
            target = self.work / "apps" / f"{app}.zip"
            sha, size = _zip_folder(extracted / app, target)
            app_zips[app] = (target, sha, size)
        initial: Params | None = None
        source = "none"
        model_job = self.meta.get("initial_model_job_id")
        if model_job:
            # Checked here, where the model is read: the submitter's right may have gone
            # since the job was submitted (a changed policy), or the source job with it.
            who = Principal.submitter_of(self.meta)
            try:
                path = authorize_model_source(self.store, self.server.policy, who, str(model_job))
            except errors.FlareError as exc:
                raise errors.FlareError(
                    f"initial_model_job_id {model_job}: {exc.message}", job_id=self.job_id
                ) from exc
            initial = load_params(path)
            source = f"the final model of job {model_job}"
        elif config.initial_model:
            initial = load_params(extracted / server_app / config.initial_model)
            source = f"{server_app}/{config.initial_model}"
        return Plan(config, server_app, site_apps, client_configs, app_zips, initial, source)

    # -- 2. deploy -------------------------------------------------------------------------
    async def _deploy(self) -> None:
        assert self.plan is not None
        plan = self.plan
        if self.abort_reason is not None:  # aborted while preparing: start nothing on sites
            raise _Finish(ABORTED, self.abort_reason)
        if self.server_stopping:
            raise _Finish(ABNORMAL, "the server stopped while the job was being prepared")
        refs = {
            app: self.blobs.serve(
                self.job_id,
                path,
                [s for s, a in plan.site_apps.items() if a == app],
                name=f"{app}.zip",
                sha256=sha,
                size=size,
                content_type="application/zip",
            ).ref()
            for app, (path, sha, size) in plan.app_zips.items()
        }
        failures: dict[str, str] = {}
        waiting = set(self.sites)
        deploys: dict[str, site_pb2.Envelope] = {}
        for site in self.sites:
            app = plan.site_apps[site]
            body = {
                "app": app,
                "client_config": plan.client_configs[app],
                "total_rounds": plan.config.num_rounds,
            }
            deploys[site] = _envelope(self.job_id, "job.deploy", body, refs[app])
            try:
                self.registry.send(site, deploys[site])
            except errors.InvalidTarget:
                failures[site] = "not connected"
                waiting.discard(site)
        self.log.info("job %s: deploying app(s) to %s", self.job_id, ", ".join(self.sites))
        needed = max(int(self.meta.get("min_clients") or 1), plan.config.min_responses or 0)
        mandatory = set(self.meta.get("mandatory_clients") or ())

        def hopeless() -> bool:
            return bool(mandatory & failures.keys()) or len(self.sites) - len(failures) < needed

        deadline = time.monotonic() + self.settings.deploy_timeout
        while waiting and not hopeless():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for site in waiting:
                    failures[site] = (
                        f"no answer to the deployment within {self.settings.deploy_timeout:g} s"
                    )
                break
            try:
                event = await asyncio.wait_for(self.events.get(), remaining)
            except asyncio.TimeoutError:
                continue
            kind = event[0]
            if kind == "abort":
                raise _Finish(ABORTED, str(event[1]))
            if kind == "abort_server":
                raise _Finish(ABNORMAL, str(event[1]))
            if kind == "disconnected":
                self._site_left(event[1])
            elif kind == "connected":
                self._site_back(event[1])
                if event[1] in waiting and event[1] in self.registry:
                    self.registry.send(event[1], deploys[event[1]])  # it may have been lost
            elif kind == "lost" and event[1] in waiting and event[1] in self._disconnected:
                failures[event[1]] = f"disconnected during the deployment: {event[2]}"
                waiting.discard(event[1])
            elif kind == "message":
                site, envelope = event[1], event[2]
                body = _body(envelope)
                if envelope.topic == "job.status" and site in waiting:
                    status = body.get("status")
                    if status == "deployed":
                        waiting.discard(site)
                    elif status in ("failed", "aborted"):
                        text = str(body.get("error") or status)[:2000]
                        tail = str(body.get("stderr_tail") or "")[-4000:]
                        if tail:
                            self._site_errors[site] = tail
                        failures[site] = text
                        waiting.discard(site)
                elif envelope.topic == "job.log":
                    self._keep_log(site, envelope, body)
                elif envelope.topic == "metrics":  # a started script may log before round 1
                    self._metric(site, body)
        if failures:
            self._exclude_failed_deployments(failures, needed, mandatory)
        # The total shows as "round k of n" in monitors, before the first round starts.
        await asyncio.to_thread(self.store.update, self.job_id, num_rounds=plan.config.num_rounds)
        try:
            await asyncio.to_thread(
                self.store.set_status,
                self.job_id,
                JobStatus.RUNNING,
                reason=f"deployed to {', '.join(self.sites)}"
                + (
                    f"; deployment failed on {', '.join(sorted(self.deploy_failures))}"
                    if self.deploy_failures
                    else ""
                ),
            )
        except errors.InvalidTransition:
            raise _Finish(ABORTED, "aborted during the deployment") from None
        self.log.info("job %s: running on %s", self.job_id, ", ".join(self.sites))

    def _exclude_failed_deployments(
        self, failures: dict[str, str], needed: int, mandatory: set[str]
    ) -> None:
        """Go on without the sites whose deployment failed, or end the job if it cannot."""
        detail = "; ".join(f"{s}: {why}" for s, why in sorted(failures.items()))
        left = [s for s in self.sites if s not in failures]
        if mandatory & failures.keys():
            why = f"mandatory_clients {', '.join(sorted(mandatory & failures.keys()))} failed"
        elif len(left) < needed:
            why = f"{len(left)} site(s) left, the job needs {needed} (min_clients, min_responses)"
        else:
            why = ""
        if why:
            raise _Finish(
                FAILED_TO_RUN, f"deployment failed on {detail}; {why}", tuple(sorted(failures))
            )
        for site in failures:  # it may still finish deploying later: it must not run the job
            with contextlib.suppress(errors.InvalidTarget):
                self.registry.send(
                    site, _envelope(self.job_id, "job.abort", {"reason": "deployment failed"})
                )
        self.deploy_failures = dict(failures)
        self.sites = tuple(left)
        self.log.warning(
            "job %s: deployment failed on %s; running on the other %d site(s) (%d needed)",
            self.job_id,
            detail,
            len(left),
            needed,
        )

    # -- 3. rounds -------------------------------------------------------------------------
    async def _rounds_loop(self) -> JobFinished:
        assert self.plan is not None
        controller = RoundController(
            self.plan.config, self.sites, allocate=self.runner.buffers.array
        )
        self.controller = controller
        self.log.info(
            "job %s: %s, %d round(s), initial model: %s",
            self.job_id,
            self.plan.config.workflow,
            self.plan.config.num_rounds,
            self.plan.initial_source,
        )
        actions = await asyncio.to_thread(controller.start, self.plan.initial_model)
        await self._apply(actions)
        while not controller.done and self._forced is None:
            event = await self.events.get()
            actions = await self._handle(event)
            await self._apply(actions)
        finished = self._forced or controller.finished
        assert finished is not None
        return finished

    async def _handle(self, event: tuple[Any, ...]) -> list[Action]:
        controller = self.controller
        assert controller is not None
        kind = event[0]
        if kind == "message":
            return await self._message(event[1], event[2])
        if kind == "timeout":
            return await asyncio.to_thread(controller.on_timeout, event[1])
        if kind == "abort":
            return controller.abort(str(event[1]))
        if kind == "abort_server":
            self._forced = JobFinished(ABNORMAL, str(event[1]), controller.global_model or None)
            return []
        if kind == "disconnected":
            self._site_left(event[1])
            return []
        if kind == "connected":
            return await self._reconnected(event[1])
        if kind == "lost":
            site = event[1]
            if site in self._disconnected:
                self.log.warning("job %s: site %s lost: %s", self.job_id, site, event[2])
                return await asyncio.to_thread(controller.on_site_lost, site, event[2])
        return []

    def _site_left(self, site: str) -> None:
        """A site disconnected: it has ``reconnect_grace`` seconds to come back."""
        self._disconnected.add(site)
        grace = self.settings.reconnect_grace
        self.log.info(
            "job %s: site %s disconnected; waiting %g s for it to return", self.job_id, site, grace
        )
        old = self._grace.pop(site, None)
        if old:
            old.cancel()
        self._grace[site] = asyncio.get_running_loop().call_later(
            grace, self.post, ("lost", site, f"disconnected for more than {grace:g} s")
        )

    def _site_back(self, site: str) -> None:
        handle = self._grace.pop(site, None)
        if handle:
            handle.cancel()
        self._disconnected.discard(site)

    async def _reconnected(self, site: str) -> list[Action]:
        controller = self.controller
        assert controller is not None
        self._site_back(site)
        connected = self.registry.get(site)
        if connected is None:
            return []
        if self.job_id not in connected.running_jobs:
            self.log.warning("job %s: site %s came back without the job", self.job_id, site)
            return await asyncio.to_thread(
                controller.on_site_lost, site, "the site came back no longer running the job"
            )
        self.log.info("job %s: site %s reconnected still running the job", self.job_id, site)
        task = controller.current_task(site)
        if task is not None:
            sent = self._sent.get(task.task_id)
            if sent is None or sent[1] != connected.session_id:
                # The task may have been lost with the old connection: send it again (a
                # second answer to the same task id is ignored).
                envelope = sent[0] if sent else None
                if envelope is not None:
                    self._send(site, envelope, task.task_id)
        return []

    async def _message(self, site: str, envelope: site_pb2.Envelope) -> list[Action]:
        controller = self.controller
        assert controller is not None
        body = _body(envelope)
        topic = envelope.topic
        if topic == "metrics":
            self._metric(site, body)
            return []
        if topic == "job.log":
            self._keep_log(site, envelope, body)
            return []
        if topic == "job.status":
            status = body.get("status")
            error = str(body.get("error") or status)[:4000]
            tail = str(body.get("stderr_tail") or "")[-8000:]
            if tail:
                self._site_errors[site] = tail
            if status == "failed":
                text = error if not tail or tail in error else f"{error}; stderr:\n{tail}"
                task = controller.current_task(site)
                if task is not None:
                    return await asyncio.to_thread(
                        controller.on_task_failed, site, task.task_id, text
                    )
                self._forced = JobFinished(
                    EXECUTION_EXCEPTION,
                    f"user code failed on {site}: {text}",
                    controller.global_model or None,
                    (site,),
                )
                return []
            if status == "aborted":
                return await asyncio.to_thread(
                    controller.on_site_lost, site, f"the job was aborted on the site: {error}"
                )
            return []
        if topic != "task.result":
            return []
        task_id = str(body.get("task_id", ""))[:128]
        self._sent.pop(task_id, None)
        failure = body.get("error")
        blob = None
        if envelope.blobs:
            blob = self.blobs.uploaded(envelope.blobs[0].blob_id, self.job_id, site)
        self._outstanding.pop(task_id, None)
        try:
            if failure:
                return await asyncio.to_thread(
                    controller.on_task_failed, site, task_id, str(failure)[:8000]
                )
            if body.get("kind") == "validate":
                metrics = body.get("metrics")
                clean: dict[str, float] = {}
                for k, v in metrics.items() if isinstance(metrics, dict) else ():
                    number = _number(v)
                    if number is not None:
                        clean[str(k)[:_KEY_MAX]] = number
                return await asyncio.to_thread(controller.on_validation, site, task_id, clean)
            if blob is None:
                return await asyncio.to_thread(
                    controller.on_task_failed,
                    site,
                    task_id,
                    "the result names no update this site uploaded for the task",
                )
            t0 = time.perf_counter()
            actions = await asyncio.to_thread(self._train_result, site, task_id, body, blob)
            self.log.debug(
                "job %s: update of %s loaded and handled in %.3f s",
                self.job_id,
                site,
                time.perf_counter() - t0,
            )
            return actions
        finally:
            if blob is not None:
                self.blobs.discard(blob.blob_id)

    def _train_result(
        self, site: str, task_id: str, body: dict[str, Any], blob: UploadedBlob
    ) -> list[Action]:
        """Load an update and hand it to the controller (in a worker thread)."""
        controller = self.controller
        assert controller is not None
        started = time.perf_counter()
        try:
            params = self._load_update(site, blob)
            update = ModelUpdate.from_result(body, params, site)
        except errors.InvalidModel as exc:
            return controller.on_task_failed(site, task_id, f"its update is unusable: {exc}")
        loaded = time.perf_counter()
        actions = controller.on_result(site, task_id, update)
        self.log.debug(
            "job %s: update of %s: load %.3f s, controller %.3f s",
            self.job_id,
            site,
            loaded - started,
            time.perf_counter() - loaded,
        )
        return actions

    def _load_update(self, site: str, blob: UploadedBlob) -> Params:
        """An update's arrays: views of its bytes when it was received into memory."""
        if blob.data is None:
            return load_params(blob.path, pool=self.runner.buffers)
        where = f"the update of {site}"
        params = view_params(
            blob.data, max_bytes=self.settings.max_blob_bytes, max_arrays=MAX_ARRAYS, where=where
        )
        if params is None:  # compressed members: inflated by the ordinary reader
            return load_params(blob.data, pool=self.runner.buffers)
        try:
            return check_params(params)
        except errors.InvalidModel as exc:
            raise errors.InvalidModel(f"{where}: {exc.message}") from exc

    def _round_now(self, site: str, given: int | None) -> int:
        """The round a streamed record belongs to: the one the site named, else the round
        of its current task; 0 before round 1 (a script logging while others deploy)."""
        if given is not None:
            return given
        if self.controller is None:
            return 0
        task = self.controller.current_task(site)
        return task.round if task else self.controller.round

    def _metric(self, site: str, body: dict[str, Any]) -> None:
        assert self.results is not None
        if body.get("kind", METRIC) != METRIC:
            self._param(site, body)
            return
        key, value = body.get("key"), _number(body.get("value"))
        if not isinstance(key, str) or not key or len(key) > _KEY_MAX or value is None:
            return
        when = _number(body.get("time")) or time.time()
        rnd = self._round_now(site, _opt_int(body.get("round")))
        kept = self.results.add_metric(site, rnd, key, value, _opt_int(body.get("step")), when)
        if not kept and self.results.metrics.dropped == 1:
            self.log.warning(
                "job %s: metrics.jsonl reached %d bytes; further metrics are dropped",
                self.job_id,
                self.results.metrics.max_bytes,
            )

    def _param(self, site: str, body: dict[str, Any]) -> None:
        """A param, tag or text (MLflow's, or a WandB string) on the metrics channel."""
        assert self.results is not None
        kind, key, text = body.get("kind"), body.get("key"), body.get("text")
        if (
            kind not in RECORD_KINDS
            or not isinstance(key, str)
            or not key
            or len(key) > _KEY_MAX
            or not isinstance(text, str)
            or len(text) > MAX_RECORD_CHARS
        ):
            return
        rnd = self._round_now(site, _opt_int(body.get("round")))
        when = _number(body.get("time")) or time.time()
        step = _opt_int(body.get("step"))
        kept = self.results.add_param(site, rnd, str(kind), key, text, step, when)
        if not kept and self.results.params.dropped == 1:
            self.log.warning(
                "job %s: params.jsonl reached %d bytes; further params are dropped",
                self.job_id,
                self.results.params.max_bytes,
            )

    def _keep_log(self, site: str, envelope: site_pb2.Envelope, body: dict[str, Any]) -> None:
        blob = None
        if envelope.blobs:
            blob = self.blobs.uploaded(envelope.blobs[0].blob_id, self.job_id, site)
        self._logs[site] = blob if blob is not None else str(body.get("error") or "no log sent")

    # -- carrying out actions --------------------------------------------------------------
    async def _apply(self, actions: list[Action]) -> None:
        assert self.results is not None
        for action in actions:
            if isinstance(action, SendTasks):
                await self._send_tasks(action)
            elif isinstance(action, StartTimer):
                handle = asyncio.get_running_loop().call_later(
                    action.seconds, self.post, ("timeout", action.token)
                )
                self._timers.append(handle)
            elif isinstance(action, RoundAggregated):
                record = action.record
                t0 = time.perf_counter()
                # Serialized once: the next round is served from these bytes while they are
                # written to models/round_NNN.npz in the background (awaited before the end).
                data, sha = await asyncio.to_thread(
                    _npz_and_sha256, record.global_model, self.runner.buffers
                )
                self._round_model = (record.round, data, sha)
                path = self.results.round_model_path(record.round)
                self._writes.append(
                    asyncio.get_running_loop().create_task(
                        asyncio.to_thread(write_atomic, path, data)
                    )
                )
                self.log.debug(
                    "job %s: round %d model serialized and hashed in %.3f s "
                    "(model buffers: %d reused, %d allocated so far)",
                    self.job_id,
                    record.round,
                    time.perf_counter() - t0,
                    self.runner.buffers.reused,
                    self.runner.buffers.allocated,
                )
                self._rounds.append(
                    {
                        "round": record.round,
                        "participants": dict(record.contributors),
                        "params_types": dict(record.params_types),
                        "late_sites": list(record.late_sites),
                        "lost_sites": list(record.lost_sites),
                    }
                )
                self.log.info(
                    "job %s: round %d aggregated from %s",
                    self.job_id,
                    record.round,
                    ", ".join(f"{s} ({n})" for s, n in record.contributors.items()),
                )
                await asyncio.to_thread(
                    self.store.update, self.job_id, rounds_completed=record.round
                )
            elif isinstance(action, ValidationRecorded):
                rec = action.record
                self.results.add_validation(rec.site, rec.round, rec.metrics)

    async def _model_blob(self, action: SendTasks) -> ServedBlob | None:
        if not action.model:
            return None
        blob = self._model_blobs.get(action.model_round)
        if blob is not None:
            return blob
        for old in self._model_blobs.values():
            self.blobs.unserve(old.blob_id)  # an earlier round's model is not needed any more
        if self._round_model is not None and self._round_model[0] == action.model_round:
            _, data, sha = self._round_model
            blob = self.blobs.serve(
                self.job_id,
                Path(),
                self.sites,
                name=round_model_name(action.model_round),
                sha256=sha,
                size=len(data),
                content_type="application/x-npz",
                data=data,
            )
        else:  # the initial model
            path = self.work / "models" / f"global_{action.model_round:03d}.npz"
            await asyncio.to_thread(save_params, action.model, path)
            sha, size = await asyncio.to_thread(sha256_file, path)
            blob = self.blobs.serve(
                self.job_id,
                path,
                self.sites,
                name=path.name,
                sha256=sha,
                size=size,
                content_type="application/x-npz",
            )
        self._model_blobs = {action.model_round: blob}
        return blob

    async def _send_tasks(self, action: SendTasks) -> None:
        blob = await self._model_blob(action)
        refs = [blob.ref()] if blob is not None else []
        if action.tasks and action.tasks[0].kind == "train":
            self._outstanding.clear()  # an earlier round's late update is no longer wanted
        for task in action.tasks:
            body: dict[str, Any] = {"task_id": task.task_id, "round": task.round}
            if task.kind == "train":
                body["total_rounds"] = task.total_rounds
                self._outstanding[task.task_id] = task.site
            envelope = _envelope(self.job_id, f"task.{task.kind}", body, *refs)
            self._send(task.site, envelope, task.task_id)
        if action.tasks and action.tasks[0].kind == "train":
            rnd = action.tasks[0].round
            self.log.info(
                "job %s: round %d: training on %s",
                self.job_id,
                rnd,
                ", ".join(t.site for t in action.tasks),
            )
            await asyncio.to_thread(self.store.update, self.job_id, current_round=rnd)

    def _send(self, site: str, envelope: site_pb2.Envelope, task_id: str) -> None:
        connected = self.registry.get(site)
        if connected is None:
            self._sent[task_id] = (envelope, "")  # sent again when the site returns
            return
        self.registry.send(site, envelope)
        self._sent[task_id] = (envelope, connected.session_id)

    # -- 4. end ----------------------------------------------------------------------------
    async def _finish(self, finished: JobFinished) -> None:
        self.ending = True
        for handle in [*self._timers, *self._grace.values()]:
            handle.cancel()
        status, reason = finished.status, finished.reason
        self.log.info("job %s: ending %s: %s", self.job_id, status, reason)
        results = self.results
        if self._writes:  # the round models must be on disk before the job can end
            outcomes = await asyncio.gather(*self._writes, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    self.log.error("job %s: a round model was not saved: %s", self.job_id, outcome)
        self._round_model = None
        if results is not None and finished.final_model is not None and status == COMPLETED:
            try:
                await asyncio.to_thread(self._save_final, finished.final_model)
            except Exception as exc:  # e.g. a full disk: the job cannot count as completed
                self.log.exception("job %s: cannot save the final model", self.job_id)
                status = ABNORMAL
                reason = f"the server could not save the final model: {exc}"
                finished = JobFinished(status, reason, None, finished.failed_sites)
        try:
            await self._end_sites(status)
        except Exception:
            self.log.exception("job %s: ending the job on its sites failed", self.job_id)
        if results is not None:
            try:
                await asyncio.to_thread(self._write_results, finished)
            except Exception:
                self.log.exception("job %s: writing the result folder failed", self.job_id)
        if status not in (COMPLETED, ABORTED):
            entry = {"time": time.time(), "sites": list(finished.failed_sites), "message": reason}
            try:  # what show_errors reports for the server
                await asyncio.to_thread(self._add_error, entry)
            except Exception:
                self.log.exception("job %s: cannot record its error", self.job_id)
        final = await self._set_final(status, reason)
        if results is not None and final != status:
            try:
                await asyncio.to_thread(self._write_summary, finished, final)
            except Exception:
                self.log.exception("job %s: rewriting summary.json failed", self.job_id)
        self.log.info("job %s: %s", self.job_id, final)

    def _save_final(self, model: Params) -> None:
        assert self.results is not None and self.controller is not None
        target = self.results.final_model_path
        history = self.controller.history
        if history and history[-1].global_model is model:
            source = self.results.round_model_path(history[-1].round)
            if source.is_file():
                tmp = target.with_name(f".{target.name}.link")
                tmp.unlink(missing_ok=True)
                os.link(source, tmp)  # round files are never modified: share the inode
                os.replace(tmp, target)
                return
        save_params(model, target)

    async def _end_sites(self, status: str) -> None:
        if self.server_stopping:  # no time for logs: tell the sites to stop user code now
            for site in self.sites:
                try:
                    self.registry.send(
                        site, _envelope(self.job_id, "job.abort", {"reason": "the server stopped"})
                    )
                except errors.InvalidTarget:
                    pass
            return
        ended: list[str] = []
        for site in self.sites:
            if site in self.registry and site not in self._disconnected:
                try:
                    self.registry.send(site, _envelope(self.job_id, "job.end", {"status": status}))
                    ended.append(site)
                except errors.InvalidTarget:
                    pass
        deadline = time.monotonic() + self.settings.log_wait
        while any(site not in self._logs for site in ended):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(self.events.get(), remaining)
            except asyncio.TimeoutError:
                break
            if event[0] == "message":
                site, envelope = event[1], event[2]
                body = _body(envelope)
                if envelope.topic == "job.log":
                    self._keep_log(site, envelope, body)
                elif envelope.topic == "metrics" and self.controller is not None:
                    self._metric(site, body)
                elif envelope.topic == "job.status" and body.get("stderr_tail"):
                    self._site_errors[site] = str(body["stderr_tail"])[-8000:]
            elif event[0] == "disconnected" and event[1] in ended:
                self._logs.setdefault(event[1], "the site disconnected before sending its log")
        for site in ended:
            self._logs.setdefault(site, f"no log within {self.settings.log_wait:g} s")

    def _write_results(self, finished: JobFinished) -> None:
        results = self.results
        assert results is not None
        for site, item in self._logs.items():
            if isinstance(item, str):
                results.write_log(site, f"(no log from {site}: {item})\n".encode())
            else:
                try:
                    os.replace(item.path, results.root / "logs" / f"{site}.log")
                except OSError as exc:
                    self.log.warning(
                        "job %s: cannot keep the log of %s: %s", self.job_id, site, exc
                    )
        results.complete()
        self._write_summary(finished, finished.status)
        if self._log_handler is not None:
            self._log_handler.flush()
        try:
            data = (self.work / "server.log").read_bytes()
        except OSError:
            data = b""
        results.write_log("server", data)

    def _write_summary(self, finished: JobFinished, status: str) -> None:
        assert self.results is not None
        config = self.plan.config if self.plan else None
        self.results.write_summary(
            {
                "job_id": self.job_id,
                "name": self.meta.get("name"),
                "workflow": config.workflow if config else None,
                "num_rounds": config.num_rounds if config else None,
                "rounds_completed": len(self._rounds),
                "status": status,
                "reason": finished.reason,
                "failed_sites": list(finished.failed_sites),
                "sites": list(self.sites),
                "deploy_failures": self.deploy_failures,
                "initial_model": self.plan.initial_source if self.plan else None,
                "has_final_model": self.results.final_model_path.is_file(),
                "rounds": self._rounds,
                "site_errors": self._site_errors,
                "metrics_dropped": self.results.metrics.dropped,
                "start_time": self._started,
                "end_time": time.time(),
                "complete": True,
            }
        )

    def _add_error(self, entry: dict[str, Any]) -> None:
        errors_so_far = list(self.store.get(self.job_id).get("errors") or [])
        self.store.update(self.job_id, errors=[*errors_so_far, entry][-100:])

    async def _set_final(self, status: str, reason: str) -> str:
        try:
            await asyncio.to_thread(
                self.store.set_status, self.job_id, status, reason=reason[:8000]
            )
            return status
        except errors.InvalidTransition:
            meta = await asyncio.to_thread(self.store.get, self.job_id)
            return str(meta.get("status"))
        except errors.JobNotFound:
            return status

    def _cleanup(self) -> None:
        self.runner.runs.pop(self.job_id, None)
        self.runner.trim_when_idle()
        scheduler = getattr(self.server, "scheduler", None)
        if scheduler is not None:
            scheduler.poke()  # the job's sites may have room for a waiting job now
        self.blobs.forget_job(self.job_id)
        if self.results is not None:
            self.results.close()
        if self._log_handler is not None:
            self.log.removeHandler(self._log_handler)
            self._log_handler.close()
        if self.work != Path():
            shutil.rmtree(self.work, ignore_errors=True)


def _body(envelope: site_pb2.Envelope) -> dict[str, Any]:
    try:
        body = json.loads(envelope.body_json or "{}")
    except json.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}
