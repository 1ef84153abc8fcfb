"""The end of a job when a site does not play along, on a real server with real sites.

When a job ends, the server tells its sites ``job.end`` (or they get ``job.abort``) and
waits up to ``log_wait`` for each site's log. A site that is frozen then (no TCP reset,
no answer) must not hold the end up: its log in the result folder says why it is
missing, the job still gets its final status, and when the site comes back it is told
to abort the job it still runs.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.e2e.jobs_helpers import SITES, Cluster, write_job
from tests.server_harness import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("settings", "missing"),
    [
        ({"log_wait": 1.0}, "no log within 1 s"),
        (
            {"log_wait": 30.0, "heartbeat_timeout": 2.0},
            "the site disconnected before sending its log",
        ),
    ],
    ids=["no-log-in-time", "gone-before-its-log"],
)
def test_a_site_frozen_when_the_job_ends_does_not_hold_up_its_end(
    provisioned, tmp_path, settings, missing
):
    with Cluster(provisioned, tmp_path, **settings) as cluster:
        job = write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1"))
        job_id = cluster.submit(job)
        _wait_running(cluster, job_id)
        frozen = cluster.sites["site-2"].proc
        frozen.send_signal(signal.SIGSTOP)
        try:
            cluster.session.abort_job(job_id)
            summary = cluster.result_dir(job_id) / "summary.json"
            wait_until(summary.is_file, 60)
        finally:
            frozen.send_signal(signal.SIGCONT)
        logs = cluster.result_dir(job_id) / "logs"
        assert (logs / "site-2.log").read_text() == f"(no log from site-2: {missing})\n"
        assert "abort" in (logs / "site-1.log").read_text()
        assert json.loads(summary.read_text())["status"] == "FINISHED:ABORTED"
        assert cluster.session.get_job_meta(job_id)["status"] == "FINISHED:ABORTED"
        # back, site-2 still runs the job: it is told to abort it
        cluster.wait_connected(SITES)
        wait_until(lambda: not cluster.site_job_pids("site-2"), 30)


def _wait_running(cluster, job_id):
    """Every site deployed the job (it is RUNNING) and runs its user code."""
    wait_until(lambda: cluster.session.get_job_meta(job_id)["status"] == "RUNNING", 30, 0.05)
    wait_until(lambda: all(cluster.site_job_pids(s) for s in SITES), 30)


def test_an_abort_while_a_frozen_site_is_still_deploying_leaves_no_user_process(
    provisioned, tmp_path
):
    with Cluster(provisioned, tmp_path, log_wait=1.0) as cluster:
        job = write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1"))
        job_id = cluster.submit(job)
        wait_until(lambda: all(cluster.site_job_pids(s) for s in SITES), 30)  # not RUNNING yet
        frozen = cluster.sites["site-2"].proc
        frozen.send_signal(signal.SIGSTOP)
        try:
            cluster.session.abort_job(job_id)
            wait_until((cluster.result_dir(job_id) / "summary.json").is_file, 60)
        finally:
            frozen.send_signal(signal.SIGCONT)
        wait_until(lambda: not cluster.site_job_pids("site-2"), 30)
