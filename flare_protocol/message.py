"""Driver API messages: ``Message``, its ``Metadata`` and ``Error``, and their wire form.

Theory of operation. A job's driver (an admin's ServerApp) sends :class:`Message`\\ s to the
job's sites and gets one reply per message, as in Flower: an instruction message names
its destination node, a :data:`MessageType` and a group (the round, say), and carries a
:class:`~flare_protocol.records.RecordSet`; a reply carries content or an :class:`Error`.
Message ids are given by the server when a message is pushed; node ids are stable
integers derived from the site names (:func:`node_id`).

On the wire a message is one JSON object (:func:`to_wire`: the metadata, the content's
manifest or the error) plus, when its content holds arrays, one ``.npz`` (:func:`npz_of`),
never pickle. :func:`from_wire` reads both back from an untrusted peer, checking every
field and the arrays (numeric, within the caps) before anything is built; the server,
the sites and the Session all use these two functions.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flare_protocol.errors import InvalidArgumentError, InvalidModel, MessageError
from flare_protocol.models import MAX_MODEL_BYTES, dump_params, load_params
from flare_protocol.records import (
    RecordSet,
    array_count,
    decode_content,
    dumps,
    encode_content,
)

__all__ = [
    "DRIVER_NODE_ID",
    "INLINE_NPZ_BYTES",
    "MAX_JSON_BYTES",
    "Error",
    "ErrorCode",
    "Message",
    "MessageType",
    "Metadata",
    "check_message_type",
    "error_reply_wire",
    "from_wire",
    "node_id",
    "npz_of",
    "to_wire",
]

#: The node id of the driver's side (the server relays for it).
DRIVER_NODE_ID = 0
#: Largest JSON part of one message (metadata, metrics, configs; arrays travel apart).
MAX_JSON_BYTES = 512 * 1024
#: Arrays (``.npz``) up to this many bytes travel inside a message's JSON (base64); bigger
#: ones as a transfer of their own, so a small message costs no extra round trip.
INLINE_NPZ_BYTES = 256 * 1024
_ACTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{0,128}$")


class MessageType:
    """The message types a ClientApp handles (Flower's names); ``"train.<action>"`` (and
    the same for the others) names a custom handler."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    QUERY = "query"

    def __new__(cls) -> MessageType:  # pragma: no cover - constants only
        raise TypeError("MessageType holds constants; it cannot be instantiated")


_TYPES = (MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY)


def check_message_type(value: object) -> str:
    """``value`` if it is ``train``/``evaluate``/``query``, or one of them plus
    ``.<action>`` (an identifier); else InvalidArgumentError."""
    if isinstance(value, str):
        kind, dot, action = value.partition(".")
        if kind in _TYPES and (not dot or _ACTION.match(action)):
            return value
    raise InvalidArgumentError(
        f"message type {value!r} is not one of 'train', 'evaluate', 'query' or "
        "'<one of them>.<action>' (an identifier, e.g. 'query.stats')"
    )


class ErrorCode:
    """Codes of a reply's :class:`Error` (Flower's numbers where they exist)."""

    UNKNOWN = 0
    LOAD_CLIENT_APP_EXCEPTION = 1
    CLIENT_APP_RAISED_EXCEPTION = 2
    MESSAGE_UNAVAILABLE = 3
    REPLY_MESSAGE_UNAVAILABLE = 4
    NODE_UNAVAILABLE = 5
    CLIENT_APP_CRASHED = 8
    #: The message's TTL ended before its destination replied.
    TTL_EXPIRED = 100
    #: The destination site refused or could not take the message.
    REFUSED = 101

    def __new__(cls) -> ErrorCode:  # pragma: no cover - constants only
        raise TypeError("ErrorCode holds constants; it cannot be instantiated")


@dataclass(frozen=True)
class Error:
    """Why a reply carries no content: a code (:class:`ErrorCode`) and a reason."""

    code: int
    reason: str | None = None


