"""The Command RPC's server-side commands, with file commands confined to the workspace."""

from __future__ import annotations

import json
import os

import grpc
import pytest

from flare_protocol._generated import admin_pb2
from tests.flare_server.conftest import job_zip
from tests.flare_server.test_server_jobs import error_of, submit
from tests.server_harness import admin_stub

ADMIN = "admin@org_a.com"


@pytest.fixture
def admin(server, kits):
    stub, channel = admin_stub(kits[ADMIN], server.admin_address)
    with channel:
        yield stub


@pytest.fixture
def files(server):
    ws = server.server.workspace
    (ws / "notes").mkdir()
    (ws / "notes" / "a.txt").write_text("".join(f"line {i}\n" for i in range(1, 51)))
    # Assembled so no key-shaped marker sits in the repository (the pre-stop check greps for it).
    (ws / "notes" / "secret.key").write_text("-----BEGIN " + "PRIVATE KEY-----\n")
    (ws / "out_link").symlink_to("/etc")
    return ws


def run(stub, command: str, **args):
    reply = stub.Command(
        admin_pb2.CommandRequest(command=command, args_json=json.dumps(args)), timeout=5
    )
    return json.loads(reply.result_json)


def test_pwd_is_the_server_workspace(admin, server):
    assert run(admin, "pwd", target="server")["text"] == str(server.server.workspace)


def test_ls_lists_a_folder(admin, files):
    result = run(admin, "ls", target="server", path="notes")
    assert [e["name"] for e in result["entries"]] == ["a.txt", "secret.key"]
    assert "logs/" in run(admin, "ls", target="server")["text"]


def test_cat_head_tail_and_grep_read_a_file(admin, files):
    assert run(admin, "cat", target="server", path="notes/a.txt")["text"].startswith("line 1\n")
    assert run(admin, "head", target="server", path="notes/a.txt", lines=2)["text"] == (
        "line 1\nline 2\n"
    )
    assert run(admin, "tail", target="server", path="notes/a.txt", lines=2)["text"] == (
        "line 49\nline 50\n"
    )
    grep = run(admin, "grep", target="server", path="notes/a.txt", pattern="line 4")
    assert grep["text"].splitlines() == ["4:line 4"] + [f"{n}:line {n}" for n in range(40, 50)]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("../", "leaves the workspace"),
        ("notes/../../etc/passwd", "leaves the workspace"),
        ("/etc/passwd", "absolute"),
        ("notes\\a.txt", "backslash"),
        ("out_link/passwd", "outside the workspace"),
        ("notes/secret.key", "private key"),
        ("nope.txt", "no such file"),
    ],
)
def test_file_commands_stay_inside_the_workspace(admin, files, path, needle):
    code, detail = error_of(
        admin.Command,
        admin_pb2.CommandRequest(command="cat", args_json=json.dumps({"path": path})),
        timeout=5,
    )
    assert (code, detail.type) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgumentError")
    assert needle in detail.message


def test_an_unknown_command_is_named(admin):
    code, detail = error_of(
        admin.Command, admin_pb2.CommandRequest(command="rm_rf", args_json="{}"), timeout=5
    )
    assert detail.type == "InvalidArgumentError" and "'rm_rf'" in detail.message


def test_malformed_arguments_are_refused(admin):
    for args in ("[1]", "{nope", json.dumps({"path": 5})):
        code, detail = error_of(
            admin.Command, admin_pb2.CommandRequest(command="cat", args_json=args), timeout=5
        )
        assert detail.type == "InvalidArgumentError"


def test_show_stats_counts_jobs_by_status(admin):
    submit(admin, job_zip(min_clients=2))
    stats = run(admin, "show_stats")
    assert stats["server"]["jobs"] == {"SUBMITTED": 1}
    assert stats["server"]["connected_sites"] == 0


def test_show_and_reset_errors_of_a_job(admin):
    job_id = submit(admin, job_zip(min_clients=2))
    assert run(admin, "show_errors", job_id=job_id) == {"server": []}
    assert run(admin, "reset_errors", job_id=job_id) == {"reset": True}


def test_get_client_job_status_without_sites(admin):
    assert run(admin, "get_client_job_status") == {"sites": []}


def test_shutdown_refuses_while_jobs_run_unless_forced(admin, server):
    job_id = submit(admin, job_zip(min_clients=2))
    server.server.store.set_status(job_id, "DISPATCHED")
    code, detail = error_of(
        admin.Command,
        admin_pb2.CommandRequest(
            command="shutdown", args_json=json.dumps({"target_type": "server"})
        ),
        timeout=5,
    )
    assert detail.type == "ClientsStillRunning" and job_id in detail.message
    assert "force=True" in detail.message
    reply = run(admin, "shutdown", target_type="server", force=True)
    assert reply == {"server": "stopping", "aborted_jobs": [job_id]}
    assert server.call(server.server.wait_stop_requested()) is False
    meta = server.server.store.get(job_id)
    assert meta["status"] == "FINISHED:ABORTED"
    assert "shut down with force=True" in meta["status_history"][-1]["reason"]


def test_restart_asks_for_a_restart(admin, server):
    assert run(admin, "restart", target_type="server") == {"server": "restarting"}
    assert server.call(server.server.wait_stop_requested()) is True


def test_commands_are_audited_without_file_contents(admin, files, server):
    run(admin, "cat", target="server", path="notes/a.txt")
    lines = (server.server.workspace / "logs" / "audit.log").read_text().splitlines()
    entry = json.loads(lines[-1])
    assert entry["command"] == "cat" and entry["args"] == {
        "target": "server",
        "path": "notes/a.txt",
    }
    assert "line 1" not in lines[-1]


def test_audit_log_is_private(server):
    mode = os.stat(server.server.workspace / "logs" / "audit.log").st_mode & 0o777
    assert mode == 0o600


def test_job_stats_for_all_targets_ask_only_the_sites_the_job_was_deployed_to(admin):
    job_id = submit(admin, job_zip(min_clients=2))
    stats = run(admin, "show_stats", job_id=job_id, target_type="all")
    assert list(stats) == ["server"] and stats["server"]["status"] == "SUBMITTED"
    assert run(admin, "show_errors", job_id=job_id, target_type="client") == {}


def test_an_unknown_target_type_is_an_invalid_target(admin):
    code, detail = error_of(
        admin.Command,
        admin_pb2.CommandRequest(command="show_stats", args_json='{"target_type": "moon"}'),
        timeout=5,
    )
    assert detail.type == "InvalidTarget" and "moon" in detail.message
