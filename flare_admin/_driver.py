"""What the blocking and the asyncio Driver share: state, checks, what is sent, what is read.

:class:`DriverCore` holds a driver's job, its nodes and settings (from ``DriverConnect``),
checks the messages it is given, builds a push (:meth:`DriverCore.push_items`: each
distinct array content once, inline when small, else as a 1 MiB-chunked transfer through
:class:`~flare_protocol.transfer.ChunkSender`) and reads a reply stream
(:class:`ReplyReader`: the arrays through :class:`~flare_protocol.transfer.ChunkReceiver`,
then :func:`~flare_protocol.message.from_wire`: checked, no pickle). It also remembers
which replies it handed out: each is returned once, and acknowledged on the next call so
the server can drop it; a driver that reconnects (a new :class:`DriverCore`) pulls the
replies it never acknowledged. No I/O here: :mod:`flare_admin.driver` runs the calls.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flare_protocol._generated import admin_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.errors import (
    InternalError,
    InvalidArgumentError,
    MessageError,
)
from flare_protocol.message import (
    INLINE_NPZ_BYTES,
    Message,
    check_message_type,
    from_wire,
    npz_of,
    to_wire,
)
from flare_protocol.records import RecordSet, dumps
from flare_protocol.transfer import ChunkReceiver, ChunkSender

__all__ = ["FINISH_STATUSES", "DriverCore", "DriverInfo", "ReplyReader"]

#: What ``finish(status=...)`` accepts.
FINISH_STATUSES = ("COMPLETED", "FAILED", "ABORTED")


@dataclass(frozen=True)
class DriverInfo:
    """What ``DriverConnect`` says of a driver job."""

    job_id: str
    #: node id -> site name, for the sites running the job.
    nodes: dict[int, str]
    #: node id -> connected now.
    connected: dict[int, bool]
    run_config: dict[str, Any]
    default_ttl: float
    max_message_bytes: int
    idle_timeout: float

    @classmethod
    def from_reply(cls, reply: Any) -> DriverInfo:
        try:
            run_config = json.loads(reply.run_config_json or "{}")
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise InternalError(f"the server sent a malformed run_config: {exc}") from None
        return cls(
            job_id=reply.job_id,
            nodes={int(n.node_id): n.name for n in reply.nodes},
            connected={int(n.node_id): bool(n.connected) for n in reply.nodes},
            run_config=run_config if isinstance(run_config, dict) else {},
            default_ttl=float(reply.default_ttl),
            max_message_bytes=int(reply.max_message_bytes),
            idle_timeout=float(reply.idle_timeout),
        )


class DriverCore:
    """A driver's state and the pure half of its calls (see the module doc)."""

    def __init__(self, info: DriverInfo) -> None:
        self.info = info
        self.job_id = info.job_id
        #: Replies handed out (by the id of the message answered), and those not yet
        #: acknowledged to the server.
        self._delivered: set[str] = set()
        self._ack: list[str] = []

    # -- messages ------------------------------------------------------------------------
    def create_message(
        self,
        content: RecordSet,
        message_type: str,
        dst_node_id: int,
        group_id: str | None = None,
        ttl: float | None = None,
    ) -> Message:
        """A new message for ``dst_node_id`` (Flower's ``create_message``); ``ttl`` None
        means the job's ``default_ttl``.

        Raises:
            InvalidArgumentError: content that is not a RecordSet, an unknown message
                type, a node that does not run the job, a ttl that is not > 0.
        """
        check_message_type(message_type)
        self.check_node(dst_node_id)
        message = Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)
        message.metadata.run_id = self.job_id
        if ttl is None:
            message.metadata.ttl = self.info.default_ttl
        return message

    def check_node(self, node: object) -> int:
        if isinstance(node, bool) or not isinstance(node, int) or node not in self.info.nodes:
            known = ", ".join(f"{n} ({s})" for n, s in self.info.nodes.items()) or "none"
            raise InvalidArgumentError(
                f"node {node!r} does not run job {self.job_id}; its nodes: {known} "
                "(get_node_ids())",
                job_id=self.job_id,
            )
        return node

    def take_acks(self) -> list[str]:
        """The replies to acknowledge with the next call (then forgotten here)."""
        acks, self._ack = self._ack, []
        return acks

    def push_items(self, messages: Iterable[Message], acks: list[str]) -> PushPlan:
        """The items of a DriverPush of ``messages`` (checked first).

        Raises:
            InvalidArgumentError: not a Message, a reply rather than an instruction, an
                unknown node, arrays over the job's ``max_message_bytes``.
        """
        return PushPlan(self, list(messages), acks)

    def pushed(self, messages: list[Message], ids: list[str]) -> list[str]:
        """The server's ids, given to the messages too (their ``metadata.message_id``)."""
        if len(ids) != len(messages):
            raise InternalError(
                f"the server gave {len(ids)} ids for {len(messages)} pushed messages"
            )
        for message, message_id in zip(messages, ids, strict=True):
            message.metadata.message_id = message_id
            message.metadata.run_id = self.job_id
        return ids

    def check_ids(self, message_ids: Iterable[str]) -> list[str]:
        ids = [message_ids] if isinstance(message_ids, str) else list(message_ids)
        for message_id in ids:
            if not isinstance(message_id, str) or not message_id or len(message_id) > 128:
                raise InvalidArgumentError(
                    f"message id {message_id!r} is not one push_messages returned"
                )
        return ids

    def replies_request(self, message_ids: list[str], *, wait: bool) -> tuple[Any, list[str]]:
        """The DriverReplies request for the replies not handed out yet, and their ids."""
        wanted = [m for m in dict.fromkeys(message_ids) if m not in self._delivered]
        return admin_pb2.DriverRepliesRequest(
            job_id=self.job_id, message_ids=wanted, wait=wait, ack=self.take_acks()
        ), wanted

    def deliver(self, reply: Message) -> bool:
        """Whether to hand ``reply`` out (each reply once); remembers it."""
        asked = reply.metadata.reply_to_message_id
        if asked in self._delivered:
            return False
        self._delivered.add(asked)
        self._ack.append(asked)
        return True


