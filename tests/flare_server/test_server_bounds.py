"""Bounds that hold before authentication: handshakes, metadata, messages, concurrency."""

from __future__ import annotations

import select
import socket
import time

import grpc
import pytest

from flare_protocol._generated import admin_pb2, admin_pb2_grpc, common_pb2
from flare_protocol.credentials import channel_credentials
from flare_protocol.kit import load_kit
from tests.flare_server.conftest import job_zip
from tests.flare_server.test_server_jobs import submit
from tests.server_harness import ServerThread, admin_stub

ADMIN = "admin@org_a.com"


@pytest.fixture
def bounded(server_kit, tmp_path):
    with ServerThread(
        server_kit, tmp_path / "ws", handshake_timeout_ms=500, max_concurrent_rpcs=3
    ) as srv:
        yield srv


def _raw_stub(kit_dir, address, **options):
    kit = load_kit(kit_dir)
    opts = [("grpc.ssl_target_name_override", kit.server.name), *options.items()]
    channel = grpc.secure_channel(address, channel_credentials(kit), options=opts)
    return admin_pb2_grpc.AdminStub(channel), channel


def _readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    poller = select.poll()  # not select(): no limit on the descriptors' numbers
    for sock in socks:
        poller.register(sock, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(timeout * 1000)}
    return [sock for sock in socks if sock.fileno() in ready]


def _still_open(sock: socket.socket) -> bool:
    return not _readable([sock], 0)  # a closed connection reads as EOF at once


def test_a_client_that_never_handshakes_does_not_block_others(server_kit, tmp_path, kits):
    # A long handshake timeout: the silent connections are all still pending during the call.
    with ServerThread(server_kit, tmp_path / "ws", handshake_timeout_ms=60_000) as srv:
        host, port = srv.admin_address.split(":")
        silent = [socket.create_connection((host, int(port))) for _ in range(20)]
        try:
            stub, channel = admin_stub(kits[ADMIN], srv.admin_address)
            with channel:
                assert stub.Hello(common_pb2.Empty(), timeout=30).name == ADMIN
            assert all(_still_open(sock) for sock in silent)
        finally:
            for sock in silent:
                sock.close()


def test_a_client_that_never_handshakes_does_not_stay(bounded):
    host, port = bounded.admin_address.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(30)  # the server closes it (handshake timeout 0.5 s), or recv times out
        assert sock.recv(1) == b""


def test_a_slow_partial_handshake_is_cut_off(bounded):
    host, port = bounded.admin_address.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"\x16\x03\x01\x00\xff")  # a TLS record header, then nothing
        sock.settimeout(30)  # the server closes it (handshake timeout 0.5 s), or recv times out
        assert sock.recv(1) == b""


def test_oversized_metadata_is_refused(server, kits):
    stub, channel = _raw_stub(kits[ADMIN], server.admin_address)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            stub.Hello(common_pb2.Empty(), metadata=[("x-pad", "a" * 64 * 1024)], timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "metadata size exceeds" in info.value.details()
        assert stub.Hello(common_pb2.Empty(), timeout=5).name == ADMIN  # the server is fine


def test_a_message_over_4_mib_is_refused(server, kits):
    stub, channel = _raw_stub(
        kits[ADMIN], server.admin_address, **{"grpc.max_send_message_length": 16 * 1024 * 1024}
    )
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            stub.Command(
                admin_pb2.CommandRequest(command="pwd", args_json="x" * (5 << 20)), timeout=5
            )
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_rpcs_beyond_the_concurrency_cap_are_refused_at_once(bounded, kits):
    stub, channel = admin_stub(kits[ADMIN], bounded.admin_address)
    with channel:
        job_id = submit(stub, job_zip(min_clients=2))
        streams = [stub.WatchJob(admin_pb2.JobRequest(job_id=job_id), timeout=10) for _ in range(3)]
        for s in streams:
            next(s)
        with pytest.raises(grpc.RpcError) as info:
            stub.Hello(common_pb2.Empty(), timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for s in streams:
            s.cancel()


def test_connections_beyond_the_cap_are_closed_and_slots_free_up_after_the_handshake_timeout(
    server_kit, kits, tmp_path
):
    with ServerThread(
        server_kit, tmp_path / "ws", max_connections=3, handshake_timeout_ms=4000
    ) as srv:
        host, port = srv.admin_address.split(":")
        opened = time.monotonic()
        socks = [socket.create_connection((host, int(port))) for _ in range(5)]
        try:
            closed: set[int] = set()
            while len(closed) < 2 and time.monotonic() - opened < 3:  # before the timeout
                for sock in _readable(socks, 0.05):
                    if sock.recv(1) == b"":
                        closed.add(socks.index(sock))
            assert len(closed) == 2  # the two over the cap, at once
            assert all(_still_open(s) for i, s in enumerate(socks) if i not in closed)
        finally:
            for sock in socks:
                sock.close()
        time.sleep(max(0.0, opened + 4.5 - time.monotonic()))  # held slots expire
        stub, channel = admin_stub(kits[ADMIN], srv.admin_address)
        with channel:
            assert stub.Hello(common_pb2.Empty(), timeout=5).name == ADMIN
