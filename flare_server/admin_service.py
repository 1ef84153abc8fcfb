"""The Admin service (admin.proto): the admin Session's RPCs, served to admin certificates.

Every handler authenticates through :mod:`flare_server.calls`, checks the caller's right
with :class:`flare_server.authz.Policy` (ownership on every job operation), and leaves
blocking store work (SQLite, fsync, zip) to worker threads so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_protocol import errors, result_format
from flare_protocol._generated import admin_pb2, admin_pb2_grpc, common_pb2
from flare_protocol._transfer_aio import file_messages
from flare_protocol.expiry import Expiry
from flare_protocol.hashing import sha256_file
from flare_protocol.identity import Identity
from flare_protocol.job_status import is_finished
from flare_protocol.transfer import ChunkSender
from flare_server.audit import AuditLog
from flare_server.authz import Policy, Resource, Right
from flare_server.call_limits import CallLimits
from flare_server.calls import Call, StreamTracker, streaming, unary
from flare_server.commands import Commands
from flare_server.driver_service import DriverCalls, DriverContext
from flare_server.identity_check import IdentityChecker
from flare_server.jobs import JobMeta, JobRepository, JobStatus, JobSummary, Submitter
from flare_server.model_source import check_model_source
from flare_server.parts import JobWaker, RunControl
from flare_server.result_stream import files_stream, zip_stream
from flare_server.results import METRICS, VALIDATIONS, JsonlTail, RowSignals
from flare_server.revocations import RevocationUpdate
from flare_server.sites import SiteRegistry

log = logging.getLogger("flare_server.admin")

_ACTIVE = (JobStatus.SUBMITTED, JobStatus.DISPATCHED, JobStatus.RUNNING)
#: Seconds beyond ``log_wait`` a result download waits for a just-ended job's folder.
RESULT_WAIT_MARGIN = 30.0
#: Put on a watch stream's queue to end it (the server is stopping).
WATCH_END = object()
_REVOKED = object()
_ROWS = object()  # WatchJobEvents: rows were appended to the job's metrics or validations


@functools.cache  # reading package metadata costs ~0.3 ms: once per process, not per Hello
def server_version() -> str:
    try:
        from importlib.metadata import version

        return version("flare-admin")
    except Exception:
        return "unknown"


def _meta_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, separators=(",", ":"), default=str)


def _job_reply(meta: dict[str, Any]) -> admin_pb2.JobReply:
    return admin_pb2.JobReply(job_id=str(meta["job_id"]), meta_json=_meta_json(meta))


def job_resource(meta: Mapping[str, Any]) -> Resource:
    return Resource.job(
        str(meta.get("job_id")), str(meta.get("submitter_name")), str(meta.get("submitter_org"))
    )


def submitter_of(call: Call) -> Submitter:
    role = call.identity.role.value if call.identity.role else ""
    return Submitter(name=call.identity.name, org=call.identity.org, role=role)


#: Receives a SubmitJob stream into the store; the committed job's meta.
ReceiveJob = Callable[[Call, AsyncIterator[common_pb2.TransferChunk]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class AdminContext:
    """What the Admin service uses of the server."""

    checker: IdentityChecker
    """Admin certificates only."""
    audit: AuditLog
    streams: StreamTracker
    store: JobRepository
    policy: Policy
    registry: SiteRegistry
    scheduler: JobWaker
    runs: RunControl
    commands: Commands
    receive_job: ReceiveJob
    check_job_sites: Callable[[Mapping[str, Any]], None]
    """Refuses a job naming a site outside the project (a clone's source may)."""
    update_revocations: Callable[[bytes, str], Awaitable[RevocationUpdate]]
    """Takes a newer signed revocation list (the CRL bytes, who sent it)."""
    expiring: Callable[[Identity], list[Expiry]]
    """Certificates ending within 30 days (the caller's included)."""
    watchers: set[asyncio.Queue[Any]]
    """The queues of open watch streams (each ends on :data:`WATCH_END`)."""
    result_rows: RowSignals
    project: str
    server_name: str
    start_time: float
    result_wait: float
    """Seconds a result download waits for a just-ended job's folder."""
    limits: CallLimits | None = None
    """Per-identity limits on calls and uploads (None: unlimited)."""


class AdminService(admin_pb2_grpc.AdminServicer):
    """Implements every Admin RPC on top of the server's store, registry and policy."""

    def __init__(self, context: AdminContext) -> None:
        self.context = context
        self.store = context.store
        self.policy = context.policy
        self.watchers = context.watchers
        self.checker = context.checker
        self.audit = context.audit
        self.streams = context.streams
        self.limits = context.limits
        self.drivers = DriverCalls(
            DriverContext(
                store=context.store,
                policy=context.policy,
                runs=context.runs,
                streams=context.streams,
                watchers=context.watchers,
                watch_end=WATCH_END,
                job_meta=self._job,
                result_wait=context.result_wait,
            )
        )

    # -- helpers -----------------------------------------------------------------------
    async def _job(self, call: Call, job_id: str) -> dict[str, Any]:
        return dict(await self._job_view(call, job_id))  # read-only: a shallow copy is enough

    async def _job_view(self, call: Call, job_id: str) -> JobMeta:
        call.job_id = job_id or None
        if not job_id:
            raise errors.InvalidArgumentError("a job id is required", job_id=job_id)
        # A meta in the store's memory costs a dict lookup; only a miss (SQLite) needs a thread.
        meta = self.store.cached(job_id)
        return meta if meta is not None else await asyncio.to_thread(self.store.get, job_id)

    def _require(
        self, call: Call, right: Right, meta: Mapping[str, Any] | None, action: str
    ) -> None:
        resource = job_resource(meta) if meta is not None else Resource("none")
        self.policy.require(
            call.identity,
            right,
            resource,
            action=action,
            job_id=str(meta["job_id"]) if meta else None,
        )

    # -- RPCs --------------------------------------------------------------------------
    @unary("hello")
    async def Hello(
        self, call: Call, request: common_pb2.Empty, context: Any
    ) -> admin_pb2.HelloReply:
        call.audited = False  # the Session's connection probe: not a command
        ident = call.identity
        return admin_pb2.HelloReply(
            name=ident.name,
            org=ident.org,
            role=ident.role.value if ident.role else "",
            project=self.context.project,
            server_version=server_version(),
        )

    @unary("get_system_info")
    async def GetSystemInfo(
        self, call: Call, request: common_pb2.Empty, context: Any
    ) -> admin_pb2.SystemInfoReply:
        self._require(call, Right.VIEW, None, "view the system info")
        store = self.store
        running = await asyncio.to_thread(
            lambda: live_durations(
                store, store.list(statuses=[JobStatus.DISPATCHED, JobStatus.RUNNING])
            )
        )
        return admin_pb2.SystemInfoReply(
            server_name=self.context.server_name,
            project=self.context.project,
            start_time=self.context.start_time,
            sites=site_infos(self.context.registry),
            running_jobs=[summary_pb(s) for s in running],
            server_version=server_version(),
            expiring=[
                admin_pb2.CertificateExpiry(
                    what=e.what,
                    name=e.name,
                    serial=format(e.serial, "x"),
                    not_after=e.not_after.timestamp(),
                )
                for e in self.context.expiring(call.identity)
            ],
        )

    @unary("submit_job", upload=True)
    async def SubmitJob(
        self, call: Call, request_iterator: AsyncIterator[common_pb2.TransferChunk], context: Any
    ) -> admin_pb2.JobReply:
        self._require(call, Right.SUBMIT_JOB, None, "submit jobs")
        meta = await self.context.receive_job(call, request_iterator)
        return _job_reply(meta)

    @unary("clone_job")
    async def CloneJob(
        self, call: Call, request: admin_pb2.CloneJobRequest, context: Any
    ) -> admin_pb2.JobReply:
        call.args = {"job_id": request.job_id}
        source = await self._job(call, request.job_id)
        self._require(call, Right.CLONE_JOB, source, "clone")
        self.context.check_job_sites(source)  # the project may have lost a site since
        extra: dict[str, Any] = {}
        # A clone starts from the same model as its source unless told otherwise; either
        # way the cloner must be allowed to read that model.
        model_job = request.initial_model_job_id or source.get("initial_model_job_id")
        if model_job:
            call.args["initial_model_job_id"] = str(model_job)
            call.job_id = request.job_id
            try:
                await check_model_source(self.store, self.policy, call.identity, str(model_job))
            except errors.APIError as exc:
                if request.initial_model_job_id:
                    raise
                raise type(exc)(
                    f"job {source['job_id']} starts from the model of job {model_job} "
                    f"(initial_model_job_id), so its clone would too: {exc.message}",
                    **exc.details,
                ) from exc
            extra["initial_model_job_id"] = str(model_job)
        meta = await asyncio.to_thread(
            self.store.clone_job, request.job_id, submitter_of(call), extra=extra or None
        )
        cloned = dict(meta)
        call.args["new_job_id"] = cloned["job_id"]
        self.context.scheduler.poke()
        return _job_reply(cloned)

    @unary("list_jobs")
    async def ListJobs(
        self, call: Call, request: admin_pb2.ListJobsRequest, context: Any
    ) -> admin_pb2.ListJobsReply:
        call.args = {
            k: v
            for k, v in (
                ("detailed", request.detailed),
                ("limit", request.limit),
                ("id_prefix", request.id_prefix),
                ("name_prefix", request.name_prefix),
                ("reverse", request.reverse),
            )
            if v
        }
        self._require(call, Right.VIEW, None, "list jobs")
        if request.limit < 0:
            raise errors.InvalidArgumentError(f"limit must be >= 0, got {request.limit}")
        store = self.store

        def work() -> tuple[list[JobSummary], list[str]]:
            rows = store.list(
                id_prefix=request.id_prefix or None,
                name_prefix=request.name_prefix or None,
                limit=request.limit or None,
                reverse=request.reverse,
            )
            rows = live_durations(store, rows)
            metas = (
                [_meta_json(dict(store.get(r.job_id))) for r in rows] if request.detailed else []
            )
            return rows, metas

        rows, metas = await asyncio.to_thread(work)
        return admin_pb2.ListJobsReply(jobs=[summary_pb(r) for r in rows], meta_json=metas)

    @unary("get_job_meta")
    async def GetJobMeta(
        self, call: Call, request: admin_pb2.JobRequest, context: Any
    ) -> admin_pb2.JobReply:
        meta = await self._job_view(call, request.job_id)
        self._require(call, Right.VIEW, meta, "view")
        return admin_pb2.JobReply(job_id=meta.job_id, meta_json=meta.wire_json())

    @streaming("monitor_job")
    async def WatchJob(
        self, call: Call, request: admin_pb2.JobRequest, context: Any
    ) -> AsyncIterator[admin_pb2.JobReply]:
        job_id = request.job_id
        call.job_id = job_id or None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def on_change(meta: Any) -> None:  # runs on whichever thread wrote the store
            if getattr(meta, "job_id", None) == job_id:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, meta)
                except RuntimeError:  # the loop closed under us: the stream is gone
                    pass

        unsubscribe = self.store.subscribe(on_change)
        self.watchers.add(queue)
        untrack = self.streams.add(call.identity.serial, lambda: queue.put_nowait(_REVOKED))
        try:
            meta = await self._job(call, job_id)
            self._require(call, Right.VIEW, meta, "watch")
            last = _meta_json(meta)
            yield admin_pb2.JobReply(job_id=job_id, meta_json=last)
            status = str(meta.get("status", ""))
            while not is_finished(status):
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                for item in _status_changes(batch):
                    if item is WATCH_END:
                        return
                    if item is _REVOKED:
                        raise errors.AuthenticationError(
                            f"the certificate of {call.identity.name} was revoked"
                        )
                    if getattr(item, "deleted", False):
                        raise errors.JobNotFound(f"job {job_id} was deleted", job_id=job_id)
                    current = dict(item)
                    text = _meta_json(current)
                    if text != last:
                        last = text
                        yield admin_pb2.JobReply(job_id=job_id, meta_json=text)
                    status = str(current.get("status", ""))
                    if is_finished(status):
                        break
        finally:
            unsubscribe()
            untrack()
            self.watchers.discard(queue)

    @streaming("watch_job")
    async def WatchJobEvents(
        self, call: Call, request: admin_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[admin_pb2.JobEvent]:
        """Meta changes and, as they are written, metric and validation rows.

        Rows are read from the result files (a :class:`JsonlTail` per file), woken by the
        runner's row hook (:class:`~flare_server.results.RowSignals`), not by polling.
        Once the job finished, the rows on disk by then are sent, then its final meta,
        and the stream ends.
        """
        job_id = request.job_id
        call.job_id = job_id or None
        call.args = {
            k: v
            for k, v in (
                ("metrics", request.want_metrics),
                ("validations", request.want_validations),
                ("metrics_offset", request.metrics_offset),
                ("validations_offset", request.validations_offset),
            )
            if v
        }
        if request.metrics_offset < 0 or request.validations_offset < 0:
            raise errors.InvalidArgumentError("row offsets must be >= 0", job_id=job_id)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        rows_pending = [False]

        def wake(item: Any) -> None:  # runs on whichever thread wrote
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under us: the stream is gone
                pass

        def on_change(meta: Any) -> None:
            if getattr(meta, "job_id", None) == job_id:
                wake(meta)

        def on_rows(_kind: str) -> None:
            if not rows_pending[0]:  # one wake-up per burst of rows
                rows_pending[0] = True
                wake(_ROWS)

        unsubscribe = self.store.subscribe(on_change)
        want_rows = request.want_metrics or request.want_validations
        unrows = self.context.result_rows.subscribe(job_id, on_rows) if want_rows else _nothing
        self.watchers.add(queue)
        untrack = self.streams.add(call.identity.serial, lambda: queue.put_nowait(_REVOKED))
        try:
            meta = await self._job(call, job_id)
            self._require(call, Right.VIEW, meta, "watch")
            tails = await self._row_tails(call, meta, request)
            last = _meta_json(meta)
            status = str(meta.get("status", ""))
            if not is_finished(status):
                yield admin_pb2.JobEvent(meta_json=last)
            while not is_finished(status):
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                for item in _status_changes(batch):
                    if item is WATCH_END:
                        return
                    if item is _REVOKED:
                        raise errors.AuthenticationError(
                            f"the certificate of {call.identity.name} was revoked"
                        )
                    if item is _ROWS:
                        rows_pending[0] = False  # before reading: later rows wake us again
                        async for event in _row_events(tails):
                            yield event
                        continue
                    if getattr(item, "deleted", False):
                        raise errors.JobNotFound(f"job {job_id} was deleted", job_id=job_id)
                    current = dict(item)
                    text = _meta_json(current)
                    status = str(current.get("status", ""))
                    if is_finished(status):
                        last = text
                        break
                    if text != last:
                        last = text
                        yield admin_pb2.JobEvent(meta_json=text)
            # The runner completes the result files before it writes the final status, so
            # every row is on disk now (rows sent after an admin's abort may still come:
            # the readers have them).
            async for event in _row_events(tails):
                yield event
            yield admin_pb2.JobEvent(meta_json=last)
        finally:
            unsubscribe()
            unrows()
            untrack()
            self.watchers.discard(queue)

    async def _row_tails(
        self, call: Call, meta: Mapping[str, Any], request: admin_pb2.WatchRequest
    ) -> list[tuple[str, JsonlTail]]:
        """The result files a watch follows: (JobEvent field, cursor) per wanted kind."""
        if not (request.want_metrics or request.want_validations):
            return []
        try:
            self._require(call, Right.DOWNLOAD_JOB, meta, "read the metrics and validations of")
        except errors.AuthorizationError as exc:
            raise errors.AuthorizationError(
                f"{exc.message}; watch it without metrics and validations to follow only "
                "its status",
                **exc.details,
            ) from None
        folder = Path(await asyncio.to_thread(self.store.result_dir, str(meta["job_id"])))
        tails = []
        if request.want_metrics:
            tails.append(("metrics_json", JsonlTail(folder / METRICS, request.metrics_offset)))
        if request.want_validations:
            tails.append(
                ("validations_json", JsonlTail(folder / VALIDATIONS, request.validations_offset))
            )
        return tails

    @unary("abort_job")
    async def AbortJob(
        self, call: Call, request: admin_pb2.JobRequest, context: Any
    ) -> admin_pb2.JobReply:
        meta = await self._job(call, request.job_id)
        self._require(call, Right.MANAGE_JOB, meta, "abort")
        status = str(meta.get("status"))
        if is_finished(status):
            raise errors.JobNotRunning(
                f"cannot abort job {request.job_id}: it already {status}",
                job_id=request.job_id,
                status=status,
            )
        try:
            updated = await asyncio.to_thread(
                self.store.set_status,
                request.job_id,
                JobStatus.FINISHED_ABORTED,
                reason=f"aborted by {call.identity.name}",
            )
        except errors.InvalidTransition:
            current = (await self._job(call, request.job_id)).get("status")
            raise errors.JobNotRunning(
                f"cannot abort job {request.job_id}: it already {current}",
                job_id=request.job_id,
                status=str(current),
            ) from None
        self.context.runs.notify_abort(meta, f"aborted by {call.identity.name}")
        return _job_reply(dict(updated))

    @unary("delete_job")
    async def DeleteJob(
        self, call: Call, request: admin_pb2.JobRequest, context: Any
    ) -> common_pb2.Empty:
        meta = await self._job(call, request.job_id)
        self._require(call, Right.MANAGE_JOB, meta, "delete")
        await asyncio.to_thread(self.store.delete, request.job_id)
        return common_pb2.Empty()

    @streaming("download_job_result")
    async def DownloadJobResult(
        self, call: Call, request: admin_pb2.JobRequest, context: Any
    ) -> AsyncIterator[common_pb2.TransferChunk]:
        meta = await self._job(call, request.job_id)
        self._require(call, Right.DOWNLOAD_JOB, meta, "download the result of")
        status = str(meta.get("status"))
        if not is_finished(status):
            raise errors.JobNotDone(
                f"job {request.job_id} has no result yet: it is {status}; "
                "wait for it to finish (wait_for_job or monitor_job)",
                job_id=request.job_id,
                status=status,
            )
        # FINISHED is written when the end is decided (an abort at once); the runner then
        # collects the sites' logs and writes summary.json: wait for that, bounded.
        complete = await self.context.runs.wait_result(request.job_id, self.context.result_wait)
        if not complete:
            log.warning(
                "job %s: its result folder is still being written; sending it as partial",
                request.job_id,
            )
        result_dir = self.store.result_dir(request.job_id)
        if (result_format.METADATA_KEY, result_format.FILES) in (
            context.invocation_metadata() or ()
        ):  # one header per file: the client writes them as they come (result_stream)
            async for message in files_stream(
                Path(result_dir), request.job_id, partial=not complete
            ):
                yield message
            return
        params = {"job_id": request.job_id}
        if not complete:
            params[result_format.PARTIAL] = "true"
        sender = ChunkSender(
            f"the result of job {request.job_id}",
            name=f"{request.job_id}.zip",
            content_type="application/zip",
            params=params,
        )
        yield sender.header()
        async for chunk in zip_stream(Path(result_dir), request.job_id):
            yield sender.data(chunk)

    @streaming("download_model")
    async def DownloadModel(
        self, call: Call, request: admin_pb2.ModelRequest, context: Any
    ) -> AsyncIterator[common_pb2.TransferChunk]:
        meta = await self._job(call, request.job_id)
        call.args = {"round": request.round}
        self._require(call, Right.DOWNLOAD_JOB, meta, "download the model of")
        result_dir = Path(await asyncio.to_thread(self.store.result_dir, request.job_id))
        path, name = await asyncio.to_thread(model_file, result_dir, meta, request.round)
        async for chunk in file_stream(path, name, "application/x-npz"):
            yield chunk

    @unary("get_connected_client_list")
    async def GetConnectedSites(
        self, call: Call, request: common_pb2.Empty, context: Any
    ) -> admin_pb2.SitesReply:
        self._require(call, Right.VIEW, None, "list connected sites")
        return admin_pb2.SitesReply(sites=site_infos(self.context.registry))

    # -- the Driver API (docs/driver.md; flare_server.driver_service) -------------------------
    @unary("update_revocations")
    async def UpdateRevocations(
        self, call: Call, request: admin_pb2.UpdateRevocationsRequest, context: Any
    ) -> admin_pb2.UpdateRevocationsReply:
        self.policy.require_project_admin(call.identity, action="update the revocation list")
        call.args = {"bytes": len(request.crl)}
        update = await self.context.update_revocations(request.crl, call.identity.name)
        call.args.update(
            crl_number=update.crl_number,
            previous_crl_number=update.previous,
            revoked=update.revoked,
            streams_dropped=update.streams_dropped,
        )
        return admin_pb2.UpdateRevocationsReply(
            revoked=update.revoked,
            crl_number=update.crl_number,
            previous_crl_number=update.previous,
            streams_dropped=update.streams_dropped,
        )

    @unary("driver_connect")
    async def DriverConnect(
        self, call: Call, request: admin_pb2.JobRequest, context: Any
    ) -> admin_pb2.DriverInfo:
        return await self.drivers.connect(call, request)

    @unary("driver_push", upload=True)
    async def DriverPush(
        self, call: Call, request_iterator: AsyncIterator[admin_pb2.DriverPushItem], context: Any
    ) -> admin_pb2.DriverPushReply:
        return await self.drivers.push(call, request_iterator)

    @streaming("driver_replies")
    async def DriverReplies(
        self, call: Call, request: admin_pb2.DriverRepliesRequest, context: Any
    ) -> AsyncIterator[admin_pb2.DriverRepliesItem]:
        async for item in self.drivers.replies(call, request):
            yield item

    @unary("driver_finish", upload=True)
    async def DriverFinish(
        self, call: Call, request_iterator: AsyncIterator[common_pb2.TransferChunk], context: Any
    ) -> admin_pb2.JobReply:
        return await self.drivers.finish(call, request_iterator)

    @unary("command")
    async def Command(
        self, call: Call, request: admin_pb2.CommandRequest, context: Any
    ) -> admin_pb2.CommandReply:
        result = await self.context.commands.run(call, request.command, request.args_json)
        return admin_pb2.CommandReply(result_json=json.dumps(result, default=str))


def _nothing() -> None:
    return None


async def _row_events(tails: list[tuple[str, JsonlTail]]) -> AsyncIterator[admin_pb2.JobEvent]:
    """Every row appended since the last read, in messages of at most ~2 MiB of JSON."""
    for field, tail in tails:
        while rows := await asyncio.to_thread(tail.read):
            text = json.dumps(rows, separators=(",", ":"))
            yield admin_pb2.JobEvent(**{field: text})


def _status_changes(batch: list[Any]) -> list[Any]:
    """A burst of changes without the ones a later change of the same status supersedes.

    Every status a job passes through is kept (a watcher sees DISPATCHED even when RUNNING
    follows within microseconds); of several changes in one status only the last is kept.
    Sentinels are kept in place.
    """
    kept: list[Any] = []
    for item in batch:
        if (
            kept
            and isinstance(item, Mapping)
            and isinstance(kept[-1], Mapping)
            and not getattr(kept[-1], "deleted", False)
            and kept[-1].get("status") == item.get("status")
        ):
            kept[-1] = item
        else:
            kept.append(item)
    return kept


def model_file(result_dir: Path, meta: Mapping[str, Any], round_number: int) -> tuple[Path, str]:
    """The model file ``DownloadModel`` serves for ``round_number`` (0: the final one)."""
    from flare_server.results import FINAL_MODEL, MODELS, round_model_name

    job_id = str(meta.get("job_id"))
    status = str(meta.get("status"))
    if round_number < 0:
        raise errors.InvalidArgumentError(f"round must be >= 0, got {round_number}")
    if round_number == 0:
        path = result_dir / FINAL_MODEL
        if not path.is_file():
            why = "it has not finished" if not is_finished(status) else "it ended without one"
            raise errors.JobNotDone(
                f"job {job_id} has no final global model: {why} (status {status})",
                job_id=job_id,
                status=status,
            )
        return path, FINAL_MODEL
    name = round_model_name(round_number)
    path = result_dir / MODELS / name
    if not path.is_file():
        rounds = sorted(
            int(p.stem[len("round_") :])
            for p in (result_dir / MODELS).glob("round_*.npz")
            if p.stem[len("round_") :].isdigit()
        )
        have = ", ".join(map(str, rounds)) if rounds else "none yet"
        raise errors.InvalidArgumentError(
            f"job {job_id} has no global model of round {round_number}; rounds: {have}",
            job_id=job_id,
        )
    return path, name


async def file_stream(
    path: Path, name: str, content_type: str
) -> AsyncIterator[common_pb2.TransferChunk]:
    """A header (name, size, sha256), then the file in CHUNK_SIZE chunks.

    The file is opened once; size and hash are of that open file (an immutable model).
    """
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        sha, size = await asyncio.to_thread(sha256_file, fh)
        sender = ChunkSender(name, name=name, size=size, sha256=sha, content_type=content_type)
        async for message in file_messages(sender, fh):
            yield message
    finally:
        fh.close()


def live_durations(store: JobRepository, rows: list[JobSummary]) -> list[JobSummary]:
    """``rows`` with each running job's time so far as its duration (the store writes a
    duration only when a job ends). Runs in a worker thread: it may read job metas."""
    now = time.time()
    out = []
    for row in rows:
        if row.duration is None and row.status is JobStatus.RUNNING:
            with contextlib.suppress(errors.JobNotFound):  # deleted meanwhile: keep the row
                start = store.get(row.job_id).get("start_time")
                if isinstance(start, (int, float)):
                    row = row._replace(duration=max(0.0, now - float(start)))
        out.append(row)
    return out


def summary_pb(s: JobSummary) -> admin_pb2.JobSummary:
    """A store JobSummary as its wire message."""
    return admin_pb2.JobSummary(
        job_id=s.job_id,
        name=s.name,
        status=s.status.value,
        submit_time=float(s.submit_time or 0.0),
        duration=float(s.duration or 0.0),
        submitter_name=s.submitter_name or "",
        submitter_org=s.submitter_org or "",
    )


def site_infos(registry: SiteRegistry) -> list[admin_pb2.SiteInfo]:
    """The connected sites as wire messages."""
    return [site_info_pb(s) for s in registry.snapshots()]


def site_info_pb(snapshot: Any) -> admin_pb2.SiteInfo:
    return admin_pb2.SiteInfo(
        name=snapshot.name,
        org=snapshot.org,
        connected_since=snapshot.connected_since,
        last_heartbeat=snapshot.last_heartbeat,
        running_jobs=list(snapshot.running_jobs),
        address=snapshot.address,
    )
