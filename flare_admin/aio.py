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
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from flare_admin import _ops, _streams
from flare_admin._base import SessionBase, SessionState
from flare_admin._connect import open_failed, opened, prepare
from flare_admin._job_objects import ExportableJob, exported
from flare_admin._streams import MonitorCallback
from flare_admin.results import (
    ClientJobStatus,
    DirListing,
    FileText,
    JobEvent,
    JobMeta,
    JobRunSummary,
    JobSummary,
    MessageRow,
    MetricRow,
    MonitorReturnCode,
    RevocationUpdate,
    SiteInfo,
    SystemCommandResult,
    SystemInfo,
    TargetErrors,
    TargetStats,
    ValidationRow,
)
from flare_protocol._generated import admin_pb2_grpc, common_pb2

if TYPE_CHECKING:  # the transfer machinery is imported by the methods that move files
    from flare_admin._upload import JobUpload, ProgressCallback
    from flare_admin.driver import AsyncDriver
    from flare_admin.tracking import ParamRow

__all__ = ["AsyncJobWatch", "AsyncSession", "new_secure_async_session"]

T = TypeVar("T")
R = TypeVar("R")
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
        code, details = exc.code(), exc.details() or ""
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


class AsyncSession(SessionBase):
    """An open asyncio admin session; create it with ``await AsyncSession.open(...)``.

    ``async with await AsyncSession.open(...) as s:`` closes it on exit; after
    :meth:`close` every method raises :class:`SessionClosed`.
    """

    _open_again = "AsyncSession.open()"

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
        try:
            hello = admin_pb2_grpc.AdminStub(channel).Hello
            info = opened(target, await hello(_ops.hello().request, timeout=target.timeout))
        except grpc.RpcError as exc:
            await channel.close()
            raise open_failed(target, exc, debug) from exc
        except BaseException:
            await channel.close()
            raise
        return cls(target, channel, info, debug)

    # -- lifecycle -------------------------------------------------------------------------

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

    # -- the transport -----------------------------------------------------------------------

    async def _unary(self, op: _ops.Unary[T]) -> T:
        self._check_open()
        start = time.perf_counter()
        try:
            reply = await getattr(self._stub, op.rpc)(op.request, timeout=self._timeout)
        except grpc.RpcError as exc:
            parts = op.parts(exc)
            if parts is not None and op.merge is not None:
                return op.merge([await self._unary(part) for part in parts])
            raise self._map(exc, op.action, op.job_id) from exc
        finally:
            self._took(op.action, start)
        return op.parse(reply)

    async def _collect(self, pages: _ops.Pages[R]) -> list[R]:
        while (op := pages.next()) is not None:
            pages.add(await self._unary(op))
        return pages.rows

    async def _download(
        self, download: _streams.Download, progress: ProgressCallback | None
    ) -> str:
        """Each message is checked and written in a worker thread: the loop stays free."""
        sink = download.sink
        call = getattr(self._stub, download.rpc)(download.request, metadata=download.metadata)
        report = _ops.Progress(progress)
        with self._receiving(call, download):
            async for message in areplies(call):
                await asyncio.to_thread(sink.feed, message)
                report(sink.received, sink.total)
        return await asyncio.to_thread(sink.finish)

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
        self._check_open()
        if isinstance(job_definition_path, ExportableJob):
            with exported(job_definition_path) as folder:
                return await self.submit_job(
                    folder, progress=progress, initial_model_job_id=initial_model_job_id
                )
        upload, source = _streams.job_upload(job_definition_path, initial_model_job_id)
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
        messages = upload.messages(progress, source)

        async def requests() -> AsyncIterator[common_pb2.TransferChunk]:
            try:
                while True:
                    message = await asyncio.to_thread(next, messages, _END)
                    if message is _END or holder[0].done():
                        # done: refused (e.g. at the header) while this chunk was read; a
                        # write now would make grpc.aio report INTERNAL, not the refusal
                        return
                    yield message  # type: ignore[misc]
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
        """Jobs ordered by submit time (see ``Session.list_jobs``)."""
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
        watch = _streams.monitor(job_id, timeout, poll_interval)
        step = _streams.MonitorStep(self, watch.job_id, cb, cb_args, cb_kwargs)
        call = self._stub.WatchJob(watch.request, timeout=watch.limit or None)
        try:
            async for reply in areplies(call):
                meta, keep = step.call(reply)
                if inspect.isawaitable(keep):
                    keep = await keep
                code = step.verdict(meta, keep)
                if code is not None:
                    return code
        except grpc.RpcError as exc:
            return self._watch_failed(exc, watch, MonitorReturnCode.TIMEOUT)
        finally:
            call.cancel()
        raise _streams.stream_ended(self.address, watch.job_id)

    async def wait_for_job(
        self, job_id: str, timeout: float = 0.0, poll_interval: float = 2.0
    ) -> JobMeta:
        """Wait until the job finishes; return its final meta (JobTimeout after ``timeout``)."""
        last = _streams.LastMeta()
        code = await self.monitor_job(job_id, timeout, poll_interval, last)
        return last.result(code, job_id, timeout)

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
        watch = _streams.watch(job_id, timeout, metrics, validations)
        call = self._stub.WatchJobEvents(watch.request, timeout=watch.limit)
        return AsyncJobWatch(self._job_events(call, watch), call)

    async def _job_events(self, call: Any, watch: _streams.Watch) -> AsyncIterator[JobEvent]:
        step = _ops.WatchStep(watch.job_id)
        try:
            async for reply in areplies(call):
                yield step.event(reply)
                if step.finished:
                    return
        except grpc.RpcError as exc:
            raise self._watch_failed(exc, watch, step.timed_out(watch.limit or 0.0)) from None
        finally:
            call.cancel()
        raise _streams.stream_ended(self.address, watch.job_id)

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
        self._check_open()
        download = _streams.result_download(job_id, destination, self._target.kit.transfer)
        path = await self._download(download, progress)
        download.sink.warn_if_partial(path)  # type: ignore[union-attr]
        return path

    async def get_job_logs(self, job_id: str, target: str = "server") -> FileText:
        """The job's log on ``target``."""
        return await self._unary(_ops.get_job_logs(job_id, target))

    # -- results ------------------------------------------------------------------------------

    async def get_job_metrics(
        self,
        job_id: str,
        *,
        site: str | None = None,
        key: str | None = None,
        start: int = 0,
    ) -> list[MetricRow]:
        """A job's streamed metrics (see ``Session.get_job_metrics``)."""
        return await self._collect(_ops.metric_pages(job_id, site, key, start))

    async def get_validations(
        self, job_id: str, *, site: str | None = None, start: int = 0
    ) -> list[ValidationRow]:
        """The sites' validations of each round's global model."""
        return await self._collect(_ops.validation_pages(job_id, site, start))

    async def get_job_messages(
        self, job_id: str, *, event: str | None = None, start: int = 0
    ) -> list[MessageRow]:
        """As :meth:`Session.get_job_messages`."""
        return await self._collect(_ops.message_pages(job_id, event, start))

    async def get_driver(self, job_id: str, *, timeout: float | None = None) -> AsyncDriver:
        """As :meth:`Session.get_driver`: an :class:`~flare_admin.driver.AsyncDriver`."""
        from flare_admin._driver import DriverInfo
        from flare_admin.driver import AsyncDriver, connect_failed, connect_request

        self._check_open()
        request = connect_request(job_id)
        limit = _ops.watch_timeout(timeout)
        try:
            reply = await self._stub.DriverConnect(request, timeout=limit)
        except grpc.RpcError as exc:
            raise connect_failed(exc, self, request.job_id, limit) from exc
        return AsyncDriver(self, DriverInfo.from_reply(reply))

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
        self._check_open()
        download = _streams.model_download(job_id, destination, self._target.kit.transfer, round)
        return await self._download(download, progress)

    # -- system -------------------------------------------------------------------------------

    async def get_system_info(self) -> SystemInfo:
        """The server, its connected sites and running jobs."""
        return await self._unary(_ops.get_system_info())

    async def update_revocations(self, path: str | os.PathLike[str]) -> RevocationUpdate:
        """Send a newer revocation list to the server (see ``Session.update_revocations``)."""
        self._check_open()
        return await self._unary(_ops.update_revocations(path))

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
        """Stop the server, sites or all (see ``Session.shutdown``)."""
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
        """Stop every site and then the server (see ``Session.shutdown_system``)."""
        return await self._unary(_ops.system_command("shutdown_system", None, None, force=force))

    async def ping(self, timeout: float | None = None) -> float:
        """Round trip to the server in seconds, reconnecting first (see ``Session.ping``)."""
        limit = self._ping_limit(timeout)
        start = time.perf_counter()
        try:
            await self._stub.Hello(_ops.hello().request, timeout=limit, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise self._ping_error(exc, limit) from exc
        return time.perf_counter() - start

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

        return await self._collect(tracking.param_pages(job_id, site, kind, key, start))

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
        return await asyncio.to_thread(
            tracking.export_records, fmt, logdir, jid, meta, metrics, validations, params
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
