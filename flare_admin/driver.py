"""The Driver API: drive a running job's rounds from Python, message by message, as Flower's
``Grid`` (formerly ``Driver``) does. docs/driver.md.

::

    from flare_admin import new_secure_session, MessageType, RecordSet, ConfigsRecord

    with new_secure_session(admin, kit) as s:
        driver = s.get_driver(job_id)           # waits until the job runs
        for node in driver.get_node_ids():
            msg = driver.create_message(RecordSet({"c": ConfigsRecord({"lr": 0.1})}),
                                        MessageType.TRAIN, node, group_id="1")
            ...
        replies = driver.send_and_receive(messages, timeout=60)
        driver.finish(model={"w": weights})     # the job's final global model

The job's config says ``"workflow": "driver"``; the server relays the messages to the
job's sites and their replies back, runs no user code, and pushes each reply the moment it
arrives: :meth:`Driver.send_and_receive` is woken by that stream, never by polling.
:class:`AsyncDriver` (``await async_session.get_driver(job_id)``) offers the same as
coroutines. :class:`ServerApp` runs a Flower-style ``@app.main()`` function; ``flare
driver run MODULE:ATTR`` runs one against a job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from flare_admin import _ops
from flare_admin._driver import (
    DriverCore,
    DriverInfo,
    ReplyReader,
    deadline_left,
    finish_request,
)
from flare_admin.results import JobMeta
from flare_protocol._generated import admin_pb2
from flare_protocol.errors import InvalidArgumentError, InvalidModel, JobTimeout
from flare_protocol.message import Message
from flare_protocol.models import dump_params
from flare_protocol.records import Context, RecordSet

if TYPE_CHECKING:
    from flare_admin.aio import AsyncSession
    from flare_admin.session import Session

__all__ = ["AsyncDriver", "Driver", "ServerApp"]

F = TypeVar("F", bound=Callable[..., Any])


def connect_request(job_id: str) -> Any:
    return admin_pb2.JobRequest(job_id=_ops.job_id(job_id))


def connect_failed(exc: grpc.RpcError, session: Any, job_id: str, limit: float | None) -> Exception:
    """``get_driver``'s error: JobTimeout when the job did not run within ``limit``."""
    if limit is not None and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return JobTimeout(
            f"job {job_id} did not run within {limit:g} s: get_driver waits until a driver job "
            "runs (is it waiting for its sites? see get_job_meta(job_id).schedule_reason)",
            job_id=job_id,
        )
    return session._map(exc, "get_driver", job_id)  # type: ignore[no-any-return]


def _model_npz(model: object) -> bytes | None:
    if model is None:
        return None
    try:
        return dump_params(model)  # type: ignore[arg-type]
    except InvalidModel as exc:
        raise InvalidArgumentError(f"finish(model=...): {exc.message}") from None


class _DriverBase:
    """What both drivers show (see :class:`Driver`)."""

    def __init__(self, session: Any, info: DriverInfo) -> None:
        self._session = session
        self._core = DriverCore(info)

    @property
    def job_id(self) -> str:
        """The job this driver drives."""
        return self._core.job_id

    @property
    def node_names(self) -> dict[int, str]:
        """Node id -> site name of the job's sites (as of the last get_node_ids())."""
        return dict(self._core.info.nodes)

    @property
    def run_config(self) -> dict[str, Any]:
        """The job config's ``run_config`` (a ServerApp's ``context.run_config``)."""
        return dict(self._core.info.run_config)

    @property
    def default_ttl(self) -> float:
        """Seconds a message stays valid when created without a ttl (the job's)."""
        return self._core.info.default_ttl

    def create_message(
        self,
        content: RecordSet,
        message_type: str,
        dst_node_id: int,
        group_id: str | None = None,
        ttl: float | None = None,
    ) -> Message:
        """A new message (Flower's ``create_message``): ``content`` for node
        ``dst_node_id``, of ``message_type`` (``MessageType.TRAIN``/``EVALUATE``/``QUERY`` or
        ``"<type>.<action>"``), in group ``group_id`` (the round, say), valid ``ttl``
        seconds (default: the job's ``default_ttl``). Nothing is sent yet.

        Raises:
            InvalidArgumentError: a node that does not run the job, an unknown type, ...
        """
        return self._core.create_message(content, message_type, dst_node_id, group_id, ttl)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of job {self.job_id}, {len(self._core.info.nodes)} node(s)>"


