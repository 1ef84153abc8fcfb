"""A server killed (``kill -9``) while a job runs: on restart the job resumes from its last
completed round with the sites that come back within ``resume_grace``, or ends ABNORMAL
saying which did not come back. Real server and site processes, our own certificates."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flare_admin import Session, new_secure_session
from flare_protocol.app_config import FedOptConfig
from flare_protocol.models import load_params
from flare_server.workflows import ServerOptimizer, fedavg
from flare_server.workflows.aggregation import ModelUpdate
from tests.e2e.jobs_helpers import ADMIN, SITES, Relay, kill_pids, sent, write_job
from tests.flare_site.runtime_helpers import SiteProcess, site_kit
from tests.kit_factory import copy_kit
from tests.server_harness import ServerProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

INITIAL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3)}
FEDOPT = {"serveropt": "adam", "learning_rate": 0.5, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}


@dataclass
class Killable:
    """A server process (restartable on the same workspace behind a relay) and real sites."""

    provisioned: Any
    tmp: Path
    settings: dict[str, Any]
    server: ServerProcess = field(init=False)
    relay: Relay = field(init=False)
    kits: dict[str, Path] = field(default_factory=dict)
    sites: dict[str, SiteProcess] = field(default_factory=dict)
    servers: list[ServerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server_kit = copy_kit(self.provisioned, "localhost", self.tmp / "kits")
        (self.server_kit / "local" / "settings.json").write_text(json.dumps(self.settings))
        self.workspace = self.tmp / "server-ws"
        self.kits = {s: site_kit(self.provisioned, self.tmp / "kits", s) for s in SITES}

    def start(self) -> Killable:
        self.server = ServerProcess(self.server_kit, self.workspace).start()
        self.servers.append(self.server)
        self.relay = Relay(int(self.server.ready["fed_learn_port"]))
        for site in SITES:
            self.sites[site] = SiteProcess(self.kits[site], self.relay.address)
        return self

    def session(self) -> Session:
        return new_secure_session(
            ADMIN, self.provisioned.kits[ADMIN], server_address=self.server.admin_address
        )

    def kill_and_restart(self) -> None:
        """``kill -9`` the server, start it again on the same workspace."""
        self.server.kill()
        self.server = ServerProcess(self.server_kit, self.workspace).start()
        self.servers.append(self.server)
        self.relay.target_port = int(self.server.ready["fed_learn_port"])
        self.relay.cut()

    def job_pids(self, site: str) -> list[int]:
        jobs = str((self.kits[site] / "workspace" / "jobs").resolve())
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/cwd").startswith(jobs + "/"):
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    def kill_site(self, site: str) -> None:
        self.sites[site].proc.send_signal(signal.SIGKILL)
        self.sites[site].proc.wait(10)
        kill_pids(self.job_pids(site))

    def server_log(self) -> str:
        path = self.workspace.parent / f"{self.workspace.name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def checkpoint_round(self, job_id: str) -> int | None:
        path = self.workspace / "jobs" / job_id / "checkpoint" / "state.json"
        try:
            return int(json.loads(path.read_text())["round"])
        except (OSError, ValueError, KeyError):
            return None

    def close(self) -> None:
        for proc in self.sites.values():
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGKILL)
            proc.close()
        for site in SITES:
            kill_pids(self.job_pids(site))
        self.relay.close()
        for server in self.servers:
            server.kill()


@pytest.fixture
def cluster(provisioned: Any, tmp_path: Path) -> Iterator[Killable]:
    settings = {
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 3.0,
        "reconnect_grace": 3.0,
        "log_wait": 5.0,
        "resume_grace": 15.0,
        "log_level": "DEBUG",  # the job's log says which updates it took
    }
    killable = Killable(provisioned, tmp_path, settings).start()
    try:
        yield killable
    finally:
        killable.close()


def _expected_model(out: Path, rounds: int, fedopt: bool) -> dict[str, np.ndarray]:
    """What an uninterrupted run makes of what each site sent, round after round."""
    model: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in INITIAL.items()}
    optimizer = ServerOptimizer(FedOptConfig(**FEDOPT)) if fedopt else None
    for rnd in range(1, rounds + 1):
        updates = {}
        for site in SITES:
            params, n = sent(out, site, rnd)
            updates[site] = ModelUpdate(params, "FULL", n)
        model = optimizer.aggregate(model, updates) if optimizer else fedavg(model, updates)
    return model


def _submit(
    cluster: Killable, tmp: Path, *extra: str, fedopt: bool = False, validate: bool = False
) -> tuple[str, Path]:
    out = tmp / "out"
    job = write_job(
        tmp,
        out,
        rounds=3,
        extra_args=extra,
        initial=INITIAL,
        workflow="fedopt" if fedopt else "fedavg",
        fedopt=FEDOPT if fedopt else None,
        validate=validate,
    )
    with cluster.session() as s:
        wait_until(lambda: len(s.get_connected_client_list()) == 2, 30)
        return s.submit_job(str(job)), out


def _check_resumed_and_complete(
    cluster: Killable, job_id: str, out: Path, tmp: Path, *, fedopt: bool = False
) -> None:
    with cluster.session() as s:
        wait_until(lambda: s.get_job_meta(job_id)["status"].startswith("FINISHED"), 60)
        meta = s.get_job_meta(job_id)
        assert meta["status"] == "FINISHED:COMPLETED", meta["status_history"][-1]
        (interruption,) = meta["interruptions"]
        assert interruption["resumed"] is True and interruption["resumed_from_round"] == 1
        assert interruption["sites_back"] == list(SITES) and interruption["sites_lost"] == {}
        assert interruption["last_checkpoint_at"] <= interruption["restarted_at"]
        summary = s.get_job_summary(job_id)
        assert summary["rounds_completed"] == 3 and [r["round"] for r in summary["rounds"]] == [
            1,
            2,
            3,
        ]
        assert summary["interruptions"] == meta["interruptions"]
        for entry in summary["rounds"]:  # every site's update counted once per round
            assert entry["participants"] == {"site-1": 30, "site-2": 70}
        model = load_params(s.download_model(job_id, tmp / "final.npz"))
        (tmp / "result").mkdir()
        result = Path(s.download_job_result(job_id, tmp / "result"))
    expected = _expected_model(out, 3, fedopt)
    for name, value in expected.items():
        np.testing.assert_allclose(model[name], value, rtol=1e-6)
    assert (result / "global_model.npz").is_file()
    assert sorted(p.name for p in (result / "models").iterdir()) == [
        "round_001.npz",
        "round_002.npz",
        "round_003.npz",
    ]
    job_dir = cluster.workspace / "jobs" / job_id
    assert not (job_dir / "checkpoint").exists() and not (job_dir / "work").exists()


def test_a_server_killed_between_rounds_resumes_the_job_from_its_last_round(
    cluster: Killable, tmp_path: Path
) -> None:
    # FedOpt with validation: the optimiser's state and the validations must carry over
    # too (the mid-round test below runs FedAvg).
    hang = ("--hang-round", "2", "--hang-s", "1.5")
    job_id, out = _submit(cluster, tmp_path, *hang, fedopt=True, validate=True)
    # Round 1 is aggregated and checkpointed; the sites validate its model or work on
    # round 2, no update of round 2 arrived.
    wait_until(lambda: cluster.checkpoint_round(job_id) == 1, 30, interval=0.05)
    cluster.kill_and_restart()
    _check_resumed_and_complete(cluster, job_id, out, tmp_path, fedopt=True)
    with cluster.session() as s:  # each site's validation of each round counted once
        rows = s.get_validations(job_id)
    assert sorted((r.site, r.round) for r in rows) == [
        (site, rnd) for site in SITES for rnd in (1, 2, 3)
    ]


def test_a_server_killed_mid_round_redoes_that_round_without_counting_an_update_twice(
    cluster: Killable, tmp_path: Path
) -> None:
    job_id, out = _submit(
        cluster, tmp_path, "--hang-round", "2", "--hang-site", "site-2", "--hang-s", "2"
    )
    # site-1's update of round 2 is in the server's running sums, site-2's is not yet.
    wait_until(lambda: "task r2-train-site-1 taken" in cluster.server_log(), 30, interval=0.05)
    wait_until(lambda: cluster.checkpoint_round(job_id) == 1, 10, interval=0.05)
    cluster.kill_and_restart()
    _check_resumed_and_complete(cluster, job_id, out, tmp_path)
    log = cluster.server_log()
    # The resumed round's tasks carry the attempt; both sites trained round 2 again.
    assert "task r2.1-train-site-1 taken" in log and "task r2.1-train-site-2 taken" in log
    assert "task r2-train-site-2 taken" not in log  # its pre-crash update was refused


def test_a_job_whose_sites_do_not_come_back_ends_abnormal_after_the_grace(
    provisioned: Any, tmp_path: Path
) -> None:
    settings = {"heartbeat_interval": 0.2, "heartbeat_timeout": 3.0, "resume_grace": 2.0}
    cluster = Killable(provisioned, tmp_path, settings).start()
    try:
        job_id, _ = _submit(cluster, tmp_path, "--hang-round", "2", "--hang-s", "600")
        wait_until(lambda: cluster.checkpoint_round(job_id) == 1, 30, interval=0.05)
        cluster.kill_site("site-2")
        cluster.kill_and_restart()
        with cluster.session() as s:
            wait_until(lambda: s.get_job_meta(job_id)["status"].startswith("FINISHED"), 30)
            meta = s.get_job_meta(job_id)
            reason = meta["status_history"][-1]["reason"]
            assert meta["status"] == "FINISHED:ABNORMAL"
            assert reason.startswith("server restarted while the job was RUNNING; 1 of its 2 site")
            assert "site-2 did not reconnect within 2 s of the server restart" in reason
            (interruption,) = meta["interruptions"]
            assert interruption["resumed"] is False and interruption["sites_back"] == ["site-1"]
            summary = s.get_job_summary(job_id)
            assert summary["interruptions"] == meta["interruptions"]
            assert summary["rounds_completed"] == 1 and summary["failed_sites"] == ["site-2"]
            assert any(
                "did not reconnect" in e["message"]
                for e in s.show_errors(job_id, "server")["server"]
            )
        # site-1 came back and was told the job ended: its user code is gone.
        wait_until(lambda: not cluster.job_pids("site-1"), 20)
    finally:
        cluster.close()


def test_a_driver_job_is_not_resumed_and_ends_abnormal_saying_why(
    cluster: Killable, tmp_path: Path
) -> None:
    job = write_job(tmp_path, tmp_path / "out", name="driven")
    (job / "app" / "config" / "config_fed_server.json").write_text('{"workflow": "driver"}')
    with cluster.session() as s:
        wait_until(lambda: len(s.get_connected_client_list()) == 2, 30)
        job_id = s.submit_job(str(job))
        wait_until(lambda: s.get_job_meta(job_id)["status"] == "RUNNING", 30)
    wait_until(lambda: all(cluster.job_pids(site) for site in SITES), 20)
    state = cluster.workspace / "jobs" / job_id / "checkpoint" / "state.json"
    wait_until(state.exists, 10)
    assert json.loads(state.read_text())["workflow"] == "driver"
    cluster.kill_and_restart()
    with cluster.session() as s:
        meta = s.get_job_meta(job_id)  # decided before the server listened
        assert meta["status"] == "FINISHED:ABNORMAL"
        reason = meta["status_history"][-1]["reason"]
        assert reason.startswith("server restarted while the job was RUNNING; a driver job is")
        assert "submit the job again" in reason
    # The sites came back still running it and were told to abort it.
    wait_until(lambda: not any(cluster.job_pids(site) for site in SITES), 20)
    assert not (cluster.workspace / "jobs" / job_id / "checkpoint").exists()
