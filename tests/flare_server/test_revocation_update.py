"""Revocation at run time: the project CA's signed list (CRL) sent with update_revocations.

A project of its own is provisioned three times (CRL 1: nothing revoked; CRL 2: the
member's certificate revoked and re-issued; CRL 3: site-2's too). Every server here
starts from the first run's server kit, whose list is CRL 1, and gets the newer lists
over the admin channel, as an operator would send ``state/revocations.crl``.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from flare_admin import (
    AuthenticationError,
    AuthorizationError,
    RevocationListRejected,
    new_secure_session,
)
from flare_protocol.kit import REVOCATIONS, STARTUP
from provisioning import ProvisionResult, provision
from provisioning.certs import create_ca
from provisioning.crl import build_crl
from provisioning.state import RevokedRecord
from tests.flare_admin.conftest import make_job
from tests.flare_site.runtime_helpers import SiteProcess, site_kit
from tests.server_harness import ServerThread, wait_until

ADMIN = "admin@org_a.com"
MEMBER = "member@org_b.com"
LEAD = "lead@org_a.com"


@pytest.fixture(scope="module")
def runs(project_yml: Path, tmp_path_factory: pytest.TempPathFactory) -> list[ProvisionResult]:
    """Three provisioning runs of one project: CRL 1 (none), 2 (member), 3 (member, site-2)."""
    ws = tmp_path_factory.mktemp("crl-ws")
    first = provision(project_yml, ws)
    second = provision(project_yml, ws, revoke=[MEMBER])
    third = provision(project_yml, ws, revoke=["site-2"])
    assert [r.crl_number for r in (first, second, third)] == [1, 2, 3]
    return [first, second, third]


def crl(runs: list[ProvisionResult], number: int) -> Path:
    """The CRL of run ``number`` as the server kit of that run carries it."""
    return runs[number - 1].kits["localhost"] / STARTUP / REVOCATIONS


@pytest.fixture
def server(runs: list[ProvisionResult], tmp_path: Path) -> Any:
    with ServerThread(runs[0].kits["localhost"], tmp_path / "server-ws") as srv:
        yield srv


def session(runs: list[ProvisionResult], server: ServerThread, name: str = ADMIN) -> Any:
    return new_secure_session(name, runs[0].kits[name], server_address=server.admin_address)


def log_lines(server: ServerThread, name: str) -> list[str]:
    return (server.server.workspace / "logs" / name).read_text().splitlines()


def test_a_revoked_admin_is_refused_and_its_open_watch_ends_within_5_s(runs, server, tmp_path):
    with session(runs, server) as admin, session(runs, server, MEMBER) as member:
        job_id = admin.submit_job(make_job(tmp_path / "job"))
        watch = member.watch_job(job_id, metrics=False, validations=False)
        assert next(watch).meta.status == "SUBMITTED"
        ended: list[BaseException] = []

        def follow() -> None:
            try:
                for _ in watch:  # changes before the revocation (a waiting reason) go by
                    pass
            except BaseException as exc:
                ended.append(exc)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()

        update = admin.update_revocations(crl(runs, 2))
        sent = time.monotonic()
        assert (update.crl_number, update.previous_crl_number) == (2, 1)
        assert update.revoked == 1 and update.streams_dropped == 1

        follower.join(5)
        assert time.monotonic() - sent < 5 and ended, "the watch did not end within 5 s"
        assert isinstance(ended[0], AuthenticationError) and "revoked" in str(ended[0])
        with pytest.raises(AuthenticationError, match="revoked"):
            member.get_system_info()
        admin.get_system_info()  # the admin's own certificate is not on the list

    rejected = wait_until(
        lambda: [ln for ln in log_lines(server, "server.log") if "rejected" in ln and MEMBER in ln]
    )
    assert "from ipv4:127.0.0.1:" in rejected[0] and "revoked" in rejected[0]
    audit = [json.loads(ln) for ln in log_lines(server, "audit.log")]
    line = next(a for a in audit if a["command"] == "update_revocations")
    assert (line["name"], line["result"]) == (ADMIN, "ok")
    assert line["args"]["crl_number"] == 2 and line["args"]["streams_dropped"] == 1


def test_a_revoked_site_is_dropped_and_cannot_reconnect(runs, server, tmp_path):
    site = SiteProcess(site_kit(runs[0], tmp_path / "kits", "site-2"), server.site_address)
    try:
        wait_until(lambda: "site-2" in server.call(server.server.registry.names), 20)
        with session(runs, server) as admin:
            update = admin.update_revocations(crl(runs, 3))
        assert update.revoked == 2 and update.streams_dropped >= 1
        assert server.call(server.server.registry.names) == []
        # The site keeps dialling (it does not know why it was dropped) and is refused.
        wait_until(lambda: "revoked" in site.stderr() and "UNAUTHENTICATED" in site.stderr(), 10)
        assert site.proc.poll() is None
        assert "site-2" not in server.call(server.server.registry.names)
        assert any(
            "rejected" in ln and "site-2" in ln and "revoked" in ln
            for ln in log_lines(server, "server.log")
        )
    finally:
        site.terminate()
        site.close()


def test_a_list_signed_by_another_ca_is_refused(runs, server):
    now = datetime.now(timezone.utc)
    other = create_ca("impostor", now=now)
    victim = RevokedRecord(serial="1", name=ADMIN, reason="revoked", time=now.isoformat())
    forged = build_crl(other, [victim], number=99, now=now)
    path = Path(server.server.workspace) / "forged.crl"
    path.write_bytes(forged)
    with session(runs, server) as admin:
        with pytest.raises(RevocationListRejected, match="not signed by the project CA") as info:
            admin.update_revocations(path)
        assert info.value.reason == "not_signed_by_project_ca" and info.value.crl_number == 99
        admin.get_system_info()  # nothing changed
    assert server.server.revocations.current.number == 1


def test_an_older_or_equal_list_is_refused(runs, server):
    with session(runs, server) as admin:
        with pytest.raises(RevocationListRejected, match="CRL number 1 is not newer than 1"):
            admin.update_revocations(crl(runs, 1))
        admin.update_revocations(crl(runs, 3))
        with pytest.raises(RevocationListRejected, match="CRL number 3 is not newer than 3"):
            admin.update_revocations(crl(runs, 3))
        with pytest.raises(RevocationListRejected, match="CRL number 2 is not newer than 3") as e:
            admin.update_revocations(crl(runs, 2))
        assert (e.value.reason, e.value.crl_number, e.value.in_force) == ("not_newer", 2, 3)


def test_only_a_project_admin_may_update_the_list(runs, server):
    with session(runs, server, LEAD) as lead:
        with pytest.raises(AuthorizationError, match="only a project_admin"):
            lead.update_revocations(crl(runs, 2))
    assert server.server.revocations.current.number == 1
    audit = [json.loads(ln) for ln in log_lines(server, "audit.log")]
    assert any(a["command"] == "update_revocations" and a["result"] == "denied" for a in audit)


def test_a_restart_keeps_the_newest_list_even_from_an_older_kit(runs, tmp_path):
    workspace = tmp_path / "server-ws"
    with ServerThread(runs[0].kits["localhost"], workspace) as first:
        with session(runs, first) as admin:
            admin.update_revocations(crl(runs, 3))
    # The kit the server restarts from carries CRL 1 (or 2): the workspace's 3 stays.
    for kit_run in (0, 1):
        with ServerThread(runs[kit_run].kits["localhost"], workspace) as again:
            assert again.server.revocations.current.number == 3
            with pytest.raises(AuthenticationError, match="revoked"):
                session(runs, again, MEMBER).get_system_info()
            with session(runs, again) as admin, pytest.raises(RevocationListRejected):
                admin.update_revocations(crl(runs, 2))


def test_a_server_whose_kept_list_is_damaged_refuses_to_start(runs, tmp_path):
    from flare_protocol.errors import KitError

    workspace = tmp_path / "server-ws"
    workspace.mkdir()
    (workspace / "revocations.crl").write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n")
    with pytest.raises(KitError, match="refuses to start"):
        ServerThread(runs[0].kits["localhost"], workspace).start()


def test_the_shell_command_wraps_update_revocations(runs, server):
    import io

    from rich.console import Console

    from flare_admin.shell.commands import REGISTRY
    from flare_admin.shell.context import ShellContext
    from flare_admin.shell.dispatch import Dispatcher, ExitCode
    from flare_admin.shell.theme import THEME

    with session(runs, server) as admin:
        out = io.StringIO()
        ctx = ShellContext(admin, Console(file=out, width=200, color_system=None, theme=THEME))
        code = Dispatcher(ctx, REGISTRY).run_line(f"update_revocations {crl(runs, 2)}")
        assert code is ExitCode.OK
        assert "revocation list 2 in force (was 1): 1 certificate(s) revoked" in out.getvalue()


def test_the_async_session_twin_returns_the_same_typed_result(runs, server):
    import asyncio

    from flare_admin import RevocationUpdate, new_secure_async_session

    async def main() -> tuple[RevocationUpdate, BaseException]:
        kit = runs[0].kits[ADMIN]
        async with await new_secure_async_session(
            ADMIN, kit, server_address=server.admin_address
        ) as admin:
            update = await admin.update_revocations(crl(runs, 2))
            try:
                await admin.update_revocations(crl(runs, 2))
            except RevocationListRejected as exc:
                return update, exc
        raise AssertionError("the same list was accepted twice")

    update, refused = asyncio.run(main())
    assert update == RevocationUpdate(
        revoked=1, crl_number=2, previous_crl_number=1, streams_dropped=0
    )
    assert "CRL number 2 is not newer than 2 in force" in str(refused)


def test_a_kit_of_an_earlier_release_keeps_its_revoked_json_and_takes_a_signed_list(runs, tmp_path):
    from tests import kit_factory

    # The second run's server kit as an earlier release wrote it: revoked.json, no CRL.
    kit = kit_factory.copy_kit(runs[1], "localhost", tmp_path / "kits")
    (kit / STARTUP / REVOCATIONS).unlink()
    kit_factory.resign_kit(kit, kit_factory.project_ca(runs[1]))
    with ServerThread(kit, tmp_path / "ws") as old:
        assert old.server.revocations.current.number == 0
        with pytest.raises(AuthenticationError, match="revoked"):
            session(runs, old, MEMBER).get_system_info()  # from revoked.json
        with session(runs, old) as admin:
            update = admin.update_revocations(crl(runs, 1))  # any signed list is newer than none
        # CRL 1 revokes nothing, but revoked.json's serials are never dropped.
        assert (update.crl_number, update.previous_crl_number, update.revoked) == (1, 0, 1)
        with pytest.raises(AuthenticationError, match="revoked"):
            session(runs, old, MEMBER).get_system_info()
