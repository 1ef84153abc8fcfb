"""The Driver API's RPCs (docs/driver.md): what the Admin service does for a job's driver.

Who may drive a job: its submitter, or a role allowed to manage it (``manage_job``);
everyone else gets ``AuthorizationError``, checked on every call. Every call reaches the
job's run only through its event queue (:mod:`flare_server.job_runner.events`), after
checking what it carries: a push's arrays are received (inline, or chunked by
:mod:`flare_protocol.transfer` and capped by the job's ``max_message_bytes``) and checked
from their ``.npz`` headers, each message's JSON against them
(:func:`~flare_server.job_runner.driver_types.check_wire`); the final model of
``DriverFinish`` is loaded with the model rules (numeric, finite, no pickle). A reply
stream is fed by the run the moment a reply arrives (no polling) and ends once every
message asked for has its reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flare_protocol import errors
from flare_protocol._generated import admin_pb2, common_pb2
from flare_protocol._transfer_aio import file_messages
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.job_status import JobStatus, is_finished
from flare_protocol.models import load_params
from flare_protocol.transfer import ChunkReceiver, ChunkSender, TransferState
from flare_server.authz import Policy, Resource, Right
from flare_server.blobs import FileSink, receive_into
from flare_server.calls import Call, StreamTracker
from flare_server.job_runner.driver import DriverRelay
from flare_server.job_runner.driver_types import (
    INLINE_BYTES,
    Content,
    Outgoing,
    StoredReply,
    check_wire,
    content_names,
    decode_b64,
)
from flare_server.job_runner.events import (
    END,
    DriverFinished,
    DriverLeft,
    DriverPushed,
    DriverSeen,
    DriverWatch,
)
from flare_server.job_runner.rounds import not_a_driver_job
from flare_server.jobs import JobRepository
from flare_server.parts import RunControl

__all__ = ["FINAL_STATUSES", "DriverCalls", "DriverContext"]

log = logging.getLogger("flare_server.driver")

#: What ``finish(status=...)`` may say, and the job status it ends in.
FINAL_STATUSES = {
    "COMPLETED": JobStatus.FINISHED_COMPLETED.value,
    "FAILED": JobStatus.FINISHED_EXECUTION_EXCEPTION.value,
    "ABORTED": JobStatus.FINISHED_ABORTED.value,
}
#: Most messages one push may carry, and most bytes of their JSON together (the server
#: holds them in memory until they are sent).
MAX_PUSH = 10_000
MAX_PUSH_JSON = 64 * 1024 * 1024
_REVOKED = object()
T = TypeVar("T")


@dataclass(frozen=True)
class DriverContext:
    """What the Driver API's calls use of the server."""

    store: JobRepository
    policy: Policy
    runs: RunControl
    streams: StreamTracker
    #: The queues of open streams (each ends on ``watch_end`` when the server stops).
    watchers: set[asyncio.Queue[Any]]
    watch_end: object
    #: The job's meta for a call (the Admin service's reader; JobNotFound).
    job_meta: Callable[[Call, str], Awaitable[dict[str, Any]]]
    #: Seconds ``DriverFinish`` waits for the job's result folder.
    result_wait: float


