"""How an error crosses the wire: a gRPC status code plus an ``ErrorDetail`` trailer.

The server reports every failure it means as ``(status code, message)`` and a trailing
metadata entry ``flare-error-bin`` holding a serialised ``ErrorDetail`` whose ``type`` is
a name from :data:`flare_protocol.errors.WIRE_ERRORS` and whose ``details`` carry the
exception's attributes (``job_id``, ``site``, ``status`` ...). The Session maps the
detail back through that allowlist (:func:`wire_attributes` turns each attribute back
into the type its class declares); without a detail it falls back to the status code.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping

import grpc

from flare_protocol import errors
from flare_protocol._generated import common_pb2

ERROR_TRAILER = "flare-error-bin"

#: The status code each wire error travels with (most specific class first wins by MRO).
STATUS_CODES: dict[type[errors.APIError], grpc.StatusCode] = {
    errors.SessionExpired: grpc.StatusCode.UNAUTHENTICATED,
    errors.AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    errors.AuthorizationError: grpc.StatusCode.PERMISSION_DENIED,
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.JobNotFound: grpc.StatusCode.NOT_FOUND,
    errors.JobNotRunning: grpc.StatusCode.FAILED_PRECONDITION,
    errors.JobNotDone: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ClientsStillRunning: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NoClientsAvailable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.JobTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.NoReply: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.NoConnection: grpc.StatusCode.UNAVAILABLE,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code_for(exc: errors.APIError) -> grpc.StatusCode:
    """The gRPC status code an API error is reported with."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


Trailers = tuple[tuple[str, bytes], ...]


def encode_error(exc: errors.APIError) -> tuple[grpc.StatusCode, str, Trailers]:
    """``(code, message, trailing_metadata)`` for an API error raised by a service."""
    name = type(exc).__name__
    if name not in errors.WIRE_ERRORS:  # a subclass the client cannot know: send its base
        name = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in errors.WIRE_ERRORS)
    detail = common_pb2.ErrorDetail(
        type=name,
        message=exc.message,
        details={k: str(v) for k, v in exc.details.items() if v is not None},
    )
    return status_code_for(exc), exc.message, ((ERROR_TRAILER, detail.SerializeToString()),)


def decode_detail(trailing_metadata: object) -> common_pb2.ErrorDetail | None:
    """The ``ErrorDetail`` in a failed call's trailing metadata, if the server sent one."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == ERROR_TRAILER and isinstance(value, bytes):
            detail = common_pb2.ErrorDetail()
            try:
                detail.ParseFromString(value)
            except Exception:  # a malformed trailer is ignored, the status code still maps
                return None
            return detail
    return None


_INT_ATTRIBUTES: dict[type, frozenset[str]] = {}
#: An integer as an attribute crosses the wire (ASCII digits only: ``str.isdigit()`` also
#: accepts '²', which ``int()`` refuses).
_INTEGER = re.compile(r"-?[0-9]{1,20}")


def _int_attributes(cls: type[errors.FlareError]) -> frozenset[str]:
    found = _INT_ATTRIBUTES.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = frozenset(
            name for name, hint in hints.items() if hint is int or int in typing.get_args(hint)
        )
        _INT_ATTRIBUTES[cls] = found
    return found


def wire_attributes(cls: type[errors.FlareError], details: Mapping[str, str]) -> dict[str, object]:
    """The attributes of an ``ErrorDetail`` as ``cls`` declares them: every value crossed
    the wire as text; those the class declares as ``int`` become numbers again (one that
    is not a number is left out: the message still says it)."""
    numbers = _int_attributes(cls)
    out: dict[str, object] = {}
    for name, text in details.items():
        if name not in numbers:
            out[name] = text
        elif _INTEGER.fullmatch(text):
            out[name] = int(text)
    return out
