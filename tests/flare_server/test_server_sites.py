"""The Site service, the connected-site registry and the scheduler, with a real server."""

from __future__ import annotations

import json

import grpc
import pytest

from flare_protocol._generated import admin_pb2, common_pb2, site_pb2
from flare_server.scheduler import place
from tests.flare_server.conftest import job_zip
from tests.flare_server.site_client import FakeSite
from tests.flare_server.test_server_jobs import error_of, submit
from tests.server_harness import admin_stub, site_stub, wait_until

ADMIN = "admin@org_a.com"


@pytest.fixture
def admin(server, kits):
    stub, channel = admin_stub(kits[ADMIN], server.admin_address)
    with channel:
        yield stub


def _sites(admin) -> list[str]:
    return [s.name for s in admin.GetConnectedSites(common_pb2.Empty(), timeout=5).sites]


def test_register_tells_the_site_its_session_and_heartbeat_timing(server, kits):
    stub, channel = site_stub(kits["site-1"], server.site_address)
    with channel:
        reply = stub.Register(site_pb2.RegisterRequest(site_version="x"), timeout=5)
    assert reply.session_id and reply.project == "testproj"
    assert (reply.heartbeat_interval, reply.heartbeat_timeout) == (0.2, 1.0)


def test_a_site_with_heartbeats_is_listed_with_its_identity(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address) as site:
        wait_until(lambda: site.acks >= 2)
        sites = admin.GetConnectedSites(common_pb2.Empty(), timeout=5).sites
        assert [(s.name, s.org) for s in sites] == [("site-1", "org_a")]
        assert sites[0].address.startswith("ipv4:127.0.0.1:")
        info = admin.GetSystemInfo(common_pb2.Empty(), timeout=5)
        assert [s.name for s in info.sites] == ["site-1"]


def test_heartbeat_timeout_marks_the_site_disconnected(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address) as site:
        wait_until(lambda: _sites(admin) == ["site-1"])
        site.stop_heartbeats()
        wait_until(lambda: _sites(admin) == [], timeout=3)
        wait_until(lambda: site.ended is not False, timeout=3)  # its channel was closed


def test_closing_the_channel_disconnects_the_site(server, kits, admin):
    site = FakeSite(kits["site-2"], server.site_address).open()
    wait_until(lambda: _sites(admin) == ["site-2"])
    site.close()
    wait_until(lambda: _sites(admin) == [], timeout=3)


def test_registering_again_replaces_the_old_session(server, kits):
    with FakeSite(kits["site-1"], server.site_address) as first:
        wait_until(lambda: first.acks >= 1)
        second = FakeSite(kits["site-1"], server.site_address).open()
        try:
            wait_until(lambda: first.ended is not False, timeout=3)
            wait_until(lambda: second.acks >= 2)
            assert server.call(lambda: server.server.registry.names()) == ["site-1"]
        finally:
            second.close()


def test_a_channel_must_start_with_the_current_session(server, kits):
    stub, channel = site_stub(kits["site-1"], server.site_address)
    with channel:
        bad = iter([site_pb2.SiteMessage(heartbeat=site_pb2.Heartbeat(session_id="forged"))])
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Channel(bad, timeout=5))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_unknown_topics_from_a_site_are_dropped(server, kits):
    with FakeSite(kits["site-1"], server.site_address) as site:
        wait_until(lambda: site.acks >= 1)
        site.outbox.put(site_pb2.SiteMessage(message=site_pb2.Envelope(topic="os.system")))
        wait_until(lambda: site.acks >= 3)  # still connected
    log = (server.server.workspace / "logs" / "server.log").read_text()
    assert "unknown topic 'os.system'" in log


