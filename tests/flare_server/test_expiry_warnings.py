"""Certificates that end within 30 days are announced: server and site logs at start-up,
``get_system_info().expiring``, and the admin shell's banner.

The project is provisioned with ``cert_days=10`` and ``ca_days=20`` (what ``flare provision
--cert-days 10 --ca-days 20`` does), so every certificate in it ends soon.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from flare_admin import new_secure_session
from flare_admin.shell.cli import banner
from flare_admin.shell.context import ShellContext
from flare_admin.shell.theme import THEME
from provisioning import ProvisionResult, provision
from tests.flare_site.runtime_helpers import SiteProcess, site_kit
from tests.server_harness import ServerThread, wait_until

ADMIN = "admin@org_a.com"


@pytest.fixture(scope="module")
def short_lived(project_yml: Path, tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    return provision(project_yml, tmp_path_factory.mktemp("short-ws"), cert_days=10, ca_days=20)


def test_certificates_ending_within_30_days_are_listed_logged_and_shown(short_lived, tmp_path):
    with ServerThread(short_lived.kits["localhost"], tmp_path / "server-ws") as server:
        site = SiteProcess(site_kit(short_lived, tmp_path / "kits", "site-1"), server.site_address)
        try:
            wait_until(lambda: "site-1" in server.call(server.server.registry.names), 20)
            with new_secure_session(
                ADMIN, short_lived.kits[ADMIN], server_address=server.admin_address
            ) as admin:
                info = admin.get_system_info()
                listed = {(e.what, e.name) for e in info.expiring}
                assert listed == {
                    ("server certificate", "localhost"),
                    ("root CA", "testproj root CA"),
                    ("site certificate", "site-1"),
                    ("admin certificate", ADMIN),
                }
                assert all(9 < e.days_left <= 20 for e in info.expiring)
                assert info.expiring[0].describe().endswith("(in 10 day(s))")

                out = io.StringIO()
                console = Console(file=out, width=200, color_system=None, theme=THEME)
                banner(ShellContext(admin, console))
                lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("warning: ")]
                assert len(lines) == 3, out.getvalue()
                assert lines[0].startswith(f"warning: your certificate {ADMIN} (serial ")
                assert "ask the project admin for a new kit" in lines[0]
                assert any(ln.startswith("warning: server certificate localhost") for ln in lines)
                assert any(ln.startswith("warning: root CA testproj root CA") for ln in lines)
        finally:
            site.terminate()
            site.close()
        server_log = (server.server.workspace / "logs" / "server.log").read_text()
    for text in ("server certificate localhost", "root CA testproj", "site certificate site-1"):
        assert any("WARNING" in ln and text in ln for ln in server_log.splitlines()), text
    site_log = site.stderr()
    assert "WARNING" in site_log and "site certificate site-1 (serial" in site_log
    assert "root CA testproj root CA" in site_log


def test_nothing_is_listed_when_every_certificate_has_time_left(provisioned, tmp_path):
    with (
        ServerThread(provisioned.kits["localhost"], tmp_path / "ws") as server,
        new_secure_session(
            ADMIN, provisioned.kits[ADMIN], server_address=server.admin_address
        ) as admin,
    ):
        assert admin.get_system_info().expiring == ()
