"""Session system, target and lifecycle methods against a real server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from flare_admin import (
    ClientInfo,
    InvalidArgumentError,
    InvalidTarget,
    NoReply,
    Session,
    SessionClosed,
    SessionState,
    SiteInfo,
    SystemInfo,
    TargetType,
)
from flare_protocol._generated import site_pb2
from tests.flare_admin.conftest import ADMIN
from tests.server_harness import site_stub, wait_until

JOB = "3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11"


@pytest.fixture
def site_1(server, kits):
    """site-1 registered and holding its Channel open with heartbeats."""
    stub, channel = site_stub(kits["site-1"], server.site_address)
    reply = stub.Register(site_pb2.RegisterRequest(site_version="test"), timeout=5)
    stop = threading.Event()

    def beats():
        while not stop.is_set():
            yield site_pb2.SiteMessage(heartbeat=site_pb2.Heartbeat(session_id=reply.session_id))
            stop.wait(0.2)

    stream = stub.Channel(beats())

    def drain():
        try:
            for _ in stream:
                pass
        except grpc.RpcError:  # cancelled at teardown
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    wait_until(lambda: "site-1" in server.server.registry)
    yield "site-1"
    stop.set()
    stream.cancel()
    channel.close()


def test_get_system_info_has_flares_shape(session, server):
    info = session.get_system_info()
    assert isinstance(info, SystemInfo)
    assert info.server_info.name == "localhost" and info.server_info.status == "started"
    assert info["server_info"]["project"] == "testproj"
    assert info.client_info == () and info.job_info == ()
    assert info.to_dict()["server_info"]["start_time"] == server.server.start_time


def test_connected_sites_are_listed(session, site_1):
    (site,) = session.get_connected_client_list()
    assert isinstance(site, SiteInfo) and ClientInfo is SiteInfo
    assert site.name == "site-1" and site["org"] == "org_a"
    assert site.last_connect_time > 0
    assert [c.name for c in session.get_system_info().client_info] == ["site-1"]


def test_get_client_job_status_lists_each_site(session, site_1):
    assert session.get_client_job_status() == [{"name": "site-1", "running_jobs": []}]
    assert session.get_client_job_status(["site-1"])[0]["name"] == "site-1"
    with pytest.raises(InvalidTarget):
        session.get_client_job_status(["site-9"])


def test_show_stats_and_errors_of_a_job(session, job_folder):
    job_id = session.submit_job(job_folder)
    stats = session.show_stats(job_id, TargetType.SERVER)
    assert stats["server"]["status"] == "SUBMITTED"
    assert session.show_errors(job_id, "server") == {"server": []}
    assert session.reset_errors(job_id) is None


def test_an_unknown_target_type_is_invalid_target(session):
    with pytest.raises(InvalidTarget):
        session.show_stats(JOB, "everyone")


def test_file_commands_on_the_server_workspace(session, server):
    workspace = Path(server.server.workspace)
    (workspace / "notes.txt").write_text("".join(f"line {i}\n" for i in range(1, 31)))
    assert session.get_working_directory("server") == str(workspace.resolve())
    assert "notes.txt" in session.ls_target("server").split()
    assert "notes.txt" in session.ls_target("server", "-l", ".")
    assert session.cat_target("server", file="notes.txt").count("\n") == 30
    assert session.head_target("server", "-n 3", "notes.txt") == "line 1\nline 2\nline 3\n"
    assert session.tail_target("server", "-2", "notes.txt") == "line 29\nline 30\n"
    assert session.grep_target("server", "-i", "LINE 2", "notes.txt").startswith("2:line 2\n")


def test_server_log_commands(session):
    assert "listening" in session.head_target_log("server", "-n 50")
    assert session.tail_target_log("server")


def test_get_job_logs_gives_the_server_log_lines_of_the_job(session, job_folder):
    job_id = session.submit_job(job_folder)
    session.abort_job(job_id)
    assert isinstance(session.get_job_logs(job_id), str)


def test_file_commands_cannot_leave_the_workspace(session):
    with pytest.raises(InvalidArgumentError):
        session.cat_target("server", file="../../etc/passwd")
    with pytest.raises(InvalidArgumentError):
        session.cat_target("server", file="/etc/passwd")


@pytest.mark.parametrize("bad", ["-x", "--rm", "-n"])
def test_an_unsupported_option_is_refused_locally(session, bad):
    with pytest.raises(InvalidArgumentError, match="not supported"):
        session.cat_target("server", bad, "notes.txt")


def test_a_malformed_target_is_invalid_target(session):
    with pytest.raises(InvalidTarget):
        session.ls_target("../server")


def test_shutdown_and_restart_ask_the_server_to_stop(session, server):
    assert session.restart("server") == {"server": "restarting"}
    assert session.shutdown(TargetType.SERVER) == {"server": "stopping"}
    assert server.server._stop_requested.is_set()


def test_shutdown_system_stops_sites_and_server(session, server):
    assert session.shutdown_system()["server"] == "stopping"


def test_set_timeout_bounds_every_call_and_unset_restores_it(session, site_1):
    session.set_timeout(0.3)  # site-1 never answers commands: the server would wait 10 s
    start = time.monotonic()
    with pytest.raises(NoReply, match="set_timeout"):
        session.ls_target(site_1)
    assert time.monotonic() - start < 8  # the 0.3 s, not the server's 10 s
    session.unset_timeout()
    assert session.list_jobs() == []
    with pytest.raises(InvalidArgumentError):
        session.set_timeout(-1)


# -- lifecycle ---------------------------------------------------------------------------

CALLS = {
    "get_system_info": (),
    "submit_job": ("job",),
    "list_jobs": (),
    "get_job_meta": (JOB,),
    "monitor_job": (JOB,),
    "wait_for_job": (JOB,),
    "watch_job": (JOB,),
    "download_job_result": (JOB,),
    "get_job_logs": (JOB,),
    "get_job_metrics": (JOB,),
    "get_validations": (JOB,),
    "get_job_summary": (JOB,),
    "get_job_params": (JOB,),
    "get_job_messages": (JOB,),
    "get_driver": (JOB,),
    "export_metrics": (JOB, "tb"),
    "download_model": (JOB,),
    "clone_job": (JOB,),
    "abort_job": (JOB,),
    "delete_job": (JOB,),
    "get_connected_client_list": (),
    "update_revocations": ("revocations.crl",),
    "get_client_job_status": (),
    "show_stats": (JOB, "server"),
    "show_errors": (JOB, "server"),
    "reset_errors": (JOB,),
    "ls_target": ("server",),
    "cat_target": ("server", None, "x"),
    "head_target": ("server", None, "x"),
    "head_target_log": ("server",),
    "tail_target": ("server", None, "x"),
    "tail_target_log": ("server",),
    "grep_target": ("server", None, "p", "x"),
    "get_working_directory": ("server",),
    "shutdown": ("server",),
    "restart": ("server",),
    "shutdown_system": (),
    "set_timeout": (5,),
    "unset_timeout": (),
    "ping": (),
}


def test_the_lifecycle_table_covers_every_public_method():
    public = {n for n in dir(Session) if not n.startswith("_") and callable(getattr(Session, n))}
    assert public - {"close"} == set(CALLS)


@pytest.mark.parametrize("method", sorted(CALLS))
def test_every_method_refuses_use_after_close(session, method, job_folder):
    session.close()
    args = tuple(job_folder if a == "job" else a for a in CALLS[method])
    with pytest.raises(SessionClosed):
        getattr(session, method)(*args)


def test_a_session_is_a_context_manager_and_close_is_idempotent(open_session):
    with open_session() as s:
        assert s.state is SessionState.OPEN
        assert s.info.role == "project_admin"
    assert s.state is SessionState.CLOSED
    s.close()
    with pytest.raises(SessionClosed):
        with s:
            pass


def test_closing_from_another_thread_ends_a_running_monitor(session, job_folder):
    job_id = session.submit_job(job_folder)
    threading.Timer(0.2, session.close).start()
    start = time.monotonic()
    with pytest.raises(SessionClosed):
        session.monitor_job(job_id)
    assert time.monotonic() - start < 30  # ended by the close, not by a timeout


JOB_ID_ARG = "3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11"


@pytest.mark.parametrize(
    ("method", "args", "kwargs"),
    [
        ("set_timeout", (float("inf"),), {}),
        ("set_timeout", (float("nan"),), {}),
        ("set_timeout", ("10",), {}),
        ("monitor_job", (JOB_ID_ARG,), {"timeout": -1}),
        ("monitor_job", (JOB_ID_ARG,), {"poll_interval": None}),
        ("list_jobs", (), {"limit": 2**40}),
        ("download_job_result", (JOB_ID_ARG,), {"destination": 5}),
        ("submit_job", (None,), {}),
        ("submit_job", (5,), {}),
        ("show_stats", (JOB_ID_ARG, 5), {}),
        ("get_client_job_status", (5,), {}),
        ("shutdown", ("server", [1]), {}),
        ("ls_target", (None,), {}),
        ("cat_target", ("server",), {"options": 5, "file": "x"}),
        ("cat_target", ("server",), {}),
        ("grep_target", ("server",), {"pattern": 5, "file": "x"}),
        ("head_target", ("server", "-n x", "f"), {}),
    ],
)
def test_bad_arguments_raise_flare_errors_only(session, method, args, kwargs):
    with pytest.raises(InvalidArgumentError):
        getattr(session, method)(*args, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": 0}, {"timeout": "x"}, {"server_address": "no-port"}, {"server_address": 5}],
)
def test_bad_open_arguments_raise_invalid_argument(kits, kwargs):
    from flare_admin import new_secure_session

    with pytest.raises(InvalidArgumentError):
        new_secure_session("admin@org_a.com", kits["admin@org_a.com"], **kwargs)


@pytest.mark.parametrize("location", [None, 5, "/nonexistent/kit"])
def test_a_bad_kit_location_is_a_kit_error_or_invalid_argument(location):
    from flare_admin import FlareError, new_secure_session

    with pytest.raises(FlareError):
        new_secure_session("admin@org_a.com", location)


def test_ping_reconnects_to_a_restarted_server_at_once(provisioned, admin_kit, tmp_path):
    """An admin's channel retries a lost server within 2 s (grpc's default backs off to 120 s),
    and ping waits for it: a server restart costs a session nothing."""
    from flare_admin import NoConnection, new_secure_session
    from tests.server_harness import ServerThread

    kit = Path(provisioned.kits["localhost"])
    first = ServerThread(kit, tmp_path / "ws").start()
    port = first.server.admin_port
    with new_secure_session(ADMIN, admin_kit, server_address=first.admin_address) as s:
        assert s.ping() > 0
        first.stop()
        for _ in range(3):  # a while away: grpc's own backoff would have grown to 5+ s
            with pytest.raises(NoConnection):
                s.list_jobs()
            time.sleep(1.5)
        with pytest.raises(NoConnection):
            s.ping(timeout=0.5)
        with ServerThread(kit, tmp_path / "ws", admin_port=port):
            start = time.monotonic()
            s.ping(timeout=10)
            assert time.monotonic() - start < 5
            assert s.list_jobs() == []