def test_job_waits_with_a_reason_until_its_sites_connect(server, kits, admin):
    job_id = submit(admin, job_zip(min_clients=2, deploy_map={"app": ["site-1", "site-2"]}))

    def meta():
        return json.loads(
            admin.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5).meta_json
        )

    wait_until(
        lambda: (
            meta().get("schedule_reason")
            == "waiting for sites: site-1 (deploy_map; not connected), site-2 (deploy_map; "
            "not connected) / 0 of 2 min_clients connected"
        )
    )
    with FakeSite(kits["site-1"], server.site_address):
        wait_until(
            lambda: (
                meta().get("schedule_reason")
                == "waiting for sites: site-2 (deploy_map; not connected) / 1 of 2 min_clients"
                " connected"
            )
        )
        assert meta()["status"] == "SUBMITTED"
        with FakeSite(kits["site-2"], server.site_address):
            final = wait_until(lambda: (m := meta())["status"] != "SUBMITTED" and m)
    assert final["deployed_sites"] == ["site-1", "site-2"]
    assert "DISPATCHED" in [h["status"] for h in final["status_history"]]


def test_a_job_for_all_sites_runs_once_min_clients_are_connected(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address):
        wait_until(lambda: _sites(admin) == ["site-1"])
        job_id = submit(admin, job_zip(min_clients=1))
        wait_until(
            lambda: (
                json.loads(
                    admin.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5).meta_json
                )["status"]
                == "DISPATCHED"
            )
        )


@pytest.mark.parametrize(
    ("meta", "connected", "sites", "reason"),
    [
        ({"deploy_map": {"a": ["@ALL"]}, "min_clients": 2}, {"s1", "s2"}, ("s1", "s2"), ""),
        (
            {"deploy_map": {"a": ["@ALL"]}, "min_clients": 3},
            {"s1"},
            None,
            "1 of 3 min_clients connected",
        ),
        (
            {"deploy_map": {"a": ["s1"], "server": ["server"]}, "min_clients": 1},
            {"s1"},
            ("s1",),
            "",
        ),
        (
            {"deploy_map": {"a": ["@ALL"]}, "min_clients": 1, "mandatory_clients": ["s9"]},
            {"s1"},
            None,
            "waiting for sites: s9 (mandatory_clients; not connected) / 1 of 1 min_clients "
            "connected",
        ),
    ],
)
def test_placement_rules(meta, connected, sites, reason):
    placement = place(meta, connected)
    assert (placement.sites, placement.reason) == (sites, reason)


def test_a_site_at_its_job_limit_is_named_as_busy_not_as_missing():
    meta = {"deploy_map": {"a": ["s1", "s2"]}, "min_clients": 2}
    placement = place(meta, {"s2"}, busy={"s1"})
    assert placement.sites is None
    assert placement.reason == (
        "waiting for sites: s1 (deploy_map; at its max_jobs limit) / 1 of 2 min_clients connected"
    )


def test_forwarded_site_command_is_answered_over_the_channel(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address):
        wait_until(lambda: _sites(admin) == ["site-1"])
        reply = admin.Command(
            admin_pb2.CommandRequest(command="ls", args_json=json.dumps({"target": "site-1"})),
            timeout=5,
        )
        assert json.loads(reply.result_json) == {"echo": "ls"}


def test_a_silent_site_gives_no_reply(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address, answer_commands=False):
        wait_until(lambda: _sites(admin) == ["site-1"])
        code, detail = error_of(
            admin.Command,
            admin_pb2.CommandRequest(
                command="shutdown",
                args_json=json.dumps({"target_type": "client", "targets": ["site-1"]}),
            ),
            timeout=5,
        )
        assert (code, detail.type) == (grpc.StatusCode.DEADLINE_EXCEEDED, "NoReply")
        assert "site-1" in detail.message


def test_a_command_for_a_site_that_is_not_connected_is_an_invalid_target(admin):
    code, detail = error_of(
        admin.Command,
        admin_pb2.CommandRequest(
            command="cat", args_json=json.dumps({"target": "site-9", "path": "x"})
        ),
        timeout=5,
    )
    assert detail.type == "InvalidTarget" and "site-9" in detail.message


