"""Phase 3 of a run, rounds: the workflow decides, the run carries out its actions.

The pure :class:`~flare_server.workflows.RoundController` decides; this phase turns events
into its calls and its actions into messages. ``SendTasks`` becomes ``task.train`` or
``task.validate`` with the global model as a blob; after round N the model is serialized
and hashed once and served from memory while the same bytes are written to
``result/models/round_NNN.npz`` in the background (awaited before the job ends);
``StartTimer`` becomes ``loop.call_later``. A ``task.result`` names the update the site
uploaded: loading it and the controller call that may aggregate run in a worker thread,
so a 100 MB model never blocks the event loop. A ``job.status failed`` fails the site's
current task or, between tasks, ends the job ``FINISHED:EXECUTION_EXCEPTION`` with the
stderr tail; ``aborted`` counts the site lost. A site that disconnects gets
``reconnect_grace`` seconds to come back still running the job (an unanswered task is
sent again); otherwise the controller decides whether the job can go on without it.
After each round the run's resume point is saved (:mod:`.checkpoint`) once the round's
model is on disk; a run resumed after a server crash starts from its
:class:`~flare_server.workflows.ResumePoint` instead of the initial model.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from pathlib import Path
from typing import Any

from flare_protocol import errors
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
from flare_protocol.site_topics import (
    DriverReply,
    JobLog,
    JobStatusReport,
    Metric,
    TaskResult,
    TrainTask,
    ValidateTask,
)
from flare_server.blobs import ServedBlob, UploadedBlob
from flare_server.disk_full import disk_full, is_disk_full
from flare_server.job_runner.checkpoint import Checkpoint, copy_optimizer
from flare_server.job_runner.events import (
    Aborted,
    DriverFinished,
    DriverLeft,
    DriverPushed,
    DriverSeen,
    DriverWatch,
    Event,
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
from flare_server.job_runner.records import KEY_MAX, finite, keep_log, keep_record
from flare_server.job_runner.run import JobRun
from flare_server.results import round_model_name, write_atomic
from flare_server.workflows import (
    ABNORMAL,
    EXECUTION_EXCEPTION,
    Action,
    JobFinished,
    ModelUpdate,
    ResumePoint,
    RoundAggregated,
    RoundController,
    SendTasks,
    StartTimer,
    ValidationRecorded,
)

__all__ = ["Rounds"]


def _npz_and_sha256(model: Params, pool: BufferPool) -> tuple[memoryview, str]:
    data = dump_params_into(model, pool)
    return data, hashlib.sha256(data).hexdigest()


class Rounds:
    """Runs one job's rounds to the end (see the module doc)."""

    def __init__(self, run: JobRun, resume: ResumePoint | None = None) -> None:
        """``resume``: where a run resumed after a server crash goes on (None: a new run)."""
        assert run.plan is not None
        self.run = run
        self.plan = run.plan
        self.buffers = run.context.buffers
        self.resume = resume
        self.controller = RoundController(
            run.plan.config, run.sites, allocate=run.context.buffers.array, attempt=run.attempt
        )
        run.controller = self.controller

    async def __call__(self) -> JobFinished:
        """Start the workflow and carry it out until it (or something else) ends the job."""
        run, controller = self.run, self.controller
        point, self.resume = self.resume, None  # its arrays become the controller's
        run.log.info(
            "job %s: %s, %d round(s), %s",
            run.job_id,
            self.plan.config.workflow,
            self.plan.config.num_rounds,
            f"initial model: {self.plan.initial_source}"
            if point is None
            else f"resumed after round {point.round} (attempt {run.attempt})",
        )
        if point is None:
            actions = await asyncio.to_thread(controller.start, self.plan.initial_model)
        else:
            actions = await asyncio.to_thread(controller.resume, point)
            del point
        await self._apply(actions)
        while not controller.done and run.forced is None:
            event = await run.events.get()
            actions = await self.handle(event)
            await self._apply(actions)
        finished = run.forced or controller.finished
        assert finished is not None
        return finished

    async def handle(self, event: Event) -> list[Action]:
        """What the workflow does about ``event`` (its calls that may aggregate run in a
        worker thread)."""
        run, controller = self.run, self.controller
        match event:
            case SiteMessage():
                return await self._message(event)
            case MalformedMessage(site, topic, error, task_id):
                run.log.warning(
                    "job %s: %s sent a malformed %s: %s", run.job_id, site, topic.value, error
                )
                if task_id is None or controller.current_task(site) is None:
                    return []
                run.sent.pop(task_id, None)
                run.outstanding.pop(task_id, None)
                return await asyncio.to_thread(
                    controller.on_task_failed, site, task_id, f"its result is malformed: {error}"
                )
            case TimerFired(token):
                return await asyncio.to_thread(controller.on_timeout, token)
            case Aborted(reason):
                return controller.abort(reason)
            case ServerStopping(reason):
                run.forced = JobFinished(ABNORMAL, reason, controller.global_model or None)
                return []
            case SiteDisconnected(site):
                run.site_left(site)
                return []
            case SiteConnected(site):
                return await self._reconnected(site)
            case SiteLost(site, reason):
                if site not in run.disconnected:
                    return []
                run.log.warning("job %s: site %s lost: %s", run.job_id, site, reason)
                return await asyncio.to_thread(controller.on_site_lost, site, reason)
            case DriverPushed() | DriverWatch() | DriverLeft() | DriverSeen() | DriverFinished():
                refuse_driver(event, not_a_driver_job(run.job_id, self.plan.config.workflow))
                return []
            case _:
                unhandled(event)

    async def _reconnected(self, site: str) -> list[Action]:
        run, controller = self.run, self.controller
        run.site_back(site)
        connected = run.registry.get(site)
        if connected is None:
            return []
        if run.job_id not in connected.running_jobs:
            run.log.warning("job %s: site %s came back without the job", run.job_id, site)
            return await asyncio.to_thread(
                controller.on_site_lost, site, "the site came back no longer running the job"
            )
        run.log.info("job %s: site %s reconnected still running the job", run.job_id, site)
        task = controller.current_task(site)
        if task is not None:
            sent = run.sent.get(task.task_id)
            if sent is None or sent[1] != connected.session_id:
                # The task may have been lost with the old connection: send it again (a
                # second answer to the same task id is ignored).
                message = sent[0] if sent else None
                if message is not None:
                    run.send(site, message, task.task_id)
        return []

    async def _message(self, message: SiteMessage) -> list[Action]:
        run, site, body = self.run, message.site, message.body
        match body:
            case Metric():
                keep_record(run, site, body)
                return []
            case JobLog():
                keep_log(run, site, body, message.blob_ids)
                return []
            case JobStatusReport():
                return await self._status(site, body)
            case TaskResult():
                return await self._result(site, body, message.blob_ids)
            case DriverReply():
                for blob_id in message.blob_ids:  # no driver here: nothing awaits it
                    blob = run.blobs.uploaded(blob_id, run.job_id, site)
                    if blob is not None:
                        run.blobs.discard(blob.blob_id)
                return []
            case _:
                unhandled(body)

    async def _status(self, site: str, report: JobStatusReport) -> list[Action]:
        run, controller = self.run, self.controller
        error = (report.error or report.status)[:4000]
        tail = (report.stderr_tail or "")[-8000:]
        if tail:
            run.site_errors[site] = tail
        if report.status == "failed":
            text = error if not tail or tail in error else f"{error}; stderr:\n{tail}"
            task = controller.current_task(site)
            if task is not None:
                return await asyncio.to_thread(controller.on_task_failed, site, task.task_id, text)
            run.forced = JobFinished(
                EXECUTION_EXCEPTION,
                f"user code failed on {site}: {text}",
                controller.global_model or None,
                (site,),
            )
            return []
        if report.status == "aborted":
            return await asyncio.to_thread(
                controller.on_site_lost, site, f"the job was aborted on the site: {error}"
            )
        return []

    async def _result(
        self, site: str, result: TaskResult, blob_ids: tuple[str, ...]
    ) -> list[Action]:
        run, controller = self.run, self.controller
        task_id = result.task_id[:128]
        run.sent.pop(task_id, None)
        blob = run.blobs.uploaded(blob_ids[0], run.job_id, site) if blob_ids else None
        run.outstanding.pop(task_id, None)
        try:
            if result.error:
                return await asyncio.to_thread(
                    controller.on_task_failed, site, task_id, result.error[:8000]
                )
            if result.kind == "validate":
                clean: dict[str, float] = {}
                for k, v in result.metrics.items():
                    number = _number(v)
                    if number is not None:
                        clean[str(k)[:KEY_MAX]] = number
                return await asyncio.to_thread(controller.on_validation, site, task_id, clean)
            if blob is None:
                return await asyncio.to_thread(
                    controller.on_task_failed,
                    site,
                    task_id,
                    "the result names no update this site uploaded for the task",
                )
            t0 = time.perf_counter()
            actions = await asyncio.to_thread(self._train_result, site, task_id, result, blob)
            run.log.debug(
                "job %s: update of %s loaded and handled in %.3f s",
                run.job_id,
                site,
                time.perf_counter() - t0,
            )
            return actions
        finally:
            if blob is not None:
                run.blobs.discard(blob.blob_id)

    def _train_result(
        self, site: str, task_id: str, result: TaskResult, blob: UploadedBlob
    ) -> list[Action]:
        """Load an update and hand it to the controller (in a worker thread)."""
        run, controller = self.run, self.controller
        started = time.perf_counter()
        try:
            params = self._load_update(site, blob)
            update = ModelUpdate.from_result(result.to_dict(), params, site)
        except errors.InvalidModel as exc:
            return controller.on_task_failed(site, task_id, f"its update is unusable: {exc}")
        loaded = time.perf_counter()
        ignored = controller.ignored
        actions = controller.on_result(site, task_id, update)
        if controller.ignored == ignored:
            run.log.debug("job %s: update of %s for task %s taken", run.job_id, site, task_id)
        else:
            run.log.info(
                "job %s: update of %s for task %s ignored: no such task is awaited",
                run.job_id,
                site,
                task_id,
            )
        run.log.debug(
            "job %s: update of %s: load %.3f s, controller %.3f s",
            run.job_id,
            site,
            loaded - started,
            time.perf_counter() - loaded,
        )
        return actions

    def _load_update(self, site: str, blob: UploadedBlob) -> Params:
        """An update's arrays: views of its bytes when it was received into memory."""
        if blob.data is None:
            return load_params(blob.path, pool=self.buffers)
        where = f"the update of {site}"
        params = view_params(
            blob.data,
            max_bytes=self.run.settings.max_blob_bytes,
            max_arrays=MAX_ARRAYS,
            where=where,
        )
        if params is None:  # compressed members: inflated by the ordinary reader
            return load_params(blob.data, pool=self.buffers)
        try:
            return check_params(params)
        except errors.InvalidModel as exc:
            raise errors.InvalidModel(f"{where}: {exc.message}") from exc

    # -- carrying out actions --------------------------------------------------------------
    async def _apply(self, actions: list[Action]) -> None:
        run = self.run
        results = run.results
        assert results is not None
        for action in actions:
            if isinstance(action, SendTasks):
                await self._send_tasks(action)
            elif isinstance(action, StartTimer):
                handle = asyncio.get_running_loop().call_later(
                    action.seconds, run.post, TimerFired(action.token)
                )
                run.timers.append(handle)
            elif isinstance(action, RoundAggregated):
                await self._round_aggregated(action)
            elif isinstance(action, ValidationRecorded):
                rec = action.record
                results.add_validation(rec.site, rec.round, rec.metrics)

    async def _round_aggregated(self, action: RoundAggregated) -> None:
        run = self.run
        assert run.results is not None
        record = action.record
        t0 = time.perf_counter()
        # Serialized once: the next round is served from these bytes while they are
        # written to models/round_NNN.npz in the background (awaited before the end).
        data, sha = await asyncio.to_thread(_npz_and_sha256, record.global_model, self.buffers)
        run.round_model = (record.round, data, sha)
        path = run.results.round_model_path(record.round)
        written = asyncio.get_running_loop().create_task(
            asyncio.to_thread(save_round_model, path, data, record.round)
        )
        written.add_done_callback(functools.partial(_round_model_saved, run))
        run.writes.append(written)
        run.log.debug(
            "job %s: round %d model serialized and hashed in %.3f s "
            "(model buffers: %d reused, %d allocated so far)",
            run.job_id,
            record.round,
            time.perf_counter() - t0,
            self.buffers.reused,
            self.buffers.allocated,
        )
        run.rounds.append(
            {
                "round": record.round,
                "participants": dict(record.contributors),
                "params_types": dict(record.params_types),
                "late_sites": list(record.late_sites),
                "lost_sites": list(record.lost_sites),
            }
        )
        run.log.info(
            "job %s: round %d aggregated from %s",
            run.job_id,
            record.round,
            ", ".join(f"{s} ({n})" for s, n in record.contributors.items()),
        )
        await self._checkpoint(record.round, sha, written)
        await asyncio.to_thread(run.store.update, run.job_id, rounds_completed=record.round)

    async def _checkpoint(
        self, number: int, model_sha256: str, written: asyncio.Task[None]
    ) -> None:
        """Save the resume point after round ``number`` once its model is written (in the
        background; FedOpt's state is copied now, before the next round changes it)."""
        run, controller = self.run, self.controller
        if run.checkpoints is None:
            return
        state = controller.optimizer_state()
        optimizer = await asyncio.to_thread(copy_optimizer, state) if state else None
        checkpoint = Checkpoint(
            job_id=run.job_id,
            workflow=self.plan.config.workflow,
            sites=tuple(controller.sites),
            round=number,
            model_sha256=model_sha256,
            lost=dict(controller.lost),
            rounds=tuple(dict(r) for r in run.rounds),
            deploy_failures=dict(run.deploy_failures),
            started=run.started,
        )
        run.writes.append(run.checkpoints.save(checkpoint, after=written, optimizer=optimizer))

    async def _model_blob(self, action: SendTasks) -> ServedBlob | None:
        run = self.run
        if not action.model:
            return None
        blob = run.model_blobs.get(action.model_round)
        if blob is not None:
            return blob
        for old in run.model_blobs.values():
            run.blobs.unserve(old.blob_id)  # an earlier round's model is not needed any more
        if run.round_model is not None and run.round_model[0] == action.model_round:
            _, data, sha = run.round_model
            blob = run.blobs.serve(
                run.job_id,
                Path(),
                run.sites,
                name=round_model_name(action.model_round),
                sha256=sha,
                size=len(data),
                content_type="application/x-npz",
                data=data,
            )
        else:  # the initial model
            path = run.work / "models" / f"global_{action.model_round:03d}.npz"
            await asyncio.to_thread(save_params, action.model, path)
            sha, size = await asyncio.to_thread(sha256_file, path)
            blob = run.blobs.serve(
                run.job_id,
                path,
                run.sites,
                name=path.name,
                sha256=sha,
                size=size,
                content_type="application/x-npz",
            )
        run.model_blobs = {action.model_round: blob}
        return blob

    async def _send_tasks(self, action: SendTasks) -> None:
        run = self.run
        blob = await self._model_blob(action)
        refs = [blob.ref()] if blob is not None else []
        training = bool(action.tasks) and action.tasks[0].kind == "train"
        if training:
            run.outstanding.clear()  # an earlier round's late update is no longer wanted
        for task in action.tasks:
            body: TrainTask | ValidateTask
            if task.kind == "train":
                body = TrainTask(task.task_id, task.round, task.total_rounds)
                run.outstanding[task.task_id] = task.site
            else:
                body = ValidateTask(task.task_id, task.round)
            run.send(task.site, envelope(run.job_id, body, *refs), task.task_id)
        if training:
            rnd = action.tasks[0].round
            run.log.info(
                "job %s: round %d: training on %s",
                run.job_id,
                rnd,
                ", ".join(t.site for t in action.tasks),
            )
            await asyncio.to_thread(run.store.update, run.job_id, current_round=rnd)


def not_a_driver_job(job_id: str, workflow: str) -> errors.InvalidArgumentError:
    """What the Driver API gets for a job of a built-in workflow."""
    return errors.InvalidArgumentError(
        f"job {job_id} runs the {workflow} workflow, not a driver: the Driver API needs a "
        'job whose config_fed_server.json says "workflow": "driver"',
        job_id=job_id,
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return finite(float(value))


def save_round_model(path: Path, data: bytes | memoryview, round: int) -> None:
    """Write a round's global model atomically (nothing partial on failure).

    Raises:
        StorageFull: the disk is full (naming the file and the fix).
    """
    try:
        write_atomic(path, data)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(exc, f"save round {round}'s global model", path) from exc
        raise


def _round_model_saved(run: JobRun, write: asyncio.Task[None]) -> None:
    """A round model that could not be saved ends the job ABNORMAL at its next event (a
    job whose models are not on disk cannot complete); finish() says why."""
    if write.cancelled() or write.exception() is None or run.forced is not None:
        return
    run.forced = JobFinished(
        ABNORMAL, f"the server could not save a round's model: {write.exception()}", None
    )
