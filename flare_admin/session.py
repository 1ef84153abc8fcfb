"""The blocking admin Session: NVIDIA FLARE's FLARE API over mutual-TLS gRPC.

Every method checks its arguments, then runs one operation from :mod:`flare_admin._ops`
(shared with :class:`flare_admin.AsyncSession`) and maps any gRPC failure through
:func:`flare_admin._errors.map_rpc_error`, so only flare exceptions leave it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from flare_admin import _ops, _streams
from flare_admin._base import SessionBase, SessionState
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
from flare_protocol import errors
from flare_protocol._generated import admin_pb2_grpc, common_pb2

if TYPE_CHECKING:  # imported by the functions that need them: `import flare_admin` stays cheap
    from flare_admin._upload import JobUpload, ProgressCallback
    from flare_admin.driver import Driver
    from flare_admin.tracking import ParamRow

__all__ = ["JobWatch", "Session", "SessionState", "new_secure_session"]

T = TypeVar("T")
R = TypeVar("R")
logger = logging.getLogger("flare_admin")

_live_sessions: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_forgotten_sessions() -> None:
    # A script that never calls close() must still exit at once: close channels for it.
    for session in list(_live_sessions):
        try:
            session.close()
        except Exception:
            pass


def replies(call: Any) -> Iterator[Any]:
    """The messages of a server stream; Ctrl-C cancels the call and raises a plain
    ``KeyboardInterrupt`` (no gRPC frames or chained exception on the user's terminal)."""
    stream = iter(call)
    while True:
        try:
            reply = next(stream)
        except StopIteration:
            return
        except KeyboardInterrupt:
            call.cancel()
            raise KeyboardInterrupt from None
        yield reply


class JobWatch(Iterator[JobEvent]):
    """The events of :meth:`Session.watch_job`, an iterator.

    It ends after the event that shows the job finished. :meth:`close` (also on leaving a
    ``with`` block, or when the iterator is dropped, e.g. after ``break``) cancels the
    server stream at once.
    """

    def __init__(self, events: Iterator[JobEvent], call: Any) -> None:
        self._events = events
        self._close = weakref.finalize(self, call.cancel)
        self._close.atexit = False  # at exit the session's channel is closed anyway

    def __iter__(self) -> JobWatch:
        return self

    def __next__(self) -> JobEvent:
        return next(self._events)

    def cancel(self) -> None:
        """Cancel the server stream from any thread; the iterating thread's ``next()``
        then raises (use :meth:`close` from the thread that iterates)."""
        self._close()

    def close(self) -> None:
        """Stop watching: cancel the server stream (idempotent)."""
        self._close()
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> JobWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Session(SessionBase):
    """An open admin session. Create it with :func:`new_secure_session`.

    Use it as a context manager (``with new_secure_session(...) as s:``) or call
    :meth:`close`; after closing, every method raises :class:`SessionClosed`.
    """

    def __init__(self, target: Any, channel: grpc.Channel, info: Any, debug: bool) -> None:
        super().__init__(target, channel, info, debug)
        self._lock = threading.Lock()
        _live_sessions.add(self)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the session and its connection (idempotent)."""
        with self._lock:
            if self._state is SessionState.CLOSED:
                return
            self._state = SessionState.CLOSED
        self._channel.close()
        _live_sessions.discard(self)

    def __enter__(self) -> Session:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the transport -----------------------------------------------------------------------

    def _unary(self, op: _ops.Unary[T]) -> T:
        self._check_open()
        start = time.perf_counter()
        try:
            reply = getattr(self._stub, op.rpc)(op.request, timeout=self._timeout)
        except grpc.RpcError as exc:
            parts = op.parts(exc)  # too big for one 4 MiB reply: fetch it in parts
            if parts is not None and op.merge is not None:
                return op.merge([self._unary(part) for part in parts])
            raise self._map(exc, op.action, op.job_id) from exc
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # no gRPC frames on the user's terminal
        finally:
            self._took(op.action, start)
        return op.parse(reply)

    def _collect(self, pages: _ops.Pages[R]) -> list[R]:
        while (op := pages.next()) is not None:
            pages.add(self._unary(op))
        return pages.rows

    def _download(self, download: _streams.Download, progress: ProgressCallback | None) -> str:
        sink = download.sink
        call = getattr(self._stub, download.rpc)(download.request, metadata=download.metadata)
        report = _ops.Progress(progress)
        with self._receiving(call, download):
            for message in replies(call):
                sink.feed(message)  # checked, then written as it arrives (_download)
                report(sink.received, sink.total)
        return sink.finish()

    # -- jobs -------------------------------------------------------------------------------

    def submit_job(
        self,
        job_definition_path: str | os.PathLike[str] | ExportableJob,
        *,
        progress: ProgressCallback | None = None,
        initial_model_job_id: str | None = None,
    ) -> str:
        """Upload a job folder (zipped while streaming), a ``.zip``, or a job object (a
        ``flare_job.FedJob``: exported to a temporary folder first); return its job id.

        ``progress(bytes_sent, total)`` is called as the upload advances (from gRPC's
        sending thread). The id is returned only once the job is durable on the server.
        ``initial_model_job_id``: start from that finished job's final global model
        instead of the job's own initial model (continue training across jobs).

        Raises:
            InvalidJobDefinition: the folder, archive or meta.json is invalid (locally or
                per the server), naming the path, entry or field.
            AuthorizationError: our role may not submit jobs.
        """
        self._check_open()
        if isinstance(job_definition_path, ExportableJob):
            with exported(job_definition_path) as folder:
                return self.submit_job(
                    folder, progress=progress, initial_model_job_id=initial_model_job_id
                )
        upload, source = _streams.job_upload(job_definition_path, initial_model_job_id)
        if source is not None:
            _ops.model_source_ready(self.get_job_meta(source))
        return self._submit(upload, progress, source)

    def _submit(
        self, upload: JobUpload, progress: ProgressCallback | None, source: str | None
    ) -> str:
        failure: list[BaseException] = []
        holder: list[Any] = []
        started = threading.Event()

        def requests() -> Iterator[common_pb2.TransferChunk]:
            try:
                yield from upload.messages(progress, source)
            except GeneratorExit:  # the call ended first (e.g. refused at the header)
                raise
            except BaseException as exc:  # cancel: a truncated upload must never commit
                failure.append(exc)
                started.wait(5.0)
                if holder:
                    holder[0].cancel()

        future = self._stub.SubmitJob.future(requests())
        holder.append(future)
        started.set()
        try:
            reply = future.result()
        except BaseException as exc:
            if not isinstance(exc, (grpc.RpcError, grpc.FutureCancelledError)):
                future.cancel()  # e.g. KeyboardInterrupt: stop the upload too
                if isinstance(exc, KeyboardInterrupt):
                    raise KeyboardInterrupt from None
                raise
            if failure:
                raise failure[0] from None
            if isinstance(exc, grpc.RpcError):
                raise self._map(exc, "submit_job", submitting=True) from exc
            raise errors.SessionClosed("submit_job: the upload was cancelled") from None
        if failure:
            raise failure[0]
        return str(reply.job_id)

    def list_jobs(
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
        return self._unary(
            _ops.list_jobs(detailed, limit, id_prefix, name_prefix, reverse, all=all)
        )

    def get_job_meta(self, job_id: str) -> JobMeta:
        """A job's full meta (``meta.status`` or ``meta["status"]``)."""
        return self._unary(_ops.get_job_meta(job_id))

    def clone_job(self, job_id: str, *, initial_model_job_id: str | None = None) -> str:
        """Submit a copy of a job; return the new job's id.

        ``initial_model_job_id``: the copy starts from that finished job's final global
        model (e.g. ``clone_job(j, initial_model_job_id=j)`` trains ``j`` further).
        """
        return self._unary(_ops.clone_job(job_id, initial_model_job_id))

    def abort_job(self, job_id: str) -> None:
        """Abort a submitted, dispatched or running job (JobNotRunning once it finished)."""
        self._unary(_ops.abort_job(job_id))

    def delete_job(self, job_id: str) -> None:
        """Delete a job and its files from the server."""
        self._unary(_ops.delete_job(job_id))

    def monitor_job(
        self,
        job_id: str,
        timeout: float = 0.0,
        poll_interval: float = 2.0,
        cb: MonitorCallback | None = None,
        *cb_args: Any,
        **cb_kwargs: Any,
    ) -> MonitorReturnCode:
        """Follow a job as the server pushes its changes (no polling).

        ``cb(session, job_id, job_meta, *cb_args, **cb_kwargs)`` is called with the
        current meta at once and again on every change; returning False ends the monitor
        with ``ENDED_BY_CB``. ``timeout`` (seconds, 0 = none) gives ``TIMEOUT``; a
        finished job gives ``JOB_FINISHED``. ``poll_interval`` is accepted for
        compatibility and unused. Exceptions raised by ``cb`` propagate unchanged.
        """
        self._check_open()
        watch = _streams.monitor(job_id, timeout, poll_interval)
        step = _streams.MonitorStep(self, watch.job_id, cb, cb_args, cb_kwargs)
        call = self._stub.WatchJob(watch.request, timeout=watch.limit or None)
        try:
            for reply in replies(call):
                code = step.verdict(*step.call(reply))
                if code is not None:
                    return code
        except grpc.RpcError as exc:
            return self._watch_failed(exc, watch, MonitorReturnCode.TIMEOUT)
        finally:
            call.cancel()
        raise _streams.stream_ended(self.address, watch.job_id)

    def wait_for_job(
        self, job_id: str, timeout: float = 0.0, poll_interval: float = 2.0
    ) -> JobMeta:
        """Block until the job finishes; return its final meta.

        Raises:
            JobTimeout: it did not finish within ``timeout`` seconds (0 = wait forever).
        """
        last = _streams.LastMeta()
        return last.result(self.monitor_job(job_id, timeout, poll_interval, last), job_id, timeout)

    def watch_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        metrics: bool = True,
        validations: bool = True,
    ) -> JobWatch:
        """Follow a job as the server pushes it: an iterator of :data:`JobEvent`.

        Events are :class:`MetaChanged` (the current meta first, then every change),
        :class:`MetricsArrived` and :class:`ValidationsArrived` (rows as the sites stream
        them; the same rows, in the same order, as :meth:`get_job_metrics` and
        :meth:`get_validations`). The iterator ends after the ``MetaChanged`` whose
        ``meta.finished`` is True, every row written by then having come before it (rows a
        site sends after an admin's abort, while the job winds down, are only in the
        readers). ``metrics``/``validations``: False leaves those rows out. Breaking out,
        ``close()`` or Ctrl-C cancels the server stream.

        Raises (when iterated):
            AuthorizationError: our role may not read the job's rows (at the start; watch
                with ``metrics=False, validations=False`` to follow only its status).
            JobTimeout: ``timeout`` seconds passed before the job finished.
            NoConnection: the server ended the stream early (e.g. it is stopping).
        """
        self._check_open()
        watch = _streams.watch(job_id, timeout, metrics, validations)
        call = self._stub.WatchJobEvents(watch.request, timeout=watch.limit)
        return JobWatch(self._job_events(call, watch), call)

    def _job_events(self, call: Any, watch: _streams.Watch) -> Iterator[JobEvent]:
        step = _ops.WatchStep(watch.job_id)
        try:
            for reply in replies(call):
                yield step.event(reply)
                if step.finished:
                    return
        except grpc.RpcError as exc:
            raise self._watch_failed(exc, watch, step.timed_out(watch.limit or 0.0)) from None
        finally:
            call.cancel()
        raise _streams.stream_ended(self.address, watch.job_id)

    def download_job_result(
        self,
        job_id: str,
        destination: str | os.PathLike[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Download a finished job's result into ``<destination>/<job_id>/``; return that path.

        ``destination`` defaults to the kit's ``transfer/`` folder. The result streams to
        disk (bounded memory), is checked (size, SHA-256, every archive entry) and only
        then extracted, replacing an earlier download of the same job.

        ``progress(bytes_received, total)`` is called from this loop as data arrives
        (``total`` is -1 when the server does not announce it).

        Raises:
            JobNotDone: the job has not finished.
            InvalidArgumentError: ``destination`` is not an existing folder.
        """
        self._check_open()
        download = _streams.result_download(job_id, destination, self._target.kit.transfer)
        path = self._download(download, progress)
        download.sink.warn_if_partial(path)  # type: ignore[union-attr]
        return path

    def get_job_logs(self, job_id: str, target: str = "server") -> FileText:
        """The lines of ``target``'s log (``"server"`` or a site name) that mention the job
        (a ``str``; see :class:`FileText`)."""
        return self._unary(_ops.get_job_logs(job_id, target))

    # -- results ------------------------------------------------------------------------------

    def get_job_metrics(
        self,
        job_id: str,
        *,
        site: str | None = None,
        key: str | None = None,
        start: int = 0,
    ) -> list[MetricRow]:
        """The metrics sites streamed for a job (so far, while it runs), in arrival order.

        ``site``/``key`` keep only that site's or that metric's rows; ``start`` skips the
        first rows (of those), so ``rows += s.get_job_metrics(j, start=len(rows))``
        follows a running job. Each row is a :class:`MetricRow` (``site, round, key,
        value, step, time``); :func:`flare_admin.rounds_table` arranges them per round.
        """
        return self._collect(_ops.metric_pages(job_id, site, key, start))

    def get_validations(
        self, job_id: str, *, site: str | None = None, start: int = 0
    ) -> list[ValidationRow]:
        """The sites' validations of each round's global model (:class:`ValidationRow`);
        ``start`` skips the first rows, as in :meth:`get_job_metrics`."""
        return self._collect(_ops.validation_pages(job_id, site, start))

    def get_job_messages(
        self, job_id: str, *, event: str | None = None, start: int = 0
    ) -> list[MessageRow]:
        """A driver job's message log (docs/driver.md), in order: every message its driver
        sent (``event`` "sent"), every reply (``"reply"``, with its latency, or the error
        of an error reply) and every refused reply (``"refused"``, with the reason).
        ``event`` keeps one kind; ``start`` skips rows as in :meth:`get_job_metrics`."""
        return self._collect(_ops.message_pages(job_id, event, start))

    def get_driver(self, job_id: str, *, timeout: float | None = None) -> Driver:
        """The driver of a job whose config says ``"workflow": "driver"`` (docs/driver.md):
        a :class:`~flare_admin.driver.Driver` to send its sites messages and receive their
        replies. Waits until the job runs (``timeout`` seconds; None: no limit). For the
        job's submitter, or a role that may manage it.

        Raises:
            AuthorizationError: we may not drive this job.
            InvalidArgumentError: the job runs a built-in workflow.
            JobNotRunning: the job has finished.
            JobTimeout: it did not run within ``timeout``.
        """
        from flare_admin._driver import DriverInfo
        from flare_admin.driver import Driver, connect_failed, connect_request

        self._check_open()
        request = connect_request(job_id)
        limit = _ops.watch_timeout(timeout)
        try:
            reply = self._stub.DriverConnect(request, timeout=limit)
        except grpc.RpcError as exc:
            raise connect_failed(exc, self, request.job_id, limit) from exc
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None
        return Driver(self, DriverInfo.from_reply(reply))

    def get_job_summary(self, job_id: str) -> JobRunSummary:
        """The server's summary of a finished job's run (:class:`JobRunSummary`): workflow,
        rounds completed, final status, and per round the participating sites and their
        ``num_examples``; as a mapping, every key of the server's ``summary.json``."""
        return self._unary(_ops.job_summary(job_id))

    def download_model(
        self,
        job_id: str,
        destination: str | os.PathLike[str] | None = None,
        *,
        round: int | None = None,  # noqa: A002 - the natural name, as Scaleout's
        progress: ProgressCallback | None = None,
    ) -> str:
        """Download a job's final global model (or round ``round``'s) as ``.npz``; its path.

        ``destination``: a folder (default: the kit's ``transfer/``), where the file is
        named ``<job_id>.global_model.npz`` / ``<job_id>.round_003.npz``, or a path
        ending in ``.npz``. Load it with ``flare_protocol.models.load_params`` (or
        ``numpy.load(path, allow_pickle=False)``). ``progress(bytes_received, total)`` is
        called from the receiving loop.

        Raises:
            JobNotDone: the job has no final model yet (not finished, or it failed).
            InvalidArgumentError: no such round, or ``destination`` is unusable.
        """
        self._check_open()
        download = _streams.model_download(job_id, destination, self._target.kit.transfer, round)
        return self._download(download, progress)

    # -- system -------------------------------------------------------------------------------

    def get_system_info(self) -> SystemInfo:
        """The server, its connected sites and running jobs."""
        return self._unary(_ops.get_system_info())

    def update_revocations(self, path: str | os.PathLike[str]) -> RevocationUpdate:
        """Send a newer revocation list to the server; what is in force now.

        ``path``: the CRL ``flare provision`` signed (``<workspace>/<project>/state/
        revocations.crl``, or the new server kit's ``startup/revocations.crl``). The server
        keeps it only if the project CA signed it and its CRL number is greater than the
        one in force; it persists it, refuses the revoked certificates' next calls and ends
        their open streams and site connections. Only a ``project_admin`` may.

        Raises:
            RevocationListRejected: not signed by the project CA, not a CRL, or not newer
                (``reason``, ``crl_number``, ``in_force``).
            AuthorizationError: the caller is not a project_admin.
            LocalIOError: ``path`` cannot be read.
        """
        self._check_open()
        return self._unary(_ops.update_revocations(path))

    def get_connected_client_list(self) -> list[SiteInfo]:
        """The sites connected now."""
        return self._unary(_ops.get_connected_client_list())

    def get_client_job_status(
        self, client_names: Iterable[str] | None = None
    ) -> list[ClientJobStatus]:
        """Which jobs each site (or the named ones) is running."""
        return self._unary(_ops.get_client_job_status(client_names))

    def show_stats(
        self, job_id: str, target_type: str, targets: Iterable[str] | None = None
    ) -> TargetStats:
        """A running job's statistics on the server and/or sites (target -> stats)."""
        return self._unary(_ops.show_stats(job_id, target_type, targets))

    def show_errors(
        self, job_id: str, target_type: str, targets: Iterable[str] | None = None
    ) -> TargetErrors:
        """Errors a job reported on the server and/or sites (target -> errors)."""
        return self._unary(_ops.show_errors(job_id, target_type, targets))

    def reset_errors(
        self, job_id: str, target_type: str = "all", targets: Iterable[str] | None = None
    ) -> None:
        """Forget a job's recorded errors."""
        self._unary(_ops.reset_errors(job_id, target_type, targets))

    def shutdown(
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
        return self._unary(_ops.system_command("shutdown", target_type, client_names, force=force))

    def restart(
        self,
        target_type: str,
        client_names: Iterable[str] | None = None,
        *,
        force: bool = False,
    ) -> SystemCommandResult:
        """Restart the server, sites or all (``force`` as for :meth:`shutdown`)."""
        return self._unary(_ops.system_command("restart", target_type, client_names, force=force))

    def shutdown_system(self, *, force: bool = False) -> SystemCommandResult:
        """Stop every site and then the server.

        Raises ClientsStillRunning while jobs run, naming them; ``force=True`` aborts
        them (``FINISHED:ABORTED``) first.
        """
        return self._unary(_ops.system_command("shutdown_system", None, None, force=force))

    def ping(self, timeout: float | None = None) -> float:
        """Round trip to the server, reconnecting first if the connection was lost; the
        seconds it took. Waits up to ``timeout`` (default: the session's) for the server.

        Raises:
            NoConnection: the server did not answer in time.
        """
        limit = self._ping_limit(timeout)
        start = time.perf_counter()
        try:
            self._stub.Hello(_ops.hello().request, timeout=limit, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise self._ping_error(exc, limit) from exc
        return time.perf_counter() - start

    # -- files on a target -------------------------------------------------------------------

    def get_working_directory(self, target: str) -> FileText:
        """The working directory of ``target`` (``"server"`` or a site name)."""
        return self._unary(_ops.get_working_directory(target))

    def ls_target(
        self, target: str, options: str | None = None, path: str | None = None
    ) -> DirListing:
        """``ls`` in the target's workspace: its text (a ``str``) with ``.entries``
        (:class:`DirEntry`) and ``.truncated``."""
        return self._unary(_ops.ls_target(target, options=options, path=path))

    def cat_target(
        self, target: str, options: str | None = None, file: str | None = None
    ) -> FileText:
        """``cat`` a file in the target's workspace: its text (a ``str``; ``.truncated`` is
        True when the server capped it at 1 MiB)."""
        return self._unary(_ops.cat_target(target, options=options, file=file))

    def head_target(
        self, target: str, options: str | None = None, file: str | None = None
    ) -> FileText:
        """The first lines of a file in the target's workspace."""
        return self._unary(_ops.head_target(target, options=options, file=file))

    def head_target_log(self, target: str, options: str | None = None) -> FileText:
        """The first lines of the target's log."""
        return self._unary(_ops.head_target_log(target, options=options))

    def tail_target(
        self, target: str, options: str | None = None, file: str | None = None
    ) -> FileText:
        """The last lines of a file in the target's workspace."""
        return self._unary(_ops.tail_target(target, options=options, file=file))

    def tail_target_log(self, target: str, options: str | None = None) -> FileText:
        """The last lines of the target's log."""
        return self._unary(_ops.tail_target_log(target, options=options))

    def grep_target(
        self,
        target: str,
        options: str | None = None,
        pattern: str | None = None,
        file: str | None = None,
    ) -> FileText:
        """Lines matching ``pattern`` in a file of the target's workspace (numbered)."""
        op = _ops.grep_target(target, options=options, pattern=pattern, file=file)
        return self._unary(op)

    # -- experiment tracking (issue 12) --------------------------------------------------------

    def get_job_params(
        self,
        job_id: str,
        *,
        site: str | None = None,
        kind: str | None = None,
        key: str | None = None,
        start: int = 0,
    ) -> list[ParamRow]:
        """The params, tags and texts sites recorded for a job (``MLflowWriter.log_param``,
        ``set_tag``, ``log_text``; strings given to ``WandBWriter.log``), in arrival order.

        Each row is a :class:`~flare_admin.tracking.ParamRow` (``site, round, kind, key,
        value, step, time``; ``value`` a string). ``site``, ``kind`` (``"param"``,
        ``"tag"``, ``"text"``) and ``key`` filter; ``start`` skips rows as in
        :meth:`get_job_metrics`. Numbers stay in :meth:`get_job_metrics`.
        """
        from flare_admin import tracking

        return self._collect(tracking.param_pages(job_id, site, kind, key, start))

    def export_metrics(
        self,
        job_id: str,
        logdir: str | os.PathLike[str],
        *,
        format: str = "tensorboard",  # noqa: A002 - the natural name
    ) -> str:
        """Export a job's metrics, validations, params, tags and texts; return where.

        ``format="tensorboard"``: event files, one run per site (``<logdir>/<site>/``),
        tags = metric keys, step = the step the site gave (else the round); view them with
        ``tensorboard --logdir LOGDIR``. Needs tensorboardX (``pip install
        'flare-admin[tensorboard]'``). ``format="mlflow"``: one run per site in the
        experiment ``<job name> (<job_id>)`` of the MLflow store ``logdir`` (a tracking URI,
        or a folder for a local ``sqlite:///<logdir>/mlflow.db``); needs ``mlflow``.
        Works while the job runs too (what arrived so far).

        Raises:
            MissingDependency: the format's library is not installed (naming the install).
            InvalidArgumentError: an unknown format.
        """
        from flare_admin import tracking

        self._check_open()
        jid = _ops.job_id(job_id)
        fmt = tracking.export_format(format)
        meta = self.get_job_meta(jid)
        metrics = self.get_job_metrics(jid)
        validations = self.get_validations(jid)
        params = self.get_job_params(jid)
        return tracking.export_records(fmt, logdir, jid, meta, metrics, validations, params)


def new_secure_session(
    username: str,
    startup_kit_location: str | os.PathLike[str],
    debug: bool = False,
    timeout: float = 10.0,
    *,
    server_address: str | None = None,
) -> Session:
    """Check the admin kit, connect with mutual TLS and return an open :class:`Session`.

    Args:
        username: the admin's name; must equal the kit certificate's CN.
        startup_kit_location: the admin's kit folder (``prod_NN/<admin>/``).
        debug: log every call and its duration on the ``flare_admin`` logger.
        timeout: seconds to connect and the default deadline of every call.
        server_address: ``host:port`` to dial instead of the kit's (NAT, tests); TLS
            still verifies the kit's server name.

    Raises:
        KitError and subclasses, UsernameMismatch: the kit cannot be used (no network call).
        NoConnection: the server is unreachable within ``timeout`` (naming the address).
        AuthenticationError: the server refused our certificate.
    """
    from flare_admin._connect import open_failed, opened, prepare

    target = prepare(username, startup_kit_location, timeout, server_address, debug)
    channel = grpc.secure_channel(target.address, target.credentials, target.options)
    try:
        hello = admin_pb2_grpc.AdminStub(channel).Hello
        info = opened(target, hello(_ops.hello().request, timeout=target.timeout))
    except grpc.RpcError as exc:
        channel.close()
        raise open_failed(target, exc, debug) from exc
    except KeyboardInterrupt:
        channel.close()
        raise KeyboardInterrupt from None
    except BaseException:
        channel.close()
        raise
    return Session(target, channel, info, debug)
