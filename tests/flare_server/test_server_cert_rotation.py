"""Server certificate rotation without a restart (what SIGHUP runs: ``Server.reload_kit``).

The server runs from a copy of its kit; the test copies a re-provisioned server kit's
``startup/`` files over it (a new key and certificate from the same CA), as an operator
would, and reloads. New TLS connections must see the new certificate; a Session opened
before keeps working on its connection.
"""

from __future__ import annotations

import shutil
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from flare_admin import new_secure_session
from flare_protocol.kit import STARTUP
from provisioning import ProvisionResult, provision
from tests import kit_factory
from tests.server_harness import ServerThread, wait_until

ADMIN = "admin@org_a.com"


@pytest.fixture(scope="module")
def runs(project_yml: Path, tmp_path_factory: pytest.TempPathFactory) -> list[ProvisionResult]:
    """The project, then the server re-issued a new key and certificate (same CA)."""
    ws = tmp_path_factory.mktemp("rotate-ws")
    return [provision(project_yml, ws), provision(project_yml, ws, revoke=["localhost"])]


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def served_serial(address: str, client_kit: Path) -> int:
    """The serial of the certificate the server presents to a new TLS connection."""
    host, port = address.rsplit(":", 1)
    startup = client_kit / STARTUP
    context = ssl.create_default_context(cafile=str(startup / "rootCA.pem"))
    context.check_hostname = False
    context.load_cert_chain(startup / "client.crt", startup / "client.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_new_certificate_is_served_to_new_connections_and_old_ones_keep_working(runs, tmp_path):
    first, second = runs
    kit = kit_factory.copy_kit(first, "localhost", tmp_path / "kits")
    old_serial = serial_of(kit / STARTUP / "server.crt")
    new_serial = serial_of(second.kits["localhost"] / STARTUP / "server.crt")
    assert old_serial != new_serial
    admin_kit = first.kits[ADMIN]
    with ServerThread(kit, tmp_path / "ws") as server:
        assert served_serial(server.admin_address, admin_kit) == old_serial
        with new_secure_session(ADMIN, admin_kit, server_address=server.admin_address) as old:
            old.get_system_info()
            for f in (second.kits["localhost"] / STARTUP).iterdir():
                shutil.copy2(f, kit / STARTUP / f.name)
            server.call(server.server.reload_kit)

            assert server.server.certificate.serial == new_serial
            assert served_serial(server.admin_address, admin_kit) == new_serial
            assert served_serial(server.site_address, first.kits["site-1"]) == new_serial
            with new_secure_session(ADMIN, admin_kit, server_address=server.admin_address) as fresh:
                fresh.get_system_info()
            old.get_system_info()  # the connection made before still works
        log = server.server.workspace / "logs" / "server.log"
        assert f"server certificate rotated: new connections get serial {new_serial:x}" in (
            log.read_text()
        )


def test_an_unusable_certificate_is_refused_and_the_old_one_kept(runs, tmp_path):
    first, _ = runs
    kit = kit_factory.copy_kit(first, "localhost", tmp_path / "kits")
    old_serial = serial_of(kit / STARTUP / "server.crt")
    with ServerThread(kit, tmp_path / "ws") as server:
        # A certificate that is not the server key's (a site's): refused, naming the files.
        shutil.copy2(first.kits["site-1"] / STARTUP / "client.crt", kit / STARTUP / "server.crt")
        server.call(server.server.reload_kit)
        assert server.server.certificate.serial == old_serial
        assert served_serial(server.admin_address, first.kits[ADMIN]) == old_serial
        log = server.server.workspace / "logs" / "server.log"
        line = wait_until(
            lambda: next((ln for ln in log.read_text().splitlines() if "not rotated" in ln), None)
        )
        assert "ERROR" in line and str(kit / STARTUP / "server.key") in line


def test_sighup_rotates_the_certificate_of_a_server_process(runs, tmp_path):
    import os
    import signal

    from tests.server_harness import ServerProcess

    first, second = runs
    kit = kit_factory.copy_kit(first, "localhost", tmp_path / "kits")
    new_serial = serial_of(second.kits["localhost"] / STARTUP / "server.crt")
    with ServerProcess(kit, tmp_path / "ws") as server:
        for f in (second.kits["localhost"] / STARTUP).iterdir():
            shutil.copy2(f, kit / STARTUP / f.name)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(
            lambda: "server certificate rotated" in (tmp_path / "ws/logs/server.log").read_text(),
            10,
        )
        assert served_serial(server.admin_address, first.kits[ADMIN]) == new_serial
        with new_secure_session(ADMIN, first.kits[ADMIN], server_address=server.admin_address):
            pass
