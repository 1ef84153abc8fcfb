"""Authorization: the policy table alone, and every role through a real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from flare_protocol._generated import admin_pb2
from flare_protocol.errors import AuthorizationError, KitError
from flare_protocol.identity import Identity, ParticipantType, Role
from flare_server.authz import DEFAULT_POLICY, Policy, Principal, Resource, Right, Scope
from tests.flare_server.conftest import job_zip
from tests.flare_server.test_server_jobs import error_of, submit
from tests.server_harness import ServerThread, admin_stub


def _ident(name: str, org: str, role: Role) -> Identity:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return Identity(name, org, ParticipantType.ADMIN, role, 1, now, now)


LEAD_A = _ident("lead@org_a.com", "org_a", Role.LEAD)
ORGADMIN_A = _ident("orgadmin@org_a.com", "org_a", Role.ORG_ADMIN)
MEMBER_B = _ident("member@org_b.com", "org_b", Role.MEMBER)
ADMIN_A = _ident("admin@org_a.com", "org_a", Role.PROJECT_ADMIN)
JOB_BY_LEAD_A = Resource.job("j1", "lead@org_a.com", "org_a")
JOB_BY_LEAD_B = Resource.job("j2", "lead@org_b.com", "org_b")


# -- the table ------------------------------------------------------------------------


def test_default_table_is_nvidia_flares_default_policy():
    expected = {
        Role.PROJECT_ADMIN: dict.fromkeys(Right, Scope.ANY),
        Role.ORG_ADMIN: {
            Right.SUBMIT_JOB: Scope.NONE,
            Right.CLONE_JOB: Scope.NONE,
            Right.MANAGE_JOB: Scope.ORG,
            Right.DOWNLOAD_JOB: Scope.ORG,
            Right.VIEW: Scope.ANY,
            Right.OPERATE: Scope.ORG,
            Right.SHELL_COMMANDS: Scope.ORG,
        },
        Role.LEAD: {
            Right.SUBMIT_JOB: Scope.ANY,
            Right.CLONE_JOB: Scope.OWN,
            Right.MANAGE_JOB: Scope.OWN,
            Right.DOWNLOAD_JOB: Scope.OWN,
            Right.VIEW: Scope.ANY,
            Right.OPERATE: Scope.ORG,
            Right.SHELL_COMMANDS: Scope.NONE,
        },
        Role.MEMBER: {**dict.fromkeys(Right, Scope.NONE), Right.VIEW: Scope.ANY},
    }
    assert {r: dict(row) for r, row in DEFAULT_POLICY.items()} == expected


@pytest.mark.parametrize(
    ("who", "right", "resource", "allowed"),
    [
        (ADMIN_A, Right.MANAGE_JOB, JOB_BY_LEAD_B, True),
        (ADMIN_A, Right.OPERATE, Resource.server(), True),
        (LEAD_A, Right.SUBMIT_JOB, Resource("none"), True),
        (LEAD_A, Right.MANAGE_JOB, JOB_BY_LEAD_A, True),
        (LEAD_A, Right.MANAGE_JOB, JOB_BY_LEAD_B, False),
        (LEAD_A, Right.DOWNLOAD_JOB, JOB_BY_LEAD_B, False),
        (LEAD_A, Right.CLONE_JOB, JOB_BY_LEAD_A, True),
        (LEAD_A, Right.VIEW, JOB_BY_LEAD_B, True),
        (LEAD_A, Right.OPERATE, Resource.site("site-1", "org_a"), True),
        (LEAD_A, Right.OPERATE, Resource.site("site-2", "org_b"), False),
        (LEAD_A, Right.OPERATE, Resource.server(), False),
        (ORGADMIN_A, Right.SUBMIT_JOB, Resource("none"), False),
        (ORGADMIN_A, Right.CLONE_JOB, JOB_BY_LEAD_A, False),
        (ORGADMIN_A, Right.MANAGE_JOB, JOB_BY_LEAD_A, True),
        (ORGADMIN_A, Right.MANAGE_JOB, JOB_BY_LEAD_B, False),
        (ORGADMIN_A, Right.DOWNLOAD_JOB, JOB_BY_LEAD_A, True),
        (ORGADMIN_A, Right.SHELL_COMMANDS, Resource.site("site-1", "org_a"), True),
        (ORGADMIN_A, Right.SHELL_COMMANDS, Resource.server(), False),
        (MEMBER_B, Right.VIEW, JOB_BY_LEAD_B, True),
        (MEMBER_B, Right.MANAGE_JOB, JOB_BY_LEAD_B, False),
        (MEMBER_B, Right.SUBMIT_JOB, Resource("none"), False),
    ],
)
def test_policy_decides_by_role_right_and_ownership(who, right, resource, allowed):
    assert Policy.default().allows(who, right, resource) is allowed


def test_a_same_named_admin_of_another_org_does_not_own_the_job():
    impostor = _ident("lead@org_a.com", "org_b", Role.LEAD)
    assert not Policy.default().allows(impostor, Right.MANAGE_JOB, JOB_BY_LEAD_A)


def test_denial_names_who_what_which_job_and_why():
    with pytest.raises(AuthorizationError) as info:
        Policy.default().require(
            LEAD_A, Right.MANAGE_JOB, JOB_BY_LEAD_B, action="abort", job_id="j2"
        )
    msg = str(info.value)
    assert "lead@org_a.com" in msg and "abort" in msg and "job j2" in msg
    assert "only its own jobs" in msg and info.value.job_id == "j2"


def _doc(**changes):
    roles = {
        r.value: {k.value: v.value for k, v in row.items()} for r, row in DEFAULT_POLICY.items()
    }
    for role, row in changes.items():
        roles[role] = row
    return {"format": 1, "roles": roles}


def test_a_jobs_recorded_submitter_is_judged_like_the_caller_was():
    meta = {"submitter_name": "lead@org_a.com", "submitter_org": "org_a", "submitter_role": "lead"}
    lead_a = Principal.submitter_of(meta)
    policy = Policy.default()
    assert policy.allows(lead_a, Right.DOWNLOAD_JOB, JOB_BY_LEAD_A)
    assert not policy.allows(lead_a, Right.DOWNLOAD_JOB, JOB_BY_LEAD_B)
    forged = Principal.submitter_of({**meta, "submitter_role": "superuser"})
    assert forged.role is None and not policy.allows(forged, Right.VIEW)


def test_the_default_file_written_by_provisioning_is_the_default_table(provisioned, tmp_path):
    default = Path(provisioned.kits["localhost"]) / "local" / "authorization.json.default"
    shutil.copy(default, tmp_path / "authorization.json")
    assert {r: dict(row) for r, row in Policy.for_kit(tmp_path).table.items()} == {
        r: dict(row) for r, row in DEFAULT_POLICY.items()
    }


def test_override_file_replaces_the_table(tmp_path):
    doc = _doc(member={**_doc()["roles"]["member"], "submit_job": "any"})
    (tmp_path / "authorization.json").write_text(json.dumps(doc))
    policy = Policy.for_kit(tmp_path)
    assert policy.allows(MEMBER_B, Right.SUBMIT_JOB)
    assert policy.source.endswith("authorization.json")


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("{not json", "not readable JSON"),
        (json.dumps({"format": 2, "roles": {}}), "'format' must be 1"),
        (json.dumps(_doc(superuser={})), "unknown role 'superuser'"),
        (json.dumps(_doc(lead={**_doc()["roles"]["lead"], "fly": "any"})), "unknown right 'fly'"),
        (json.dumps(_doc(lead={**_doc()["roles"]["lead"], "view": "all"})), "unknown scope 'all'"),
        (json.dumps(_doc(lead={"view": "any"})), "does not set submit_job"),
        (json.dumps({"format": 1, "roles": {"lead": _doc()["roles"]["lead"]}}), "roles missing"),
    ],
)
def test_a_bad_override_file_is_refused_naming_the_problem(tmp_path, doc, needle):
    (tmp_path / "authorization.json").write_text(doc)
    with pytest.raises(KitError, match=needle) as info:
        Policy.for_kit(tmp_path)
    assert "authorization.json" in str(info.value)


def test_a_bad_override_file_stops_server_start(provisioned, tmp_path):
    kit = tmp_path / "kit"
    shutil.copytree(provisioned.kits["localhost"], kit, symlinks=True)
    (kit / "local" / "authorization.json").write_text('{"format": 1, "roles": {"root": {}}}')
    with pytest.raises(KitError, match="unknown role 'root'"):
        ServerThread(kit, tmp_path / "ws").start()


# -- through the real server -------------------------------------------------------------


@pytest.fixture
def stubs(server, kits):
    opened = {}
    for name in (
        "admin@org_a.com",
        "lead@org_a.com",
        "lead@org_b.com",
        "orgadmin@org_a.com",
        "member@org_b.com",
    ):
        stub, channel = admin_stub(kits[name], server.admin_address)
        opened[name] = (stub, channel)
    yield {name: stub for name, (stub, _) in opened.items()}
    for _, channel in opened.values():
        channel.close()


def _audit(server) -> list[dict]:
    path = server.server.workspace / "logs" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _denied(call, *args, **kwargs):
    code, detail = error_of(call, *args, **kwargs)
    assert (code, detail.type) == (grpc.StatusCode.PERMISSION_DENIED, "AuthorizationError")
    return detail


def test_member_may_view_but_not_abort_and_the_attempt_is_audited(stubs, server):
    job_id = submit(stubs["lead@org_b.com"], job_zip(min_clients=2))
    member = stubs["member@org_b.com"]
    member.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5)
    detail = _denied(member.AbortJob, admin_pb2.JobRequest(job_id=job_id), timeout=5)
    assert "member@org_b.com" in detail.message and job_id in detail.message
    entry = [e for e in _audit(server) if e["command"] == "abort_job"][-1]
    assert (entry["result"], entry["name"], entry["role"], entry["job_id"]) == (
        "denied",
        "member@org_b.com",
        "member",
        job_id,
    )
    assert (
        json.loads(member.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5).meta_json)[
            "status"
        ]
        == "SUBMITTED"
    )


def test_member_may_not_submit_or_delete(stubs):
    from tests.flare_server.test_server_jobs import chunks

    _denied(stubs["member@org_b.com"].SubmitJob, chunks(job_zip()), timeout=5)
    job_id = submit(stubs["lead@org_b.com"], job_zip(min_clients=2))
    _denied(stubs["member@org_b.com"].DeleteJob, admin_pb2.JobRequest(job_id=job_id), timeout=5)


def test_lead_may_not_touch_another_orgs_job(stubs):
    job_id = submit(stubs["lead@org_b.com"], job_zip(min_clients=2))
    lead_a = stubs["lead@org_a.com"]
    req = admin_pb2.JobRequest(job_id=job_id)
    _denied(lead_a.AbortJob, req, timeout=5)
    _denied(lead_a.DeleteJob, req, timeout=5)
    _denied(lead_a.CloneJob, admin_pb2.CloneJobRequest(job_id=job_id), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        next(lead_a.DownloadJobResult(req, timeout=5))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    lead_a.GetJobMeta(req, timeout=5)  # viewing is allowed


def test_lead_manages_and_clones_its_own_job(stubs):
    lead_a = stubs["lead@org_a.com"]
    job_id = submit(lead_a, job_zip(min_clients=2))
    clone = lead_a.CloneJob(admin_pb2.CloneJobRequest(job_id=job_id), timeout=5)
    meta = json.loads(
        lead_a.AbortJob(admin_pb2.JobRequest(job_id=clone.job_id), timeout=5).meta_json
    )
    assert meta["status"] == "FINISHED:ABORTED"


def test_org_admin_manages_its_orgs_jobs_only_and_cannot_submit(stubs):
    from tests.flare_server.test_server_jobs import chunks

    org_admin = stubs["orgadmin@org_a.com"]
    own_org = submit(stubs["lead@org_a.com"], job_zip(min_clients=2))
    other_org = submit(stubs["lead@org_b.com"], job_zip(min_clients=2))
    org_admin.AbortJob(admin_pb2.JobRequest(job_id=own_org), timeout=5)
    _denied(org_admin.AbortJob, admin_pb2.JobRequest(job_id=other_org), timeout=5)
    _denied(org_admin.SubmitJob, chunks(job_zip()), timeout=5)
    _denied(org_admin.CloneJob, admin_pb2.CloneJobRequest(job_id=own_org), timeout=5)


def test_project_admin_manages_every_job(stubs):
    job_id = submit(stubs["lead@org_b.com"], job_zip(min_clients=2))
    stubs["admin@org_a.com"].AbortJob(admin_pb2.JobRequest(job_id=job_id), timeout=5)
    stubs["admin@org_a.com"].DeleteJob(admin_pb2.JobRequest(job_id=job_id), timeout=5)


def test_only_project_admin_operates_the_server(stubs):
    args = json.dumps({"target_type": "server"})
    for name in ("lead@org_a.com", "orgadmin@org_a.com", "member@org_b.com"):
        _denied(
            stubs[name].Command,
            admin_pb2.CommandRequest(command="shutdown", args_json=args),
            timeout=5,
        )
    for name in ("lead@org_a.com", "orgadmin@org_a.com", "member@org_b.com"):
        _denied(
            stubs[name].Command, admin_pb2.CommandRequest(command="ls", args_json="{}"), timeout=5
        )


def test_server_kit_override_is_applied(provisioned, kits, tmp_path):
    kit = tmp_path / "kit"
    shutil.copytree(provisioned.kits["localhost"], kit, symlinks=True)
    doc = _doc(member={**_doc()["roles"]["member"], "submit_job": "any"})
    (kit / "local" / "authorization.json").write_text(json.dumps(doc))
    with ServerThread(kit, tmp_path / "ws") as srv:
        stub, channel = admin_stub(kits["member@org_b.com"], srv.admin_address)
        with channel:
            assert submit(stub, job_zip(min_clients=2))
