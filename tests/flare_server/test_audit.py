"""The audit log's line format, without a server."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from flare_protocol.identity import Identity, ParticipantType, Role
from flare_server.audit import AuditLog

LEAD = Identity(
    "lead@org_a.com",
    "org_a",
    ParticipantType.ADMIN,
    Role.LEAD,
    7,
    datetime.now(timezone.utc),
    datetime.now(timezone.utc),
)


def test_one_json_line_per_record_with_who_what_and_result(tmp_path):
    log = AuditLog(tmp_path / "logs" / "audit.log")
    log.record(
        peer="ipv4:127.0.0.1:5",
        identity=LEAD,
        command="abort_job",
        args={},
        result="denied",
        job_id="j1",
    )
    log.record(peer="ipv4:127.0.0.1:5", identity=LEAD, command="grep", args={"pattern": "x" * 2000})
    log.close()
    first, second = (
        json.loads(line) for line in (tmp_path / "logs" / "audit.log").read_text().splitlines()
    )
    assert {
        k: first[k] for k in ("peer", "name", "org", "role", "command", "result", "job_id")
    } == {
        "peer": "ipv4:127.0.0.1:5",
        "name": "lead@org_a.com",
        "org": "org_a",
        "role": "lead",
        "command": "abort_job",
        "result": "denied",
        "job_id": "j1",
    }
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second["result"] == "ok" and len(second["args"]["pattern"]) == 513


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_logged_not_raised(caplog):
    log = AuditLog(Path("/dev/full"))
    with caplog.at_level(logging.ERROR, logger="flare_server.audit"):
        log.record(peer="p", identity=LEAD, command="list_jobs")
        log.close()
    assert "cannot write the audit log" in caplog.text