class DriverCalls:
    """The handlers behind the Admin service's Driver RPCs."""

    def __init__(self, context: DriverContext) -> None:
        self.context = context

    # -- who, which run ----------------------------------------------------------------------
    def _require(self, call: Call, meta: Mapping[str, Any], action: str) -> None:
        ident = call.identity
        if ident.name == meta.get("submitter_name") and ident.org == meta.get("submitter_org"):
            return  # the job's submitter drives it
        self.context.policy.require(
            ident,
            Right.MANAGE_JOB,
            Resource.job(
                str(meta.get("job_id")),
                str(meta.get("submitter_name")),
                str(meta.get("submitter_org")),
            ),
            action=action,
            job_id=str(meta.get("job_id")),
        )

    async def _relay(
        self, call: Call, job_id: str, action: str, *, wait: bool = False
    ) -> DriverRelay:
        """The running driver job's relay, for a caller allowed to drive it; with ``wait``
        until the job runs (the call's deadline bounds it).

        Raises:
            JobNotFound, AuthorizationError, JobNotRunning (finished, or not running yet
            without ``wait``), InvalidArgumentError (not a driver job).
        """
        call.job_id = job_id or None
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_change(item: Any) -> None:  # on whichever thread wrote the store
            if getattr(item, "job_id", None) == job_id:
                try:
                    loop.call_soon_threadsafe(changed.set)
                except RuntimeError:
                    pass

        # Subscribed before the meta is read, and the flag cleared before each read: no
        # change can slip between a read and the wait.
        unsubscribe = self.context.store.subscribe(on_change) if wait else None
        try:
            meta = await self.context.job_meta(call, job_id)
            self._require(call, meta, action)
            while True:
                status = str(meta.get("status"))
                if is_finished(status):
                    raise errors.JobNotRunning(
                        f"cannot {action} job {job_id}: it already {status}",
                        job_id=job_id,
                        status=status,
                    )
                workflow = self.context.runs.workflow(job_id)
                if workflow is not None and workflow != "driver":
                    raise not_a_driver_job(job_id, workflow)
                relay = self.context.runs.driver(job_id)
                if relay is not None and status == JobStatus.RUNNING.value:
                    if relay.ended:
                        raise errors.JobNotRunning(
                            f"cannot {action} job {job_id}: it is ending", job_id=job_id
                        )
                    return relay
                if not wait:
                    raise errors.JobNotRunning(
                        f"cannot {action} job {job_id}: it is {status}, not running yet "
                        "(get_driver waits until it runs)",
                        job_id=job_id,
                        status=status,
                    )
                await changed.wait()
                changed.clear()
                meta = await self.context.job_meta(call, job_id)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    @staticmethod
    def _post(relay: DriverRelay, event: Any) -> None:
        task = relay.run.task
        if task is None or task.done():
            raise errors.JobNotRunning(f"job {relay.run.job_id} has ended", job_id=relay.run.job_id)
        relay.run.post(event)

    @staticmethod
    async def _answer(relay: DriverRelay, future: asyncio.Future[T]) -> T:
        """What the run answers through ``future`` (JobNotRunning if it ends first)."""
        task = relay.run.task
        assert task is not None
        waiting: set[asyncio.Future[Any]] = {future, task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not future.done():
            future.cancel()
            raise errors.JobNotRunning(f"job {relay.run.job_id} has ended", job_id=relay.run.job_id)
        return future.result()

    # -- the calls ---------------------------------------------------------------------------
    async def connect(self, call: Call, request: admin_pb2.JobRequest) -> admin_pb2.DriverInfo:
        relay = await self._relay(call, request.job_id, "drive", wait=True)
        self._post(relay, DriverSeen(call.identity.name))
        config = relay.config
        return admin_pb2.DriverInfo(
            job_id=relay.run.job_id,
            nodes=[
                admin_pb2.DriverNode(node_id=n.node_id, name=n.name, connected=n.connected)
                for n in relay.node_list()
            ],
            run_config_json=json.dumps(dict(config.run_config)),
            default_ttl=config.default_ttl,
            max_message_bytes=relay.max_bytes,
            idle_timeout=relay.idle_timeout,
        )

    async def push(
        self, call: Call, items: AsyncIterator[admin_pb2.DriverPushItem]
    ) -> admin_pb2.DriverPushReply:
        first = await anext(aiter(items), None)
        if first is None or first.WhichOneof("item") != "start":
            raise errors.InvalidArgumentError(
                "a DriverPush stream starts with its DriverPushStart (the job id)"
            )
        job_id = first.start.job_id
        relay = await self._relay(call, job_id, "push messages to")
        push = _Push(relay)
        try:
            async for item in items:
                await push.feed(item)
            outgoing = push.finish()
        except BaseException:
            push.discard()
            raise
        call.args = {"messages": len(outgoing)}
        done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        try:
            self._post(
                relay,
                DriverPushed(call.identity.name, tuple(outgoing), tuple(first.start.ack), done),
            )
        except BaseException:
            push.discard()
            raise
        ids = await self._answer(relay, done)
        return admin_pb2.DriverPushReply(message_ids=ids)

    async def replies(
        self, call: Call, request: admin_pb2.DriverRepliesRequest
    ) -> AsyncIterator[admin_pb2.DriverRepliesItem]:
        relay = await self._relay(call, request.job_id, "pull the replies of")
        call.args = {"messages": len(request.message_ids), "wait": request.wait}
        queue: asyncio.Queue[Any] = asyncio.Queue()
        ctx = self.context
        ctx.watchers.add(queue)
        untrack = ctx.streams.add(call.identity.serial, lambda: queue.put_nowait(_REVOKED))
        watch = DriverWatch(
            call.identity.name,
            tuple(request.message_ids),
            tuple(request.ack),
            request.wait,
            queue,
        )
        try:
            self._post(relay, watch)
            task = relay.run.task
            assert task is not None
            while True:
                item = await _next(queue, task)
                if item is END or item is ctx.watch_end:
                    return
                if item is _REVOKED:
                    raise errors.AuthenticationError(
                        f"the certificate of {call.identity.name} was revoked"
                    )
                if item is None:
                    raise errors.JobNotRunning(
                        f"job {relay.run.job_id} has ended", job_id=relay.run.job_id
                    )
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, StoredReply)
                async for message in _reply_items(item):
                    yield message
        finally:
            untrack()
            ctx.watchers.discard(queue)
            task = relay.run.task
            if task is not None and not task.done():
                relay.run.post(DriverLeft(queue))

    async def finish(
        self, call: Call, chunks: AsyncIterator[common_pb2.TransferChunk]
    ) -> admin_pb2.JobReply:
        receiver = ChunkReceiver(
            "the final global model", require_size=True, require_sha256=True, max_chunk=CHUNK_SIZE
        )
        header = receiver.first_header(await anext(aiter(chunks), None))
        params = dict(header.params)
        job_id = params.get("job_id", "")
        word = params.get("status", "COMPLETED").upper()
        status = FINAL_STATUSES.get(word)
        if status is None:
            raise errors.InvalidArgumentError(
                f"finish(status={word[:32]!r}): the status must be one of "
                f"{', '.join(FINAL_STATUSES)}",
                job_id=job_id,
            )
        relay = await self._relay(call, job_id, "finish")
        call.args = {"status": word}
        receiver.max_bytes = relay.run.settings.max_blob_bytes
        receiver.cap_setting = "the server's max_blob_bytes"
        receiver.on_header(header)
        model = None
        if header.size > 0:
            path = await _receive_file(receiver, chunks, relay.folder / f"final-{uuid.uuid4().hex}")
            try:
                model = await asyncio.to_thread(
                    load_params, path, max_bytes=relay.run.settings.max_blob_bytes
                )
            except errors.InvalidModel as exc:
                raise errors.InvalidArgumentError(
                    f"the final model of job {job_id}: {exc.message}", job_id=job_id
                ) from None
            finally:
                path.unlink(missing_ok=True)
        else:
            async for message in chunks:
                receiver.feed(message)
            receiver.finish()
        who = call.identity.name
        default = {
            "COMPLETED": f"finished by its driver {who}",
            "FAILED": f"its driver {who} failed",
            "ABORTED": f"aborted by its driver {who}",
        }[word]
        reason = params.get("reason", "")[:8000] or default
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._post(relay, DriverFinished(who, status, reason, model, done))
        await self._answer(relay, done)
        await self.context.runs.wait_result(job_id, self.context.result_wait)
        meta = await self.context.job_meta(call, job_id)
        return admin_pb2.JobReply(job_id=job_id, meta_json=json.dumps(meta, default=str))


