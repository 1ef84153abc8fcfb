"""The one place where gRPC failures become flare exceptions.

A failed call carries a status code and, when the server meant the failure, an
``ErrorDetail`` trailer naming an exception type from the allowlist
:data:`flare_protocol.errors.WIRE_ERRORS` plus its attributes. :func:`map_rpc_error`
prefers the trailer; without one (a proxy, a crash, a failed handshake, our own
deadline) it maps the status code, adding what the user can do about it.
"""

from __future__ import annotations

import re

import grpc

from flare_protocol import errors
from flare_protocol.wire_errors import decode_detail, wire_attributes

#: The exception raised for a status code when the server sent no ErrorDetail.
STATUS_FALLBACK: dict[grpc.StatusCode, type[errors.APIError]] = {
    grpc.StatusCode.OK: errors.InternalError,
    grpc.StatusCode.CANCELLED: errors.NoConnection,
    grpc.StatusCode.UNKNOWN: errors.InternalError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.NoReply,
    grpc.StatusCode.NOT_FOUND: errors.JobNotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.InvalidArgumentError,
    grpc.StatusCode.PERMISSION_DENIED: errors.AuthorizationError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.APIError,
    grpc.StatusCode.ABORTED: errors.APIError,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgumentError,
    grpc.StatusCode.UNIMPLEMENTED: errors.InternalError,
    grpc.StatusCode.INTERNAL: errors.InternalError,
    grpc.StatusCode.UNAVAILABLE: errors.NoConnection,
    grpc.StatusCode.DATA_LOSS: errors.InternalError,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
}

#: Attribute names a server may set on an exception (never dunder or Exception's own).
_SAFE_ATTR = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_RESERVED = frozenset({"message", "details", "args", "with_traceback", "add_note"})

_HANDSHAKE_HINTS = ("ssl", "tls", "handshake", "certificate", "socket closed", "connection reset")


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    try:
        code = exc.code()
    except Exception:  # a bare RpcError without a status
        return grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details(exc: grpc.RpcError) -> str:
    try:
        text = exc.details()
    except Exception:
        return ""
    return text or ""


def _trailer(exc: grpc.RpcError) -> object:
    try:
        return exc.trailing_metadata()
    except Exception:
        return None


def map_rpc_error(
    exc: grpc.RpcError,
    *,
    address: str,
    action: str,
    opening: bool = False,
    submitting: bool = False,
    job_id: str | None = None,
) -> errors.APIError:
    """The most specific flare exception for a failed call (raise it ``from exc``).

    Args:
        exc: the ``grpc.RpcError`` (or ``grpc.aio.AioRpcError``) raised by a call.
        address: the server address dialled, named in connection errors.
        action: what was attempted, e.g. ``"get_job_meta"``, named in fallback messages.
        opening: the call was the Session's first (handshake + Hello); connection
            failures then name the likely causes of a refused handshake.
        submitting: the call was an upload; RESOURCE_EXHAUSTED means "too big".
        job_id: the job the call was about, attached when the server sent none.
    """
    code = _code(exc)
    text = _details(exc)
    detail = decode_detail(_trailer(exc))
    extra: dict[str, object] = {"status_code": code.name}
    if job_id is not None:
        extra["job_id"] = job_id

    if detail is not None:
        cls = errors.WIRE_ERRORS.get(detail.type)
        if cls is not None:
            attrs = dict(extra)
            sent = {
                k: v
                for k, v in detail.details.items()
                if _SAFE_ATTR.match(k) and k not in _RESERVED
            }
            attrs.update(wire_attributes(cls, sent))
            return cls(detail.message or text, **attrs)

    if code is grpc.StatusCode.UNAVAILABLE or (
        opening and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    ):
        return _no_connection(code, text, address=address, action=action, opening=opening, **extra)
    if code is grpc.StatusCode.CANCELLED:
        return errors.NoConnection(
            f"{action}: the call to {address} was cancelled before an answer "
            f"({text or 'connection closed'}): the server was stopping, or too busy to take "
            "the call; try again",
            address=address,
            **extra,
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.NoReply(
            f"{action}: the server at {address} did not answer in time; raise the timeout "
            "with set_timeout() or new_secure_session(timeout=...)",
            address=address,
            **extra,
        )
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "concurrent rpc limit" in text.lower():
            return errors.NoReply(
                f"{action}: the server at {address} is busy ({text}); retry shortly",
                address=address,
                **extra,
            )
        if "larger than max" in text.lower() and not submitting:
            return errors.InternalError(
                f"{action}: a message exceeded the 4 MiB cap ({text}); narrow the request "
                "(limit, prefixes) or report it",
                **extra,
            )
        if submitting:
            return errors.InvalidJobDefinition(
                f"{action}: the server refused the upload as too large ({text})", **extra
            )
    if code is grpc.StatusCode.UNIMPLEMENTED:
        hint = (
            f"is {address} the server's admin port (admin_port), not its site port "
            "(fed_learn_port)? Or is the server an older version than this library?"
            if opening
            else "is it an older version than this library?"
        )
        return errors.InternalError(
            f"{action}: the server at {address} does not implement this call ({text}); {hint}",
            address=address,
            **extra,
        )
    cls = STATUS_FALLBACK.get(code, errors.InternalError)
    return cls(f"{action} failed: {code.name}: {text or 'no details'}", **extra)


def _no_connection(
    code: grpc.StatusCode, text: str, *, address: str, action: str, opening: bool, **extra: object
) -> errors.NoConnection:
    lowered = text.lower()
    message = f"cannot reach the flare server at {address} ({code.name}: {text or 'no details'})"
    if opening and any(hint in lowered for hint in _HANDSHAKE_HINTS):
        message += (
            ". The kit passed its local checks, so the TLS handshake was most likely refused: "
            "the server's root CA differs from this kit's rootCA.pem, the server's certificate "
            "does not name the address dialled, or our certificate was revoked; ask the "
            "project admin for a current kit"
        )
    elif opening and code is grpc.StatusCode.DEADLINE_EXCEEDED:
        message += ": no answer within the timeout; check the address, firewalls and that the "
        message += "server is running"
    else:
        message += ": is the server running and is the address right?"
    return errors.NoConnection(message, address=address, action=action, **extra)
