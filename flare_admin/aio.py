"""The asyncio admin Session: the same methods as :class:`flare_admin.Session`, as coroutines.

Argument checks, requests and reply parsing come from :mod:`flare_admin._ops`, shared
with the blocking Session; only the transport (``grpc.aio``) differs. Blocking file work
(zipping an upload, extracting a result) runs in worker threads so the event loop
stays free.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from flare_admin import _ops
from flare_admin._connect import Target, confirm_identity, log_open_failure, logger, prepare
from flare_admin._errors import map_rpc_error
from flare_admin._job_objects import ExportableJob, exported
from flare_admin.results import (
    ClientJobStatus,
    DirListing,
    FileText,
    JobEvent,
    JobMeta,
    JobRunSummary,
    JobSummary,
    MetricRow,
    MonitorReturnCode,
    SessionInfo,
    SiteInfo,
    SystemCommandResult,
    SystemInfo,
    TargetErrors,
    TargetStats,
    ValidationRow,
)
from flare_admin.session import (
    MonitorCallback,
    MonitorStep,
    SessionState,
    model_request,
    model_what,
    not_a_header,
    submit_header,
)
from flare_protocol import errors
from flare_protocol._generated import admin_pb2, admin_pb2_grpc, common_pb2

if TYPE_CHECKING:  # the transfer machinery is imported by the methods that move files
    from flare_admin._transfer import JobUpload, ProgressCallback
    from flare_admin.tracking import ParamRow

__all__ = ["AsyncJobWatch", "AsyncSession", "new_secure_async_session"]

_END = object()


#: How often an upload is tried when grpc.aio hides the server's refusal (see _WriteRace).
_WRITE_RACE_ATTEMPTS = 4


class _WriteRace(Exception):
    """grpc.aio turned the server's early refusal of an upload into INTERNAL.

    When the server ends SubmitJob early (it refuses the header: authorization, size,
    continue-from-model) while the client is still writing chunks, grpc.aio can report its
    own failed write (StatusCode.INTERNAL, "Internal error from Core") instead of the
    server's status. Such a call never committed anything (the server commits only after
    the whole stream), so the upload is simply tried again: the refusal is deterministic,
    the race is not (about 1 early refusal in 100 here, measured), so a later attempt
    reports the server's real error.
    """

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_write_race(exc: grpc.RpcError) -> bool:
    try:
        code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    except Exception:
        return False
    return code is grpc.StatusCode.INTERNAL and "Internal error from Core" in details


async def areplies(call: Any) -> AsyncIterator[Any]:
    """The messages of a server stream; when the task is cancelled (Ctrl-C under
    ``asyncio.run``) the call is cancelled and a fresh ``CancelledError`` raised, so no
    gRPC frames end up in the traceback the user sees."""
    stream = call.__aiter__()
    while True:
        try:
            reply = await stream.__anext__()
        except StopAsyncIteration:
            return
        except asyncio.CancelledError:
            call.cancel()
            raise asyncio.CancelledError from None
        yield reply


class AsyncJobWatch(AsyncIterator[JobEvent]):
    """The events of :meth:`AsyncSession.watch_job`, an async iterator (``async for``).

    It ends after the event that shows the job finished; :meth:`aclose` (also on leaving
    an ``async with`` block, or when it is dropped) cancels the server stream at once.
    """

    def __init__(self, events: AsyncIterator[JobEvent], call: Any) -> None:
        self._events = events
        self._close = weakref.finalize(self, call.cancel)
        self._close.atexit = False  # the event loop may be gone by then

    def __aiter__(self) -> AsyncJobWatch:
        return self

    async def __anext__(self) -> JobEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Stop watching: cancel the server stream (idempotent)."""
        self._close()
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> AsyncJobWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _AsyncMonitorStep(MonitorStep):
    async def decide_async(
        self, session: Any, job_id: str, meta: JobMeta
    ) -> MonitorReturnCode | None:
        self.last = meta
        if self.cb is not None:
            keep = self.cb(session, job_id, meta, *self.args, **self.kwargs)
            if inspect.isawaitable(keep):
                keep = await keep
            if not keep:
                return MonitorReturnCode.ENDED_BY_CB
        if meta.finished:
            return MonitorReturnCode.JOB_FINISHED
        return None


