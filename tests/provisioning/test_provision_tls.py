"""Real mutual-TLS handshakes with stdlib ssl on 127.0.0.1 between provisioned kits."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from flare_protocol.identity import ParticipantType, identity_from_certificate
from flare_protocol.kit import load_kit
from provisioning import ProvisionResult
from tests.kit_factory import eku_kit


@dataclass
class Outcome:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    peer_der: bytes | None = None  # the client certificate the server saw


def _server_context(kit_dir: Path) -> ssl.SSLContext:
    kit = load_kit(kit_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(kit.cert_path, kit.key_path)
    ctx.load_verify_locations(kit.root_ca_path)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_context(kit_dir: Path) -> ssl.SSLContext:
    kit = load_kit(kit_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    ctx.load_verify_locations(kit.root_ca_path)
    ctx.load_cert_chain(kit.cert_path, kit.key_path)
    return ctx


def _handshake(server_kit: Path, client_kit: Path, server_name: str) -> Outcome:
    outcome = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    server_ctx = _server_context(server_kit)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                outcome.peer_der = tls.getpeercert(binary_form=True)
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError) as exc:
            outcome.server_error = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            _client_context(client_kit).wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            if tls.recv(2) != b"ok":  # TLS 1.3: a refused client learns it on first read
                raise ConnectionError("server closed the connection")
    except (OSError, ssl.SSLError) as exc:
        outcome.client_error = exc
    thread.join(10)
    listener.close()
    return outcome


@pytest.mark.parametrize("client", ["site-1", "admin@org_a.com"])
@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1"])
def test_server_and_client_kits_complete_mutual_tls(
    provisioned: ProvisionResult, client: str, server_name: str
) -> None:
    outcome = _handshake(provisioned.kits["localhost"], provisioned.kits[client], server_name)
    assert outcome.server_error is None and outcome.client_error is None
    assert outcome.peer_der is not None
    peer = x509.load_der_x509_certificate(outcome.peer_der)
    identity = identity_from_certificate(peer)
    assert identity.name == client
    assert identity.type in (ParticipantType.SITE, ParticipantType.ADMIN)


def test_client_of_another_project_is_refused_by_the_server(
    provisioned: ProvisionResult, foreign: ProvisionResult
) -> None:
    outcome = _handshake(provisioned.kits["localhost"], foreign.kits["site-1"], "localhost")
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert outcome.client_error is not None
    assert outcome.peer_der is None


def test_server_of_another_project_is_refused_by_the_client(
    provisioned: ProvisionResult, foreign: ProvisionResult
) -> None:
    outcome = _handshake(foreign.kits["localhost"], provisioned.kits["site-1"], "localhost")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_a_name_outside_the_sans_is_refused_by_the_client(provisioned: ProvisionResult) -> None:
    outcome = _handshake(provisioned.kits["localhost"], provisioned.kits["site-1"], "127.0.0.2")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_a_site_kit_cannot_pose_as_the_server(provisioned: ProvisionResult) -> None:
    """A site certificate names no host, so clients refuse it as a server."""
    outcome = _handshake(provisioned.kits["site-1"], provisioned.kits["site-2"], "site-1")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_a_server_certificate_without_server_auth_is_refused(
    provisioned: ProvisionResult, tmp_path: Path
) -> None:
    """Right names, right CA, but clientAuth only: the TLS client checks the purpose."""
    kit = eku_kit(provisioned, "localhost", tmp_path, [ExtendedKeyUsageOID.CLIENT_AUTH])
    outcome = _handshake(kit, provisioned.kits["site-1"], "localhost")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "purpose" in outcome.client_error.verify_message