def node_id(site: str) -> int:
    """The stable node id of a site: the first 63 bits of the SHA-256 of its name (never
    0, the driver's)."""
    number = int.from_bytes(hashlib.sha256(site.encode("utf-8")).digest()[:8], "big") >> 1
    return number or 1


@dataclass
class Metadata:
    """What a message is: its ids, type, group, ends, TTL and creation time (Flower's
    ``Metadata``; ``run_id`` is the job id)."""

    run_id: str
    message_id: str
    src_node_id: int
    dst_node_id: int
    reply_to_message_id: str
    group_id: str
    created_at: float
    #: Seconds the message and its reply stay valid; 0 until pushed means the job's
    #: ``default_ttl``.
    ttl: float
    message_type: str


class Message:
    """A Driver API message (Flower's shapes)::

    Message(content, dst_node_id, message_type, ttl=None, group_id=None)  # instruction
    Message(content, reply_to=message)                                   # reply
    Message(Error(code, reason), reply_to=message)                       # error reply
    """

    def __init__(
        self,
        content_or_error: RecordSet | Error | None = None,
        dst_node_id: int | None = None,
        message_type: str | None = None,
        *,
        content: RecordSet | None = None,
        error: Error | None = None,
        ttl: float | None = None,
        group_id: str | None = None,
        reply_to: Message | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        if isinstance(content_or_error, Error):
            error = content_or_error
        elif content_or_error is not None:
            content = content_or_error
        if content is not None and not isinstance(content, RecordSet):
            raise InvalidArgumentError(
                f"a message's content must be a RecordSet, got {type(content).__name__}"
            )
        if content is not None and error is not None:
            raise InvalidArgumentError("a message carries content or an error, not both")
        if ttl is not None:
            ttl = _ttl(ttl)
        if metadata is None and reply_to is None:
            if content is None:
                raise InvalidArgumentError("an instruction message needs content (a RecordSet)")
            if isinstance(dst_node_id, bool) or not isinstance(dst_node_id, int):
                raise InvalidArgumentError(f"dst_node_id must be an int, got {dst_node_id!r}")
            metadata = Metadata(
                run_id="",
                message_id="",
                src_node_id=DRIVER_NODE_ID,
                dst_node_id=dst_node_id,
                reply_to_message_id="",
                group_id=_group(group_id),
                created_at=time.time(),
                ttl=ttl or 0.0,
                message_type=check_message_type(message_type),
            )
        elif metadata is None:
            assert reply_to is not None
            if dst_node_id is not None or message_type is not None or group_id is not None:
                raise InvalidArgumentError(
                    "a reply takes its destination, type and group from the message it "
                    "answers; pass only content (or an error), reply_to and ttl"
                )
            asked = reply_to.metadata
            now = time.time()
            left = asked.ttl - (now - asked.created_at) if asked.ttl else 0.0
            metadata = Metadata(
                run_id=asked.run_id,
                message_id="",
                src_node_id=asked.dst_node_id,
                dst_node_id=asked.src_node_id,
                reply_to_message_id=asked.message_id,
                group_id=asked.group_id,
                created_at=now,
                ttl=ttl if ttl is not None else max(left, 0.0),
                message_type=asked.message_type,
            )
        self._metadata = metadata
        self._content = content
        self._error = error

    @property
    def metadata(self) -> Metadata:
        """The message's ids, type, group, ends, TTL and creation time."""
        return self._metadata

    @property
    def content(self) -> RecordSet:
        """The content (ValueError for a message carrying an error: see has_content)."""
        if self._content is None:
            raise ValueError(
                "this message has no content (it carries an error): check has_content()"
            )
        return self._content

    @content.setter
    def content(self, value: RecordSet) -> None:
        if self._error is not None:
            raise ValueError("a message carrying an error cannot have content")
        self._content = value

    @property
    def error(self) -> Error:
        """The error (ValueError for a message with content: see has_error)."""
        if self._error is None:
            raise ValueError("this message carries no error: check has_error()")
        return self._error

    @error.setter
    def error(self, value: Error) -> None:
        if self._content is not None:
            raise ValueError("a message with content cannot carry an error")
        self._error = value

    def has_content(self) -> bool:
        """True when the message carries content."""
        return self._content is not None

    def has_error(self) -> bool:
        """True when the message carries an error."""
        return self._error is not None

    def create_reply(self, content: RecordSet, ttl: float | None = None) -> Message:
        """A reply to this message carrying ``content``."""
        return Message(content, reply_to=self, ttl=ttl)

    def create_error_reply(self, error: Error, ttl: float | None = None) -> Message:
        """A reply to this message carrying ``error``."""
        return Message(error, reply_to=self, ttl=ttl)

    def __repr__(self) -> str:
        m = self._metadata
        body = (
            f"content={self._content!r}" if self._content is not None else f"error={self._error!r}"
        )
        return (
            f"Message(id={m.message_id!r}, type={m.message_type!r}, group={m.group_id!r}, "
            f"src={m.src_node_id}, dst={m.dst_node_id}, reply_to={m.reply_to_message_id!r}, "
            f"{body})"
        )


def _ttl(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidArgumentError(f"ttl must be a number of seconds > 0, got {value!r}")
    return float(value)


def _group(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > 256 or any(ord(c) < 32 for c in value):
        raise InvalidArgumentError(
            f"group_id must be a string of at most 256 characters, got {value!r}"
        )
    return value


# -- the wire form ------------------------------------------------------------------------


def to_wire(message: Message) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A message as its JSON object and its arrays (``.npz`` member name -> array).

    Raises:
        InvalidArgumentError: the JSON part is over :data:`MAX_JSON_BYTES`.
    """
    m = message.metadata
    data: dict[str, Any] = {
        "message_id": m.message_id,
        "run_id": m.run_id,
        "src_node_id": m.src_node_id,
        "dst_node_id": m.dst_node_id,
        "reply_to_message_id": m.reply_to_message_id,
        "group_id": m.group_id,
        "created_at": m.created_at,
        "ttl": m.ttl,
        "message_type": m.message_type,
        "content": None,
        "error": None,
    }
    arrays: dict[str, np.ndarray] = {}
    if message.has_content():
        data["content"], arrays = encode_content(message.content)
    else:
        error = message.error
        data["error"] = {"code": int(error.code), "reason": error.reason}
    size = len(dumps(data))
    if size > MAX_JSON_BYTES:
        raise InvalidArgumentError(
            f"the metrics and configs of one message are {size} bytes of JSON, more than "
            f"{MAX_JSON_BYTES}: put large data in a ParametersRecord"
        )
    return data, arrays


def error_reply_wire(message: Mapping[str, Any], code: int, reason: str) -> dict[str, Any]:
    """The JSON of an error reply to ``message`` (an instruction's JSON object, maybe
    malformed: only what is well formed is taken from it)."""

    def text(key: str, default: str = "") -> str:
        value = message.get(key)
        return value if isinstance(value, str) else default

    def number(key: str) -> int:
        value = message.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    try:
        kind = check_message_type(message.get("message_type"))
    except InvalidArgumentError:
        kind = MessageType.QUERY
    return {
        "message_id": "",
        "run_id": text("run_id"),
        "src_node_id": number("dst_node_id"),
        "dst_node_id": number("src_node_id"),
        "reply_to_message_id": text("message_id")[:128],
        "group_id": text("group_id")[:256],
        "created_at": time.time(),
        "ttl": 0.0,
        "message_type": kind,
        "content": None,
        "error": {"code": int(code), "reason": reason[:8000]},
    }


def npz_of(arrays: Mapping[str, np.ndarray]) -> bytes | None:
    """The ``.npz`` of a message's arrays (None when it has none). NaN and infinity are
    allowed: what they mean is for the code that reads them."""
    if not arrays:
        return None
    try:
        return dump_params(arrays, allow_nonfinite=True)
    except InvalidModel as exc:
        raise InvalidArgumentError(exc.message) from None


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise MessageError(f"{where}: '{key}' must be {getattr(kind, '__name__', kind)}")
    return value


def metadata_from(data: Mapping[str, Any], *, where: str) -> Metadata:
    """The checked metadata of an untrusted message object.

    Raises:
        MessageError: naming ``where`` and the key.
    """
    for key in ("message_id", "reply_to_message_id", "run_id"):
        value = _field(data, key, str, where)
        if key != "run_id" and not _ID.match(value):
            raise MessageError(f"{where}: '{key}' {value[:40]!r} is not a message id")
    for key in ("src_node_id", "dst_node_id"):
        if _field(data, key, int, where) < 0:
            raise MessageError(f"{where}: '{key}' must be >= 0")
    try:
        ttl = float(_field(data, "ttl", (int, float), where))
        created = float(_field(data, "created_at", (int, float), where))
    except OverflowError:  # an integer beyond any float
        ttl = created = math.inf
    if not math.isfinite(ttl) or ttl < 0 or not math.isfinite(created):
        raise MessageError(f"{where}: 'ttl' and 'created_at' must be finite, 'ttl' >= 0")
    try:
        kind = check_message_type(data.get("message_type"))
        group = _group(data.get("group_id"))
    except InvalidArgumentError as exc:
        raise MessageError(f"{where}: {exc.message}") from None
    return Metadata(
        run_id=data["run_id"],
        message_id=data["message_id"],
        src_node_id=data["src_node_id"],
        dst_node_id=data["dst_node_id"],
        reply_to_message_id=data["reply_to_message_id"],
        group_id=group,
        created_at=created,
        ttl=ttl,
        message_type=kind,
    )


def arrays_expected(data: Mapping[str, Any]) -> int:
    """How many arrays an (untrusted) message object says its ``.npz`` holds."""
    content = data.get("content")
    if not isinstance(content, Mapping):
        return 0
    try:
        return array_count(content)
    except (TypeError, AttributeError):
        return 0


def from_wire(
    data: object,
    npz: bytes | memoryview | Path | None,
    *,
    where: str,
    max_bytes: int = MAX_MODEL_BYTES,
) -> Message:
    """A message from its untrusted JSON object and ``.npz`` (loaded with pickle off).

    Raises:
        MessageError: a field, a record or an array is not what it must be (naming
            ``where``).
    """
    if not isinstance(data, Mapping):
        raise MessageError(f"{where}: a message must be a JSON object")
    metadata = metadata_from(data, where=where)
    error, content = data.get("error"), data.get("content")
    if (error is None) == (content is None):
        raise MessageError(f"{where}: a message carries either 'content' or 'error'")
    if error is not None:
        if npz is not None:
            raise MessageError(f"{where}: an error reply carries no arrays")
        if not isinstance(error, Mapping):
            raise MessageError(f"{where}: 'error' must be an object")
        code, reason = error.get("code"), error.get("reason")
        if isinstance(code, bool) or not isinstance(code, int):
            raise MessageError(f"{where}: the error's 'code' must be an integer")
        if reason is not None and not isinstance(reason, str):
            raise MessageError(f"{where}: the error's 'reason' must be text")
        return Message(metadata=metadata, error=Error(code, reason))
    arrays = None
    if npz is not None:
        try:
            arrays = load_params(
                npz if not isinstance(npz, memoryview) else bytes(npz),
                max_bytes=max_bytes,
                allow_nonfinite=True,
            )
        except InvalidModel as exc:
            raise MessageError(f"{where}: its arrays: {exc.message}") from None
    records = decode_content(content, arrays, where=where)
    return Message(metadata=metadata, content=records)
