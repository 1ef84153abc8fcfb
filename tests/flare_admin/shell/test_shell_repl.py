"""The interactive loop, typed into through a pipe, against a real server."""

from __future__ import annotations

import io
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from flare_admin import Session
from flare_admin.shell.commands import REGISTRY
from flare_admin.shell.context import ShellContext
from flare_admin.shell.dispatch import Dispatcher
from flare_admin.shell.repl import HISTORY_FILE, Repl, history_for
from flare_admin.shell.theme import THEME
from tests.flare_admin.conftest import make_job

ENTER, CTRL_C, CTRL_D = "\r", "\x03", "\x04"


class Typed:
    """A shell whose keyboard is a pipe; ``run(keys)`` types them and returns what printed."""

    def __init__(self, session: Session, pipe: object) -> None:
        self.out = io.StringIO()
        console = Console(file=self.out, width=100, color_system=None, theme=THEME)
        self.ctx = ShellContext(session, console, interactive=True)
        self.pipe = pipe
        self.repl = Repl(
            Dispatcher(self.ctx, REGISTRY),
            history=history_for(Path(session.startup_kit_location)),
            status_every=0.2,
        )

    def run(self, keys: str) -> str:
        self.pipe.send_text(keys)  # type: ignore[attr-defined]
        assert self.repl.run() == 0
        return self.out.getvalue()


@pytest.fixture
def shell(session: Session) -> Iterator[Typed]:
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        yield Typed(session, pipe)


def test_commands_run_in_order_until_bye(shell: Typed):
    out = shell.run(f"whoami{ENTER}lpwd{ENTER}bye{ENTER}list_jobs{ENTER}")
    assert "admin@org_a.com" in out and "project_admin" in out
    assert str(Path.cwd()) in out
    assert out.rstrip().endswith("bye")
    assert "no jobs" not in out  # nothing after bye ran


def test_ctrl_d_leaves_and_ctrl_c_only_clears_the_line(shell: Typed):
    out = shell.run(f"list_jo{CTRL_C}whoami{ENTER}{CTRL_D}")
    assert "admin@org_a.com" in out
    assert out.rstrip().endswith("bye")


def test_a_failing_command_prints_one_line_and_the_shell_goes_on(shell: Typed):
    out = shell.run(f"get_job_meta 0000{ENTER}get_job_meta{ENTER}whoami{ENTER}{CTRL_D}")
    assert "error: no job id starts with '0000' (see list_jobs)" in out
    assert "error: get_job_meta: missing JOB" in out
    assert "usage: get_job_meta JOB" in out
    assert "admin@org_a.com" in out
    assert "Traceback" not in out


def test_destructive_commands_ask_and_do_nothing_unless_told_yes(
    shell: Typed, session: Session, tmp_path: Path
):
    job_id = session.submit_job(make_job(tmp_path / "job"))
    out = shell.run(f"abort_job {job_id[:6]}{ENTER}n{ENTER}{CTRL_D}")
    assert "cancelled: nothing was done" in out
    assert session.get_job_meta(job_id).status == "SUBMITTED"


def test_a_yes_to_the_question_runs_the_command(shell: Typed, session: Session, tmp_path: Path):
    job_id = session.submit_job(make_job(tmp_path / "job"))
    out = shell.run(f"abort_job last{ENTER}y{ENTER}{CTRL_D}")
    assert f"aborted job {job_id}" in out
    assert session.get_job_meta(job_id).status == "FINISHED:ABORTED"


def test_history_is_kept_in_the_kits_local_folder_readable_only_by_its_owner(
    shell: Typed, session: Session
):
    shell.run(f"whoami{ENTER}{CTRL_D}")
    history = Path(session.startup_kit_location) / "local" / HISTORY_FILE
    assert "whoami" in history.read_text()
    assert stat.S_IMODE(history.stat().st_mode) == 0o600


def test_the_toolbar_shows_the_server_and_what_runs(shell: Typed, session: Session):
    shell.ctx.refresh_status()
    text = shell.repl.toolbar().value
    assert session.address in text and "connected" in text and "running jobs: 0" in text


def test_a_server_restart_does_not_end_the_shell(provisioned, admin_kit, tmp_path):
    """The toolbar says the connection was lost; the next command finds the server again."""
    from flare_admin import new_secure_session
    from flare_admin.shell.context import Connection
    from flare_admin.shell.dispatch import ExitCode
    from tests.server_harness import ServerThread

    kit = Path(provisioned.kits["localhost"])
    first = ServerThread(kit, tmp_path / "ws").start()
    port = first.server.admin_port
    session = new_secure_session("admin@org_a.com", admin_kit, server_address=first.admin_address)
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        shell = Typed(session, pipe)
        run = shell.repl.dispatcher.run_line
        try:
            assert run("list_clients") is ExitCode.OK
            first.stop()
            assert run("list_clients") is ExitCode.NO_CONNECTION
            assert shell.ctx.connection is Connection.DISCONNECTED
            assert "disconnected" in shell.repl.toolbar().value
            assert "cannot reach the flare server" in shell.out.getvalue()
            with ServerThread(kit, tmp_path / "ws", admin_port=port):
                assert run("list_clients") is ExitCode.OK  # the next command reconnects
                assert shell.ctx.connection is Connection.CONNECTED
        finally:
            session.close()
