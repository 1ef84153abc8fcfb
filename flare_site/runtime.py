"""The site process: connect to the server, stay connected, and turn messages into work.

Theory of operation. :class:`SiteRuntime` runs one loop on one asyncio event loop:

1. **Connect.** Dial the server's site endpoint over mutual TLS with the kit's
   credentials, ``Register`` (reporting the jobs this site still runs and its job limit),
   open the ``Channel`` and send the first heartbeat carrying the session id.
2. **Stay connected.** Heartbeats go out every ``heartbeat_interval`` seconds, as the
   server's ``RegisterReply`` says. Anything from the server (an ack, a message) counts as
   a sign of life; after ``heartbeat_timeout`` seconds of silence, or when the stream
   breaks or ends (a network cut, a server restart, a session the server no longer
   knows), the connection is dropped and the site dials again after a back-off delay:
   exponential from ``reconnect_initial`` up to ``reconnect_max``, with jitter (a random
   point in the upper half of the delay) so that many sites do not dial in lockstep. A
   successful Register resets the delay. Jobs keep running while the site reconnects.
3. **Work.** Messages from the server go through a topic allowlist (never a name looked
   up) to handlers, each in its own task. Per job, ``job.deploy`` and ``task.*`` run in
   arrival order (a job lock covers download, run and upload); ``job.end``, ``job.abort``
   and ``site.command`` never wait behind them: a task stuck in user code must not keep
   its job alive. Ending a job frees its slot at once and stops its user code (a task
   still out is killed: SIGTERM to the process group, SIGKILL two seconds later), then
   ships the job's log. Blobs move through
   :mod:`flare_site.blobs` on the current connection; outgoing envelopes wait in a
   bounded outbox that survives reconnects, so a result computed during a network cut
   is delivered after it.
4. **Stop.** SIGTERM/SIGINT or a ``shutdown``/``restart`` command: active jobs are aborted
   (their process groups killed) and reported ``aborted``, the outbox is flushed briefly,
   the Channel is closed; :meth:`SiteRuntime.run` returns ``"stop"`` or ``"restart"``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import shutil
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc

from flare_protocol._generated import site_pb2, site_pb2_grpc
from flare_protocol.credentials import channel_credentials, channel_options
from flare_protocol.errors import ExecutionError, MessageError
from flare_protocol.kit import Kit
from flare_protocol.message import (
    INLINE_NPZ_BYTES,
    ErrorCode,
    error_reply_wire,
    metadata_from,
)
from flare_protocol.site_topics import (
    SERVER_TOPICS,
    DriverMessage,
    DriverReply,
    JobAbort,
    JobDeploy,
    JobEnd,
    JobLog,
    JobStatusReport,
    JobStatusValue,
    Metric,
    Sender,
    SiteBody,
    SiteCommand,
    SiteReply,
    SiteTopic,
    TaskResult,
    TrainTask,
    ValidateTask,
    parse_body,
    topic_from,
)
from flare_site.blobs import Blob, BlobError, download, upload
from flare_site.commands import SiteCommands
from flare_site.executors import MetricEvent
from flare_site.executors.base import MessageSpec
from flare_site.executors.python_env import PythonEnvs
from flare_site.jobs import (
    ABORTED,
    FAILED,
    JobManager,
    JobRecord,
    check_job_id,
    describe_error,
    task_result_body,
)
from flare_site.settings import SiteSettings, load_site_settings
from flare_site.task_ledger import SentResult, TaskLedger
from flare_site.user_account import UserAccount

__all__ = ["SERVER_TOPICS", "SiteRuntime", "SiteSettings", "load_site_settings"]

log = logging.getLogger("flare_site")

T = TypeVar("T")


def _inline_npz(text: str) -> bytes:
    """The arrays a message carries inline (base64), at most INLINE_NPZ_BYTES."""
    if len(text) > INLINE_NPZ_BYTES * 4 // 3 + 8:
        raise MessageError("a message's inline arrays are too big to be inline")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise MessageError(f"a message's inline arrays are not base64: {exc}") from None


def _site_version() -> str:
    try:
        from importlib.metadata import version

        return version("flare-admin")
    except Exception:
        return "dev"


class _Lost(Exception):
    """The connection is gone (internal: triggers a reconnect)."""


@dataclass
class _Connection:
    channel: grpc.aio.Channel
    stub: site_pb2_grpc.SiteStub
    session_id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    call: Any = None
    last_seen: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set before the channel is closed: a transfer on it that ends cancelled was cut off.
    lost: bool = False

    async def write(self, message: site_pb2.SiteMessage) -> None:
        async with self.lock:
            await self.call.write(message)


class SiteRuntime:
    """One site's connection to the server and the jobs it runs (see the module doc)."""

    def __init__(
        self,
        kit: Kit,
        settings: SiteSettings,
        *,
        blob_stub: Any = None,
        run_as: UserAccount | None = None,
    ) -> None:
        """``blob_stub``: a ``SiteStub`` for Download/Upload instead of the connection's
        (a seam for tests until the server serves blobs; None in production). ``run_as``:
        the OS user user code runs as (:func:`flare_site.user_account.user_code_account`
        of the ``run_user_code_as`` setting); None: the site's own."""
        self.kit = kit
        self._blob_stub = blob_stub
        self.settings = settings
        self.name = kit.name
        self.workspace = settings.workspace.resolve()
        self.jobs = JobManager(
            self.workspace,
            kit.name,
            max_jobs=settings.max_jobs,
            on_metric=self._on_metric,
            on_failed=self._on_job_failed,
            stop_grace=settings.stop_grace,
            python_envs=PythonEnvs(
                self.workspace / settings.python_env_dir,
                allow_builds=settings.python_env_builds,
                pip_options=settings.python_env_pip_options,
                system_site_packages=settings.python_env_system_site_packages,
                run_as=run_as,
            ),
            run_as=run_as,
        )
        self.commands = SiteCommands(
            self.workspace,
            stats=self._stats,
            errors=self._errors,
            reset_errors=self.jobs.reset_errors,
        )
        self.start_time = time.time()
        self.connections = 0
        self.session_id = ""
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outcome = "stop"
        self._outbox: deque[site_pb2.SiteMessage] = deque()
        self._outbox_ready = asyncio.Event()
        self._job_locks: dict[str, asyncio.Lock] = {}
        self._ledger = TaskLedger()
        self._writing = False  # a Channel write is in flight (see _serve)
        self._tasks: set[asyncio.Task[None]] = set()
        self._creds = channel_credentials(kit)

    # -- lifecycle -----------------------------------------------------------------------
    def request_stop(self, restart: bool = False, reason: str = "") -> None:
        """Stop (or restart) soon; safe to call from a signal handler on the loop."""
        if not self._stopping.is_set():
            log.info(
                "site %s %s%s",
                self.name,
                "restarting" if restart else "stopping",
                f" ({reason})" if reason else "",
            )
        self._outcome = "restart" if restart else self._outcome
        self._stopping.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def run(self) -> str:
        """Connect, serve and reconnect until asked to stop; ``"stop"`` or ``"restart"``."""
        (self.workspace / "jobs").mkdir(parents=True, exist_ok=True)
        attempt = 0
        try:
            while not self._stopping.is_set():
                before = self.connections
                try:
                    await self._connect_until_stopped()
                except _Lost as exc:
                    log.warning("connection to %s lost: %s", self.settings.server_address, exc)
                except grpc.RpcError as exc:
                    log.warning(
                        "cannot reach the server at %s: %s: %s",
                        self.settings.server_address,
                        exc.code().name if hasattr(exc, "code") else "ERROR",
                        exc.details() if hasattr(exc, "details") else exc,
                    )
                except Exception as exc:  # whatever breaks a connection, dial again
                    log.warning("connection to %s failed: %r", self.settings.server_address, exc)
                finally:
                    self._connected.clear()
                    self._conn = None
                if self._stopping.is_set():
                    break
                attempt = 0 if self.connections > before else attempt + 1
                delay = self._backoff(attempt)
                log.info("reconnecting in %.2f s", delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            await self._shutdown_jobs()
        return self._outcome

    async def _connect_until_stopped(self) -> None:
        """One connection; a stop while still dialling cancels the dial at once."""
        loop = asyncio.get_running_loop()
        connect = loop.create_task(self._connect_once())
        stop = loop.create_task(self._stopping.wait())
        try:
            await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not connect.done() and not self._connected.is_set():
                connect.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connect
                return
            await connect  # connected: it handles the stop itself, gracefully
        finally:
            stop.cancel()

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        ceiling = min(s.reconnect_max, s.reconnect_initial * (2 ** min(attempt, 30)))
        return random.uniform(ceiling / 2, ceiling)

    async def _shutdown_jobs(self) -> None:
        aborted = await self.jobs.shutdown("the site stopped")
        for job_id in aborted:
            self.send(job_id, JobStatusReport("aborted", "the site stopped"))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one connection ------------------------------------------------------------------
    async def _connect_once(self) -> None:
        """Register and serve one Channel until it ends. Raises on failure."""
        s = self.settings
        channel = grpc.aio.secure_channel(
            s.server_address, self._creds, options=channel_options(self.kit, s.server_address)
        )
        conn: _Connection | None = None
        try:
            stub = site_pb2_grpc.SiteStub(channel)
            reply = await stub.Register(
                site_pb2.RegisterRequest(
                    site_version=_site_version(),
                    running_jobs=self.jobs.running(),
                    resources={"max_jobs": str(s.max_jobs)},
                ),
                timeout=s.connect_timeout,
            )
            conn = _Connection(
                channel,
                stub,
                reply.session_id,
                reply.heartbeat_interval or s.heartbeat_interval,
                reply.heartbeat_timeout or s.heartbeat_timeout,
            )
            conn.call = stub.Channel()
            await conn.write(self._heartbeat(conn))
            self.connections += 1
            self.session_id = conn.session_id
            self._conn = conn
            self._connected.set()
            log.info(
                "site %s registered with %s (session %s, heartbeat every %g s)",
                self.name,
                s.server_address,
                conn.session_id[:8],
                conn.heartbeat_interval,
            )
            await self._serve(conn)
        finally:
            self._connected.clear()
            if conn is not None:
                conn.lost = True
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    async def _serve(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        workers = [
            loop.create_task(self._read(conn)),
            loop.create_task(self._beat(conn)),
            loop.create_task(self._write(conn)),
        ]
        stop = loop.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([*workers, stop], return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                # The writer may be sending the last reply (a command's answer just before a
                # stop): let that write finish, then stop the writer, so _stop_on is the only
                # writer and nothing popped from the outbox is lost by a cancellation.
                deadline = time.monotonic() + 2.0
                while self._writing and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                workers[2].cancel()
                await asyncio.gather(workers[2], return_exceptions=True)
                await self._stop_on(conn)
                # The server reads all we sent before our half-close, then ends the stream:
                # wait for that end (the reader sees it), so closing the channel cannot cut
                # off the last messages (a command's reply) still on their way.
                await asyncio.wait([workers[0]], timeout=2.0)
                return
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
            raise _Lost("the server ended the channel")
        finally:
            for task in (*workers, stop):
                task.cancel()
            await asyncio.gather(*workers, stop, return_exceptions=True)
            if conn.call is not None:
                conn.call.cancel()

    async def _stop_on(self, conn: _Connection) -> None:
        """Graceful stop while connected: abort jobs, report, flush, close."""
        await self._shutdown_jobs()
        deadline = time.monotonic() + 2.0
        while self._outbox and time.monotonic() < deadline:
            message = self._outbox.popleft()
            try:
                await asyncio.wait_for(conn.write(message), 1.0)
            except Exception:
                break
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.call.done_writing(), 1.0)

    def _heartbeat(self, conn: _Connection) -> site_pb2.SiteMessage:
        return site_pb2.SiteMessage(
            heartbeat=site_pb2.Heartbeat(
                session_id=conn.session_id, running_jobs=self.jobs.running()
            )
        )

    async def _beat(self, conn: _Connection) -> None:
        while True:
            await asyncio.sleep(conn.heartbeat_interval)
            silent = time.monotonic() - conn.last_seen
            if silent > conn.heartbeat_timeout:
                raise _Lost(f"no word from the server for {silent:.1f} s")
            try:
                await conn.write(self._heartbeat(conn))
            except Exception as exc:
                raise _Lost(f"heartbeat failed: {exc}") from None

    async def _write(self, conn: _Connection) -> None:
        while True:
            while not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            message = self._outbox.popleft()
            self._writing = True
            try:
                await conn.write(message)
            except Exception as exc:
                self._outbox.appendleft(message)  # delivered after the reconnect
                raise _Lost(f"sending failed: {exc}") from None
            finally:
                self._writing = False

    async def _read(self, conn: _Connection) -> None:
        while True:
            try:
                msg = await conn.call.read()
            except grpc.RpcError as exc:
                raise _Lost(f"{exc.code().name}: {exc.details()}") from None
            if msg is grpc.aio.EOF:
                raise _Lost("the server closed the channel")
            conn.last_seen = time.monotonic()
            if msg.WhichOneof("kind") == "message":
                self._dispatch(msg.message)

    # -- outgoing ------------------------------------------------------------------------
    def send(
        self,
        job_id: str,
        body: SiteBody,
        *,
        blobs: tuple[Blob, ...] = (),
        reply_to: str = "",
    ) -> None:
        """Queue a message for the server (delivered in order, across reconnects).

        Raises:
            ValueError: the body holds what JSON cannot carry (NaN, infinity).
        """
        envelope = site_pb2.Envelope(
            message_id=uuid.uuid4().hex,
            job_id=job_id,
            topic=body.TOPIC.value,
            reply_to=reply_to,
            body_json=body.to_json(),
            blobs=[b.to_pb() for b in blobs],
        )
        if len(self._outbox) >= self.settings.max_outbox:
            dropped = self._outbox.popleft()
            log.warning("outbox full: dropped a %s message", dropped.message.topic)
        self._outbox.append(site_pb2.SiteMessage(message=envelope))
        self._outbox_ready.set()

    def _on_job_failed(self, job: JobRecord) -> None:
        log.warning("job %s failed: %s", job.job_id, job.error)
        self.send(job.job_id, JobStatusReport("failed", job.error, job.stderr_tail or None))

    def _on_metric(self, job_id: str, event: MetricEvent) -> None:
        # a metric is a number; a param, tag or text a string instead
        body = Metric(
            key=event.key,
            value=event.value if event.kind == "metric" else None,
            round=event.round,
            step=event.step,
            time=event.time,
            kind=event.kind,
            text=event.text if event.kind != "metric" else None,
        )
        try:
            self.send(job_id, body)
        except ValueError:  # NaN or infinity: not JSON, not a metric
            log.warning("job %s: dropped non-finite metric %s", job_id, event.key)

    async def _on_connection(self, what: Callable[[Any], Awaitable[T]]) -> T:
        """Run a blob transfer on the current connection; retry once after a reconnect."""
        for attempt in range(3):
            await self._connected.wait()
            conn = self._conn
            if conn is None:
                continue
            try:
                return await what(self._blob_stub or conn.stub)
            except asyncio.CancelledError:
                # grpc.aio cancels the calls of a channel it closes: a transfer on a lost
                # connection ends cancelled, though nobody cancelled this task. Without a
                # retry the task would end without a result, and the server's re-sent task
                # would find it "still running" here: the round would wait for its timeout.
                if not conn.lost or self._stopping.is_set():
                    raise
                if attempt == 2:
                    raise BlobError("transfers were cut off by three lost connections") from None
                log.info("transfer cut off with the connection; retrying after the reconnect")
            except BlobError as exc:
                # Only a transfer cut by a lost connection is worth another try.
                if attempt == 2 or not exc.details.get("retryable"):
                    raise
                log.info("transfer interrupted (%s); retrying", exc)
                await asyncio.sleep(1.0)
        raise BlobError("no connection to the server")

    # -- incoming ------------------------------------------------------------------------
    def _dispatch(self, envelope: site_pb2.Envelope) -> None:
        topic = topic_from(envelope.topic, Sender.SERVER)  # only what the server may send
        if topic is None:
            log.warning("server sent unknown topic %r; dropped", envelope.topic[:64])
            return
        task = asyncio.get_running_loop().create_task(self._handle(envelope, topic))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, envelope: site_pb2.Envelope, topic: SiteTopic) -> None:
        try:
            body = parse_body(topic, envelope.body_json)
        except MessageError as exc:
            self._malformed(envelope, topic, exc)
            return
        try:
            match body:
                case SiteCommand():
                    await self._command(envelope, body)
                case JobAbort():
                    await self._abort(envelope.job_id, body)
                case JobEnd():
                    # Not behind the job's lock: a task stuck in user code holds it, and
                    # ending the job is what ends that task (its processes are killed).
                    await self._end(envelope.job_id, body)
                case TrainTask() | ValidateTask():
                    if not self._seen_before(envelope, body.task_id):
                        async with self._job_locks.setdefault(envelope.job_id, asyncio.Lock()):
                            await self._task(envelope, body)
                case DriverMessage():
                    received = time.monotonic()
                    message_id = body.message.get("message_id")
                    if not isinstance(message_id, str) or not self._seen_before(
                        envelope, message_id
                    ):
                        async with self._job_locks.setdefault(envelope.job_id, asyncio.Lock()):
                            await self._driver_message(envelope, body, received)
                case JobDeploy():
                    async with self._job_locks.setdefault(envelope.job_id, asyncio.Lock()):
                        await self._deploy(envelope, body)
                case _:  # a topic a site sends: topic_from let through only the server's
                    raise AssertionError(f"not a server message: {body!r}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling %s for job %s failed", topic.value, envelope.job_id)

    def _malformed(self, envelope: site_pb2.Envelope, topic: SiteTopic, exc: MessageError) -> None:
        """A server message whose body is not what its topic needs: answered where the
        server waits for an answer (a deployment fails, a command replies an error)."""
        log.warning("server sent a malformed %s: %s", topic.value, exc.message)
        if topic is SiteTopic.JOB_DEPLOY:
            self._status(envelope.job_id, "failed", exc)
        elif topic is SiteTopic.SITE_COMMAND:
            error = {"type": "InvalidArgumentError", "message": exc.message}
            self.send(envelope.job_id, SiteReply(error=error), reply_to=envelope.message_id)

    def _seen_before(self, envelope: site_pb2.Envelope, task_id: str) -> bool:
        """A task (or Driver API message) received before is not run again: its result is
        re-sent, or it is running."""
        task_id = task_id[:128]
        if not task_id:
            return False
        known = self._ledger.claim(envelope.job_id, task_id)
        if known is None:
            return False
        if isinstance(known, SentResult):
            log.info(
                "job %s: task %s received again; its result is sent again", envelope.job_id, task_id
            )
            self.send(envelope.job_id, known.body, blobs=known.blobs)
        else:
            log.info(
                "job %s: task %s received again while it runs; ignored", envelope.job_id, task_id
            )
        return True

    def _task_result(
        self,
        job_id: str,
        task_id: str,
        body: TaskResult | DriverReply,
        blobs: tuple[Blob, ...] = (),
    ) -> None:
        self.send(job_id, body, blobs=blobs)
        if task_id:
            self._ledger.done(job_id, task_id, SentResult(body, blobs))

    async def _command(self, envelope: site_pb2.Envelope, body: SiteCommand) -> None:
        name, args = body.command, body.args
        if name in SiteCommands.FILE_COMMANDS:  # disk reads: off the loop
            result = await asyncio.to_thread(self.commands.run, name, args)
        else:  # stats read the job table: on the loop that owns it
            result = self.commands.run(name, args)
        reply = SiteReply(result.result, result.error)
        self.send(envelope.job_id, reply, reply_to=envelope.message_id)
        if result.then:
            self.request_stop(restart=result.then == "restart", reason="asked by the server")

    async def _abort(self, job_id: str, body: JobAbort) -> None:
        reason = (body.reason or "aborted by the server")[:1000]
        ran = await self.jobs.abort(job_id, reason)
        if ran:
            log.info("job %s aborted: %s", job_id, reason)
        self.send(job_id, JobStatusReport("aborted", reason))

    def _status(
        self, job_id: str, status: JobStatusValue, exc: BaseException | None = None
    ) -> None:
        if exc is None:
            self.send(job_id, JobStatusReport(status))
            return
        tail = getattr(exc, "stderr_tail", "") or ""
        self.send(job_id, JobStatusReport(status, describe_error(exc), str(tail) or None))

    async def _deploy(self, envelope: site_pb2.Envelope, body: JobDeploy) -> None:
        job_id = envelope.job_id
        tmp_dir = self.workspace / "tmp"
        archive = tmp_dir / f"{uuid.uuid4().hex}.app.zip"
        if self.jobs.state(job_id) in ("deploying", "running"):
            # A repeated deployment (say, resent after a reconnect): answer it again.
            self._status(job_id, "deployed")
            return
        try:
            check_job_id(job_id)
            if not envelope.blobs:
                raise ExecutionError("job.deploy carries no app archive")
            if len(self.jobs.running()) >= self.jobs.max_jobs:
                raise ExecutionError(
                    f"site {self.name} already runs {len(self.jobs.running())} job(s); "
                    f"its limit is {self.jobs.max_jobs}"
                )
            tmp_dir.mkdir(mode=0o700, exist_ok=True)
            blob = Blob.from_pb(envelope.blobs[0])
            await self._on_connection(
                lambda stub: download(
                    stub, blob, archive, job_id=job_id, timeout=self.settings.transfer_timeout
                )
            )
            await self.jobs.deploy(
                job_id,
                archive,
                client_config=body.client_config,
                app=body.app[:128],
                total_rounds=body.total_rounds,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ended = isinstance(exc, ExecutionError) and exc.details.get("aborted")
            if self.jobs.state(job_id) != ABORTED and not ended:
                log.warning("job %s failed to deploy: %s", job_id, describe_error(exc))
                self._status(job_id, "failed", exc)
            return
        finally:
            archive.unlink(missing_ok=True)
        log.info("job %s deployed", job_id)
        self._status(job_id, "deployed")

    async def _task(self, envelope: site_pb2.Envelope, body: TrainTask | ValidateTask) -> None:
        job_id = envelope.job_id
        kind: Literal["train", "validate"] = "train" if isinstance(body, TrainTask) else "validate"
        task_id = body.task_id[:128]
        rnd = body.round
        job = self.jobs.get(job_id)
        model: Path | None = None
        update: Path | None = None
        try:
            if job is None:
                raise ExecutionError(f"job {job_id} is not deployed on this site")
            started = time.perf_counter()
            downloaded = started
            if envelope.blobs:
                blob = Blob.from_pb(envelope.blobs[0])
                model = job.downloads / f"{uuid.uuid4().hex}.global.npz"
                await self._on_connection(
                    lambda stub: download(
                        stub,
                        blob,
                        model,
                        job_id=job_id,
                        timeout=self.settings.transfer_timeout,
                        durable=False,
                    )
                )
                downloaded = time.perf_counter()
            if isinstance(body, TrainTask):
                total = job.total_rounds if body.total_rounds is None else body.total_rounds
                outcome: Any = await self.jobs.train(
                    job_id,
                    task_id,
                    round=rnd,
                    total_rounds=total,
                    model_path=model,
                )
                ran = time.perf_counter()
                update = outcome.params_path
                ref = await self._on_connection(
                    lambda stub: upload(
                        stub,
                        outcome.params_path,
                        name=f"{task_id}.npz",
                        content_type="application/x-npz",
                        params={"job_id": job_id, "task_id": task_id, "kind": "update"},
                        timeout=self.settings.transfer_timeout,
                        digest=outcome.digest,
                    )
                )
                self._task_result(job_id, task_id, task_result_body(task_id, rnd, outcome), (ref,))
                log.debug(
                    "job %s: train task %s: download %.3f s, user code and check %.3f s, "
                    "upload %.3f s",
                    job_id,
                    task_id,
                    downloaded - started,
                    ran - downloaded,
                    time.perf_counter() - ran,
                )
            else:
                outcome = await self.jobs.validate(job_id, task_id, round=rnd, model_path=model)
                self._task_result(job_id, task_id, task_result_body(task_id, rnd, outcome))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._task_result(
                job_id, task_id, TaskResult(task_id, kind, rnd, error=describe_error(exc))
            )
            if self.jobs.state(job_id) == FAILED:
                self._status(job_id, "failed", exc)
        finally:
            # A round's model and update are not needed once the task is answered (a long
            # job would otherwise keep every round's on disk until it ends).
            for used in (model, update):
                if used is not None:
                    used.unlink(missing_ok=True)

    async def _driver_message(
        self, envelope: site_pb2.Envelope, body: DriverMessage, received: float
    ) -> None:
        """Hand a Driver API message to the job's user code and send its reply (an error
        reply when it cannot run or fails). Not run once its TTL ended: the server has
        answered it already."""
        job_id = envelope.job_id
        data = body.message
        message_id = str(data.get("message_id", ""))[:128]
        job = self.jobs.get(job_id)
        npz: Path | None = None
        reply_npz: Path | None = None
        try:
            if body.ttl_left and time.monotonic() - received > body.ttl_left:
                log.info("job %s: message %s expired before it could run", job_id, message_id)
                return
            if job is None:
                raise ExecutionError(f"job {job_id} is not deployed on this site")
            metadata_from(data, where=f"message {message_id}")
            if body.npz_b64 is not None:
                npz = job.downloads / f"{uuid.uuid4().hex}.message.npz"
                raw = await asyncio.to_thread(_inline_npz, body.npz_b64)
                await asyncio.to_thread(npz.write_bytes, raw)
            elif envelope.blobs:
                blob = Blob.from_pb(envelope.blobs[0])
                npz = job.downloads / f"{uuid.uuid4().hex}.message.npz"
                target = npz
                await self._on_connection(
                    lambda stub: download(
                        stub,
                        blob,
                        target,
                        job_id=job_id,
                        timeout=self.settings.transfer_timeout,
                        durable=False,
                    )
                )
            spec = MessageSpec(
                message_id, data, npz, job.folder / "models" / f"{message_id}.reply.npz"
            )
            outcome = await self.jobs.message(job_id, spec)
            reply_npz = outcome.npz_path
            inline: str | None = None
            blobs: tuple[Blob, ...] = ()
            if reply_npz is not None:
                size = reply_npz.stat().st_size
                if size <= INLINE_NPZ_BYTES:
                    inline = base64.b64encode(reply_npz.read_bytes()).decode("ascii")
                else:
                    path = reply_npz
                    ref = await self._on_connection(
                        lambda stub: upload(
                            stub,
                            path,
                            name=f"{message_id}.npz",
                            content_type="application/x-npz",
                            params={"job_id": job_id, "task_id": message_id, "kind": "reply"},
                            timeout=self.settings.transfer_timeout,
                        )
                    )
                    blobs = (ref,)
            reply = DriverReply(message_id, dict(outcome.reply), inline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed = self.jobs.state(job_id) == FAILED
            code = ErrorCode.CLIENT_APP_CRASHED if failed else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reply = DriverReply(message_id, error_reply_wire(data, code, describe_error(exc)))
            blobs = ()
            if failed:
                self._status(job_id, "failed", exc)
        finally:
            for used in (npz, reply_npz):
                if used is not None:
                    used.unlink(missing_ok=True)
        self._task_result(job_id, message_id, reply, blobs)

    async def _end(self, job_id: str, body: JobEnd) -> None:
        self._job_locks.pop(job_id, None)  # later messages for this job need no ordering
        self._ledger.forget(job_id)
        log_path = await self.jobs.end(job_id, body.status[:64])
        if log_path is None or not log_path.is_file():
            self.send(job_id, JobLog())
            return
        try:
            ref = await self._on_connection(
                lambda stub: upload(
                    stub,
                    log_path,
                    name="log.txt",
                    content_type="text/plain",
                    params={"job_id": job_id, "kind": "log"},
                    timeout=self.settings.transfer_timeout,
                )
            )
        except BlobError as exc:
            log.warning("job %s: the site log could not be uploaded: %s", job_id, exc)
            self.send(job_id, JobLog(describe_error(exc)))
            return
        self.send(job_id, JobLog(), blobs=(ref,))
        job = self.jobs.get(job_id)
        if job is not None:
            shutil.rmtree(job.downloads, ignore_errors=True)

    # -- command data --------------------------------------------------------------------
    def _stats(self, job_id: str | None) -> Any:
        if job_id:
            job = self.jobs.get(job_id)
            if job is None:
                return {"job_id": job_id, "state": "unknown on this site"}
            return job.summary()
        return {
            "site": self.name,
            "uptime": time.time() - self.start_time,
            "server": self.settings.server_address,
            "connected": self.connected,
            "connections": self.connections,
            **self.jobs.stats(),
        }

    def _errors(self, job_id: str | None) -> Any:
        return [e for e in self.jobs.errors if not job_id or e["job_id"] == job_id]