class Driver(_DriverBase):
    """A running driver job's driver, from :meth:`Session.get_driver` (Flower's ``Grid``)."""

    _session: Session

    def get_node_ids(self) -> list[int]:
        """The node ids of the sites running the job now (stable integers; see
        :attr:`node_names`)."""
        session = self._session
        session._check_open()
        try:
            reply = session._stub.DriverConnect(
                connect_request(self.job_id), timeout=session.timeout
            )
        except grpc.RpcError as exc:
            raise session._map(exc, "get_node_ids", self.job_id) from exc
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None
        self._core.info = DriverInfo.from_reply(reply)
        return list(self._core.info.nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Send ``messages``; the ids the server gave them (also set on each message's
        ``metadata.message_id``), to pull their replies with.

        Raises:
            InvalidArgumentError: a message is not an instruction for one of the job's
                nodes, or its arrays are over the job's ``max_message_bytes``.
            JobNotRunning: the job ended.
        """
        session = self._session
        session._check_open()
        batch = list(messages)
        if not batch:
            return []
        acks = self._core.take_acks()
        plan = self._core.push_items(batch, acks)
        timeout = None if plan.contents else session.timeout  # big arrays take their time
        try:
            reply = session._stub.DriverPush(plan.items(), timeout=timeout)
        except grpc.RpcError as exc:
            raise session._map(exc, "push_messages", self.job_id) from exc
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None
        return self._core.pushed(batch, list(reply.message_ids))

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to ``message_ids`` that have arrived, at once (never waits); each
        reply is returned once. A driver that reconnected pulls the replies it missed."""
        ids = self._core.check_ids(message_ids)
        return self._replies(ids, wait=False, timeout=self._session.timeout, action="pull_messages")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push ``messages`` and return their replies as they arrive (pushed by the server,
        no polling), once every message has its reply, or when ``timeout`` seconds passed
        (then only those that arrived). A message whose site is gone or silent past its
        TTL gets an error reply (``has_error()``)."""
        limit = _ops.watch_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        batch = list(messages)
        ids = self.push_messages(batch)
        return self._replies(
            ids, wait=True, timeout=deadline_left(deadline), action="send_and_receive"
        )

    def _replies(
        self, ids: list[str], *, wait: bool, timeout: float | None, action: str
    ) -> list[Message]:
        from flare_admin.session import replies

        session = self._session
        session._check_open()
        request, wanted = self._core.replies_request(ids, wait=wait)
        if not wanted:
            return []
        call = session._stub.DriverReplies(request, timeout=timeout)
        reader = ReplyReader(self.job_id)
        out: list[Message] = []
        try:
            for item in replies(call):
                message = reader.feed(item)
                if message is not None and self._core.deliver(message):
                    out.append(message)
            reader.finish()
        except grpc.RpcError as exc:
            if wait and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return out  # the caller's timeout: the replies that arrived
            raise session._map(exc, action, self.job_id) from exc
        finally:
            call.cancel()
        return out

    def finish(self, status: str = "COMPLETED", model: Any = None, *, reason: str = "") -> JobMeta:
        """End the job (``"COMPLETED"``, ``"FAILED"`` or ``"ABORTED"``), with ``model`` (a
        dict of numpy arrays, or a ParametersRecord) as its final global model, which
        ``download_model`` then serves as for built-in jobs. Returns the final meta, once
        the job's result is complete.

        Raises:
            InvalidArgumentError: an unknown status, or a model that is not a dict of
                finite numeric arrays.
            JobNotRunning: the job already ended.
        """
        session = self._session
        session._check_open()
        items = finish_request(self.job_id, status, reason, _model_npz(model))
        try:
            reply = session._stub.DriverFinish(iter(items), timeout=None)
        except grpc.RpcError as exc:
            raise session._map(exc, "finish", self.job_id) from exc
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None
        return _ops.parse_meta(reply)


class AsyncDriver(_DriverBase):
    """:class:`Driver` as coroutines, from ``await AsyncSession.get_driver(job_id)``."""

    _session: AsyncSession

    async def get_node_ids(self) -> list[int]:
        """As :meth:`Driver.get_node_ids`."""
        session = self._session
        session._check_open()
        try:
            reply = await session._stub.DriverConnect(
                connect_request(self.job_id), timeout=session.timeout
            )
        except grpc.RpcError as exc:
            raise session._map(exc, "get_node_ids", self.job_id) from exc
        self._core.info = DriverInfo.from_reply(reply)
        return list(self._core.info.nodes)

    async def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """As :meth:`Driver.push_messages`."""
        from flare_admin.aio import _is_write_race

        session = self._session
        session._check_open()
        batch = list(messages)
        if not batch:
            return []
        plan = self._core.push_items(batch, self._core.take_acks())
        timeout = None if plan.contents else session.timeout
        for attempt in range(4):
            try:
                reply = await session._stub.DriverPush(plan.items(), timeout=timeout)
                break
            except grpc.RpcError as exc:
                # An early refusal can reach grpc.aio as its own failed write (see aio.py):
                # nothing was sent on by the server then, so the push is tried again.
                if attempt < 3 and _is_write_race(exc):
                    continue
                raise session._map(exc, "push_messages", self.job_id) from exc
        return self._core.pushed(batch, list(reply.message_ids))

    async def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """As :meth:`Driver.pull_messages`."""
        ids = self._core.check_ids(message_ids)
        return await self._replies(
            ids, wait=False, timeout=self._session.timeout, action="pull_messages"
        )

    async def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """As :meth:`Driver.send_and_receive`."""
        limit = _ops.watch_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        ids = await self.push_messages(list(messages))
        return await self._replies(
            ids, wait=True, timeout=deadline_left(deadline), action="send_and_receive"
        )

    async def _replies(
        self, ids: list[str], *, wait: bool, timeout: float | None, action: str
    ) -> list[Message]:
        from flare_admin.aio import areplies

        session = self._session
        session._check_open()
        request, wanted = self._core.replies_request(ids, wait=wait)
        if not wanted:
            return []
        call = session._stub.DriverReplies(request, timeout=timeout)
        reader = ReplyReader(self.job_id)
        out: list[Message] = []
        try:
            async for item in areplies(call):
                message = reader.feed(item)
                if message is not None and self._core.deliver(message):
                    out.append(message)
            reader.finish()
        except grpc.RpcError as exc:
            if wait and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return out
            raise session._map(exc, action, self.job_id) from exc
        finally:
            call.cancel()
        return out

    async def finish(
        self, status: str = "COMPLETED", model: Any = None, *, reason: str = ""
    ) -> JobMeta:
        """As :meth:`Driver.finish`."""
        session = self._session
        session._check_open()
        items = finish_request(self.job_id, status, reason, _model_npz(model))
        try:
            reply = await session._stub.DriverFinish(iter(items), timeout=None)
        except grpc.RpcError as exc:
            raise session._map(exc, "finish", self.job_id) from exc
        return _ops.parse_meta(reply)


class ServerApp:
    """A Flower-style server app: its ``@app.main()`` function gets ``(driver, context)``.

    ::

        app = ServerApp()

        @app.main()
        def main(driver: Driver, context: Context) -> None:
            ...

    Run it with ``flare driver run my_module:app --kit ADMIN_KIT --job JOB`` (which gives
    ``context.run_config`` from the job's config), or call ``app(driver, context)``.
    """

    def __init__(self) -> None:
        self._main: Callable[[Any, Context], Any] | None = None

    def main(self) -> Callable[[F], F]:
        """Register the function that drives the job."""

        def decorator(fn: F) -> F:
            if self._main is not None:
                raise InvalidArgumentError("this ServerApp already has a main function")
            self._main = fn
            return fn

        return decorator

    def __call__(self, driver: Any, context: Context) -> Any:
        """Run the registered main function.

        Raises:
            InvalidArgumentError: no function was registered with ``@app.main()``.
        """
        if self._main is None:
            raise InvalidArgumentError(
                "this ServerApp has no main function: decorate one with @app.main()"
            )
        return self._main(driver, context)
