"""The messages of the site protocol: topics, who may send each, and their typed bodies.

Theory of operation. Every non-heartbeat message on a site's ``Channel`` is an
``Envelope`` naming a :class:`SiteTopic` and carrying a JSON body (docs/site-protocol.md).
This module is the one place both sides take them from: the server builds what it sends
with these dataclasses and parses what a site sends with them, and the site does the same
the other way round. Each topic has one sender (:attr:`SiteTopic.sender`); the allowlists
are derived from it (:data:`SERVER_TOPICS`, :data:`SITE_TOPICS`, :func:`topic_from`), so a
topic a side may not send is dropped by name, never looked up.

A body's ``from_json`` treats its text as untrusted: a body that is not a JSON object, a
required key that is missing, or a value of the wrong type raises :class:`MessageError`
naming the topic and the key. Keys it does not know are ignored (a newer peer may send
more). What a value *means* (a model's arrays, a metric's name length) is checked by the
code that uses it.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, cast

from flare_protocol.errors import MessageError

__all__ = [
    "BODIES",
    "SERVER_TOPICS",
    "SITE_TOPICS",
    "DriverMessage",
    "DriverReply",
    "JobAbort",
    "JobDeploy",
    "JobEnd",
    "JobLog",
    "JobStatusReport",
    "Metric",
    "Sender",
    "ServerBody",
    "SiteBody",
    "SiteCommand",
    "SiteReply",
    "SiteTopic",
    "TaskResult",
    "TrainTask",
    "ValidateTask",
    "parse_body",
    "topic_from",
]


class Sender(enum.Enum):
    """Which side of the Channel may send a topic."""

    SERVER = "server"
    SITE = "site"


class SiteTopic(str, enum.Enum):
    """Every topic of the site protocol (the value is the wire string)."""

    # server -> site
    JOB_DEPLOY = "job.deploy"
    TASK_TRAIN = "task.train"
    TASK_VALIDATE = "task.validate"
    JOB_ABORT = "job.abort"
    JOB_END = "job.end"
    SITE_COMMAND = "site.command"
    DRIVER_MESSAGE = "driver.message"
    # site -> server
    JOB_STATUS = "job.status"
    TASK_RESULT = "task.result"
    METRICS = "metrics"
    JOB_LOG = "job.log"
    SITE_REPLY = "site.reply"
    DRIVER_REPLY = "driver.reply"

    @property
    def sender(self) -> Sender:
        """The side that may send this topic."""
        return _SENDERS[self]


_SENDERS = {
    SiteTopic.JOB_DEPLOY: Sender.SERVER,
    SiteTopic.TASK_TRAIN: Sender.SERVER,
    SiteTopic.TASK_VALIDATE: Sender.SERVER,
    SiteTopic.JOB_ABORT: Sender.SERVER,
    SiteTopic.JOB_END: Sender.SERVER,
    SiteTopic.SITE_COMMAND: Sender.SERVER,
    SiteTopic.DRIVER_MESSAGE: Sender.SERVER,
    SiteTopic.JOB_STATUS: Sender.SITE,
    SiteTopic.TASK_RESULT: Sender.SITE,
    SiteTopic.METRICS: Sender.SITE,
    SiteTopic.JOB_LOG: Sender.SITE,
    SiteTopic.SITE_REPLY: Sender.SITE,
    SiteTopic.DRIVER_REPLY: Sender.SITE,
}

#: Topics the server sends and a site accepts.
SERVER_TOPICS = frozenset(t for t in SiteTopic if t.sender is Sender.SERVER)
#: Topics a site sends and the server accepts.
SITE_TOPICS = frozenset(t for t in SiteTopic if t.sender is Sender.SITE)
_BY_VALUE = {t.value: t for t in SiteTopic}


def topic_from(text: str, sender: Sender) -> SiteTopic | None:
    """The topic named ``text`` if ``sender`` may send it, else None (drop the message)."""
    topic = _BY_VALUE.get(text)
    return topic if topic is not None and topic.sender is sender else None


# -- reading untrusted JSON ------------------------------------------------------------

_T = TypeVar("_T")
_MISSING: Any = object()


def _object(topic: SiteTopic, text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except (ValueError, RecursionError) as exc:
        # ValueError: not JSON, not UTF-8, or an integer of more digits than Python
        # converts; RecursionError: nested deeper than the parser's stack.
        raise MessageError(
            f"{topic.value}: the body is not JSON: {exc}", topic=topic.value
        ) from None
    if not isinstance(data, dict):
        raise MessageError(
            f"{topic.value}: the body must be a JSON object, got {type(data).__name__}",
            topic=topic.value,
        )
    return data


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    """Typed access to one body's keys; every failure names the topic and the key."""

    def __init__(self, topic: SiteTopic, data: Mapping[str, Any]) -> None:
        self.topic = topic
        self.data = data

    def _fail(self, key: str, want: str, value: Any) -> MessageError:
        return MessageError(
            f"{self.topic.value}: '{key}' must be {want}, got {_shown(value)}",
            topic=self.topic.value,
            key=key,
        )

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise MessageError(
                    f"{self.topic.value}: the body has no '{key}'", topic=self.topic.value, key=key
                )
            return default
        return value

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def opt_string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string or null", value)
        return value

    def integer(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._fail(key, "an integer", value)
        return value

    def opt_integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._fail(key, "an integer or null", value)
        return value

    def opt_number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, "a number or null", value)
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise self._fail(key, "a number within the range of a float", value) from None

    def opt_object(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            raise self._fail(key, "a JSON object or null", value)
        return value

    def choice(self, key: str, allowed: tuple[_T, ...], default: Any = _MISSING) -> _T:
        value = self._get(key, default)
        if value not in allowed:
            raise self._fail(key, "one of " + ", ".join(map(repr, allowed)), value)
        return cast(_T, value)


def _dumps(data: Mapping[str, Any]) -> str:
    """Compact JSON; NaN and infinity are refused (not JSON)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


class _Body:
    """A topic's body: ``to_json`` for the sender, ``from_json`` for the receiver."""

    TOPIC: ClassVar[SiteTopic]

    def to_dict(self) -> dict[str, Any]:
        """The body as the JSON object it travels as."""
        return asdict(self)  # type: ignore[call-overload, no-any-return]  # bodies are dataclasses

    def to_json(self) -> str:
        """The body's wire text (compact JSON)."""
        return _dumps(self.to_dict())


# -- server -> site --------------------------------------------------------------------


@dataclass(frozen=True)
class JobDeploy(_Body):
    """``job.deploy``: run this app; its archive travels as the envelope's blob."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.JOB_DEPLOY
    app: str = ""
    client_config: dict[str, Any] | None = None
    total_rounds: int = 0

    @classmethod
    def from_json(cls, text: str | bytes) -> JobDeploy:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(r.string("app", ""), r.opt_object("client_config"), r.integer("total_rounds", 0))


@dataclass(frozen=True)
class TrainTask(_Body):
    """``task.train``: one round of training; the global model is the envelope's blob
    (none in round 1 of a job without an initial model)."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.TASK_TRAIN
    task_id: str
    round: int = 0
    total_rounds: int | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainTask:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(r.string("task_id"), r.integer("round", 0), r.opt_integer("total_rounds"))


@dataclass(frozen=True)
class ValidateTask(_Body):
    """``task.validate``: validate the global model (the envelope's blob)."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.TASK_VALIDATE
    task_id: str
    round: int = 0

    @classmethod
    def from_json(cls, text: str | bytes) -> ValidateTask:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(r.string("task_id"), r.integer("round", 0))


@dataclass(frozen=True)
class JobAbort(_Body):
    """``job.abort``: kill the job's user code now."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.JOB_ABORT
    reason: str = ""

    @classmethod
    def from_json(cls, text: str | bytes) -> JobAbort:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(r.opt_string("reason") or "")


@dataclass(frozen=True)
class JobEnd(_Body):
    """``job.end``: the job is over (its final status); stop it and ship its log."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.JOB_END
    status: str = ""

    @classmethod
    def from_json(cls, text: str | bytes) -> JobEnd:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(r.opt_string("status") or "")


@dataclass(frozen=True)
class SiteCommand(_Body):
    """``site.command``: an admin command for the site; answered by ``site.reply``."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.SITE_COMMAND
    command: str
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | bytes) -> SiteCommand:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(r.string("command"), r.opt_object("args") or {})


