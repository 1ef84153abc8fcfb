"""Jobs that do not go to plan: abort, crashing user code, lost and returning sites."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.jobs_helpers import SITES, Cluster, write_job
from tests.server_harness import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shared_cluster(provisioned, tmp_path_factory):
    with Cluster(provisioned, tmp_path_factory.mktemp("failures"), relay=True) as c:
        yield c


@pytest.fixture
def cluster(shared_cluster):
    """The module's cluster as it was started, whatever the tests before this one did."""
    return shared_cluster.ready()


def _meta(cluster, job_id):
    return dict(cluster.session.get_job_meta(job_id))


def _wait_round(cluster, job_id, rnd):
    wait_until(
        lambda: (
            (m := _meta(cluster, job_id))["status"] == "RUNNING" and m.get("current_round") == rnd
        ),
        30,
        0.05,
    )


def test_an_abort_mid_round_ends_aborted_and_leaves_no_user_process(cluster, tmp_path):
    job = write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1"))
    job_id = cluster.submit(job)
    _wait_round(cluster, job_id, 1)
    wait_until(lambda: all(cluster.site_job_pids(s) for s in SITES), 20)
    cluster.session.abort_job(job_id)
    assert _meta(cluster, job_id)["status"] == "FINISHED:ABORTED"
    wait_until(lambda: not any(cluster.site_job_pids(s) for s in SITES), 15)
    summary = cluster.result_dir(job_id) / "summary.json"
    wait_until(summary.is_file, 20)
    assert json.loads(summary.read_text())["status"] == "FINISHED:ABORTED"
    assert _meta(cluster, job_id)["status"] == "FINISHED:ABORTED"  # never overwritten
    for site in SITES:
        assert "abort" in (cluster.result_dir(job_id) / "logs" / f"{site}.log").read_text()


def test_a_crashing_script_ends_execution_exception_with_its_stderr_in_the_site_log(
    cluster, tmp_path
):
    args = ("--crash-round", "1", "--crash-site", "site-2")
    job_id = cluster.submit(write_job(tmp_path, tmp_path / "out", extra_args=args))
    meta = cluster.wait_done(job_id)
    assert meta["status"] == "FINISHED:EXECUTION_EXCEPTION"
    reason = meta["status_history"][-1]["reason"]
    assert "site-2" in reason and "deliberate failure in round 1" in reason
    log = (cluster.result_dir(job_id) / "logs" / "site-2.log").read_text()
    assert "about to fail on purpose" in log and "deliberate failure in round 1" in log
    summary = json.loads((cluster.result_dir(job_id) / "summary.json").read_text())
    assert summary["failed_sites"] == ["site-2"]
    assert "about to fail on purpose" in summary["site_errors"]["site-2"]
    shown = cluster.session.show_errors(job_id, "all")
    assert shown["server"][0]["sites"] == ["site-2"]
    assert "deliberate failure" in shown["server"][0]["message"]
    wait_until(lambda: not any(cluster.site_job_pids(s) for s in SITES), 15)


def test_a_site_whose_connection_is_cut_mid_round_comes_back_and_the_job_completes(
    cluster, tmp_path
):
    args = ("--hang-round", "1", "--hang-site", "site-1", "--hang-s", "2")
    job_id = cluster.submit(write_job(tmp_path, tmp_path / "out", extra_args=args))
    _wait_round(cluster, job_id, 1)
    time.sleep(0.5)
    assert cluster.relay is not None
    cluster.relay.cut()
    meta = cluster.wait_done(job_id)
    assert meta["status"] == "FINISHED:COMPLETED", meta["status_history"][-1]
    summary = json.loads((cluster.result_dir(job_id) / "summary.json").read_text())
    assert [sorted(r["participants"]) for r in summary["rounds"]] == [list(SITES)] * 2
    server_log = (cluster.result_dir(job_id) / "logs" / "server.log").read_text()
    assert "reconnected still running the job" in server_log


