"""gRPC mutual-TLS credentials built from a startup kit.

There is no insecure variant: every channel and every port is mutual TLS with the
project's root CA as the only trust anchor.
"""

from __future__ import annotations

import os

import grpc

from flare_protocol.kit import Kit

#: Payloads larger than this travel as chunked streams; limits are never raised.
CHUNK_SIZE = 1024 * 1024
#: Per-message cap on both sides (a chunk plus framing, with headroom).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def server_credentials(kit: Kit) -> grpc.ServerCredentials:
    """Server-side credentials: our certificate, and client certificates required."""
    return grpc.ssl_server_credentials(
        [(_read(kit.key_path), _read(kit.cert_path))],
        root_certificates=_read(kit.root_ca_path),
        require_client_auth=True,
    )


def channel_credentials(kit: Kit) -> grpc.ChannelCredentials:
    """Client-side credentials for a site or admin kit."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(kit.root_ca_path),
        private_key=_read(kit.key_path),
        certificate_chain=_read(kit.cert_path),
    )


def channel_options(kit: Kit, address: str) -> list[tuple[str, object]]:
    """Channel options: bounded messages, keepalive, and the server name TLS must verify.

    When ``address`` is not the kit's server name (an override in ``local/settings.json``
    or a test's ephemeral port), the server certificate must still carry the kit's
    server name, so a certificate for another participant is never accepted.
    """
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    host = address.rsplit(":", 1)[0].strip("[]")
    if host != kit.server.name:
        options.append(("grpc.ssl_target_name_override", kit.server.name))
    return options
