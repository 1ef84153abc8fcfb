"""A server killed mid-job with resuming turned off (``resume_grace`` 0): on restart the job
ends ABNORMAL as it did before resuming existed, and the sites clean up. Resuming (the
default) is tested in test_jobs_resume.py."""

from __future__ import annotations

import json

import pytest

from flare_admin import new_secure_session
from tests.e2e.jobs_helpers import ADMIN, SITES, Relay, kill_pids, write_job
from tests.flare_site.runtime_helpers import SiteProcess, site_kit
from tests.kit_factory import copy_kit
from tests.server_harness import ServerProcess, wait_until

pytestmark = pytest.mark.timeout(120)


def _job_pids(kit):
    import os

    jobs = str((kit / "workspace" / "jobs").resolve())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(jobs + "/"):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_with_resuming_off_a_server_killed_mid_job_ends_it_abnormal_and_sites_clean_up(
    provisioned, tmp_path
):
    server_kit = copy_kit(provisioned, "localhost", tmp_path / "kits")
    (server_kit / "local" / "settings.json").write_text(
        json.dumps({"heartbeat_interval": 0.2, "heartbeat_timeout": 3.0, "resume_grace": 0})
    )
    kits = {s: site_kit(provisioned, tmp_path / "kits", s) for s in SITES}
    workspace = tmp_path / "server-ws"
    server = ServerProcess(server_kit, workspace).start()
    relay = Relay(int(server.ready["fed_learn_port"]))
    sites = [SiteProcess(kits[s], relay.address) for s in SITES]
    restarted = None
    try:
        with new_secure_session(
            ADMIN, provisioned.kits[ADMIN], server_address=server.admin_address
        ) as s:
            wait_until(lambda: len(s.get_connected_client_list()) == 2, 30)
            job = write_job(tmp_path, tmp_path / "out", extra_args=("--hang-round", "1"))
            job_id = s.submit_job(str(job))
            wait_until(lambda: s.get_job_meta(job_id)["status"] == "RUNNING", 30)
        wait_until(lambda: all(_job_pids(kits[x]) for x in SITES), 20)

        server.kill()
        restarted = ServerProcess(server_kit, workspace).start()
        relay.target_port = int(restarted.ready["fed_learn_port"])
        relay.cut()
        with new_secure_session(
            ADMIN, provisioned.kits[ADMIN], server_address=restarted.admin_address
        ) as s:
            meta = s.get_job_meta(job_id)
            assert meta["status"] == "FINISHED:ABNORMAL"
            assert "server restarted" in meta["status_history"][-1]["reason"]
            wait_until(lambda: len(s.get_connected_client_list()) == 2, 30)
        # The sites re-registered still running the job; the server told them to abort it.
        wait_until(lambda: not any(_job_pids(kits[x]) for x in SITES), 20)
        # The interrupted result folder was closed: summary written, logs marked complete.
        result = workspace / "jobs" / job_id / "result"
        summary = json.loads((result / "summary.json").read_text())
        assert summary["status"] == "FINISHED:ABNORMAL"
        assert summary["interrupted_while"] == "RUNNING"
        assert (result / "metrics.jsonl").read_text().endswith('{"complete": true}\n')
        assert not (workspace / "jobs" / job_id / "work").exists()
    finally:
        for site in sites:
            site.close()
        for site in SITES:
            kill_pids(_job_pids(kits[site]))
        relay.close()
        server.kill()
        if restarted is not None:
            restarted.kill()