def test_revoking_a_site_drops_its_channel(server, kits):
    from cryptography import x509

    serial = x509.load_pem_x509_certificate(
        (kits["site-2"] / "startup" / "client.crt").read_bytes()
    ).serial_number
    with FakeSite(kits["site-2"], server.site_address) as site:
        wait_until(lambda: site.acks >= 1)
        server.call(lambda: server.server.revoke([serial]))
        wait_until(lambda: site.ended is not False, timeout=3)
        assert server.call(lambda: server.server.registry.names()) == []


def _denied(stub, command: str, **args):
    code, detail = error_of(
        stub.Command,
        admin_pb2.CommandRequest(command=command, args_json=json.dumps(args)),
        timeout=5,
    )
    assert (code, detail.type) == (grpc.StatusCode.PERMISSION_DENIED, "AuthorizationError")
    return detail


def test_org_admin_runs_shell_commands_on_its_orgs_site_only(server, kits, admin):
    stub, channel = admin_stub(kits["orgadmin@org_a.com"], server.admin_address)
    with (
        channel,
        FakeSite(kits["site-1"], server.site_address),
        FakeSite(kits["site-2"], server.site_address),
    ):
        wait_until(lambda: _sites(admin) == ["site-1", "site-2"])
        reply = stub.Command(
            admin_pb2.CommandRequest(command="pwd", args_json='{"target": "site-1"}'), timeout=5
        )
        assert json.loads(reply.result_json) == {"echo": "pwd"}
        detail = _denied(stub, "pwd", target="site-2")
        assert "site site-2" in detail.message and "org_a" in detail.message


def test_lead_operates_its_orgs_site_but_runs_no_shell_commands(server, kits, admin):
    stub, channel = admin_stub(kits["lead@org_a.com"], server.admin_address)
    with (
        channel,
        FakeSite(kits["site-1"], server.site_address),
        FakeSite(kits["site-2"], server.site_address),
    ):
        wait_until(lambda: _sites(admin) == ["site-1", "site-2"])
        reply = stub.Command(
            admin_pb2.CommandRequest(
                command="restart",
                args_json=json.dumps({"target_type": "client", "targets": ["site-1"]}),
            ),
            timeout=5,
        )
        assert json.loads(reply.result_json) == {"site-1": {"echo": "restart"}}
        _denied(stub, "restart", target_type="client", targets=["site-2"])
        _denied(stub, "ls", target="site-1")


def test_stopping_the_server_ends_open_streams(server, kits, admin):
    job_id = submit(admin, job_zip(min_clients=2))
    stream = admin.WatchJob(admin_pb2.JobRequest(job_id=job_id), timeout=10)
    next(stream)
    with FakeSite(kits["site-1"], server.site_address) as site:
        wait_until(lambda: site.acks >= 1)
        server.call(server.server.stop(grace=1.0))
        rest = list(stream)  # ends cleanly (no error, not by the deadline)
        assert all(json.loads(r.meta_json)["status"] == "SUBMITTED" for r in rest)
        wait_until(lambda: site.ended is not False, timeout=3)


def test_a_second_channel_for_the_same_session_is_refused(server, kits):
    with FakeSite(kits["site-1"], server.site_address) as site:
        wait_until(lambda: site.acks >= 1)
        beat = site_pb2.SiteMessage(heartbeat=site_pb2.Heartbeat(session_id=site.reply.session_id))
        stub, channel = site_stub(kits["site-1"], server.site_address)
        with channel:
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Channel(iter([beat]), timeout=5))
        assert "already has a Channel open" in info.value.details()
        acks = site.acks
        wait_until(lambda: site.acks > acks)  # the first channel is unaffected


def test_an_unknown_blob_is_refused_and_blobs_need_a_site_certificate(server, kits):
    stub, channel = site_stub(kits["site-1"], server.site_address)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Download(site_pb2.BlobRequest(blob_id="x"), timeout=5))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not served to this site" in info.value.details()
    stub, channel = site_stub(kits["admin@org_a.com"], server.site_address)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Download(site_pb2.BlobRequest(blob_id="x"), timeout=5))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
