"""Issue 8, items 13 to 20: what real use found, each pinned through the public interfaces.

Every test is named after its item and failed on the code before the fix (see the report
of the change that added this file). They use real processes: ``flare`` subprocesses, a
real server with real site processes (:class:`tests.e2e.jobs_helpers.Cluster`), and
projects provisioned by our own provisioning.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flare_admin import (
    AuthenticationError,
    NoConnection,
    new_secure_async_session,
    new_secure_session,
)
from flare_site.client import _ipc
from provisioning import provision
from provisioning.cli import main as provision_main
from tests.conftest import TEST_PROJECT_YML
from tests.e2e.jobs_helpers import ADMIN, SITES, Cluster, write_job
from tests.flare_server.conftest import job_zip
from tests.server_harness import REPO, ServerProcess, wait_until

pytestmark = pytest.mark.timeout(180)

FLARE = [sys.executable, "-m", "flare_cli.main"]
HELLO = REPO / "examples" / "hello-numpy"


@pytest.fixture(scope="module")
def cluster(provisioned, tmp_path_factory):
    with Cluster(provisioned, tmp_path_factory.mktemp("smaller")) as c:
        yield c


def _own_project(root: Path):
    """A fresh project of our own (the session's fixture must stay untouched)."""
    yml = root / "project.yml"
    yml.write_text(TEST_PROJECT_YML)
    return yml, provision(yml, root / "kits")


def _flare(*args: str, timeout: float = 60, env: dict[str, str] | None = None):
    return subprocess.run(
        [*FLARE, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _server_start_exits(kit: Path, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``flare server start KIT`` on free ports; it must exit (a refusal) within ``timeout``."""
    args = [
        "server",
        "start",
        str(kit),
        "--host",
        "127.0.0.1",
        "--admin-port",
        "0",
        "--fed-learn-port",
        "0",
        *extra,
    ]
    try:
        return _flare(*args, timeout=timeout)
    except subprocess.TimeoutExpired:  # it started serving: nothing refused the start
        pytest.fail(f"flare server start {kit} {' '.join(extra)} started instead of refusing")


def _hanging_job(root: Path) -> Path:
    """hello-numpy whose script logs one round-1 metric, then never answers."""
    job = root / "hang"
    shutil.copytree(HELLO, job)
    (job / "app" / "custom" / "train.py").write_text(
        "import time\nimport flare_site.client as flare\nflare.init()\nflare.receive()\n"
        "flare.log_metric('loss', 0.25, step=0)\ntime.sleep(600)\n"
    )
    return job


# -- 13 -------------------------------------------------------------------------------------


def test_13_a_server_started_from_a_new_kit_refuses_to_hide_the_old_kits_jobs(tmp_path):
    yml, first = _own_project(tmp_path)
    old_kit = first.kits["localhost"]
    old_ws = old_kit / "workspace"
    job = tmp_path / "job.zip"
    job.write_bytes(job_zip(min_clients=2))  # waits for sites that never come: stays queued
    with ServerProcess(old_kit, old_ws) as server:  # the kit's default workspace
        with new_secure_session(ADMIN, first.kits[ADMIN], server_address=server.admin_address) as s:
            job_id = s.submit_job(job)
        server.terminate()
    second = provision(yml, tmp_path / "kits")  # re-provisioned: prod_01
    new_kit = second.kits["localhost"]
    assert new_kit.parent.name == "prod_01"

    refused = _server_start_exits(new_kit)
    assert refused.returncode == 2, refused.stderr
    assert str(old_ws) in refused.stderr and "1 job" in refused.stderr
    assert "--workspace" in refused.stderr and "--new-workspace" in refused.stderr
    assert "Traceback" not in refused.stderr

    with ServerProcess(new_kit, old_ws) as server:  # --workspace OLD: the jobs are there
        with new_secure_session(
            ADMIN, second.kits[ADMIN], server_address=server.admin_address
        ) as s:
            assert [j.job_id for j in s.list_jobs()] == [job_id]

    fresh = subprocess.Popen(
        [
            *FLARE,
            "server",
            "start",
            str(new_kit),
            "--new-workspace",
            "--host",
            "127.0.0.1",
            "--admin-port",
            "0",
            "--fed-learn-port",
            "0",
            "--ready-file",
            str(tmp_path / "r.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        wait_until(lambda: (tmp_path / "r.json").exists() or fresh.poll() is not None, 30)
        assert fresh.poll() is None, fresh.stderr.read().decode() if fresh.stderr else ""
        ready = json.loads((tmp_path / "r.json").read_text())
        assert Path(ready["workspace"]) == (new_kit / "workspace").resolve()
    finally:
        fresh.send_signal(signal.SIGTERM)
        fresh.wait(20)


def test_13_a_site_started_from_a_new_kit_refuses_to_hide_its_old_job_folders(tmp_path):
    yml, first = _own_project(tmp_path)
    old_ws = first.kits["site-1"] / "workspace"
    (old_ws / "jobs" / str(uuid.uuid4())).mkdir(parents=True)  # a job this site ran
    second = provision(yml, tmp_path / "kits")
    try:
        refused = _flare(
            "site", "start", str(second.kits["site-1"]), "--server", "127.0.0.1:9", timeout=20
        )
    except subprocess.TimeoutExpired:
        pytest.fail("flare site start prod_01/site-1 started instead of refusing")
    assert refused.returncode == 2, refused.stderr
    assert str(old_ws) in refused.stderr
    assert "--workspace" in refused.stderr and "--new-workspace" in refused.stderr


# -- 14 -------------------------------------------------------------------------------------


def test_14_revoking_prints_the_next_step_and_the_server_logs_the_reload(tmp_path, capsys):
    yml, first = _own_project(tmp_path)
    server_kit = first.kits["localhost"]
    ws = tmp_path / "server-ws"
    revoked = "member@org_b.com"
    with ServerProcess(server_kit, ws) as server:
        with new_secure_session(revoked, first.kits[revoked], server_address=server.admin_address):
            pass  # the old kit still works
        code = provision_main(["-p", str(yml), "-w", str(tmp_path / "kits"), "--revoke", revoked])
        out = capsys.readouterr().out
        assert code == 0 and "revoked 1" in out
        new_startup = first.prod_dir.parent / "prod_01" / "localhost" / "startup"
        copy = next(line.strip() for line in out.splitlines() if line.strip().startswith("cp "))
        assert str(new_startup) in copy and str(server_kit / "startup") in copy
        assert "kill -HUP" in out

        subprocess.run(copy, shell=True, check=True)  # the printed step, as printed
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        log = ws / "logs" / "server.log"
        line = wait_until(
            lambda: next(
                (x for x in log.read_text().splitlines() if "revocation list reloaded" in x), None
            ),
            20,
            0.05,
        )
        assert "1 revoked serial" in line
        with pytest.raises(AuthenticationError):
            new_secure_session(revoked, first.kits[revoked], server_address=server.admin_address)


# -- 15 -------------------------------------------------------------------------------------


def test_15_a_result_downloaded_right_after_an_abort_is_complete(cluster, tmp_path):
    job_id = cluster.submit(write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1")))
    wait_until(lambda: all(cluster.site_job_pids(s) for s in SITES), 30)
    cluster.session.abort_job(job_id)
    folder = Path(cluster.session.download_job_result(job_id, tmp_path))
    assert (folder / "summary.json").is_file()
    assert json.loads((folder / "summary.json").read_text())["status"] == "FINISHED:ABORTED"
    for name in (*SITES, "server"):
        assert (folder / "logs" / f"{name}.log").is_file(), sorted(os.listdir(folder))


# -- 16 -------------------------------------------------------------------------------------


def test_16_an_admin_kit_pointed_at_the_site_port_is_told_the_admin_port(cluster, provisioned):
    with pytest.raises(NoConnection) as info:
        new_secure_session(
            ADMIN, provisioned.kits[ADMIN], server_address=cluster.server.site_address
        )
    text = str(info.value)
    assert "site port" in text and "fed_learn_port" in text
    assert f"admin port is {cluster.server.server.admin_port}" in text
    assert "older version" not in text


# -- 17 -------------------------------------------------------------------------------------


def test_17_a_simulation_that_times_out_reports_its_metrics_and_result_and_shows_progress(
    tmp_path,
):
    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        [*FLARE, "simulate", str(_hanging_job(tmp_path)), "-w", str(ws), "--timeout", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:  # a pipe, not a terminal: plain progress lines as they happen
            lines.append(line)
            if re.search(r"\bround 1\b", line):
                assert proc.poll() is None  # printed while the job runs, not at the end
                break
        else:
            pytest.fail("no progress line named round 1:\n" + "".join(lines))
        out = "".join(lines) + proc.stdout.read()
    finally:
        proc.wait(120)
    assert proc.returncode == 1, out
    assert "did not finish within 10 s" in out
    assert "no per-round metrics" not in out
    assert re.search(r"^\S*\s*1\s.*site-1.*loss=0\.25", out, re.M), out  # the metrics table
    result = Path(re.search(r"^result\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    assert result.parent == ws / "results"
    assert (result / "metrics.jsonl").is_file() and (result / "summary.json").is_file()


# -- 18 -------------------------------------------------------------------------------------


def test_18_list_jobs_shows_a_running_jobs_duration_and_takes_all(cluster, tmp_path):
    job_id = cluster.submit(write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1")))
    try:
        wait_until(lambda: cluster.session.get_job_meta(job_id).status == "RUNNING", 30)
        time.sleep(1.05)  # the job has run at least this long
        row = next(j for j in cluster.session.list_jobs() if j.job_id == job_id)
        assert row.duration >= 1.0
        every = cluster.session.list_jobs(all=True)
        assert [j.job_id for j in every] == [j.job_id for j in cluster.session.list_jobs()]

        async def listed() -> list[str]:
            async with await new_secure_async_session(
                ADMIN, cluster.provisioned.kits[ADMIN], server_address=cluster.server.admin_address
            ) as s:
                return [j.job_id for j in await s.list_jobs(detailed=True, all=True)]

        assert job_id in asyncio.run(listed())
    finally:
        cluster.session.abort_job(job_id)


# -- 19 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "script"), [("site-1", "start.sh"), (ADMIN, "fl_admin.sh")])
def test_19_a_kit_script_without_flare_on_path_says_what_to_do(provisioned, name, script):
    path = provisioned.kits[name] / "startup" / script
    bare = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    missing = subprocess.run(["sh", str(path)], capture_output=True, text=True, env=bare)
    assert missing.returncode != 0
    assert "flare is not on PATH" in missing.stderr and "FLARE=" in missing.stderr
    assert "activate" in missing.stderr


def test_19_the_flare_variable_names_the_program_to_run(provisioned):
    path = provisioned.kits["site-1"] / "startup" / "start.sh"
    flare = shutil.which("flare", path=str(Path(sys.executable).parent))
    assert flare is not None
    env = {"PATH": "/usr/bin:/bin", "FLARE": flare}
    done = subprocess.run(["sh", str(path), "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "flare site start" in done.stdout


def test_19_simulate_without_a_workspace_removes_its_temporary_folder(tmp_path):
    tmp = tmp_path / "t"
    tmp.mkdir()
    done = _flare("simulate", str(HELLO), timeout=180, env={"TMPDIR": str(tmp)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "per-round metrics" in done.stdout
    assert "--keep" in done.stdout  # how to keep the result next time
    assert [p.name for p in tmp.iterdir() if p.name.startswith("flare-")] == []

    kept = _flare("simulate", str(HELLO), "--keep", timeout=180, env={"TMPDIR": str(tmp)})
    assert kept.returncode == 0, kept.stdout + kept.stderr
    folders = [p for p in tmp.iterdir() if p.name.startswith("flare-simulate-")]
    assert len(folders) == 1 and (folders[0] / "results").is_dir()


def test_19_the_demo_removes_its_temporary_folder(tmp_path):
    tmp = tmp_path / "t"
    tmp.mkdir()
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in tmp.iterdir() if p.name.startswith("flare-")] == []


def test_19_a_killed_sites_ipc_folder_is_removed_when_the_site_starts_again(cluster, tmp_path):
    job_id = cluster.submit(write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1")))
    try:

        def ipc_socket() -> str | None:  # a job process's environment, once it has exec'd
            for pid in cluster.site_job_pids("site-1"):
                with contextlib.suppress(OSError):
                    for var in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                        if var.startswith(_ipc.ENV_SOCKET.encode() + b"="):
                            return var.split(b"=", 1)[1].decode()
            return None

        folder = Path(wait_until(ipc_socket, 30)).parent
        pids = cluster.site_job_pids("site-1")
        assert folder.is_dir()
        killed = cluster.sites["site-1"]
        killed.proc.kill()  # SIGKILL: the site cannot clean up
        killed.proc.wait(10)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        assert folder.is_dir()
        restarted = time.time()
        cluster.start_site("site-1")  # the same kit and workspace
        wait_until(lambda: not folder.exists(), 30)
        killed.close()
        wait_until(  # back for the tests that follow
            lambda: any(
                s.name == "site-1" and s.connected_since >= restarted
                for s in cluster.session.get_connected_client_list()
            ),
            30,
        )
    finally:
        cluster.session.abort_job(job_id)


# -- 20 -------------------------------------------------------------------------------------


def test_20_the_documented_tail_target_call_names_a_file_a_site_has(cluster):
    doc = (REPO / "docs" / "session.md").read_text()
    call = re.search(r'^s\.tail_target\(("site-1".*?)\)\s*(#.*)?$', doc, re.M)
    assert call is not None
    args = ast.literal_eval(f"({call.group(1)},)")
    assert cluster.session.tail_target(*args).strip()


def test_20_the_docs_cite_no_file_outside_the_repository():
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        assert "peers.md" not in doc.read_text(), doc


def test_20_a_kit_of_the_wrong_type_is_named_with_the_right_article(provisioned):
    done = _flare("site", "start", str(provisioned.kits[ADMIN]))
    assert done.returncode == 2
    assert "is an admin kit" in done.stderr


def test_20_a_second_server_start_does_not_log_a_stop_of_what_never_started(provisioned, tmp_path):
    with ServerProcess(provisioned.kits["localhost"], tmp_path / "ws") as first:
        second = _flare(
            "server",
            "start",
            str(provisioned.kits["localhost"]),
            "--workspace",
            str(tmp_path / "ws"),
            "--host",
            "127.0.0.1",
            "--admin-port",
            str(first.ready["admin_port"]),
            "--fed-learn-port",
            "0",
        )
    assert second.returncode == 2
    assert "error:" in second.stderr
    assert "server stopped" not in second.stderr


def test_20_the_package_license_is_an_spdx_string():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
