"""Reporting a failure to a gRPC caller: the one place FlareErrors become status codes.

Every service method ends in :func:`abort_with`: API errors travel as their status code
plus the ``ErrorDetail`` trailer (:mod:`flare_protocol.wire_errors`); a rejected identity
becomes ``AuthenticationError``; anything unexpected becomes ``InternalError`` with a log
line on the server and no traceback to the client.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from flare_protocol import errors
from flare_protocol.wire_errors import encode_error

log = logging.getLogger("flare_server")


def to_api_error(exc: BaseException, *, where: str = "") -> errors.APIError:
    """The API error a caller should see for ``exc``."""
    if isinstance(exc, errors.APIError):
        return exc
    if isinstance(exc, errors.IdentityRejected):
        return errors.AuthenticationError(
            f"the server rejected the client certificate: {exc.message}"
        )
    if isinstance(exc, errors.InvalidTransition):
        return errors.InvalidArgumentError(exc.message, **exc.details)
    log.error("unexpected error in %s", where or "a call", exc_info=exc)
    return errors.InternalError(
        f"the server failed unexpectedly in {where or 'this call'} "
        f"({type(exc).__name__}); its log has the details"
    )


async def abort_with(
    context: grpc.aio.ServicerContext, exc: BaseException, *, where: str = ""
) -> NoReturn:
    """Abort the call with the status code and ErrorDetail trailer for ``exc``."""
    api_error = to_api_error(exc, where=where)
    code, message, trailer = encode_error(api_error)
    await context.abort(code, message, trailer)
    raise AssertionError("unreachable")  # context.abort raises
