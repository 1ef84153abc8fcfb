"""Phase 3 of a driver job: relay the driver's messages to the sites and their replies back.

Theory of operation. A job whose server config says ``"workflow": "driver"`` runs no
rounds: its driver (an admin, through the Session's Driver API) pushes messages, and
:class:`DriverRelay` carries them out as the run's one coroutine, from the run's one
event queue like every phase. A push (:class:`~.events.DriverPushed`, already checked by
the Admin service) gets an id per message and goes to each destination site as a
``driver.message`` (arrays inline when small, else a blob served to those sites only).
The relay waits for exactly one ``driver.reply`` per message, from its destination: a
reply from another site, a second reply or a late one is refused and logged. A message
whose TTL ends, whose site is lost or whose site's user code failed gets an error reply
made by the server, so the driver never waits forever. Replies are kept (in memory, their
arrays in the work area) until the driver acknowledges them, so a driver that reconnects
pulls the ones it missed; a reply stream (:class:`~.events.DriverWatch`) is fed the
moment a reply arrives. Every message and reply is a row of ``messages.jsonl`` in the
job's result folder.

The job ends when the driver finishes it (its status and final model), when an admin
aborts it, when the server stops, when every site is gone, or when the driver has been
away (no call, no reply stream open) for ``driver_idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_protocol import errors
from flare_protocol._generated import common_pb2
from flare_protocol.app_config import DriverConfig
from flare_protocol.message import DRIVER_NODE_ID, ErrorCode, node_id
from flare_protocol.records import dumps
from flare_protocol.site_topics import (
    DriverMessage,
    DriverReply,
    JobLog,
    JobStatusReport,
    Metric,
    TaskResult,
)
from flare_server.blobs import UploadedBlob
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
    unhandled,
)
from flare_server.job_runner.messages import envelope
from flare_server.job_runner.records import keep_log, keep_record
from flare_server.job_runner.run import JobRun
from flare_server.workflows import ABNORMAL, ABORTED, EXECUTION_EXCEPTION, JobFinished

__all__ = ["DriverRelay", "NodeInfo"]

_IDLE = "driver-idle"
_TTL = "ttl:"


@dataclass(eq=False)
class _Pending:
    """A message sent to a site, waiting for its reply."""

    message_id: str
    site: str
    data: dict[str, Any]
    content: Content | None
    #: The arrays inline (base64), or the blob they are served as.
    inline: str | None
    refs: list[common_pb2.BlobRef]
    #: The site's session it was sent on ("": not sent yet, the site was away).
    session: str
    sent: float
    ttl: float
    timer: asyncio.TimerHandle | None = None
    uploaded: bool = False


@dataclass(eq=False)
class _Watcher:
    """A reply stream waiting for the replies to ``wanted``."""

    sink: asyncio.Queue[Any]
    wanted: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class NodeInfo:
    """One of the job's sites, as the driver sees it."""

    node_id: int
    name: str
    connected: bool


