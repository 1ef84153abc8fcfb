"""``flare admin KIT -c ...``: every command, as text and as JSON, against a real server
and real sites; scripts, stdin, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flare_admin.shell.cli import main
from flare_admin.shell.commands import REGISTRY
from tests.e2e.jobs_helpers import ADMIN, Cluster, write_job
from tests.kit_factory import copy_kit
from tests.server_harness import REPO


class Admin:
    """Runs ``flare admin`` in-process with the cluster's address and an admin kit copy."""

    def __init__(self, cluster: Cluster, kit: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.cluster, self.kit, self.capsys = cluster, kit, capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([str(self.kit), "--server", self.cluster.server.admin_address, *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, line: str) -> Any:
        code, out, err = self("--format", "json", "-c", line)
        docs = [json.loads(text) for text in out.splitlines()]
        assert len(docs) == 1, out
        assert code == 0 and docs[0]["ok"] is True, (line, docs, err)
        assert docs[0]["command"] == REGISTRY.get(line.split()[0]).name
        return docs[0]["result"]


@pytest.fixture(scope="module")
def cluster(provisioned: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(provisioned, tmp_path_factory.mktemp("shell")) as c:
        yield c


@pytest.fixture(scope="module")
def finished(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job that ran 2 rounds on both sites, with metrics and validations."""
    root = tmp_path_factory.mktemp("finished")
    job_id = cluster.submit(write_job(root, root / "out", rounds=2, validate=True))
    meta = cluster.wait_done(job_id)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    return job_id


@pytest.fixture
def admin(
    cluster: Cluster, provisioned: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Admin:
    return Admin(cluster, copy_kit(provisioned, ADMIN, tmp_path / "kits"), capsys)


Check = Callable[[Any, str], None]


def _rows_of_jobs(result: Any, job: str) -> None:
    assert job in [row["job_id"] for row in result]


def _meta(result: Any, job: str) -> None:
    assert result["job_id"] == job and result["status"] == "FINISHED:COMPLETED"


def _message(result: Any, job: str) -> None:
    assert isinstance(result["message"], str) and result["message"]


def _sites(result: Any, job: str) -> None:
    assert sorted(s["name"] for s in result) == ["site-1", "site-2"]


def _system(result: Any, job: str) -> None:
    assert result["server_info"]["name"] == "localhost"
    assert len(result["client_info"]) == 2


def _text(result: Any, job: str) -> None:
    assert isinstance(result["text"], str) and result["text"]
    assert result["truncated"] is False and result["target"] in ("server", "site-1", "site-2")


def _targets(result: Any, job: str) -> None:
    assert "server" in result or "site-1" in result


def _metrics(result: Any, job: str) -> None:
    assert result["job_id"] == job
    assert {(r["site"], r["key"]) for r in result["rows"]} >= {
        ("site-1", "loss"),
        ("site-2", "loss"),
    }


def _validations(result: Any, job: str) -> None:
    assert {r["round"] for r in result["rows"]} >= {1, 2}


def _summary(result: Any, job: str) -> None:
    assert result["rounds_completed"] == 2


def _whoami(result: Any, job: str) -> None:
    assert result["name"] == ADMIN and result["role"] == "project_admin"


def _help(result: Any, job: str) -> None:
    assert [c["name"] for c in result["commands"]] == [c.name for c in REGISTRY]


def _nothing(result: Any, job: str) -> None:
    assert result is None


#: Every non-destructive command: its line ({job}: a finished job) and what its JSON holds.
CASES: dict[str, tuple[str, Check]] = {
    "list_jobs": ("list_jobs -d -r -m 50", _rows_of_jobs),
    "get_job_meta": ("get_job_meta {short}", _meta),
    "submit_job": ("submit_job {job_dir}", _message),
    "clone_job": ("clone_job {job}", _message),
    "monitor_job": ("monitor_job {job} --timeout 30", _meta),
    "wait_for_job": ("wait_for_job {job}", _meta),
    "download_job": ("download_job {job} -o {dest}", _message),
    "download_model": ("download_model {job} --round 1 -o {dest}", _message),
    "logs": ("logs {job} server", _text),
    "metrics": ("metrics {job} --key loss", _metrics),
    "validations": ("validations {job}", _validations),
    "summary": ("summary {job}", _summary),
    "params": ("params {job} --kind param", lambda r, j: r["job_id"] == j and r["rows"] == []),
    "messages": ("messages {job}", lambda r, j: r["job_id"] == j and r["rows"] == []),
    "export_metrics": ("export_metrics {job} {dest}/tb", _message),
    "show_stats": ("show_stats {job} all", _targets),
    "show_errors": ("show_errors {job} server", _targets),
    "reset_errors": ("reset_errors {job} server", _message),
    "check_status": ("check_status client site-1", lambda r, j: r[0]["name"] == "site-1"),
    "sys_info": ("sys_info", _system),
    "list_clients": ("list_clients", _sites),
    "ls": ("ls server -l", _text),
    "cat": ("cat site-1 logs/site.log", _text),
    "head": ("head server logs/server.log -n 2", _text),
    "tail": ("tail server logs/server.log -n 2", _text),
    "head_log": ("head_log site-2 -n 1", _text),
    "tail_log": ("tail_log server", _text),
    "grep": ("grep server -i {job} logs/server.log", _text),
    "pwd": ("pwd site-1", _text),
    "whoami": ("whoami", _whoami),
    "info": ("info", lambda r, j: r["kit"] and r["timeout"] == 10.0),
    "lpwd": ("lpwd", lambda r, j: r["path"] == os.getcwd()),
    "ping": ("ping", lambda r, j: r["seconds"] > 0),
    "set_timeout": ("set_timeout 30", lambda r, j: r["timeout"] == 30.0),
    "unset_timeout": ("unset_timeout", _message),
    "help": ("help", _help),
    "bye": ("bye", _nothing),
}
DESTRUCTIVE = {"abort_job", "delete_job", "shutdown", "shutdown_system", "restart"}
#: Commands that change what the shared cluster accepts, run on servers of their own:
#: update_revocations in tests/flare_server/test_revocation_update.py.
ELSEWHERE = {"update_revocations"}


def test_every_command_has_a_case_here():
    assert set(CASES) | DESTRUCTIVE | ELSEWHERE == {c.name for c in REGISTRY}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_command_as_json(
    name: str, admin: Admin, finished: str, tmp_path: Path, cluster: Cluster
):
    line, check = CASES[name]
    job_dir = write_job(tmp_path, tmp_path / "out", name="again", rounds=1)
    line = line.format(job=finished, short=finished[:7], job_dir=job_dir, dest=tmp_path)
    result = admin.json(line)
    check(result, finished)
    if name in ("submit_job", "clone_job"):
        assert cluster.wait_done(result["job_id"])["status"] == "FINISHED:COMPLETED"


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_command_as_text(name: str, admin: Admin, finished: str, tmp_path: Path):
    line, _ = CASES[name]
    job_dir = write_job(tmp_path, tmp_path / "out", name="again", rounds=1)
    line = line.format(job=finished, short=finished[:7], job_dir=job_dir, dest=tmp_path)
    code, out, err = admin("-c", line)
    assert (code, err) == (0, "")
    assert "\x1b[" not in out  # no colour codes without a terminal
    if name != "bye":
        assert out.strip()


def test_metrics_text_is_a_round_by_site_table(admin: Admin, finished: str):
    code, out, _ = admin("-c", f"metrics {finished[:8]} --key loss")
    assert code == 0
    assert "site-1" in out and "site-2" in out and "ROUND" in out


def test_commands_run_in_order_and_stop_at_the_first_failure(admin: Admin, finished: str):
    code, out, err = admin("-c", "whoami", "-c", "get_job_meta 00000000", "-c", "list_clients")
    assert code == 1
    assert "admin@org_a.com" in out and "site-1" not in out
    assert err == "error: no job id starts with '00000000' (see list_jobs)\n"


def test_json_errors_are_documents_too(admin: Admin):
    code, out, _ = admin("--format", "json", "-c", "get_job_meta 00000000")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["error"]["type"] == "JobNotFound"
    assert doc["error"]["job_id"] == "00000000"


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        ("list_jobz", 2, "unknown command 'list_jobz'; did you mean list_jobs?"),
        ("list_jobs -m many", 2, "list_jobs: --max must be a whole number, got 'many'"),
        ("get_job_meta 'unclosed", 2, "cannot split the line: No closing quotation"),
        ("abort_job last", 1, "confirmation needed, but there is no terminal to ask"),
    ],
)
def test_usage_errors_exit_2_and_name_the_problem(admin: Admin, line: str, code: int, message: str):
    got, _, err = admin("-c", line)
    assert got == code
    assert message in err


def test_a_file_of_commands_runs_with_comments_and_blank_lines(admin: Admin, tmp_path: Path):
    script = tmp_path / "cmds.txt"
    script.write_text("# who am I?\nwhoami\n\nlist_clients\n")
    code, out, _ = admin("-f", str(script))
    assert code == 0 and "admin@org_a.com" in out and "site-2" in out


def test_an_unreadable_command_file_is_a_usage_error(admin: Admin, tmp_path: Path):
    code, _, err = admin("-f", str(tmp_path / "missing.txt"))
    assert code == 2 and "cannot read" in err


def test_a_server_that_is_not_there_exits_3(admin: Admin, capsys: pytest.CaptureFixture[str]):
    code = main([str(admin.kit), "--server", "127.0.0.1:1", "--timeout", "2", "-c", "whoami"])
    assert code == 3
    assert "cannot reach the flare server at 127.0.0.1:1" in capsys.readouterr().err


def test_a_folder_that_is_not_a_kit_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(tmp_path), "-c", "whoami"]) == 3
    assert "is not a startup kit" in capsys.readouterr().err


def test_commands_on_stdin_when_it_is_not_a_terminal(cluster: Cluster, admin: Admin):
    """The real console script, as a pipe would run it."""
    proc = subprocess.run(
        [sys.executable, "-m", "flare_cli.main", "admin", str(admin.kit),
         "--server", cluster.server.admin_address, "--format", "json"],
        input="whoami\nlist_clients\n", capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["command"] for d in docs] == ["whoami", "list_clients"]
    assert proc.stderr == ""
