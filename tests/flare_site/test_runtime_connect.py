"""`flare site start` as a real process against the real server: connect, stay, come back, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flare_admin import new_secure_session
from flare_protocol.site_topics import SiteCommand
from flare_site.cli import main
from tests.flare_site.runtime_helpers import SiteProcess, site_kit
from tests.kit_factory import copy_kit, loose_key_kit
from tests.server_harness import ServerThread, wait_until

ADMIN = "admin@org_a.com"


@pytest.fixture
def server_kit(provisioned: Any) -> Path:
    return Path(provisioned.kits["localhost"])


@pytest.fixture
def server(server_kit: Path, tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(
        server_kit, tmp_path / "server-ws", heartbeat_interval=0.2, heartbeat_timeout=1.0
    ) as srv:
        yield srv


@pytest.fixture
def kit(provisioned: Any, tmp_path: Path) -> Path:
    return site_kit(provisioned, tmp_path / "kits")


def registry(srv: ServerThread) -> Any:
    return srv.server.registry


def connected(srv: ServerThread) -> list[str]:
    return srv.call(lambda: srv.server.registry.names())  # type: ignore[no-any-return]


def up(site: SiteProcess, srv: ServerThread) -> None:
    """Registered on the server, and the site has logged it (its Channel is open)."""
    wait_until(lambda: "site-1" in connected(srv), timeout=15)
    wait_until(lambda: "registered with" in site.stderr(), timeout=5)


def test_site_process_registers_and_heartbeats(server: ServerThread, kit: Path) -> None:
    with SiteProcess(kit, server.site_address) as site:
        wait_until(lambda: "site-1" in connected(server), timeout=15)
        first = server.call(lambda: registry(server).get("site-1").last_heartbeat)
        time.sleep(0.6)  # three heartbeat intervals
        snapshot = server.call(lambda: server.server.registry.get("site-1"))
        assert snapshot.last_heartbeat > first
        assert snapshot.resources == {"max_jobs": "1"}
        assert site.proc.poll() is None


def test_site_appears_in_the_admin_connected_client_list(
    server: ServerThread, kit: Path, kits_dir: dict[str, Path]
) -> None:
    with SiteProcess(kit, server.site_address):
        wait_until(lambda: "site-1" in connected(server), timeout=15)
        with new_secure_session(
            ADMIN, kits_dir[ADMIN], server_address=server.admin_address
        ) as session:
            names = [c.name for c in session.get_connected_client_list()]
    assert names == ["site-1"]


def test_site_reconnects_after_a_server_restart(
    server_kit: Path, kit: Path, tmp_path: Path
) -> None:
    first = ServerThread(server_kit, tmp_path / "ws", heartbeat_interval=0.2).start()
    port = first.server.site_port
    with SiteProcess(kit, first.site_address) as site:
        try:
            up(site, first)
        finally:
            first.stop()
        time.sleep(0.8)  # the site keeps dialling a closed port meanwhile
        with ServerThread(
            server_kit, tmp_path / "ws", heartbeat_interval=0.2, fed_learn_port=port
        ) as second:
            wait_until(lambda: "site-1" in connected(second), timeout=10)
            wait_until(lambda: site.stderr().count("registered with") == 2, timeout=5)
        log = site.stderr()
    assert "connection to" in log and "lost" in log
    assert "Connection refused" in log or "UNAVAILABLE" in log


def test_site_waits_for_a_server_that_is_not_up_yet(
    server_kit: Path, kit: Path, tmp_path: Path
) -> None:
    probe = ServerThread(server_kit, tmp_path / "probe").start()
    port = probe.server.site_port
    probe.stop()
    with SiteProcess(kit, f"127.0.0.1:{port}") as site:
        time.sleep(0.8)
        assert site.proc.poll() is None
        with ServerThread(server_kit, tmp_path / "ws", fed_learn_port=port) as srv:
            wait_until(lambda: "site-1" in connected(srv), timeout=10)


def test_sigterm_stops_the_site_cleanly(server: ServerThread, kit: Path) -> None:
    with SiteProcess(kit, server.site_address) as site:
        up(site, server)
        code = site.terminate(timeout=30)  # a site that does not stop fails here
        wait_until(lambda: "site-1" not in connected(server), timeout=15)
    assert code == 0
    assert "stopped" in site.stderr()


def test_a_restart_command_restarts_the_site_process_in_place(
    server: ServerThread, kit: Path
) -> None:
    with SiteProcess(kit, server.site_address) as site:
        up(site, server)
        request = registry(server).request("site-1", SiteCommand("restart"), timeout=5)
        reply = server.call(request)
        wait_until(lambda: site.stderr().count("registered with") == 2, timeout=15)
        assert site.proc.poll() is None
        assert site.terminate() == 0
    assert reply.result == "restarting"
    assert "site site-1 restarting" in site.stderr()


def test_site_log_is_written_in_the_workspace(server: ServerThread, kit: Path) -> None:
    with SiteProcess(kit, server.site_address) as site:
        up(site, server)
        site.terminate()
    text = (kit / "workspace" / "logs" / "site.log").read_text()
    assert "registered with" in text


def test_a_tampered_kit_is_refused_before_any_connection(
    provisioned: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = copy_kit(provisioned, "site-1", tmp_path)
    readme = kit / "startup" / "README.md"
    readme.write_text(readme.read_text() + "\nedited\n")
    code = main(["start", str(kit), "--server", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ")
    assert "README.md" in err
    assert not (kit / "workspace").exists()


def test_a_loose_key_mode_is_refused_naming_the_fix(
    provisioned: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = loose_key_kit(provisioned, "site-1", tmp_path)
    code = main(["start", str(kit), "--server", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "client.key" in err and "chmod 600" in err


def test_a_tampered_kit_stops_the_real_process_with_one_clear_line(
    provisioned: Any, tmp_path: Path
) -> None:
    kit = copy_kit(provisioned, "site-1", tmp_path)
    (kit / "startup" / "extra.txt").write_text("not signed")
    with SiteProcess(kit, "127.0.0.1:1") as site:
        code = site.proc.wait(20)
        err = site.stderr()
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error: ")]
    assert "extra.txt" in err


def test_an_admin_kit_is_not_accepted_as_a_site_kit(
    provisioned: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["start", str(provisioned.kits[ADMIN]), "--server", "127.0.0.1:1"])
    assert code == 2
    assert "site kit is needed" in capsys.readouterr().err


def test_max_jobs_comes_from_resources_json_and_the_flag_wins(
    server: ServerThread, kit: Path
) -> None:
    (kit / "local" / "resources.json").write_text(json.dumps({"max_concurrent_jobs": 3}))
    with SiteProcess(kit, server.site_address):
        wait_until(lambda: "site-1" in connected(server), timeout=15)
        assert server.call(lambda: registry(server).get("site-1").resources) == {"max_jobs": "3"}
    with SiteProcess(kit, server.site_address, "--max-jobs", "2"):
        wait_until(
            lambda: (
                server.call(lambda: getattr(registry(server).get("site-1"), "resources", {}))
                == {"max_jobs": "2"}
            ),
            timeout=15,
        )


@pytest.fixture
def kits_dir(provisioned: Any) -> dict[str, Path]:
    return {name: Path(path) for name, path in provisioned.kits.items()}


def test_a_second_site_process_on_the_same_workspace_is_refused(
    server: ServerThread, kit: Path
) -> None:
    with SiteProcess(kit, server.site_address) as first:
        wait_until(lambda: "site-1" in connected(server), timeout=15)
        with SiteProcess(kit, server.site_address) as second:
            code = second.proc.wait(20)
            err = second.stderr()
        assert first.proc.poll() is None
    assert code == 2
    assert f"another site process (pid {first.proc.pid})" in err


def test_sigterm_while_dialling_a_server_that_never_answers_exits_at_once(
    provisioned: Any, tmp_path: Path
) -> None:
    kit = site_kit(provisioned, tmp_path / "kits", connect_timeout_s=60.0)
    with socket.socket() as blackhole:  # accepts TCP, never speaks TLS
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        port = blackhole.getsockname()[1]
        with SiteProcess(kit, f"127.0.0.1:{port}") as site:
            wait_until(lambda: "starting" in site.stderr(), timeout=15)
            time.sleep(0.5)
            started = time.monotonic()
            code = site.terminate(timeout=50)
            elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 30  # at once, not after the 60 s connect timeout (a generous ceiling)


def test_the_kits_start_script_starts_the_site(server: ServerThread, kit: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with open(kit.parent / "start.log", "wb") as out:
        proc = subprocess.Popen(
            ["sh", str(kit / "startup" / "start.sh"), "--server", server.site_address],
            stdout=out,
            stderr=out,
            env=env,
        )
        try:
            wait_until(lambda: "site-1" in connected(server), timeout=15)
            proc.send_signal(signal.SIGTERM)  # start.sh execs: the signal reaches the site
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize(
    ("file", "content", "named"),
    [
        ("settings.json", {"heartbeat_interval_s": "fast"}, "'heartbeat_interval_s'"),
        ("settings.json", {"reconnect_max_s": -1}, "'reconnect_max_s'"),
        ("resources.json", {"max_concurrent_jobs": 0}, "'max_concurrent_jobs'"),
        ("settings.json", {"python_env_builds": "no"}, "'python_env_builds' must be true or false"),
        (
            "settings.json",
            {"python_env_pip_options": "--no-index"},
            "'python_env_pip_options' must be a list of strings",
        ),
    ],
)
def test_a_bad_local_setting_stops_start_up_naming_the_file_and_key(
    kit: Path, capsys: pytest.CaptureFixture[str], file: str, content: dict[str, Any], named: str
) -> None:
    (kit / "local" / file).write_text(json.dumps(content))
    assert main(["start", str(kit), "--server", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert file in err and named in err