@dataclass(frozen=True)
class DriverMessage(_Body):
    """``driver.message``: a Driver API message for one of the job's user code
    (:mod:`flare_protocol.message`'s JSON object); its arrays are the envelope's blob, or
    ``npz_b64`` when small. ``ttl_left``: seconds it stays valid from when it was sent
    (the site does not run it later)."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.DRIVER_MESSAGE
    message: dict[str, Any]
    ttl_left: float = 0.0
    npz_b64: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message, "ttl_left": self.ttl_left}
        if self.npz_b64 is not None:
            out["npz_b64"] = self.npz_b64
        return out

    @classmethod
    def from_json(cls, text: str | bytes) -> DriverMessage:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        message = r.opt_object("message")
        if message is None:
            raise MessageError(
                f"{cls.TOPIC.value}: the body has no 'message'",
                topic=cls.TOPIC.value,
                key="message",
            )
        return cls(message, r.opt_number("ttl_left") or 0.0, r.opt_string("npz_b64"))


# -- site -> server --------------------------------------------------------------------

JobStatusValue = Literal["deployed", "running", "failed", "aborted", "finished"]
_JOB_STATUSES: tuple[JobStatusValue, ...] = ("deployed", "running", "failed", "aborted", "finished")


@dataclass(frozen=True)
class JobStatusReport(_Body):
    """``job.status``: what became of a job on the site (an error and the tail of its user
    code's stderr when it failed or was aborted)."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.JOB_STATUS
    status: JobStatusValue
    error: str | None = None
    stderr_tail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.error is not None:
            out["error"] = self.error
        if self.stderr_tail:
            out["stderr_tail"] = self.stderr_tail
        return out

    @classmethod
    def from_json(cls, text: str | bytes) -> JobStatusReport:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        status = r.choice("status", _JOB_STATUSES)
        return cls(status, r.opt_string("error"), r.opt_string("stderr_tail"))


@dataclass(frozen=True)
class TaskResult(_Body):
    """``task.result``: a task's answer; a train result's update is the envelope's blob.

    ``error`` set: the task failed on the site. The numbers in ``metrics`` and the
    update's fields are checked by the workflow that uses them.
    """

    TOPIC: ClassVar[SiteTopic] = SiteTopic.TASK_RESULT
    task_id: str
    kind: Literal["train", "validate"]
    round: int = 0
    params_type: str | None = None
    num_examples: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task_id": self.task_id, "round": self.round, "kind": self.kind}
        if self.params_type is not None:
            out["params_type"] = self.params_type
        if self.num_examples is not None:
            out["num_examples"] = self.num_examples
        out["metrics"] = dict(self.metrics)
        out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskResult:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(
            task_id=r.string("task_id"),
            kind=cast(Literal["train", "validate"], r.choice("kind", ("train", "validate"))),
            round=r.integer("round", 0),
            params_type=r.opt_string("params_type"),
            num_examples=r.opt_integer("num_examples"),
            metrics=r.opt_object("metrics") or {},
            error=r.opt_string("error"),
        )


@dataclass(frozen=True)
class Metric(_Body):
    """``metrics``: one record a job's user code streamed: a number (``kind`` "metric",
    ``value``) or a param, tag or text (``kind`` "param"/"tag"/"text", ``text``)."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.METRICS
    key: str
    value: float | None = None
    round: int | None = None
    step: int | None = None
    time: float | None = None
    kind: str = "metric"
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "key": self.key,
            "step": self.step,
            "time": self.time,
        }
        if self.kind == "metric":
            out["value"] = self.value
        else:
            out.update(kind=self.kind, text=self.text)
        return out

    @classmethod
    def from_json(cls, text: str | bytes) -> Metric:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        value = r.opt_number("value")
        if value is not None and not math.isfinite(value):
            raise MessageError(f"metrics: 'value' is {value}", topic=cls.TOPIC.value, key="value")
        return cls(
            key=r.string("key"),
            value=value,
            round=r.opt_integer("round"),
            step=r.opt_integer("step"),
            time=r.opt_number("time"),
            kind=r.string("kind", "metric"),
            text=r.opt_string("text"),
        )


@dataclass(frozen=True)
class JobLog(_Body):
    """``job.log``: the site's log of a job is the envelope's blob (or why there is none)."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.JOB_LOG
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {} if self.error is None else {"error": self.error}

    @classmethod
    def from_json(cls, text: str | bytes) -> JobLog:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(r.opt_string("error"))


@dataclass(frozen=True)
class SiteReply(_Body):
    """``site.reply``: a command's answer, ``result`` or ``error`` (``{"type", "message"}``,
    a type from :data:`~flare_protocol.errors.WIRE_ERRORS`)."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.SITE_REPLY
    result: Any = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> SiteReply:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        return cls(r.data.get("result"), r.opt_object("error"))


@dataclass(frozen=True)
class DriverReply(_Body):
    """``driver.reply``: the reply of the job's user code to the Driver API message
    ``reply_to`` (a :mod:`flare_protocol.message` JSON object); its arrays are the
    envelope's blob (an upload of kind ``reply``), or ``npz_b64`` when small."""

    TOPIC: ClassVar[SiteTopic] = SiteTopic.DRIVER_REPLY
    reply_to: str
    message: dict[str, Any]
    npz_b64: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reply_to": self.reply_to, "message": self.message}
        if self.npz_b64 is not None:
            out["npz_b64"] = self.npz_b64
        return out

    @classmethod
    def from_json(cls, text: str | bytes) -> DriverReply:
        r = _Reader(cls.TOPIC, _object(cls.TOPIC, text))
        reply_to = r.string("reply_to")
        message = r.opt_object("message")
        if message is None:
            raise MessageError(
                f"{cls.TOPIC.value}: the body has no 'message'",
                topic=cls.TOPIC.value,
                key="message",
            )
        return cls(reply_to, message, r.opt_string("npz_b64"))


ServerBody = JobDeploy | TrainTask | ValidateTask | JobAbort | JobEnd | SiteCommand | DriverMessage
SiteBody = JobStatusReport | TaskResult | Metric | JobLog | SiteReply | DriverReply

#: The body of each topic.
BODIES: Mapping[SiteTopic, type[ServerBody] | type[SiteBody]] = {
    cls.TOPIC: cls
    for cls in (
        JobDeploy,
        TrainTask,
        ValidateTask,
        JobAbort,
        JobEnd,
        SiteCommand,
        DriverMessage,
        JobStatusReport,
        TaskResult,
        Metric,
        JobLog,
        SiteReply,
        DriverReply,
    )
}


def parse_body(topic: SiteTopic, text: str | bytes) -> ServerBody | SiteBody:
    """The typed body of a message of ``topic``.

    Raises:
        MessageError: the body is not a JSON object of that topic's keys and types.
    """
    return BODIES[topic].from_json(text)
