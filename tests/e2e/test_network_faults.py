"""Real network faults: a server and two sites in their own network namespaces.

Each test provisions a project whose server certificate names the server namespace's
address (the address the sites dial, so TLS verifies it as in production), starts
``flare server start`` and two ``flare site start`` with ``ip netns exec``, and runs a
FedAvg job whose script logs every task it trains (``trained.jsonl``) and saves every
update it sends. Links are cut (``ip link set DEV down``) and restored in the middle of
a round, or slowed down with ``tc``. Every test shows:

* the job finishes: COMPLETED when the sites come back within ``reconnect_grace``, or
  as ``min_responses`` dictates when one does not;
* a cut site reconnects by itself, with exponential back-off bounded by
  ``reconnect_max``;
* no task is applied twice: per round each site trained at most once (its own log), is
  counted at most once (the run summary and the metric rows), and the final global
  model is the FedAvg of exactly what the counted sites sent;
* nothing hangs: every wait is bounded, and the namespaces are gone afterwards.

The tests skip, saying why, where network namespaces cannot be made (not root, no
iproute2), and the netem variant where the kernel lacks ``sch_netem``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flare_admin import Session, new_secure_session
from tests.e2e.jobs_helpers import kill_pids, sent, write_job
from tests.flare_site.runtime_helpers import FAST_SETTINGS
from tests.netns import NetLab, netem_available, sweep_stale, unavailable_reason
from tests.server_harness import REPO, wait_until

pytestmark = pytest.mark.slow

SITES = ("site-1", "site-2")
ADMIN = "admin@lab.org"
#: Seconds the server waits for a silent site (heartbeats every 0.2 s).
HEARTBEAT_TIMEOUT = 2.0
RECONNECT_INITIAL = 0.2
RECONNECT_MAX = 1.6

#: The job's script: logs each task it trains (append-only), then trains as
#: tests/e2e/jobs_helpers.SCRIPT does (a deterministic update per site and round, saved).
SCRIPT = """
import json, sys, time, zlib
from pathlib import Path
import numpy as np
import flare_site.client as flare

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out = Path(args["--out"])
pause = float(args.get("--pause", "0"))
flare.init()
site = flare.get_site_name()
folder = out / site
folder.mkdir(parents=True, exist_ok=True)
n = 30 if site.endswith("1") else 70
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    r = model.current_round
    with open(folder / "trained.jsonl", "a") as log:
        log.write(json.dumps({"round": r, "time": time.time()}) + "\\n")
    time.sleep(pause)
    rng = np.random.default_rng(zlib.crc32(f"{site}-{r}".encode()))
    params = {k: np.asarray(v) + rng.normal(size=np.shape(v)).astype(np.asarray(v).dtype)
              for k, v in model.params.items()}
    np.savez(folder / f"round_{r}.npz", **params)
    (folder / f"round_{r}.json").write_text(json.dumps({"num_examples": n}))
    flare.log_metric("trained", 1.0)
    flare.send(flare.FLModel(params=params, params_type="FULL",
                             metrics={"n": float(n)}, meta={"num_examples": n}))
