"""The Session's rows of the security matrix, and connection failures that never hang."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flare_admin import (
    AuthenticationError,
    CertificateExpired,
    CertificateNotTrusted,
    CertificateNotYetValid,
    KeyFilePermissions,
    KeyMismatch,
    KitError,
    NoConnection,
    UsernameMismatch,
    new_secure_session,
)
from provisioning import provision
from tests import kit_factory
from tests.conftest import TEST_PROJECT_YML
from tests.flare_admin.conftest import ADMIN
from tests.server_harness import ServerThread

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_a_username_that_differs_from_the_certificate_names_both_before_any_call(kits, closed_port):
    with pytest.raises(UsernameMismatch) as info:
        new_secure_session("lead@org_a.com", kits[ADMIN], server_address=closed_port)
    assert "lead@org_a.com" in str(info.value) and ADMIN in str(info.value)
    assert isinstance(info.value, AuthenticationError)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (kit_factory.expired_kit, CertificateExpired),
        (kit_factory.not_yet_valid_kit, CertificateNotYetValid),
        (kit_factory.foreign_ca_kit, CertificateNotTrusted),
        (kit_factory.ca_leaf_kit, KitError),
        (kit_factory.no_eku_kit, KitError),
        (kit_factory.server_auth_only_kit, KitError),
        (kit_factory.wrong_type_kit, KitError),
        (kit_factory.loose_key_kit, KeyFilePermissions),
        (kit_factory.mismatched_key_kit, KeyMismatch),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_an_unusable_kit_is_refused_before_any_network_call(
    provisioned, tmp_path, closed_port, make, error
):
    kit = make(provisioned, ADMIN, tmp_path)
    with pytest.raises(error):
        new_secure_session(ADMIN, kit, server_address=closed_port, timeout=1)


def test_a_site_kit_cannot_open_an_admin_session(kits, closed_port):
    with pytest.raises(KitError, match="admin kit is needed"):
        new_secure_session("site-1", kits["site-1"], server_address=closed_port)


def test_a_kit_of_another_project_fails_the_handshake_with_likely_causes(
    provisioned, server, tmp_path
):
    other = kit_factory.foreign_project(provisioned, tmp_path)
    start = time.monotonic()
    with pytest.raises(NoConnection) as info:
        new_secure_session(
            ADMIN, other.kits[ADMIN], server_address=server.admin_address, timeout=60
        )
    assert time.monotonic() - start < 30  # refused by the handshake, not after the timeout
    assert server.admin_address in str(info.value)
    assert "root CA differs" in str(info.value)


def test_a_revoked_admin_is_refused_by_the_server(tmp_path):
    project = tmp_path / "project.yml"
    project.write_text(TEST_PROJECT_YML)
    first = provision(project, tmp_path / "ws")
    second = kit_factory.revoke_participant(first, ADMIN)
    with ServerThread(Path(second.kits["localhost"]), tmp_path / "server-ws") as srv:
        with pytest.raises(AuthenticationError, match="revoked"):
            new_secure_session(ADMIN, first.kits[ADMIN], server_address=srv.admin_address)
        with new_secure_session(ADMIN, second.kits[ADMIN], server_address=srv.admin_address) as s:
            assert s.info.name == ADMIN


def test_a_closed_port_is_no_connection_naming_the_address(kits, closed_port):
    start = time.monotonic()
    with pytest.raises(NoConnection) as info:
        new_secure_session(ADMIN, kits[ADMIN], server_address=closed_port, timeout=60)
    assert time.monotonic() - start < 30  # refused at once, not after the timeout
    assert closed_port in str(info.value) and info.value.address == closed_port
    assert isinstance(info.value, ConnectionError)


def test_a_server_that_never_answers_is_no_connection_within_the_timeout(kits):
    with socket.socket() as silent:  # accepts TCP, never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(NoConnection) as info:
            new_secure_session(ADMIN, kits[ADMIN], server_address=address, timeout=0.5)
        elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 15  # the timeout is honoured (a generous ceiling: not a benchmark)
    assert address in str(info.value)


def test_a_script_that_never_closes_its_session_exits_promptly(server, kits):
    script = textwrap.dedent(
        f"""
        import threading
        from flare_admin import new_secure_session
        kit, address = {str(kits[ADMIN])!r}, {server.admin_address!r}
        s = new_secure_session({ADMIN!r}, kit, server_address=address)
        s.list_jobs()
        main = threading.main_thread()
        names = [t.name for t in threading.enumerate() if not t.daemon and t is not main]
        print("non-daemon:", names)
        """
    )
    done = subprocess.run(  # a process kept alive by the Session would hit the timeout
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "non-daemon: []" in done.stdout


def test_debug_logs_every_call(open_session, caplog):
    with caplog.at_level("DEBUG", logger="flare_admin"):
        session = open_session(debug=True)
        session.list_jobs()
    assert any("list_jobs took" in r.getMessage() for r in caplog.records)


def test_an_async_script_that_never_closes_its_session_exits_promptly(server, kits):
    script = textwrap.dedent(
        f"""
        import asyncio
        from flare_admin import AsyncSession

        async def main():
            kit, address = {str(kits[ADMIN])!r}, {server.admin_address!r}
            s = await AsyncSession.open({ADMIN!r}, kit, server_address=address)
            await s.list_jobs()

        asyncio.run(main())
        """
    )
    done = subprocess.run(  # a process kept alive by the session would hit the timeout
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