class PushPlan:
    """A checked push: its items (built lazily, each content serialized once)."""

    def __init__(self, core: DriverCore, messages: list[Message], acks: list[str]) -> None:
        self.core = core
        self.messages = messages
        self.acks = acks
        self.entries: list[tuple[str, str | None, str | None]] = []  # json, sha, inline
        self.contents: dict[str, bytes] = {}  # sha -> npz to transfer
        cache: dict[int, tuple[bytes | None, str | None]] = {}
        limit = core.info.max_message_bytes
        for number, message in enumerate(messages, 1):
            if not isinstance(message, Message):
                raise InvalidArgumentError(
                    f"push_messages takes Messages (create_message()), got "
                    f"{type(message).__name__} at position {number}"
                )
            m = message.metadata
            if m.reply_to_message_id or not message.has_content():
                raise InvalidArgumentError(
                    f"message {number} is a reply: a driver pushes instructions (create_message())"
                )
            core.check_node(m.dst_node_id)
            data, arrays = to_wire(message)
            key = id(message.content)
            if key not in cache:
                npz = npz_of(arrays)
                cache[key] = (npz, hashlib.sha256(npz).hexdigest() if npz else None)
            npz, sha = cache[key]
            inline: str | None = None
            if npz is not None and sha is not None:
                if len(npz) > limit:
                    raise InvalidArgumentError(
                        f"message {number}'s arrays are {len(npz)} bytes as .npz, more than "
                        f"job {core.job_id} allows ({limit}, max_message_bytes in its "
                        "config_fed_server.json)",
                        job_id=core.job_id,
                    )
                if len(npz) <= INLINE_NPZ_BYTES:
                    inline = base64.b64encode(npz).decode("ascii")
                    sha = None
                else:
                    self.contents[sha] = npz
            self.entries.append((_message_json(data, sha, inline), sha, inline))

    @property
    def bytes(self) -> int:
        """Bytes of arrays sent as transfers."""
        return sum(len(v) for v in self.contents.values())

    def items(self) -> Iterator[admin_pb2.DriverPushItem]:
        """The stream: start, each transfer, each message."""
        yield admin_pb2.DriverPushItem(
            start=admin_pb2.DriverPushStart(job_id=self.core.job_id, ack=self.acks)
        )
        for sha, npz in self.contents.items():
            sender = ChunkSender(
                f"the arrays {sha[:16]}",
                name=sha,
                size=len(npz),
                sha256=sha,
                content_type="application/x-npz",
            )
            yield admin_pb2.DriverPushItem(content=sender.header())
            for chunk in sender.split(npz):
                yield admin_pb2.DriverPushItem(content=chunk)
            sender.finish()
        for text, _, _ in self.entries:
            yield admin_pb2.DriverPushItem(message_json=text)