class DriverRelay:
    """One driver job's relay (see the module doc); created after the job is prepared,
    run once it is RUNNING."""

    def __init__(self, run: JobRun) -> None:
        assert run.plan is not None and run.results is not None
        self.run = run
        self.config: DriverConfig = run.plan.config.driver or DriverConfig()
        self.idle_timeout = self.config.idle_timeout or run.settings.driver_idle_timeout
        self.max_bytes = min(self.config.max_message_bytes, run.settings.max_blob_bytes)
        self.folder = run.work / "driver"
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.nodes: dict[int, str] = {}
        #: Sites that no longer run the job, and why.
        self.gone: dict[str, str] = {}
        self.pending: dict[str, _Pending] = {}
        #: Replies not yet acknowledged by the driver, by the id of the message answered.
        self.replies: dict[str, StoredReply] = {}
        #: Every message id of the job, and those answered (a reply, or an error).
        self.known: set[str] = set()
        self.answered: set[str] = set()
        self.expired: set[str] = set()
        self.watchers: list[_Watcher] = []
        self.last_seen = time.monotonic()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.finished: JobFinished | None = None
        self.counts: Counter[str] = Counter()
        self.rows = run.results.open_messages()
        run.driver = self

    # -- what the Admin service reads ------------------------------------------------------
    def node_list(self) -> list[NodeInfo]:
        """The sites running the job (not gone), with their node ids."""
        run = self.run
        return [
            NodeInfo(node_id(site), site, site in run.registry and site not in run.disconnected)
            for site in run.sites
            if site not in self.gone
        ]

    @property
    def ended(self) -> bool:
        """The relay stopped relaying (the job is ending)."""
        return self.finished is not None or self.run.forced is not None or self.run.ending

    # -- the phase -------------------------------------------------------------------------
    async def __call__(self) -> JobFinished:
        """Relay until the job ends; its end."""
        run = self.run
        self.nodes = {node_id(site): site for site in run.sites}
        run.log.info(
            "job %s: driver workflow on %s (idle timeout %g s, default ttl %g s)",
            run.job_id,
            ", ".join(f"{s} (node {n})" for n, s in self.nodes.items()),
            self.idle_timeout,
            self.config.default_ttl,
        )
        self._arm_idle(self.idle_timeout)
        try:
            while self.finished is None and run.forced is None:
                event = await run.events.get()
                await self.handle(event)
        finally:
            self._close()
        finished = run.forced or self.finished
        assert finished is not None
        return finished

    async def handle(self, event: Event) -> None:
        """Carry out one event."""
        run = self.run
        match event:
            case SiteMessage():
                await self._message(event)
            case MalformedMessage(site, topic, error):
                run.log.warning(
                    "job %s: %s sent a malformed %s: %s", run.job_id, site, topic.value, error
                )
                self._row("refused", src=site, reason=f"malformed {topic.value}: {error}")
            case TimerFired(token):
                if token == _IDLE:
                    self._check_idle()
                elif token.startswith(_TTL):
                    self._expire(token[len(_TTL) :])
            case Aborted(reason):
                self.finished = JobFinished(ABORTED, reason, None)
            case ServerStopping(reason):
                run.forced = JobFinished(ABNORMAL, reason, None)
            case SiteDisconnected(site):
                run.site_left(site)
            case SiteConnected(site):
                self._reconnected(site)
            case SiteLost(site, reason):
                if site in run.disconnected:
                    self._site_gone(site, f"the site is gone: {reason}", ErrorCode.NODE_UNAVAILABLE)
            case DriverPushed():
                self._push(event)
            case DriverWatch():
                self._watch(event)
            case DriverLeft(sink):
                self.watchers = [w for w in self.watchers if w.sink is not sink]
                self._touch()
            case DriverSeen():
                self._touch()
            case DriverFinished(who, status, reason, model, done):
                run.log.info("job %s: %s finished the job: %s %s", run.job_id, who, status, reason)
                self.finished = JobFinished(status, reason, model)
                if not done.done():
                    done.set_result(None)
            case _:
                unhandled(event)

    # -- the driver ------------------------------------------------------------------------
    def _touch(self) -> None:
        self.last_seen = time.monotonic()

    def _arm_idle(self, seconds: float) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = asyncio.get_running_loop().call_later(
            seconds, self.run.post, TimerFired(_IDLE)
        )

    def _check_idle(self) -> None:
        if self.watchers:  # a reply stream is open: the driver is there
            self._arm_idle(self.idle_timeout)
            return
        away = time.monotonic() - self.last_seen
        if away >= self.idle_timeout:
            self.finished = JobFinished(
                ABNORMAL,
                f"the driver was away for {away:.0f} s, more than driver_idle_timeout "
                f"({self.idle_timeout:g} s)",
                None,
            )
        else:
            self._arm_idle(self.idle_timeout - away)

    def _ack(self, ids: tuple[str, ...]) -> None:
        for message_id in ids:
            reply = self.replies.pop(message_id, None)
            if reply is not None and reply.content is not None:
                reply.content.discard()

    def _push(self, event: DriverPushed) -> None:
        run = self.run
        self._touch()
        self._ack(event.acks)
        unknown = sorted(
            {int(o.data["dst_node_id"]) for o in event.messages} - set(self.nodes),
        )
        if unknown:
            nodes = ", ".join(f"{n} ({s})" for n, s in self.nodes.items())
            event.done.set_exception(
                errors.InvalidArgumentError(
                    f"dst_node_id {', '.join(map(str, unknown))} is not a node of job "
                    f"{run.job_id}; its nodes: {nodes}",
                    job_id=run.job_id,
                )
            )
            for out in event.messages:
                if out.content is not None and out.content.users == 0:
                    out.content.discard()
            return
        self._serve(event.messages)
        ids: list[str] = []
        for out in event.messages:
            ids.append(self._send(out, event.who))
        event.done.set_result(ids)

    def _serve(self, messages: tuple[Outgoing, ...]) -> None:
        """Serve each file content once, to every destination site that needs it."""
        run = self.run
        sites: dict[int, set[str]] = {}
        contents: dict[int, Content] = {}
        for out in messages:
            if out.content is not None:
                out.content.users += 1
                if out.content.data is None:
                    key = id(out.content)
                    contents[key] = out.content
                    sites.setdefault(key, set()).add(self.nodes[int(out.data["dst_node_id"])])
        for key, content in contents.items():
            assert content.path is not None
            content.blob = run.blobs.serve(
                run.job_id,
                content.path,
                sites[key],
                name=f"{content.sha256[:16]}.npz",
                sha256=content.sha256,
                size=content.size,
                content_type="application/x-npz",
            )

    def _send(self, out: Outgoing, who: str) -> str:
        run = self.run
        message_id = uuid.uuid4().hex
        site = self.nodes[int(out.data["dst_node_id"])]
        data = dict(out.data)
        ttl = float(data.get("ttl") or 0.0) or self.config.default_ttl
        data.update(
            message_id=message_id,
            run_id=run.job_id,
            src_node_id=DRIVER_NODE_ID,
            reply_to_message_id="",
            created_at=time.time(),
            ttl=ttl,
        )
        self.known.add(message_id)
        self.counts["sent"] += 1
        content = out.content
        self._row(
            "sent",
            message_id=message_id,
            data=data,
            src=f"driver {who}",
            dst=site,
            bytes=content.size if content else 0,
            json_bytes=out.json_bytes,
            ttl=ttl,
        )
        inline = (
            base64.b64encode(content.data).decode("ascii")
            if content is not None and content.data is not None
            else None
        )
        refs = [content.blob.ref()] if content is not None and content.blob is not None else []
        pending = _Pending(message_id, site, data, content, inline, refs, "", time.monotonic(), ttl)
        self.pending[message_id] = pending
        if site in self.gone:
            self._error(pending, ErrorCode.NODE_UNAVAILABLE, f"{site}: {self.gone[site]}")
            return message_id
        pending.timer = asyncio.get_running_loop().call_later(
            ttl, run.post, TimerFired(_TTL + message_id)
        )
        self._deliver(pending)
        return message_id

    def _deliver(self, pending: _Pending) -> None:
        run = self.run
        connected = run.registry.get(pending.site)
        if connected is None or pending.site in run.disconnected:
            return  # sent when the site comes back (or an error at its TTL or its loss)
        left = max(pending.ttl - (time.monotonic() - pending.sent), 0.0)
        body = DriverMessage(pending.data, round(left, 3), pending.inline)
        try:
            run.registry.send(pending.site, envelope(run.job_id, body, *pending.refs))
        except errors.InvalidTarget:
            return
        pending.session = connected.session_id

    def _watch(self, event: DriverWatch) -> None:
        self._touch()
        self._ack(event.acks)
        unknown = [m for m in event.message_ids if m not in self.known]
        if unknown:
            event.sink.put_nowait(
                errors.InvalidArgumentError(
                    f"no message of job {self.run.job_id} has the id "
                    f"{', '.join(repr(m[:40]) for m in unknown[:5])}; use the ids "
                    "push_messages returned",
                    job_id=self.run.job_id,
                )
            )
            return
        watcher = _Watcher(event.sink)
        for message_id in dict.fromkeys(event.message_ids):
            reply = self.replies.get(message_id)
            if reply is not None:
                event.sink.put_nowait(reply)
            elif message_id not in self.answered:
                watcher.wanted.add(message_id)
        if event.wait and watcher.wanted:
            self.watchers.append(watcher)
        else:
            event.sink.put_nowait(END)

    # -- the sites -------------------------------------------------------------------------
    async def _message(self, message: SiteMessage) -> None:
        run, site, body = self.run, message.site, message.body
        match body:
            case Metric():
                keep_record(run, site, body)
            case JobLog():
                keep_log(run, site, body, message.blob_ids)
            case JobStatusReport(status, error, stderr_tail):
                tail = (stderr_tail or "")[-8000:]
                if tail:
                    run.site_errors[site] = tail
                if status == "failed":
                    text = (error or status)[:4000]
                    if tail and tail not in text:
                        text += f"; stderr:\n{tail}"
                    self._site_gone(site, f"user code failed: {text}", ErrorCode.CLIENT_APP_CRASHED)
                elif status == "aborted":
                    why = f"the job was aborted on the site: {error or status}"
                    self._site_gone(site, why, ErrorCode.NODE_UNAVAILABLE)
            case TaskResult():
                pass  # a driver job sends no tasks
            case DriverReply():
                await self._reply(site, body, message.blob_ids)
            case _:
                unhandled(body)

    def upload_target(self, site: str, message_id: str) -> tuple[Path, int]:
        """Where a site's reply arrays go, and their cap (the upload policy, kind ``reply``).

        Raises:
            InvalidArgumentError: no message to that site awaits a reply, or its arrays
                were uploaded already.
        """
        pending = self.pending.get(message_id)
        if pending is None or pending.site != site or self.ended:
            raise errors.InvalidArgumentError(
                f"message {message_id[:64]!r} of job {self.run.job_id} awaits no reply from {site}"
            )
        if pending.uploaded:
            raise errors.InvalidArgumentError(
                f"the reply to message {message_id[:64]!r} was already uploaded"
            )
        return self.folder, self.max_bytes

    def on_uploaded(self, blob: UploadedBlob) -> None:
        pending = self.pending.get(blob.task_id)
        if pending is not None:
            pending.uploaded = True

    async def _reply(self, site: str, body: DriverReply, blob_ids: tuple[str, ...]) -> None:
        run = self.run
        reply_to = body.reply_to[:128]
        blob = run.blobs.uploaded(blob_ids[0], run.job_id, site) if blob_ids else None
        pending = self.pending.get(reply_to)
        refused = ""
        if pending is None:
            if reply_to in self.expired:
                refused = "a reply after the message's TTL ended"
            elif reply_to in self.answered:
                refused = "a second reply to the message"
            else:
                refused = "a reply to no message of this job"
        elif pending.site != site:
            refused = f"a reply from {site}, but the message went to {pending.site}"
        if refused:
            run.log.warning("job %s: refused %s (%s)", run.job_id, refused, reply_to[:40])
            self.counts["refused"] += 1
            self._row("refused", reply_to=reply_to, src=site, dst="driver", reason=refused)
            if blob is not None:
                run.blobs.discard(blob.blob_id)
            return
        assert pending is not None
        where = f"the reply of {site} to message {reply_to}"
        try:
            content = await self._reply_content(where, body, blob)
            names = content.names if content is not None else frozenset()
            data = check_wire(body.message, names, where=where)
        except (errors.MessageError, errors.InvalidArgumentError) as exc:
            run.log.warning("job %s: %s", run.job_id, exc.message)
            self._error(pending, ErrorCode.REFUSED, f"the server refused {where}: {exc.message}")
            return
        finally:
            if blob is not None:
                run.blobs.discard(blob.blob_id)  # its file was moved into the relay's folder
        data.update(
            message_id=uuid.uuid4().hex,
            run_id=run.job_id,
            src_node_id=node_id(site),
            dst_node_id=DRIVER_NODE_ID,
            reply_to_message_id=reply_to,
            group_id=pending.data["group_id"],
            message_type=pending.data["message_type"],
        )
        self._resolve(pending, StoredReply(reply_to, data, content, site))

    async def _reply_content(
        self, where: str, body: DriverReply, blob: UploadedBlob | None
    ) -> Content | None:
        if body.npz_b64 is not None:
            if blob is not None:
                raise errors.MessageError(f"{where}: arrays both inline and uploaded")
            raw = decode_b64(body.npz_b64, where, INLINE_BYTES)
            names = await asyncio.to_thread(
                content_names, raw, max_bytes=self.max_bytes, where=where
            )
            return Content(hashlib.sha256(raw).hexdigest(), len(raw), data=raw, names=names)
        if blob is None:
            return None
        path = self.folder / f"reply-{uuid.uuid4().hex}.npz"
        await asyncio.to_thread(os.replace, blob.path, path)
        content = Content(blob.sha256, blob.size, path=path)
        try:
            content.names = await asyncio.to_thread(
                content_names, path, max_bytes=self.max_bytes, where=where
            )
        except BaseException:
            content.discard()
            raise
        return content

    def _resolve(self, pending: _Pending, reply: StoredReply, error: str | None = None) -> None:
        """``pending`` has its reply: keep it, log it, give it to the streams waiting."""
        self.pending.pop(pending.message_id, None)
        if pending.timer is not None:
            pending.timer.cancel()
        self._release(pending.content)
        self.answered.add(pending.message_id)
        self.replies[pending.message_id] = reply
        self.counts["errors" if error else "replies"] += 1
        self._row(
            "reply",
            message_id=reply.data["message_id"],
            reply_to=pending.message_id,
            data=reply.data,
            src=reply.source,
            dst="driver",
            bytes=reply.content.size if reply.content else 0,
            json_bytes=len(dumps(reply.data)),
            latency=round(time.monotonic() - pending.sent, 6),
            error=error,
        )
        for watcher in list(self.watchers):
            if pending.message_id in watcher.wanted:
                watcher.wanted.discard(pending.message_id)
                watcher.sink.put_nowait(reply)
                if not watcher.wanted:
                    watcher.sink.put_nowait(END)
                    self.watchers.remove(watcher)

    def _error(self, pending: _Pending, code: int, reason: str) -> None:
        """The server answers ``pending`` with an error reply."""
        data = {
            "message_id": uuid.uuid4().hex,
            "run_id": self.run.job_id,
            "src_node_id": node_id(pending.site),
            "dst_node_id": DRIVER_NODE_ID,
            "reply_to_message_id": pending.message_id,
            "group_id": pending.data["group_id"],
            "created_at": time.time(),
            "ttl": 0.0,
            "message_type": pending.data["message_type"],
            "content": None,
            "error": {"code": code, "reason": reason},
        }
        self._resolve(pending, StoredReply(pending.message_id, data), f"{code}: {reason}")

    def _release(self, content: Content | None) -> None:
        if content is None:
            return
        content.users -= 1
        if content.users <= 0:
            if content.blob is not None:
                self.run.blobs.unserve(content.blob.blob_id)
            content.discard()

    def _expire(self, message_id: str) -> None:
        pending = self.pending.get(message_id)
        if pending is None:
            return
        self.expired.add(message_id)
        self._error(
            pending,
            ErrorCode.TTL_EXPIRED,
            f"{pending.site} did not reply within the message's ttl of {pending.ttl:g} s",
        )

    def _site_gone(self, site: str, why: str, code: int) -> None:
        run = self.run
        if site in self.gone:
            return
        self.gone[site] = why
        run.log.warning("job %s: %s no longer runs the job: %s", run.job_id, site, why)
        for pending in [p for p in self.pending.values() if p.site == site]:
            self._error(pending, code, f"{site}: {why}")
        left = [s for s in run.sites if s not in self.gone]
        if not left:
            crashed = any(w.startswith("user code failed") for w in self.gone.values())
            self.finished = JobFinished(
                EXECUTION_EXCEPTION if crashed else ABNORMAL,
                "every site of the job is gone: "
                + "; ".join(f"{s}: {w}" for s, w in self.gone.items()),
                None,
                tuple(self.gone),
            )

    def _reconnected(self, site: str) -> None:
        run = self.run
        run.site_back(site)
        connected = run.registry.get(site)
        if connected is None or site in self.gone:
            return
        if run.job_id not in connected.running_jobs:
            self._site_gone(
                site, "the site came back no longer running the job", ErrorCode.NODE_UNAVAILABLE
            )
            return
        for pending in self.pending.values():
            # Sent on the old connection, it may be lost: again (the site runs it once).
            if pending.site == site and pending.session != connected.session_id:
                self._deliver(pending)

    # -- the end ---------------------------------------------------------------------------
    def _close(self) -> None:
        """The job is ending: every message still waiting gets an error reply, every
        stream its end; the idle timer stops."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        why = "the job ended before the site replied"
        for pending in list(self.pending.values()):
            self._error(pending, ErrorCode.MESSAGE_UNAVAILABLE, why)
        for watcher in self.watchers:
            watcher.sink.put_nowait(END)
        self.watchers.clear()

    def summary(self) -> dict[str, Any]:
        """What summary.json says of the relay."""
        return {
            "messages_sent": self.counts["sent"],
            "replies": self.counts["replies"],
            "error_replies": self.counts["errors"],
            "refused": self.counts["refused"],
            "sites_gone": dict(self.gone),
        }

    def _row(self, event: str, *, data: dict[str, Any] | None = None, **fields: Any) -> None:
        row: dict[str, Any] = {"time": time.time(), "event": event}
        if data is not None:
            row.update(
                message_type=data.get("message_type"),
                group_id=data.get("group_id"),
                src_node_id=data.get("src_node_id"),
                dst_node_id=data.get("dst_node_id"),
            )
        row.update(fields)
        self.rows.append(row)
