"""Calls that reached the other endpoint: an admin at the site port, a site at the admin port.

The admin and site endpoints are two gRPC servers, each registering only its own service.
Without help, gRPC answers the other service's methods with UNIMPLEMENTED "Method not
found!", which a Session can only report as "is the server an older version?". Each
endpoint therefore also registers a :class:`WrongEndpoint` handler for the *other*
service's methods: it ends the call with UNIMPLEMENTED and a ``NoConnection`` ErrorDetail
saying which port this is and which one to use. Methods of no flare service still get
gRPC's default answer.

No identity check runs first: the caller completed mutual TLS with a certificate of this
project, and the ports named are in every kit of the project anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from flare_protocol import errors
from flare_protocol.wire_errors import encode_error

__all__ = ["ADMIN_SERVICE", "SITE_SERVICE", "WrongEndpoint"]

#: Method-name prefixes of the two services (package ``flare.v1``).
ADMIN_SERVICE = "/flare.v1.Admin/"
SITE_SERVICE = "/flare.v1.Site/"


class WrongEndpoint(grpc.GenericRpcHandler):
    """Answers every method of ``service`` with the error ``message()`` describes.

    ``message`` is called per call: the ports are known only once the server is bound.
    """

    def __init__(self, service: str, message: Callable[[], str]) -> None:
        self.service_prefix = service
        self.message = message

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method = getattr(handler_call_details, "method", "") or ""
        if isinstance(method, bytes):
            method = method.decode(errors="replace")
        if not method.startswith(self.service_prefix):
            return None
        # stream-stream reads nothing: it answers any kind of call at once
        return grpc.stream_stream_rpc_method_handler(self._refuse)

    async def _refuse(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        _, text, trailer = encode_error(errors.NoConnection(self.message()))
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, text, trailer)
