"""The handshake and identity rows of the security matrix, against a real server.

Each row uses a kit made by tests/kit_factory.py (real certificates from our builder)
and raw generated stubs over real mutual TLS. A rejection either fails the TLS handshake
(the client sees only UNAVAILABLE, "Socket closed", as it would from a server that is
down, so these rows run ``flare server start`` as a process and read the reason from the
line grpc logs there: ``Handshake failed ... CERTIFICATE_VERIFY_FAILED: <reason>``), or
is refused by the server's identity check after the handshake (UNAUTHENTICATED with an
AuthenticationError detail, and a log line naming the peer address).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

import tests.kit_factory as kf
from flare_protocol._generated import common_pb2, site_pb2
from flare_protocol.identity import ParticipantType
from flare_protocol.wire_errors import decode_detail
from tests.server_harness import ServerProcess, ServerThread, admin_stub, site_stub, wait_until

ADMIN = "admin@org_a.com"


def _hello(kit: Path, address: str) -> grpc.RpcError | None:
    stub, channel = admin_stub(kit, address)
    with channel:
        try:
            stub.Hello(common_pb2.Empty(), timeout=5)
        except grpc.RpcError as exc:
            return exc
    return None


def _register(kit: Path, address: str) -> grpc.RpcError | None:
    stub, channel = site_stub(kit, address)
    with channel:
        try:
            stub.Register(site_pb2.RegisterRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc
    return None


def _refused_by_identity_check(err: grpc.RpcError | None, needle: str) -> None:
    assert err is not None, "the call was accepted"
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err
    detail = decode_detail(err.trailing_metadata())
    assert detail is not None and detail.type == "AuthenticationError"
    assert needle in detail.message


@pytest.fixture(scope="module")
def server_process(provisioned, tmp_path_factory) -> Iterator[ServerProcess]:
    """``flare server start`` in a process whose grpc logs its failed handshakes (INFO)."""
    workspace = tmp_path_factory.mktemp("handshakes") / "ws"
    with ServerProcess(
        provisioned.kits["localhost"], workspace, env={"GRPC_VERBOSITY": "INFO"}
    ) as srv:
        yield srv


def _refused_by_handshake(
    server: ServerProcess, call: Callable[[], grpc.RpcError | None], reason: str
) -> None:
    """The call fails with UNAVAILABLE, and the server logs a failed handshake for ``reason``."""
    seen = len(_handshake_failures(server))
    err = call()
    assert err is not None, "the call was accepted"
    assert err.code() is grpc.StatusCode.UNAVAILABLE, err
    new = wait_until(lambda: _handshake_failures(server)[seen:], timeout=10)
    assert any(f"CERTIFICATE_VERIFY_FAILED: {reason}" in line for line in new), new


def _handshake_failures(server: ServerProcess) -> list[str]:
    path = server.workspace.parent / f"{server.workspace.name}.stderr"
    return [ln for ln in path.read_text(errors="replace").splitlines() if "Handshake failed" in ln]


def test_valid_admin_kit_is_accepted(server, kits):
    assert _hello(kits[ADMIN], server.admin_address) is None


def test_certificate_from_a_foreign_ca_fails_the_handshake(server_process, provisioned, tmp_path):
    kit = kf.foreign_ca_kit(provisioned, ADMIN, tmp_path)
    address = server_process.admin_address
    _refused_by_handshake(
        server_process, lambda: _hello(kit, address), "unable to get local issuer certificate"
    )


def test_expired_certificate_fails_the_handshake(server_process, provisioned, tmp_path):
    kit = kf.expired_kit(provisioned, ADMIN, tmp_path)
    address = server_process.admin_address
    _refused_by_handshake(server_process, lambda: _hello(kit, address), "certificate has expired")


def test_not_yet_valid_certificate_fails_the_handshake(server_process, provisioned, tmp_path):
    kit = kf.not_yet_valid_kit(provisioned, ADMIN, tmp_path)
    address = server_process.admin_address
    _refused_by_handshake(
        server_process, lambda: _hello(kit, address), "certificate is not yet valid"
    )


def test_ca_true_leaf_is_rejected_by_the_identity_check(server, provisioned, tmp_path):
    kit = kf.ca_leaf_kit(provisioned, ADMIN, tmp_path)
    _refused_by_identity_check(_hello(kit, server.admin_address), "CA:TRUE")


def test_leaf_without_eku_is_rejected_by_the_identity_check(server, provisioned, tmp_path):
    kit = kf.no_eku_kit(provisioned, ADMIN, tmp_path)
    _refused_by_identity_check(_hello(kit, server.admin_address), "extended key usage")


def test_server_auth_only_leaf_fails_the_handshake(server_process, provisioned, tmp_path):
    # BoringSSL refuses it for the client purpose; the identity check is the second line
    # (see test_identity_check_refuses_a_server_auth_only_leaf).
    kit = kf.server_auth_only_kit(provisioned, ADMIN, tmp_path)
    address = server_process.admin_address
    _refused_by_handshake(
        server_process, lambda: _hello(kit, address), "unsupported certificate purpose"
    )


def test_site_certificate_on_the_admin_endpoint_is_rejected(server, kits):
    _refused_by_identity_check(
        _hello(kits["site-1"], server.admin_address), "site certificate cannot call the admin"
    )


def test_admin_certificate_on_the_site_endpoint_is_rejected(server, kits):
    _refused_by_identity_check(
        _register(kits[ADMIN], server.site_address), "admin certificate cannot call the site"
    )


def test_site_certificate_in_an_admin_kit_is_rejected(server, provisioned, tmp_path):
    kit = kf.wrong_type_kit(provisioned, ADMIN, tmp_path, ParticipantType.SITE)
    _refused_by_identity_check(_hello(kit, server.admin_address), "site certificate")


def test_server_certificate_as_a_client_fails_the_handshake(server_process, kits):
    kit, srv = kits["localhost"], server_process
    purpose = "unsupported certificate purpose"
    _refused_by_handshake(srv, lambda: _hello(kit, srv.admin_address), purpose)
    _refused_by_handshake(srv, lambda: _register(kit, srv.site_address), purpose)


def test_rejections_are_logged_with_the_peer_address(server, kits):
    _hello(kits["site-1"], server.admin_address)
    log = server.server.workspace / "logs" / "server.log"
    line = wait_until(
        lambda: next((ln for ln in log.read_text().splitlines() if "rejected hello" in ln), None)
    )
    assert "from ipv4:127.0.0.1:" in line and "site certificate" in line


@pytest.fixture(scope="module")
def revoked_project(project_yml, tmp_path_factory):
    """A project of its own where lead@org_b.com was re-issued and its old cert revoked."""
    from provisioning import provision

    first = provision(project_yml, tmp_path_factory.mktemp("revoke-ws"))
    second = kf.revoke_participant(first, "lead@org_b.com")
    return first, second


def test_revoked_serial_is_rejected_and_the_reissued_kit_accepted(revoked_project, tmp_path):
    old, new = revoked_project
    with ServerThread(new.kits["localhost"], tmp_path / "ws") as srv:
        _refused_by_identity_check(_hello(old.kits["lead@org_b.com"], srv.admin_address), "revoked")
        assert _hello(new.kits["lead@org_b.com"], srv.admin_address) is None
        assert _hello(old.kits[ADMIN], srv.admin_address) is None  # unchanged participants


def test_revocation_at_runtime_drops_open_streams_and_refuses_new_calls(server, kits):
    from cryptography import x509

    from flare_protocol._generated import admin_pb2

    kit = kits["member@org_b.com"]
    serial = x509.load_pem_x509_certificate(
        (kit / "startup" / "client.crt").read_bytes()
    ).serial_number
    stub, channel = admin_stub(kits[ADMIN], server.admin_address)
    member, member_channel = admin_stub(kit, server.admin_address)
    with channel, member_channel:
        from tests.flare_server.conftest import job_zip
        from tests.flare_server.test_server_jobs import submit

        job_id = submit(stub, job_zip(min_clients=2))
        stream = member.WatchJob(admin_pb2.JobRequest(job_id=job_id), timeout=10)
        next(stream)  # the current meta: the stream is open
        dropped = server.call(lambda: server.server.revoke([serial]))
        assert dropped == 1
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in decode_detail(info.value.trailing_metadata()).message
        with pytest.raises(grpc.RpcError) as info:
            member.Hello(common_pb2.Empty(), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
