"""Destructive commands (abort, delete, restart, shutdown) through ``flare admin -c``, each
against its own real server and sites, as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flare_admin import JobNotFound
from flare_admin.shell.cli import main
from tests.e2e.jobs_helpers import ADMIN, SITES, Cluster, write_job
from tests.kit_factory import copy_kit
from tests.server_harness import wait_until


@pytest.fixture
def cluster(provisioned: Any, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(provisioned, tmp_path / "cluster") as c:
        yield c


@pytest.fixture
def run(cluster: Cluster, provisioned: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    kit = copy_kit(provisioned, ADMIN, tmp_path / "kits")

    def run_json(line: str) -> Any:
        capsys.readouterr()
        code = main([str(kit), "--server", cluster.server.admin_address, "--format", "json",
                     "-c", line])  # fmt: skip
        doc = json.loads(capsys.readouterr().out)
        assert code == 0 and doc["ok"], doc
        return doc["result"]

    return run_json


def test_abort_job_stops_a_running_job(cluster: Cluster, run: Any, tmp_path: Path):
    job = write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1"))
    job_id = cluster.submit(job)
    wait_until(lambda: cluster.session.get_job_meta(job_id).status == "RUNNING", 30)
    assert run(f"abort_job {job_id[:8]} -y")["job_id"] == job_id
    assert cluster.wait_done(job_id)["status"] == "FINISHED:ABORTED"


def test_delete_job_removes_it(cluster: Cluster, run: Any, tmp_path: Path):
    job_id = cluster.submit(write_job(tmp_path, tmp_path / "out", rounds=1))
    cluster.wait_done(job_id)
    assert run("delete_job last -y")["job_id"] == job_id
    with pytest.raises(JobNotFound):
        cluster.session.get_job_meta(job_id)


def test_restart_brings_a_site_back(cluster: Cluster, run: Any):
    registry = cluster.server.server.registry
    before = cluster.server.call(lambda: registry.get("site-1").session_id)
    assert run("restart client site-1 -y") == {"site-1": "restarting"}
    wait_until(
        lambda: (
            (site := cluster.server.call(lambda: registry.get("site-1"))) is not None
            and site.session_id != before
        ),
        20,
    )


def test_shutdown_stops_a_site(cluster: Cluster, run: Any):
    assert run("shutdown client site-2 -y") == {"site-2": "stopping"}
    assert cluster.sites["site-2"].proc.wait(20) == 0


def test_shutdown_system_stops_every_site_and_the_server(cluster: Cluster, run: Any):
    result = run("shutdown_system -y")
    assert result["server"] == "stopping"
    for site in SITES:
        assert cluster.sites[site].proc.wait(20) == 0
