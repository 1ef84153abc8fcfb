"""``flare poc`` as a real subprocess: it starts a server and sites, an admin Session finds
them through the admin kit alone, and a signal stops every process it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flare_admin import new_secure_session
from flare_local.poc import ADMIN_NAME, provision_local, site_names
from flare_protocol.errors import FlareError

REPO = Path(__file__).resolve().parents[2]
READY_MARK = "Ctrl-C stops everything."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead but still listed: check its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


class Poc:
    """``flare poc`` in a child process, its output in a file."""

    def __init__(self, workspace: Path, *args: str) -> None:
        self.workspace = workspace
        self.out = workspace.parent / f"{workspace.name}.out"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flare_cli.main", "poc", "-w", str(workspace), *args],
            stdout=open(self.out, "wb"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while READY_MARK not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"flare poc exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"flare poc not ready in {timeout} s:\n{self.output()}")
            time.sleep(0.05)
        return self.output()

    def child_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"\(pid (\d+)\)", self.output())]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def poc(tmp_path: Path):
    started: list[Poc] = []

    def start(*args: str) -> Poc:
        p = Poc(tmp_path / "ws", *args)
        started.append(p)
        return p

    yield start
    for p in started:
        pids = p.child_pids()
        p.kill()
        for pid in _wait_gone(pids, 5):
            os.kill(pid, signal.SIGKILL)


def _admin_kit(workspace: Path) -> Path:
    return workspace / "poc" / "prod_00" / ADMIN_NAME


def test_poc_starts_a_server_and_two_sites_a_session_finds_through_the_admin_kit(poc, tmp_path):
    p = poc()
    out = p.wait_ready()
    kit = _admin_kit(tmp_path / "ws")
    assert str(kit) in out
    assert "new_secure_session" in out
    settings = json.loads((kit / "local" / "settings.json").read_text())
    assert re.fullmatch(r"127\.0\.0\.1:\d+", settings["server_address"])
    with new_secure_session(ADMIN_NAME, kit) as s:  # no server_address: the kit says it
        names = sorted(site.name for site in s.get_connected_client_list())
    assert names == ["site-1", "site-2"]


def test_sigint_stops_every_process_poc_started(poc):
    p = poc()
    p.wait_ready()
    pids = p.child_pids()
    assert len(pids) == 3  # the server and two sites
    assert all(_alive(pid) for pid in pids)
    p.proc.send_signal(signal.SIGINT)
    assert p.proc.wait(30) == 0
    assert _wait_gone(pids, 5) == []
    assert "stopped." in p.output()


def test_sigterm_stops_every_process_too(poc):
    p = poc("--sites", "alpha,beta,gamma")
    out = p.wait_ready()
    assert "alpha" in out and "gamma" in out
    pids = p.child_pids()
    assert len(pids) == 4
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(30) == 0
    assert _wait_gone(pids, 5) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_a_killed_poc_leaves_no_orphans(poc):
    p = poc()
    p.wait_ready()
    pids = p.child_pids()
    p.proc.kill()  # no cleanup code runs in poc itself
    p.proc.wait(10)
    assert _wait_gone(pids, 20) == []


def test_a_temporary_workspace_is_removed_at_the_end(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "flare_cli.main", "poc", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if READY_MARK in line:
            break
    workspace = Path(re.search(r"in (\S+) \.\.\.", lines[0]).group(1))  # type: ignore[union-attr]
    assert workspace.is_dir()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not workspace.exists()


def test_a_second_run_in_the_same_workspace_reuses_the_kits(tmp_path):
    first = provision_local(tmp_path, ["site-1", "site-2"])
    again = provision_local(tmp_path, ["site-1", "site-2"])
    assert again.prod_dir == first.prod_dir
    other = provision_local(tmp_path, ["site-1"])
    assert other.prod_dir != first.prod_dir and set(other.site_kits) == {"site-1"}


@pytest.mark.parametrize("names", [["server"], ["a b"], ["x", "x"], ["localhost"]])
def test_unusable_site_names_are_refused(names):
    with pytest.raises(FlareError):
        site_names(names=names)


def test_the_site_count_is_bounded():
    assert site_names(3) == ["site-1", "site-2", "site-3"]
    with pytest.raises(FlareError, match="between 1 and 64"):
        site_names(0)


def test_a_second_poc_in_the_same_workspace_is_refused_and_the_first_keeps_running(poc, tmp_path):
    first = poc()
    first.wait_ready()
    second = subprocess.run(
        [sys.executable, "-m", "flare_cli.main", "poc", "-w", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert second.returncode == 2
    assert "another flare poc or simulate" in second.stderr
    with new_secure_session(ADMIN_NAME, _admin_kit(tmp_path / "ws")) as s:
        assert len(s.get_connected_client_list()) == 2


def test_a_restarted_server_keeps_its_ports_and_the_sites_come_back(tmp_path):
    from flare_local.poc import LocalProject

    kits = provision_local(tmp_path, ["site-1", "site-2"])
    with LocalProject(kits) as project:
        ready = json.loads(project.ready_file.read_text())
        with project.session() as s:
            assert s.restart("server") == {"server": "restarting"}
        deadline = time.monotonic() + 30
        while True:
            try:
                with project.session() as s:
                    if len(s.get_connected_client_list()) == 2:
                        break
            except FlareError:
                pass  # still restarting
            assert time.monotonic() < deadline, "the sites did not come back"
            time.sleep(0.1)
        again = json.loads(project.ready_file.read_text())
        assert (again["admin_port"], again["fed_learn_port"]) == (
            ready["admin_port"],
            ready["fed_learn_port"],
        )
        assert project.dead_children() == {}


def test_shutdown_system_from_a_session_ends_poc_with_every_process(poc, tmp_path):
    p = poc()
    p.wait_ready()
    pids = p.child_pids()
    with new_secure_session(ADMIN_NAME, _admin_kit(tmp_path / "ws")) as s:
        s.shutdown_system()
    assert p.proc.wait(60) == 0
    assert _wait_gone(pids, 5) == []
    assert "the server exited (status 0)" in p.output()