"""


def _project_yml(server_ip: str) -> str:
    sites = "".join(f"  - name: {s}\n    type: client\n    org: lab\n" for s in SITES)
    return (
        "api_version: 3\nname: netlab\nparticipants:\n"
        # the server's name is the address the sites dial: its certificate's SAN
        f"  - name: {server_ip}\n    type: server\n    org: lab\n"
        "    fed_learn_port: 8102\n    admin_port: 8103\n"
        f"{sites}"
        f"  - name: {ADMIN}\n    type: admin\n    org: lab\n    role: project_admin\n"
    )


class Federation:
    """``flare server start`` in the lab's server namespace and ``flare site start`` in each
    site's, from a project provisioned for the lab's addresses; an admin Session dialling
    the server's address from the host (a context manager)."""

    def __init__(self, lab: NetLab, tmp: Path, *, reconnect_grace: float) -> None:
        from provisioning import provision

        self.lab = lab
        self.tmp = tmp
        project = tmp / "project.yml"
        project.write_text(_project_yml(lab.server_ip))
        self.kits = provision(project, tmp / "provision").kits
        self.server_kit = self.kits[lab.server_ip]
        (self.server_kit / "local" / "settings.json").write_text(
            json.dumps(
                {
                    "heartbeat_interval_s": 0.2,
                    "heartbeat_timeout_s": HEARTBEAT_TIMEOUT,
                    "reconnect_grace_s": reconnect_grace,
                    "deploy_timeout_s": 30,
                    "log_wait_s": 5,
                    "grace_period_s": 0.5,
                }
            )
        )
        site_settings = {
            **FAST_SETTINGS,
            "reconnect_initial_s": RECONNECT_INITIAL,
            "reconnect_max_s": RECONNECT_MAX,
        }
        for site in SITES:
            (self.kits[site] / "local" / "settings.json").write_text(json.dumps(site_settings))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.session: Session
        self.ready: dict[str, Any] = {}

    def _spawn(self, name: str, ns: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.stderr", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                self.lab.argv(ns, sys.executable, "-m", "flare_cli.main", *args),
                stdout=log,
                stderr=log,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()

    def stderr(self, name: str) -> str:
        path = self.tmp / f"{name}.stderr"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def __enter__(self) -> Federation:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        lab = self.lab
        ready_file = self.tmp / "server.ready.json"
        self.procs["server"] = self._spawn(
            "server", lab.server_ns, "server", "start", str(self.server_kit),
            "--workspace", str(self.tmp / "server-ws"), "--host", lab.server_ip,
            "--admin-port", "0", "--fed-learn-port", "0", "--ready-file", str(ready_file),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not ready_file.exists():
            if self.procs["server"].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {self.stderr('server')}")
            time.sleep(0.05)
        self.ready = json.loads(ready_file.read_text())
        for site in SITES:
            self.procs[site] = self._spawn(
                site, lab.site_ns[site], "site", "start", str(self.kits[site]),
                "--server", self.site_address,
            )  # fmt: skip
        self.session = new_secure_session(
            ADMIN, self.kits[ADMIN], server_address=f"{lab.server_ip}:{self.ready['admin_port']}"
        )
        self.wait_connected(SITES, 30)

    @property
    def site_address(self) -> str:
        return f"{self.lab.server_ip}:{self.ready['fed_learn_port']}"

    def connected(self) -> set[str]:
        return {s.name for s in self.session.get_connected_client_list()}

    def wait_connected(self, sites: tuple[str, ...], timeout: float) -> None:
        try:
            wait_until(lambda: set(sites) <= self.connected(), timeout, 0.1)
        except AssertionError:
            logs = {s: self.stderr(s)[-800:] for s in sites}
            raise AssertionError(f"{sites} not all connected within {timeout} s: {logs}") from None

    def site_log(self, site: str) -> str:
        return (self.kits[site] / "workspace" / "logs" / "site.log").read_text(errors="replace")

    def wait_done(self, job_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            meta = dict(self.session.get_job_meta(job_id))
            if str(meta["status"]).startswith("FINISHED"):
                meta["reason"] = self.session.get_job_summary(job_id).reason
                return meta
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {meta['status']} after {timeout} s")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if hasattr(self, "session"):
            self.session.close()
        for name in (*SITES, "server"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for site in SITES:  # user code a killed site could not stop
            jobs = str((self.kits[site] / "workspace" / "jobs").resolve())
            kill_pids(
                [
                    int(p)
                    for p in os.listdir("/proc")
                    if p.isdigit() and _cwd(p).startswith(jobs + "/")
                ]
            )


def _cwd(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


@pytest.fixture
def lab() -> Iterator[NetLab]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    sweep_stale()
    with NetLab(SITES) as made:
        yield made
    assert not made.exists(), "the test network was not removed"


def _job(tmp: Path, *, rounds: int, min_responses: int, pause: float) -> tuple[Path, Path]:
    out = tmp / "sent"
    job = write_job(
        tmp / "jobs", out, rounds=rounds, min_responses=min_responses, round_timeout=60,
        extra_args=("--pause", str(pause)),
    )  # fmt: skip
    (job / "app" / "custom" / "train.py").write_text(SCRIPT)
    return job, out


def _trained(out: Path, site: str) -> list[int]:
    """The rounds ``site``'s user code trained, in order, one entry per task it ran."""
    path = out / site / "trained.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["round"] for line in path.read_text().splitlines()]


def _check_each_update_once(fed: Federation, job_id: str, out: Path) -> list[dict[str, int]]:
    """Each site trained each round at most once, was counted at most once per round (the
    summary, the metric rows), and the final model is the FedAvg of exactly what the
    counted sites sent. Returns the participants of each round."""
    for site in SITES:
        trained = _trained(out, site)
        assert len(trained) == len(set(trained)), f"{site} trained a round twice: {trained}"
    summary = fed.session.get_job_summary(job_id)
    participants = [dict(r.participants) for r in summary.rounds]
    rows = fed.session.get_job_metrics(job_id, key="trained")
    twice = [k for k, n in Counter((r.site, r.round) for r in rows).items() if n > 1]
    assert not twice, f"a (site, round) metric arrived twice: {twice}"
    if summary.has_final_model:
        model = None
        for number, who in enumerate(participants, start=1):
            updates = [sent(out, site, number) for site in who]
            total = sum(n for _, n in updates)
            model = {k: sum(p[k] * n for p, n in updates) / total for k in updates[0][0]}
        path = fed.session.download_model(job_id, fed.tmp / "final.npz")
        with np.load(path, allow_pickle=False) as final:
            assert model is not None and set(final.files) == set(model)
            for key in model:
                np.testing.assert_allclose(final[key], model[key], rtol=1e-5, atol=1e-6)
    return participants


_DELAY = re.compile(r"reconnecting in (\d+\.\d+) s")


def _backoff_delays(log: str) -> list[float]:
    return [float(d) for d in _DELAY.findall(log)]


@pytest.mark.timeout(90)
def test_a_link_cut_mid_round_and_restored_the_job_completes_each_update_counted_once(
    lab: NetLab, tmp_path: Path
) -> None:
    with Federation(lab, tmp_path, reconnect_grace=20) as fed:
        job, out = _job(tmp_path, rounds=4, min_responses=2, pause=1.0)
        job_id = fed.session.submit_job(str(job))
        # site-1 is in the middle of round 2's training: cut it off for longer than the
        # server's heartbeat timeout, so both ends notice.
        wait_until(lambda: 2 in _trained(out, "site-1"), 30, 0.05)
        lab.cut("site-1")
        wait_until(lambda: "site-1" not in fed.connected(), 10, 0.1)
        time.sleep(1.0)
        lab.restore("site-1")
        fed.wait_connected(("site-1",), 15)
        meta = fed.wait_done(job_id, 60)

        assert meta["status"] == "FINISHED:COMPLETED", meta["reason"]
        participants = _check_each_update_once(fed, job_id, out)
        assert participants == [{"site-1": 30, "site-2": 70}] * 4
        assert _trained(out, "site-1") == [1, 2, 3, 4]
        log = fed.site_log("site-1")
        assert "connection to" in log and "lost" in log
        assert log.count("registered with") >= 2
        assert all(d <= RECONNECT_MAX for d in _backoff_delays(log))


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("min_responses", "status"), [(1, "FINISHED:COMPLETED"), (2, "FINISHED:ABNORMAL")]
)
def test_a_site_cut_off_for_good_ends_the_job_as_min_responses_says_then_reconnects(
    lab: NetLab, tmp_path: Path, min_responses: int, status: str
) -> None:
    with Federation(lab, tmp_path, reconnect_grace=1.0) as fed:
        job, out = _job(tmp_path, rounds=4, min_responses=min_responses, pause=0.5)
        job_id = fed.session.submit_job(str(job))
        wait_until(lambda: 2 in _trained(out, "site-2"), 30, 0.05)
        lab.cut("site-2")
        meta = fed.wait_done(job_id, 45)

        assert meta["status"] == status, meta["reason"]
        participants = _check_each_update_once(fed, job_id, out)
        assert participants[0] == {"site-1": 30, "site-2": 70}
        if min_responses == 1:  # the job went on without site-2, to its last round
            assert len(participants) == 4 and participants[-1] == {"site-1": 30}
        else:
            assert "site-2" in str(fed.session.get_job_summary(job_id).reason)
        # site-2 keeps dialling, backing off up to reconnect_max, and comes back
        wait_until(lambda: len(_backoff_delays(fed.site_log("site-2"))) >= 4, 30, 0.2)
        lab.restore("site-2")
        fed.wait_connected(("site-2",), RECONNECT_MAX + 10)
        delays = _backoff_delays(fed.site_log("site-2"))
        assert delays[0] <= RECONNECT_INITIAL
        assert all(d <= RECONNECT_MAX for d in delays)
        assert max(delays) >= RECONNECT_MAX / 2, f"the back-off never grew: {delays}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["netem", "tbf"])
def test_a_slow_lossy_link_delays_the_job_but_it_completes(
    lab: NetLab, tmp_path: Path, kind: str
) -> None:
    if kind == "netem":
        reason = netem_available()
        if reason:
            pytest.skip(reason)
    with Federation(lab, tmp_path, reconnect_grace=20) as fed:
        for site in SITES:
            if kind == "netem":
                lab.netem(site, "delay", "50ms", "loss", "5%")
            else:  # no netem in this kernel: 1 Mbit/s, packets queued over 50 ms dropped
                lab.shape(site, rate="1mbit", burst="8kb", latency="50ms")
        job, out = _job(tmp_path, rounds=3, min_responses=2, pause=0.0)
        started = time.monotonic()
        job_id = fed.session.submit_job(str(job))
        meta = fed.wait_done(job_id, 60)

        assert meta["status"] == "FINISHED:COMPLETED", meta["reason"]
        participants = _check_each_update_once(fed, job_id, out)
        assert participants == [{"site-1": 30, "site-2": 70}] * 3
        assert time.monotonic() - started < 60
        for site in SITES:  # the job's traffic went through the degraded links
            stats = lab.qdisc_stats(site)  # (about 10 KB each: small app, small models)
            assert kind in stats and re.search(r"Sent [1-9]\d{3,} bytes", stats), stats


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_flapping_links_over_many_rounds_every_update_counted_once(
    lab: NetLab, tmp_path: Path
) -> None:
    """Both sites' links go down and up, in turn, every few seconds for a 12-round job."""
    with Federation(lab, tmp_path, reconnect_grace=30) as fed:
        job, out = _job(tmp_path, rounds=12, min_responses=2, pause=0.5)
        job_id = fed.session.submit_job(str(job))
        cuts = 0
        deadline = time.monotonic() + 240
        while not str(fed.session.get_job_meta(job_id)["status"]).startswith("FINISHED"):
            assert time.monotonic() < deadline, "the job did not finish under flapping links"
            site = SITES[cuts % 2]
            lab.cut(site)
            time.sleep(HEARTBEAT_TIMEOUT + 1.0)
            lab.restore(site)
            cuts += 1
            time.sleep(3.0)
        meta = fed.wait_done(job_id, 5)

        assert meta["status"] == "FINISHED:COMPLETED", meta["reason"]
        participants = _check_each_update_once(fed, job_id, out)
        assert participants == [{"site-1": 30, "site-2": 70}] * 12
        assert cuts >= 3
        for site in SITES:
            assert _trained(out, site) == list(range(1, 13))