@pytest.mark.parametrize("min_responses", [1, 2])
def test_a_site_killed_mid_round(cluster, tmp_path, min_responses):
    args = ("--hang-round", "2", "--hang-site", "site-2", "--hang-s", "60")
    job = write_job(
        tmp_path, tmp_path / "out", min_responses=min_responses, rounds=2, extra_args=args
    )
    job_id = cluster.submit(job)
    _wait_round(cluster, job_id, 2)
    time.sleep(0.3)
    cluster.sites["site-2"].proc.kill()
    cluster.sites["site-2"].proc.wait(10)
    try:
        meta = cluster.wait_done(job_id, 30)
        summary = json.loads((cluster.result_dir(job_id) / "summary.json").read_text())
        if min_responses == 1:
            assert meta["status"] == "FINISHED:COMPLETED"
            assert [sorted(r["participants"]) for r in summary["rounds"]] == [
                ["site-1", "site-2"],
                ["site-1"],
            ]
        else:
            assert meta["status"] == "FINISHED:ABNORMAL"
            assert "site-2" in meta["status_history"][-1]["reason"]
            assert summary["failed_sites"] == ["site-2"]
    finally:
        from tests.e2e.jobs_helpers import kill_pids

        kill_pids(cluster.site_job_pids("site-2"))  # the killed site could not clean up
        cluster.sites["site-2"].close()
        cluster.start_site("site-2")
        cluster.wait_connected(SITES)


def test_a_frozen_site_is_lost_after_its_heartbeats_stop_and_the_job_goes_on(cluster, tmp_path):
    import signal

    args = ("--hang-round", "2", "--hang-site", "site-2", "--hang-s", "30")
    job = write_job(tmp_path, tmp_path / "out", min_responses=1, rounds=2, extra_args=args)
    job_id = cluster.submit(job)
    _wait_round(cluster, job_id, 2)
    frozen = cluster.sites["site-2"].proc
    frozen.send_signal(signal.SIGSTOP)  # no TCP reset: only the missing heartbeats tell
    try:
        meta = cluster.wait_done(job_id, 30)
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert meta["status"] == "FINISHED:COMPLETED"
    summary = json.loads((cluster.result_dir(job_id) / "summary.json").read_text())
    assert summary["rounds"][1]["participants"] == {"site-1": 30}
    assert summary["rounds"][1]["lost_sites"] == ["site-2"]
    cluster.wait_connected(SITES)
    # site-2 came back still running the job, which had ended: it is told to abort it.
    wait_until(lambda: not cluster.site_job_pids("site-2"), 20)


def test_admin_commands_reach_the_real_sites_of_a_running_job(cluster, tmp_path):
    job = write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1"))
    job_id = cluster.submit(job)
    _wait_round(cluster, job_id, 1)
    s = cluster.session
    wait_until(lambda: all(job_id in row["running_jobs"] for row in s.get_client_job_status()), 10)
    stats = s.show_stats(job_id, "all")
    assert set(stats) == {"server", *SITES}
    assert stats["server"]["current_round"] == 1
    assert stats["server"]["deployed_sites"] == list(SITES)
    assert all(stats[site]["state"] == "running" for site in SITES), stats.to_dict()
    assert "jobs" in s.ls_target("site-1")
    assert job_id in s.get_job_logs(job_id, "site-2")
    s.abort_job(job_id)
    wait_until(lambda: not any(cluster.site_job_pids(x) for x in SITES), 15)


def test_sites_restart_and_shut_down_when_told(provisioned, tmp_path):
    with Cluster(provisioned, tmp_path) as cluster:  # its own: it shuts the system down
        _restart_and_shut_down(cluster)


def _restart_and_shut_down(cluster):
    s = cluster.session
    registry = cluster.server.server.registry
    before = cluster.server.call(lambda: registry.get("site-1").session_id)
    assert s.restart("client", ["site-1"]) == {"site-1": "restarting"}
    wait_until(
        lambda: (
            (site := cluster.server.call(lambda: registry.get("site-1"))) is not None
            and site.session_id != before
        ),
        20,
    )
    assert cluster.sites["site-1"].proc.poll() is None  # same process, registered again
    assert s.shutdown("client", ["site-2"]) == {"site-2": "stopping"}
    assert cluster.sites["site-2"].proc.wait(20) == 0
    cluster.sites["site-2"].close()
    cluster.start_site("site-2")
    cluster.wait_connected(SITES)
    result = s.shutdown_system()
    assert sorted(result["sites"]) == list(SITES)
    for site in SITES:
        assert cluster.sites[site].proc.wait(20) == 0