class AsyncSession:
    """An open asyncio admin session; create it with ``await AsyncSession.open(...)``.

    ``async with await AsyncSession.open(...) as s:`` closes it on exit; after
    :meth:`close` every method raises :class:`SessionClosed`.
    """

    def __init__(self, target: Target, channel: grpc.aio.Channel, info: SessionInfo, debug: bool):
        self._target = target
        self._channel = channel
        self._stub = admin_pb2_grpc.AdminStub(channel)
        self._info = info
        self._debug = debug
        self._timeout = target.timeout
        self._state = SessionState.OPEN

    @classmethod
    async def open(
        cls,
        username: str,
        startup_kit_location: str | os.PathLike[str],
        debug: bool = False,
        timeout: float = 10.0,
        *,
        server_address: str | None = None,
    ) -> AsyncSession:
        """Check the kit, connect and return an open session (see ``new_secure_session``)."""
        target = prepare(username, startup_kit_location, timeout, server_address, debug)
        channel = grpc.aio.secure_channel(target.address, target.credentials, target.options)
        op = _ops.hello()
        try:
            reply = await admin_pb2_grpc.AdminStub(channel).Hello(
                op.request, timeout=target.timeout
            )
            info = op.parse(reply)
            confirm_identity(target, info)
        except grpc.RpcError as exc:
            await channel.close()
            if debug:
                log_open_failure(target, exc)
            raise map_rpc_error(
                exc, address=target.address, action=op.action, opening=True
            ) from exc
        except BaseException:
            await channel.close()
            raise
        return cls(target, channel, info, debug)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def info(self) -> SessionInfo:
        return self._info

    @property
    def timeout(self) -> float:
        """Seconds each call may take now (``set_timeout`` changes it)."""
        return self._timeout

    @property
    def address(self) -> str:
        return self._target.address

    @property
    def startup_kit_location(self) -> str:
        return str(self._target.kit.root)

    async def close(self) -> None:
        """Close the session and its connection (idempotent)."""
        if self._state is SessionState.CLOSED:
            return
        self._state = SessionState.CLOSED
        await self._channel.close()

    async def __aenter__(self) -> AsyncSession:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"<AsyncSession {self._target.username} @ {self._target.address} {self._state.value}>"
        )

    def _check_open(self) -> None:
        if self._state is SessionState.CLOSED:
            raise errors.SessionClosed(
                f"this session of {self._target.username} was closed; open a new one with "
                "AsyncSession.open()"
            )

    def _map(
        self, exc: grpc.RpcError, action: str, job_id: str | None = None, **kw: Any
    ) -> Exception:
        if self._state is SessionState.CLOSED:
            return errors.SessionClosed(f"{action}: the session was closed during the call")
        return map_rpc_error(exc, address=self._target.address, action=action, job_id=job_id, **kw)

    async def _unary(self, op: _ops.Unary) -> Any:
        self._check_open()
        start = time.perf_counter()
        try:
            reply = await getattr(self._stub, op.rpc)(op.request, timeout=self._timeout)
        except grpc.RpcError as exc:
            if op.split is not None and op.merge is not None and _ops.reply_too_large(exc):
                parts = op.split()
                if parts:
                    return op.merge([await self._unary(part) for part in parts])
            raise self._map(exc, op.action, op.job_id) from exc
        finally:
            if self._debug:
                logger.debug("%s took %.2f ms", op.action, (time.perf_counter() - start) * 1e3)
        return op.parse(reply)

    # -- jobs -------------------------------------------------------------------------------

    async def submit_job(
        self,
        job_definition_path: str | os.PathLike[str] | ExportableJob,
        *,
        progress: ProgressCallback | None = None,
        initial_model_job_id: str | None = None,
    ) -> str:
        """Upload a job folder, a ``.zip`` or a job object; return its id (see
        ``Session.submit_job``).

        ``progress`` is called from a worker thread.
        """
        from flare_admin._transfer import JobUpload

        self._check_open()
        if isinstance(job_definition_path, ExportableJob):
            with exported(job_definition_path) as folder:
                return await self.submit_job(
                    folder, progress=progress, initial_model_job_id=initial_model_job_id
                )
        source = _ops.initial_model_job_id(initial_model_job_id)
        upload = JobUpload.from_path(job_definition_path)
        if source is not None:
            _ops.model_source_ready(await self.get_job_meta(source))
        for _ in range(_WRITE_RACE_ATTEMPTS - 1):
            try:
                return await self._submit_once(upload, progress, source)
            except _WriteRace:
                continue  # the server refused early; ask again to learn why (see _WriteRace)
        try:
            return await self._submit_once(upload, progress, source)
        except _WriteRace as race:
            raise self._map(race.error, "submit_job", submitting=True) from race.error

    async def _submit_once(
        self, upload: JobUpload, progress: ProgressCallback | None, source: str | None
    ) -> str:
        failure: list[BaseException] = []
        holder: list[Any] = []
        chunks = upload.chunks(progress)

        async def requests() -> AsyncIterator[common_pb2.TransferChunk]:
            yield submit_header(upload, source)
            try:
                while True:
                    chunk = await asyncio.to_thread(next, chunks, _END)
                    if chunk is _END or holder[0].done():
                        # done: refused (e.g. at the header) while this chunk was read; a
                        # write now would make grpc.aio report INTERNAL, not the refusal
                        return
                    yield common_pb2.TransferChunk(data=chunk)  # type: ignore[arg-type]
            except GeneratorExit:  # the call ended first (e.g. refused at the header)
                raise
            except BaseException as exc:  # cancel: a truncated upload must never commit
                failure.append(exc)
                holder[0].cancel()

        call = self._stub.SubmitJob(requests())
        holder.append(call)
        try:
            reply = await call
        except asyncio.CancelledError:
            if failure:
                raise failure[0] from None
            call.cancel()
            raise
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            if _is_write_race(exc):
                raise _WriteRace(exc) from exc
            raise self._map(exc, "submit_job", submitting=True) from exc
        if failure:
            raise failure[0]
        return str(reply.job_id)

    async def list_jobs(
        self,
        detailed: bool = False,
        limit: int | None = None,
        id_prefix: str | None = None,
        name_prefix: str | None = None,
        reverse: bool = False,
        *,
        all: bool = False,
    ) -> list[JobSummary] | list[JobMeta]:
        """Jobs ordered by submit time: summary rows, or full metas when ``detailed``.

        ``limit`` keeps the first N (the newest N with ``reverse``); ``all=True`` (NVIDIA
        FLARE's older spelling of "no limit") lists every job and excludes ``limit``.
        A running job's ``duration`` is the time it has run so far.
        """
        return await self._unary(
            _ops.list_jobs(detailed, limit, id_prefix, name_prefix, reverse, all=all)
        )

    async def get_job_meta(self, job_id: str) -> JobMeta:
        """A job's full meta."""
        return await self._unary(_ops.get_job_meta(job_id))

    async def clone_job(self, job_id: str, *, initial_model_job_id: str | None = None) -> str:
        """Submit a copy of a job; return the new id (see ``Session.clone_job``)."""
        return await self._unary(_ops.clone_job(job_id, initial_model_job_id))

    async def abort_job(self, job_id: str) -> None:
        """Abort a job that has not finished."""
        await self._unary(_ops.abort_job(job_id))

    async def delete_job(self, job_id: str) -> None:
        """Delete a job and its files."""
        await self._unary(_ops.delete_job(job_id))

    async def monitor_job(
        self,
        job_id: str,
        timeout: float = 0.0,
        poll_interval: float = 2.0,
        cb: MonitorCallback | None = None,
        *cb_args: Any,
        **cb_kwargs: Any,
    ) -> MonitorReturnCode:
        """Follow a job's pushed changes; ``cb`` may be a function or a coroutine function."""
        self._check_open()
        jid = _ops.job_id(job_id)
        limit = _ops.timeout_value(timeout)
        _ops.timeout_value(poll_interval, "poll_interval")
        step = _AsyncMonitorStep(cb, cb_args, cb_kwargs)
        call = self._stub.WatchJob(admin_pb2.JobRequest(job_id=jid), timeout=limit or None)
        try:
            async for reply in areplies(call):
                code = await step.decide_async(self, jid, _ops.parse_meta(reply))
                if code is not None:
                    return code
        except grpc.RpcError as exc:
            if limit and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                return MonitorReturnCode.TIMEOUT
            raise self._map(exc, "monitor_job", jid) from exc
        finally:
            call.cancel()
        raise step.stream_ended(self.address, jid)

    async def wait_for_job(
        self, job_id: str, timeout: float = 0.0, poll_interval: float = 2.0
    ) -> JobMeta:
        """Wait until the job finishes; return its final meta (JobTimeout after ``timeout``)."""
        seen: list[JobMeta] = []

        def keep(_s: Any, _j: str, meta: JobMeta) -> bool:
            seen.append(meta)
            return True

        code = await self.monitor_job(job_id, timeout, poll_interval, keep)
        if code is MonitorReturnCode.TIMEOUT:
            last = seen[-1].status if seen else "unknown"
            raise errors.JobTimeout(
                f"job {job_id} did not finish within {timeout} s (status {last})",
                job_id=job_id,
                status=last,
            )
        return seen[-1]

    def watch_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        metrics: bool = True,
        validations: bool = True,
    ) -> AsyncJobWatch:
        """Follow a job as the server pushes it: ``async for event in s.watch_job(j)``.

        The same events, end and errors as :meth:`flare_admin.Session.watch_job`.
        """
        self._check_open()
        jid = _ops.job_id(job_id)
        limit = _ops.watch_timeout(timeout)
        request = _ops.watch_request(jid, metrics, validations)
        call = self._stub.WatchJobEvents(request, timeout=limit)
        return AsyncJobWatch(self._job_events(call, jid, limit), call)

    async def _job_events(
        self, call: Any, jid: str, limit: float | None
    ) -> AsyncIterator[JobEvent]:
        step = _ops.WatchStep(jid)
        try:
            async for reply in areplies(call):
                event = step.event(reply)
                yield event
                if step.finished:
                    return
        except grpc.RpcError as exc:
            if limit and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                raise step.timed_out(limit) from None
            raise self._map(exc, "watch_job", jid) from exc
        finally:
            call.cancel()
        raise MonitorStep.stream_ended(self.address, jid)

    async def download_job_result(
        self,
        job_id: str,
        destination: str | os.PathLike[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Download a finished job's result into ``<destination>/<job_id>/``; return the path.

        ``progress(bytes_received, total)`` is called from the event loop as data arrives.
        """
        from flare_admin._transfer import RESULT_FILES_METADATA, ResultDownload, check_destination

        self._check_open()
        jid = _ops.job_id(job_id)
        folder = check_destination(destination, self._target.kit.transfer)
        sink = ResultDownload(folder, jid)
        call = self._stub.DownloadJobResult(
            admin_pb2.JobRequest(job_id=jid), metadata=RESULT_FILES_METADATA
        )
        report = _ops.Progress(progress)
        try:
            async for chunk in areplies(call):
                sink.feed(chunk)  # files written as they arrive (_transfer, result_format)
                report(sink.received, sink.total)
        except grpc.RpcError as exc:
            sink.discard()
            raise self._map(exc, "download_job_result", jid) from exc
        except BaseException:
            sink.discard()
            call.cancel()
            raise
        path = await asyncio.to_thread(sink.finish)
        sink.warn_if_partial(path)
        return path

    async def get_job_logs(self, job_id: str, target: str = "server") -> FileText:
        """The job's log on ``target``."""
        return await self._unary(_ops.get_job_logs(job_id, target))

    # -- results ------------------------------------------------------------------------------

    async def _pages(self, make: Callable[[int], _ops.Unary], start: int = 0) -> list[Any]:
        rows: list[Any] = []
        offset = start
        while True:
            page: _ops.Page = await self._unary(make(offset))
            rows.extend(page.rows)
            if page.next_offset is None or page.next_offset <= offset:
                return rows
            offset = page.next_offset

    async def get_job_metrics(
        self,
        job_id: str,
        *,
        site: str | None = None,
        key: str | None = None,
        start: int = 0,
    ) -> list[MetricRow]:
        """A job's streamed metrics (see ``Session.get_job_metrics``)."""
        first = _ops.row_offset(start)
        _ops.job_metrics(job_id, site, key)
        return await self._pages(lambda offset: _ops.job_metrics(job_id, site, key, offset), first)

    async def get_validations(
        self, job_id: str, *, site: str | None = None, start: int = 0
    ) -> list[ValidationRow]:
        """The sites' validations of each round's global model."""
        first = _ops.row_offset(start)
        _ops.job_validations(job_id, site)
        return await self._pages(lambda offset: _ops.job_validations(job_id, site, offset), first)

    async def get_job_summary(self, job_id: str) -> JobRunSummary:
        """The server's summary of a finished job's run (see ``Session.get_job_summary``)."""
        return await self._unary(_ops.job_summary(job_id))

    async def download_model(
        self,
        job_id: str,
        destination: str | os.PathLike[str] | None = None,
        *,
        round: int | None = None,  # noqa: A002
        progress: ProgressCallback | None = None,
    ) -> str:
        """Download a job's final (or a round's) global model; its path (see ``Session``)."""
        from flare_admin._transfer import ModelDownload, model_target

        self._check_open()
        jid = _ops.job_id(job_id)
        rnd = _ops.model_round(round)
        name = _ops.model_file_name(jid, rnd)
        target = model_target(destination, self._target.kit.transfer, name)
        request = model_request(jid, rnd)
        sink = ModelDownload(target, model_what(jid, rnd))
        call = self._stub.DownloadModel(request)  # type: ignore[attr-defined]
        report = _ops.Progress(progress)
        try:
            first = True
            async for chunk in areplies(call):
                if first:
                    if chunk.WhichOneof("item") != "header":
                        raise not_a_header(jid)
                    sink.header(chunk.header.size, chunk.header.sha256)
                    first = False
                else:
                    await asyncio.to_thread(sink.write, chunk.data)
                report(sink.received, sink.expected_size)
            if first:
                raise not_a_header(jid)
        except grpc.RpcError as exc:
            sink.discard()
            raise self._map(exc, "download_model", jid) from exc
        except BaseException:
            sink.discard()
            call.cancel()
            raise
        return await asyncio.to_thread(sink.finish)

    # -- system -------------------------------------------------------------------------------

    async def get_system_info(self) -> SystemInfo:
        """The server, its connected sites and running jobs."""
        return await self._unary(_ops.get_system_info())

    async def get_connected_client_list(self) -> list[SiteInfo]:
        """The sites connected now."""
        return await self._unary(_ops.get_connected_client_list())

    async def get_client_job_status(
        self, client_names: Iterable[str] | None = None
    ) -> list[ClientJobStatus]:
        """Which jobs each site is running."""
        return await self._unary(_ops.get_client_job_status(client_names))

    async def show_stats(
        self, job_id: str, target_type: str, targets: Iterable[str] | None = None
    ) -> TargetStats:
        """A job's statistics."""
        return await self._unary(_ops.show_stats(job_id, target_type, targets))

    async def show_errors(
        self, job_id: str, target_type: str, targets: Iterable[str] | None = None
    ) -> TargetErrors:
        """A job's recorded errors."""
        return await self._unary(_ops.show_errors(job_id, target_type, targets))

    async def reset_errors(
        self, job_id: str, target_type: str = "all", targets: Iterable[str] | None = None
    ) -> None:
        """Forget a job's recorded errors."""
        await self._unary(_ops.reset_errors(job_id, target_type, targets))

    async def shutdown(
        self,
        target_type: str,
        client_names: Iterable[str] | None = None,
        *,
        force: bool = False,
    ) -> SystemCommandResult:
        """Stop the server (``"server"``), sites (``"client"``, optionally named) or ``"all"``.

        Stopping the server while jobs run raises ClientsStillRunning naming them;
        ``force=True`` aborts them (``FINISHED:ABORTED``) and stops.
        """
        return await self._unary(
            _ops.system_command("shutdown", target_type, client_names, force=force)
        )

    async def restart(
        self,
        target_type: str,
        client_names: Iterable[str] | None = None,
        *,
        force: bool = False,
    ) -> SystemCommandResult:
        """Restart the server, sites or all (``force`` as for :meth:`shutdown`)."""
        return await self._unary(
            _ops.system_command("restart", target_type, client_names, force=force)
        )

    async def shutdown_system(self, *, force: bool = False) -> SystemCommandResult:
        """Stop every site and then the server.

        Raises ClientsStillRunning while jobs run, naming them; ``force=True`` aborts
        them (``FINISHED:ABORTED``) first.
        """
        return await self._unary(_ops.system_command("shutdown_system", None, None, force=force))

    async def ping(self, timeout: float | None = None) -> float:
        """Round trip to the server, reconnecting first if the connection was lost; the
        seconds it took. Waits up to ``timeout`` (default: the session's) for the server.

        Raises:
            NoConnection: the server did not answer in time.
        """
        self._check_open()
        limit = self._timeout if timeout is None else _ops.timeout_value(timeout)
        op = _ops.hello()
        start = time.perf_counter()
        try:
            await self._stub.Hello(op.request, timeout=limit, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise _ops.ping_failed(exc, self.address, limit) or self._map(exc, "ping") from exc
        return time.perf_counter() - start

    def set_timeout(self, value: float) -> None:
        """Use ``value`` seconds as the deadline of this session's calls."""
        value = _ops.timeout_value(value, "value")
        if value == 0:
            raise errors.InvalidArgumentError("the timeout must be > 0 seconds")
        self._check_open()
        self._timeout = value

    def unset_timeout(self) -> None:
        """Go back to the timeout the session was opened with."""
        self._check_open()
        self._timeout = self._target.timeout

    # -- files on a target -------------------------------------------------------------------

    async def get_working_directory(self, target: str) -> FileText:
        return await self._unary(_ops.get_working_directory(target))

    async def ls_target(
        self, target: str, options: str | None = None, path: str | None = None
    ) -> DirListing:
        return await self._unary(_ops.ls_target(target, options=options, path=path))

    async def cat_target(
        self, target: str, options: str | None = None, file: str | None = None
    ) -> FileText:
        return await self._unary(_ops.cat_target(target, options=options, file=file))

    async def head_target(
        self, target: str, options: str | None = None, file: str | None = None
    ) -> FileText:
        return await self._unary(_ops.head_target(target, options=options, file=file))

    async def head_target_log(self, target: str, options: str | None = None) -> FileText:
        return await self._unary(_ops.head_target_log(target, options=options))

    async def tail_target(
        self, target: str, options: str | None = None, file: str | None = None
    ) -> FileText:
        return await self._unary(_ops.tail_target(target, options=options, file=file))

    async def tail_target_log(self, target: str, options: str | None = None) -> FileText:
        return await self._unary(_ops.tail_target_log(target, options=options))

    async def grep_target(
        self,
        target: str,
        options: str | None = None,
        pattern: str | None = None,
        file: str | None = None,
    ) -> FileText:
        op = _ops.grep_target(target, options=options, pattern=pattern, file=file)
        return await self._unary(op)

    # -- experiment tracking (issue 12) --------------------------------------------------------

    async def get_job_params(
        self,
        job_id: str,
        *,
        site: str | None = None,
        kind: str | None = None,
        key: str | None = None,
        start: int = 0,
    ) -> list[ParamRow]:
        """Params, tags and texts sites recorded (see ``Session.get_job_params``)."""
        from flare_admin import tracking

        first = _ops.row_offset(start)
        tracking.job_params(job_id, site, kind, key)
        return await self._pages(
            lambda offset: tracking.job_params(job_id, site, kind, key, offset), first
        )

    async def export_metrics(
        self,
        job_id: str,
        logdir: str | os.PathLike[str],
        *,
        format: str = "tensorboard",  # noqa: A002 - the natural name
    ) -> str:
        """Export a job's tracking records (see ``Session.export_metrics``); files are
        written in a worker thread."""
        from flare_admin import tracking

        self._check_open()
        jid = _ops.job_id(job_id)
        fmt = tracking.export_format(format)
        meta = await self.get_job_meta(jid)
        metrics = await self.get_job_metrics(jid)
        validations = await self.get_validations(jid)
        params = await self.get_job_params(jid)
        if fmt == "tensorboard":
            return await asyncio.to_thread(
                tracking.export_tensorboard, logdir, metrics, validations, params
            )
        name = f"{meta.get('name') or 'job'} ({jid})"
        tags = {"flare.job_id": jid, "flare.job_name": str(meta.get("name") or "")}
        return await asyncio.to_thread(
            tracking.export_mlflow, logdir, name, metrics, validations, params, tags
        )


async def new_secure_async_session(
    username: str,
    startup_kit_location: str | os.PathLike[str],
    debug: bool = False,
    timeout: float = 10.0,
    *,
    server_address: str | None = None,
) -> AsyncSession:
    """``await``-able twin of :func:`flare_admin.new_secure_session`."""
    return await AsyncSession.open(
        username, startup_kit_location, debug, timeout, server_address=server_address
    )