async def _next(queue: asyncio.Queue[Any], task: asyncio.Task[None]) -> Any:
    """The next item of a stream's queue; None when the run ended and left it empty."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    waiting: set[asyncio.Future[Any]] = {getter, task}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return queue.get_nowait() if not queue.empty() else None


async def _reply_items(reply: StoredReply) -> AsyncIterator[admin_pb2.DriverRepliesItem]:
    """A reply as stream items: its JSON (small arrays inline), then its arrays' transfer."""
    yield admin_pb2.DriverRepliesItem(reply_json=reply.wire_json(inline=True))
    content = reply.content
    if content is None or content.data is not None:
        return
    assert content.path is not None
    sender = ChunkSender(
        f"the arrays of the reply to {reply.reply_to}",
        name=f"{reply.reply_to}.npz",
        size=content.size,
        sha256=content.sha256,
        content_type="application/x-npz",
    )
    try:
        async for chunk in file_messages(sender, content.path):
            yield admin_pb2.DriverRepliesItem(content=chunk)
    except FileNotFoundError:
        raise errors.InvalidArgumentError(
            f"the reply to message {reply.reply_to} was acknowledged meanwhile; it is gone"
        ) from None


async def _receive_file(
    receiver: ChunkReceiver, chunks: AsyncIterator[common_pb2.TransferChunk], target: Path
) -> Path:
    """The rest of a transfer (its header was taken) into ``target``; checked."""
    sink = FileSink(target.parent, target.name, durable=False)
    await asyncio.to_thread(sink.open)
    path, _ = await receive_into(receiver, chunks, sink)
    return path


