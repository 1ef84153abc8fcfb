"""What a library user (or the shell) sees on the terminal: our messages, not gRPC's.

Each case runs a real script in a subprocess against a real server, as a user would, and
reads its stderr.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import kit_factory
from tests.flare_admin.conftest import ADMIN
from tests.server_harness import wait_until

REPO = Path(__file__).resolve().parents[2]
#: A line gRPC's C core prints itself, e.g. "I1202 05:27:57.224662   16597 ssl_...cc:2563] ..."
C_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)


def _run(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _wait_idle(pid: int, quiet: float = 0.5, timeout: float = 30) -> None:
    """Wait until process ``pid`` has used no CPU for ``quiet`` seconds (it is blocked)."""

    def cpu() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

    deadline = time.monotonic() + timeout
    last, since = cpu(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"process {pid} never went idle"
        time.sleep(0.05)
        now = cpu()
        if now != last:
            last, since = now, time.monotonic()


def _env_without_grpc_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}


@pytest.fixture
def foreign_kit(provisioned, tmp_path) -> Path:
    (tmp_path / "other").mkdir()
    return Path(kit_factory.foreign_project(provisioned, tmp_path / "other").kits[ADMIN])


FAILED_OPEN = """
    import flare_admin
    try:
        flare_admin.new_secure_session({admin!r}, {kit!r}, server_address={address!r})
    except flare_admin.NoConnection as exc:
        print("NoConnection:", exc)
"""


def test_a_refused_handshake_prints_only_our_message(server, foreign_kit):
    script = FAILED_OPEN.format(admin=ADMIN, kit=str(foreign_kit), address=server.admin_address)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env_without_grpc_settings(),
    )
    assert "NoConnection:" in done.stdout and "root CA differs" in done.stdout
    assert not C_CORE_LINE.search(done.stderr), done.stderr
    assert done.stderr == ""


def test_a_user_who_asks_for_grpc_logs_gets_them(server, foreign_kit):
    """The control of the test above: the C core does print the line when allowed to."""
    script = FAILED_OPEN.format(admin=ADMIN, kit=str(foreign_kit), address=server.admin_address)
    done = _run(script, env={"GRPC_VERBOSITY": "INFO"})
    assert "NoConnection:" in done.stdout
    assert C_CORE_LINE.search(done.stderr), done.stderr


def test_the_grpc_setting_does_not_leak_into_child_processes(server, kits):
    script = """
        import os, subprocess, sys
        import flare_admin
        child = "import os; print(os.environ.get('GRPC_VERBOSITY'))"
        print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env_without_grpc_settings(),
    )
    assert done.stdout.strip() == "None", done.stderr


@pytest.mark.parametrize(
    "call",
    [
        "s.monitor_job(job_id)",
        "s.wait_for_job(job_id)",
        "list(s.watch_job(job_id))",
    ],
    ids=["monitor_job", "wait_for_job", "watch_job"],
)
def test_ctrl_c_while_following_a_job_is_a_plain_keyboard_interrupt(server, kits, job_folder, call):
    from flare_admin import new_secure_session

    with new_secure_session(ADMIN, kits[ADMIN], server_address=server.admin_address) as s:
        job_id = s.submit_job(job_folder)  # no site: it stays SUBMITTED
    script = f"""
        import flare_admin
        job_id = {job_id!r}
        s = flare_admin.new_secure_session(
            {ADMIN!r}, {str(kits[ADMIN])!r}, server_address={server.admin_address!r}
        )
        {call}
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Interrupt once the server holds the stream open and the child is blocked on it:
        # a Ctrl-C while grpc is still setting the call up lands inside grpc (its frames in
        # the traceback, or a hang), which is not what this test is about.
        wait_until(lambda: server.call(lambda: bool(server.server.watchers)), 30)
        _wait_idle(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT, stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert "grpc" not in stderr and "_MultiThreadedRendezvous" not in stderr, stderr
    assert "During handling" not in stderr and "direct cause" not in stderr, stderr
    wait_until(lambda: server.call(lambda: not server.server.watchers), 10)  # stream cancelled


DEBUG_SCRIPT = """
    import logging, sys
    import flare_admin
    {configure}
    s = flare_admin.new_secure_session(
        {admin!r}, {kit!r}, server_address={address!r}, debug=True
    )
    s.list_jobs()
    s.close()
"""


@pytest.mark.parametrize(
    "configure",
    ["", "logging.basicConfig(level=logging.DEBUG)", "logging.basicConfig()"],
    ids=["unconfigured", "basic_config_debug", "basic_config_default"],
)
def test_debug_prints_each_line_once_whoever_configured_logging(server, kits, configure):
    script = DEBUG_SCRIPT.format(
        configure=configure, admin=ADMIN, kit=str(kits[ADMIN]), address=server.admin_address
    )
    done = _run(script)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("list_jobs took") == 1, done.stderr


def test_debug_shows_what_grpc_said_about_a_refused_handshake(server, foreign_kit):
    script = f"""
        import flare_admin
        try:
            flare_admin.new_secure_session(
                {ADMIN!r}, {str(foreign_kit)!r}, server_address={server.admin_address!r},
                debug=True,
            )
        except flare_admin.NoConnection:
            pass
    """
    done = _run(script)
    assert "opening a session at" in done.stderr and "failed" in done.stderr, done.stderr
    assert not C_CORE_LINE.search(done.stderr)
