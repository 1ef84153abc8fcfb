"""The server's two gRPC endpoints: bounds before authentication, and binding a port."""

from __future__ import annotations

from typing import Any

import grpc

from flare_protocol import errors
from flare_server.settings import ServerSettings

__all__ = ["bind", "server_options"]


def server_options(s: ServerSettings) -> list[tuple[str, Any]]:
    """grpc core channel arguments that bound every connection, before authentication."""
    return [
        ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing it
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_metadata_size", s.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", s.max_metadata_bytes),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.server_handshake_timeout_ms", s.handshake_timeout_ms),
        ("grpc.max_allowed_incoming_connections", s.max_connections),
        ("grpc.max_connection_idle_ms", s.max_connection_idle_ms),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", s.min_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 3),
        # A fixed 4 MiB receive window per stream instead of a BDP-probed one: an upload
        # whose disk is slower than the network cannot make the server buffer more.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
    ]


def bind(
    server: grpc.aio.Server, host: str, port: int, creds: grpc.ServerCredentials, what: str
) -> int:
    """Listen on ``host:port`` (0: any free port); the port bound.

    Raises:
        FlareError: the port cannot be bound (in use, not allowed), naming the endpoint.
    """
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, creds)
    except RuntimeError as exc:
        raise errors.FlareError(
            f"cannot listen on {address} for the {what} endpoint: {exc}"
        ) from None
    if not bound:
        raise errors.FlareError(
            f"cannot listen on {address} for the {what} endpoint (port in use or not allowed)"
        )
    return bound