class _Push:
    """One DriverPush stream: its arrays (transfers, or inline), then its messages."""

    def __init__(self, relay: DriverRelay) -> None:
        self.relay = relay
        self.contents: dict[str, Content] = {}
        self.messages: list[Outgoing] = []
        self.receiver: ChunkReceiver | None = None
        self.sink: FileSink | bytearray | None = None
        self.json_bytes = 0

    async def feed(self, item: admin_pb2.DriverPushItem) -> None:
        kind = item.WhichOneof("item")
        if kind == "content":
            await self._chunk(item.content)
        elif kind == "message_json":
            if self.receiver is not None:
                raise errors.InvalidArgumentError(
                    f"{self.receiver.what} was cut short by a message (a transfer sends all "
                    "its announced bytes first)"
                )
            await self._message(item.message_json)
        else:
            raise errors.InvalidArgumentError(
                "a DriverPush stream has one DriverPushStart, at its start"
            )

    async def _chunk(self, chunk: common_pb2.TransferChunk) -> None:
        relay = self.relay
        if chunk.WhichOneof("item") == "header":
            if self.receiver is not None:
                self.receiver.feed(chunk)  # raises: a second header
            receiver = ChunkReceiver(
                f"the arrays {chunk.header.name[:16]!r} of a push",
                require_size=True,
                require_sha256=True,
                max_bytes=relay.max_bytes,
                cap_error=errors.InvalidArgumentError,
                cap_setting="the job's max_message_bytes",
                max_chunk=CHUNK_SIZE,
            )
            receiver.on_header(chunk.header)
            if chunk.header.name != chunk.header.sha256.lower():
                raise errors.InvalidArgumentError(
                    "a push's arrays are named by their SHA-256 (the header's name)"
                )
            self.receiver = receiver
            if receiver.size <= INLINE_BYTES:
                self.sink = bytearray()
            else:
                sink = FileSink(relay.folder, f"push-{uuid.uuid4().hex}.npz", durable=False)
                await asyncio.to_thread(sink.open)
                self.sink = sink
        else:
            if self.receiver is None:
                raise errors.InvalidArgumentError(
                    "arrays of a push arrived without their transfer header"
                )
            data = self.receiver.feed(chunk)
            assert data is not None and self.sink is not None
            if isinstance(self.sink, bytearray):
                self.sink += data
            else:
                await self.sink.write(data)
        receiver = self.receiver
        if receiver is not None and receiver.received == receiver.size:
            await self._complete(receiver)

    async def _complete(self, receiver: ChunkReceiver) -> None:
        receiver.finish()
        assert receiver.header is not None
        sha = receiver.header.sha256.lower()
        sink, self.sink, self.receiver = self.sink, None, None
        content = Content(sha, receiver.received)
        if isinstance(sink, bytearray):
            content.data = bytes(sink)
        else:
            assert sink is not None
            content.path, _ = await sink.finish()
        source: bytes | Path = content.data if content.data is not None else content.path  # type: ignore[assignment]
        try:
            content.names = await asyncio.to_thread(
                content_names, source, max_bytes=self.relay.max_bytes, where=receiver.what
            )
        except BaseException:
            content.discard()
            raise
        old = self.contents.pop(sha, None)
        if old is not None:
            old.discard()
        self.contents[sha] = content

    async def _message(self, text: str) -> None:
        number = len(self.messages) + 1
        where = f"message {number} of the push"
        self.json_bytes += len(text)
        if number > MAX_PUSH or self.json_bytes > MAX_PUSH_JSON:
            raise errors.InvalidArgumentError(
                f"a push carries at most {MAX_PUSH} messages and {MAX_PUSH_JSON >> 20} MiB of "
                "their JSON: push fewer messages at once"
            )
        try:
            item = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise errors.InvalidArgumentError(f"{where} is not JSON: {exc}") from None
        if not isinstance(item, dict):
            raise errors.InvalidArgumentError(f"{where} must be a JSON object")
        content: Content | None = None
        inline, ref = item.get("npz_b64"), item.get("npz")
        if isinstance(inline, str):
            raw = decode_b64(inline, where, INLINE_BYTES)
            sha = hashlib.sha256(raw).hexdigest()
            content = self.contents.get(sha)
            if content is None:
                names = await asyncio.to_thread(
                    content_names, raw, max_bytes=self.relay.max_bytes, where=where
                )
                content = self.contents[sha] = Content(sha, len(raw), data=raw, names=names)
        elif isinstance(ref, str):
            content = self.contents.get(ref.lower())
            if content is None:
                raise errors.InvalidArgumentError(
                    f"{where} names arrays {ref[:16]!r} that this push did not send"
                )
        elif inline is not None or ref is not None:
            raise errors.InvalidArgumentError(f"{where}: 'npz' and 'npz_b64' must be text")
        data = check_wire(
            item.get("message"),
            content.names if content else frozenset(),
            where=where,
            error=errors.InvalidArgumentError,
        )
        if data.get("content") is None:
            raise errors.InvalidArgumentError(f"{where}: a driver's message carries content")
        self.messages.append(Outgoing(data, content, len(text)))

    def finish(self) -> list[Outgoing]:
        """The checked messages (arrays no message names are dropped)."""
        if self.receiver is not None and self.receiver.state is not TransferState.DONE:
            self.receiver.finish()  # raises: cut short
        used = {id(m.content) for m in self.messages if m.content is not None}
        for content in self.contents.values():
            if id(content) not in used:
                content.discard()
        return self.messages

    def discard(self) -> None:
        """The push failed: nothing of it is kept."""
        for content in self.contents.values():
            content.discard()
        if isinstance(self.sink, FileSink):
            sink = self.sink
            self.sink = None
            asyncio.ensure_future(sink.abandon())
