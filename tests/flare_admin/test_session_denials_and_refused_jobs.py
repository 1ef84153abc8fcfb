"""Through the Session against one running server: what a role may not do to another's
job is refused and audited as denied, and a job the server must not accept (too many
archive entries, a bad workflow config) is refused naming why."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flare_admin import Session, new_secure_session
from flare_protocol.errors import AuthorizationError, InvalidJobDefinition
from provisioning import ProvisionResult
from tests.flare_admin.conftest import finish_with_result, make_job
from tests.kit_factory import copy_kit
from tests.server_harness import ServerThread

ADMIN = "admin@org_a.com"
LEAD_A = "lead@org_a.com"
LEAD_B = "lead@org_b.com"
MEMBER_B = "member@org_b.com"


@pytest.fixture(scope="module")
def server(
    provisioned: ProvisionResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """One server for the module; no site connects, so submitted jobs stay SUBMITTED."""
    with ServerThread(
        Path(provisioned.kits["localhost"]), tmp_path_factory.mktemp("denials") / "ws"
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def sessions(
    server: ServerThread, provisioned: ProvisionResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Session]]:
    """``sessions[name]``: an open Session of that admin, from a private copy of its kit."""
    kits = tmp_path_factory.mktemp("admin-kits")
    opened = {
        name: new_secure_session(
            name, str(copy_kit(provisioned, name, kits)), server_address=server.admin_address
        )
        for name in (ADMIN, LEAD_A, LEAD_B, MEMBER_B)
    }
    yield opened
    for session in opened.values():
        session.close()


def _job_of(session: Session, tmp_path: Path, name: str = "hello") -> str:
    return session.submit_job(str(make_job(tmp_path / name, name=name)))


def _audit(server: ServerThread, command: str, name: str, job_id: str) -> list[dict[str, Any]]:
    path = Path(server.server.workspace) / "logs" / "audit.log"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        e
        for e in lines
        if (e.get("command"), e.get("name"), e.get("job_id")) == (command, name, job_id)
    ]


def _refused_submits(server: ServerThread) -> int:
    """How many submissions the server refused as an InvalidJobDefinition (audited)."""
    path = Path(server.server.workspace) / "logs" / "audit.log"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(
        1
        for e in lines
        if (e.get("command"), e.get("result")) == ("submit_job", "InvalidJobDefinition")
    )


def _assert_denied_and_audited(
    server: ServerThread,
    attempt: Callable[[], object],
    command: str,
    name: str,
    role: str,
    job_id: str,
) -> None:
    with pytest.raises(AuthorizationError) as info:
        attempt()
    assert name in str(info.value) and job_id in str(info.value)
    (line,) = _audit(server, command, name, job_id)
    assert (line["result"], line["role"]) == ("denied", role)


# -- row 7: role escalation ------------------------------------------------------------------


def test_a_members_delete_of_anothers_job_is_denied_and_audited(
    server: ServerThread, sessions: dict[str, Session], tmp_path: Path
) -> None:
    job_id = _job_of(sessions[LEAD_B], tmp_path)
    member = sessions[MEMBER_B]
    _assert_denied_and_audited(
        server, lambda: member.delete_job(job_id), "delete_job", MEMBER_B, "member", job_id
    )
    assert member.get_job_meta(job_id)["status"] == "SUBMITTED"  # still there, untouched


@pytest.mark.parametrize(
    ("action", "command"),
    [
        ("abort", "abort_job"),
        ("delete", "delete_job"),
        ("clone", "clone_job"),
        ("download", "download_job_result"),
    ],
)
def test_a_leads_action_on_another_orgs_job_is_denied_and_audited(
    server: ServerThread,
    sessions: dict[str, Session],
    tmp_path: Path,
    action: str,
    command: str,
) -> None:
    job_id = _job_of(sessions[LEAD_B], tmp_path)
    lead_a = sessions[LEAD_A]
    attempts: dict[str, Callable[[], object]] = {
        "abort": lambda: lead_a.abort_job(job_id),
        "delete": lambda: lead_a.delete_job(job_id),
        "clone": lambda: lead_a.clone_job(job_id),
        "download": lambda: lead_a.download_job_result(job_id, str(tmp_path / "dl")),
    }
    (tmp_path / "dl").mkdir()
    jobs_before = {m.job_id for m in lead_a.list_jobs()}
    _assert_denied_and_audited(server, attempts[action], command, LEAD_A, "lead", job_id)
    assert lead_a.get_job_meta(job_id)["status"] == "SUBMITTED"
    assert {m.job_id for m in lead_a.list_jobs()} == jobs_before  # no clone, no delete
    assert not any((tmp_path / "dl").iterdir())  # nothing downloaded


# -- row 13: rights checked where another job's data is read ---------------------------------


READERS: dict[str, tuple[Callable[[Session, str], object], str]] = {
    "validations": (lambda s, j: s.get_validations(j), "job_validations"),
    "params": (lambda s, j: s.get_job_params(j), "job_params"),
    "messages": (lambda s, j: s.get_job_messages(j), "job_messages"),
    "summary": (lambda s, j: s.get_job_summary(j), "job_summary"),
}


@pytest.fixture(scope="module")
def finished_job_of_org_a(
    server: ServerThread, sessions: dict[str, Session], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A finished job of lead@org_a with a summary and one row of each kind."""
    job_id = _job_of(sessions[LEAD_A], tmp_path_factory.mktemp("org-a-job"))
    row = {"site": "site-1", "round": 0, "time": 1.0}
    finish_with_result(
        server,
        job_id,
        {
            "summary.json": json.dumps({"workflow": "fedavg", "rounds_completed": 1}).encode(),
            "validations.jsonl": json.dumps({**row, "metrics": {"acc": 0.9}}).encode() + b"\n",
            "params.jsonl": json.dumps(
                {**row, "kind": "param", "key": "lr", "value": "0.1", "step": None}
            ).encode()
            + b"\n",
        },
    )
    return job_id