def _message_json(data: dict[str, Any], sha: str | None, inline: str | None) -> str:
    return dumps({"message": data, "npz": sha, "npz_b64": inline})


class ReplyReader:
    """Reads a DriverReplies stream: each item in, a reply ``Message`` out when whole."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._pending: dict[str, Any] | None = None
        self._receiver: ChunkReceiver | None = None
        self._data = bytearray()

    def feed(self, item: Any) -> Message | None:
        """The reply ``item`` completes, or None (more of it is to come).

        Raises:
            InternalError: the stream breaks its rules or a reply is malformed.
        """
        kind = item.WhichOneof("item")
        if kind == "reply_json":
            if self._pending is not None:
                raise InternalError("a reply's arrays were cut short by the next reply")
            try:
                wrapper = json.loads(item.reply_json)
            except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
                raise InternalError(f"the server sent a malformed reply: {exc}") from None
            if not isinstance(wrapper, dict):
                raise InternalError("the server sent a reply that is not a JSON object")
            inline = wrapper.get("npz_b64")
            if wrapper.get("npz") is True:
                self._pending = wrapper
                self._receiver = ChunkReceiver(
                    f"the arrays of a reply of job {self.job_id}",
                    error=InternalError,
                    require_size=True,
                    require_sha256=True,
                )
                self._data = bytearray()
                return None
            npz = base64.b64decode(inline) if isinstance(inline, str) else None
            return self._message(wrapper.get("message"), npz)
        if kind == "content" and self._receiver is not None and self._pending is not None:
            data = self._receiver.feed(item.content)
            if data is not None:
                self._data += data
            receiver = self._receiver
            if receiver.header is not None and receiver.received == receiver.size:
                receiver.finish()
                wrapper, npz = self._pending, bytes(self._data)
                self._pending, self._receiver, self._data = None, None, bytearray()
                return self._message(wrapper.get("message"), npz)
            return None
        raise InternalError(f"the server sent a reply stream item out of place ({kind!r})")

    def finish(self) -> None:
        """The stream ended: a reply whose arrays did not all arrive is an error."""
        if self._pending is not None:
            raise InternalError("the reply stream ended in the middle of a reply's arrays")

    def _message(self, data: object, npz: bytes | None) -> Message:
        try:
            return from_wire(data, npz, where=f"a reply of job {self.job_id}")
        except MessageError as exc:
            raise InternalError(f"the server relayed a malformed reply: {exc.message}") from None


def deadline_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()``), at least a millisecond."""
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.001)


def finish_request(job_id: str, status: str, reason: str, npz: bytes | None) -> list[Any]:
    """The DriverFinish stream: a header (job, status, reason), then the model's bytes.

    Raises:
        InvalidArgumentError: a status that is not COMPLETED, FAILED or ABORTED.
    """
    word = str(status).upper()
    if word not in FINISH_STATUSES:
        raise InvalidArgumentError(
            f"finish(status={status!r}): the status must be one of {', '.join(FINISH_STATUSES)}"
        )
    data = npz or b""
    sender = ChunkSender(
        "the final global model",
        name="global_model.npz",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="application/x-npz",
        params={"job_id": job_id, "status": word, "reason": str(reason)[:8000]},
        chunk_size=CHUNK_SIZE,
    )
    return [sender.header(), *sender.split(data)]
