"""The envelope of every RPC: authenticate the peer, run the handler, audit, map errors.

Handlers are written as ``async def handler(self, call, request, context)`` (or async
generators for server streams) and wrapped by :func:`unary` or :func:`streaming`. The
wrapper checks the peer certificate against the endpoint's participant type before the
handler sees anything, records one audit line per admin call (``ok``, ``denied`` or the
error type) and turns every exception into a status code plus ``ErrorDetail`` trailer.
Between authentication and the handler it takes a slot of the caller's per-identity
limits (:class:`~flare_server.call_limits.CallLimits`), given back when the call ends; an
upload's request stream is also ended when it stalls (``upload_idle_timeout``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc

from flare_protocol import errors
from flare_protocol.identity import Identity
from flare_server.audit import AuditLog
from flare_server.call_limits import CallLimits, idle_limited
from flare_server.errors import abort_with, to_api_error
from flare_server.identity_check import IdentityChecker

log = logging.getLogger("flare_server.calls")

Req = TypeVar("Req")
Rep = TypeVar("Rep")


@dataclass
class Call:
    """One authenticated call: who, from where, and what the audit line should say."""

    identity: Identity
    peer: str
    command: str
    args: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    audited: bool = True


class Endpoint(Protocol):
    """What a service exposes to the wrappers."""

    checker: IdentityChecker
    audit: AuditLog | None
    streams: StreamTracker
    limits: CallLimits | None


class StreamTracker:
    """Open long-lived calls by certificate serial, so that a revocation can end them.

    A stream registers a callback that makes it end (e.g. by putting a sentinel on the
    queue it waits on); :meth:`revoke` calls the callbacks of the revoked serials.
    """

    def __init__(self) -> None:
        self._streams: dict[int, dict[int, Callable[[], None]]] = {}
        self._next = 0

    def add(self, serial: int, on_revoke: Callable[[], None]) -> Callable[[], None]:
        """Register a stream; returns the function that unregisters it."""
        self._next += 1
        token = self._next
        self._streams.setdefault(serial, {})[token] = on_revoke

        def remove() -> None:
            streams = self._streams.get(serial)
            if streams is not None:
                streams.pop(token, None)
                if not streams:
                    del self._streams[serial]

        return remove

    def revoke(self, serials: frozenset[int]) -> int:
        """End every open stream of these serials; the number ended."""
        n = 0
        for serial in serials & set(self._streams):
            for on_revoke in list(self._streams.get(serial, {}).values()):
                on_revoke()
                n += 1
        return n


async def authenticate(endpoint: Endpoint, context: grpc.aio.ServicerContext, command: str) -> Call:
    """The caller's identity from its verified certificate, or abort UNAUTHENTICATED."""
    peer = context.peer()
    try:
        identity = endpoint.checker.check_auth_context(context.auth_context())
    except errors.IdentityRejected as exc:
        log.warning(
            "rejected %s from %s on the %s endpoint: %s",
            command,
            peer,
            endpoint.checker.expected_type.value,
            exc.message,
        )
        await abort_with(context, exc)
    return Call(identity=identity, peer=peer, command=command)


def _result_name(exc: BaseException) -> str:
    if isinstance(exc, errors.AuthorizationError):
        return "denied"
    if isinstance(exc, errors.FlareError):
        return type(to_api_error(exc)).__name__
    return "InternalError"


def _audit(endpoint: Endpoint, call: Call, result: str) -> None:
    if endpoint.audit is not None and call.audited:
        endpoint.audit.record(
            peer=call.peer,
            identity=call.identity,
            command=call.command,
            args=call.args,
            result=result,
            job_id=call.job_id,
        )


async def _fail(
    endpoint: Endpoint,
    call: Call,
    context: grpc.aio.ServicerContext,
    command: str,
    exc: Exception,
) -> None:
    """Audit a failed call, log a denial, and end the RPC with the error's wire form."""
    _audit(endpoint, call, _result_name(exc))
    if isinstance(exc, errors.AuthorizationError):
        log.warning("denied %s to %s: %s", command, call.identity.name, exc.message)
    await abort_with(context, exc, where=command)


def _enter(endpoint: Endpoint, call: Call, upload: bool) -> Callable[[], None]:
    """Take the caller's call (and upload) slot; a no-op release without limits."""
    if endpoint.limits is None:
        return _nothing
    return endpoint.limits.enter(call.identity.name, call.command, upload=upload)


def _nothing() -> None:
    pass


def unary(
    command: str, *, upload: bool = False
) -> Callable[[Callable[..., Awaitable[Rep]]], Callable[..., Awaitable[Rep]]]:
    """Wrap a handler returning one reply (unary or client-streaming request).

    ``upload``: the request is a stream of chunks: it takes an upload slot too, and ends
    with LimitExceeded when it goes ``upload_idle_timeout`` seconds without a message.
    """

    def deco(fn: Callable[..., Awaitable[Rep]]) -> Callable[..., Awaitable[Rep]]:
        @functools.wraps(fn)
        async def wrapper(self: Endpoint, request: Any, context: grpc.aio.ServicerContext) -> Rep:
            call = await authenticate(self, context, command)
            release = _nothing
            try:
                release = _enter(self, call, upload)
                if upload and self.limits is not None:
                    request = idle_limited(
                        request,
                        timeout=self.limits.upload_idle_timeout,
                        what=f"the {command} upload",
                        identity=call.identity.name,
                    )
                reply = await fn(self, call, request, context)
            except asyncio.CancelledError:
                _audit(self, call, "cancelled")
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _fail(self, call, context, command, exc)
            finally:
                release()
            _audit(self, call, "ok")
            return reply

        return wrapper

    return deco


def streaming(
    command: str,
) -> Callable[[Callable[..., AsyncIterator[Rep]]], Callable[..., AsyncIterator[Rep]]]:
    """Wrap an async-generator handler (server stream or bidi)."""

    def deco(fn: Callable[..., AsyncIterator[Rep]]) -> Callable[..., AsyncIterator[Rep]]:
        @functools.wraps(fn)
        async def wrapper(
            self: Endpoint, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Rep]:
            call = await authenticate(self, context, command)
            release = _nothing
            try:
                release = _enter(self, call, False)
                async for item in fn(self, call, request, context):
                    yield item
            except asyncio.CancelledError:
                _audit(self, call, "cancelled")
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _fail(self, call, context, command, exc)
            else:
                _audit(self, call, "ok")
            finally:
                release()

        return wrapper

    return deco