@pytest.mark.parametrize("what", list(READERS))
def test_another_orgs_lead_cannot_read_a_jobs_results(
    server: ServerThread, sessions: dict[str, Session], finished_job_of_org_a: str, what: str
) -> None:
    read, command = READERS[what]
    job_id = finished_job_of_org_a
    _assert_denied_and_audited(
        server, lambda: read(sessions[LEAD_B], job_id), command, LEAD_B, "lead", job_id
    )
    read(sessions[LEAD_A], job_id)  # the owner reads it: the refusal is about rights


# -- row 11: the entry-count cap through a submission -----------------------------------------


def test_an_archive_with_too_many_entries_is_refused_naming_the_cap(
    server: ServerThread, sessions: dict[str, Session], tmp_path: Path
) -> None:
    cap = server.settings.max_entries
    folder = make_job(tmp_path / "many")
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, f"many/{path.relative_to(folder)}")
        for i in range(cap + 1 - 4):
            zf.writestr(f"many/app/custom/f{i}.txt", b"")
    before = {m.job_id for m in sessions[ADMIN].list_jobs()}
    refused = _refused_submits(server)
    with pytest.raises(InvalidJobDefinition) as info:
        sessions[ADMIN].submit_job(str(archive))
    assert f"archive has {cap + 1} entries; at most {cap} are allowed" in str(info.value)
    assert _refused_submits(server) == refused + 1  # the server refused it, not the Session
    assert {m.job_id for m in sessions[ADMIN].list_jobs()} == before


# -- row 15: a bad workflow config reaches the server and is refused naming file and field ----


SERVER_CONFIG = "app/config/config_fed_server.json"
CLIENT_CONFIG = "app/config/config_fed_client.json"
BAD_CONFIGS: dict[str, tuple[str, object, str]] = {
    "server num_rounds 0": (
        SERVER_CONFIG,
        {"workflow": "fedavg", "num_rounds": 0},
        "field 'num_rounds' must be >= 1, got 0",
    ),
    "server unknown workflow": (
        SERVER_CONFIG,
        {"workflow": "fedsgd", "num_rounds": 1},
        "field 'workflow' must be one of",
    ),
    "server unknown field": (
        SERVER_CONFIG,
        {"workflow": "fedavg", "num_rounds": 1, "rounds": 3},
        "unknown field 'rounds'",
    ),
    "server not json": (SERVER_CONFIG, "{workflow", "not valid JSON"),
    "client unknown executor": (CLIENT_CONFIG, {"executor": "docker"}, "field 'executor'"),
    "client script outside the app": (
        CLIENT_CONFIG,
        {"executor": "script", "script": "../../bin/evil.py"},
        "field 'script'",
    ),
    "client reserved env": (
        CLIENT_CONFIG,
        {"executor": "script", "script": "custom/train.py", "env": {"FLARE_IPC_TOKEN": "x"}},
        "field 'env'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_workflow_config_is_refused_by_the_server_naming_file_and_field(
    server: ServerThread, sessions: dict[str, Session], tmp_path: Path, case: str
) -> None:
    file, config, needle = BAD_CONFIGS[case]
    folder = make_job(tmp_path / "bad")
    (folder / file).write_text(config if isinstance(config, str) else json.dumps(config))
    before = {m.job_id for m in sessions[ADMIN].list_jobs()}
    refused = _refused_submits(server)
    with pytest.raises(InvalidJobDefinition) as info:
        sessions[ADMIN].submit_job(str(folder))
    message = str(info.value)
    assert file in message and needle in message, message
    assert _refused_submits(server) == refused + 1  # the server refused it, not the Session
    assert {m.job_id for m in sessions[ADMIN].list_jobs()} == before
