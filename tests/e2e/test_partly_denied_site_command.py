"""A site command naming one site the caller may operate and one it may not: nothing of it
runs, and the audit log records the whole command as denied.

lead@org_a may operate org_a's site-1, not org_b's site-2; two real site processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flare_admin import Session, new_secure_session
from flare_protocol.errors import AuthorizationError
from provisioning import ProvisionResult
from tests.e2e.jobs_helpers import Cluster
from tests.kit_factory import copy_kit

LEAD_A = "lead@org_a.com"


@pytest.fixture(scope="module")
def cluster(
    provisioned: ProvisionResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with Cluster(provisioned, tmp_path_factory.mktemp("partly-denied")) as c:
        yield c


@pytest.fixture(scope="module")
def lead_a(
    cluster: Cluster, provisioned: ProvisionResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Session]:
    kit = copy_kit(provisioned, LEAD_A, tmp_path_factory.mktemp("lead-kit"))
    with new_secure_session(
        LEAD_A, str(kit), server_address=cluster.server.admin_address
    ) as session:
        yield session


def _audit(cluster: Cluster, command: str) -> list[dict[str, Any]]:
    path = Path(cluster.server.server.workspace) / "logs" / "audit.log"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if (e.get("command"), e.get("name")) == (command, LEAD_A)]


def _told_to_stop(cluster: Cluster, site: str) -> list[str]:
    log = cluster.kits[site] / "workspace" / "logs" / "site.log"
    return [line for line in log.read_text().splitlines() if "asked by the server" in line]


@pytest.mark.parametrize("command", ["restart", "shutdown"])
@pytest.mark.parametrize(
    "targets", [["site-1", "site-2"], ["site-2", "site-1"]], ids=["allowed-first", "denied-first"]
)
def test_a_site_command_naming_an_allowed_and_a_denied_site_runs_on_neither(
    cluster: Cluster, lead_a: Session, command: str, targets: list[str]
) -> None:
    before = {s.name: s.connected_since for s in cluster.session.get_connected_client_list()}
    audited = len(_audit(cluster, command))

    with pytest.raises(AuthorizationError) as info:
        getattr(lead_a, command)("client", targets)

    assert "site-2" in str(info.value) and LEAD_A in str(info.value)
    # A command forwarded to site-1 now still goes through its same connection.
    assert cluster.session.get_working_directory("site-1")
    now = {s.name: s.connected_since for s in cluster.session.get_connected_client_list()}
    assert now == before
    assert all(cluster.sites[s].proc.poll() is None for s in ("site-1", "site-2"))
    assert _told_to_stop(cluster, "site-1") == [] and _told_to_stop(cluster, "site-2") == []
    lines = _audit(cluster, command)
    assert len(lines) == audited + 1
    assert (lines[-1]["result"], lines[-1]["args"]["targets"]) == ("denied", targets)
