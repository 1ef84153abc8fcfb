"""Floods and slow peers against a real server process: a legitimate admin stays served.

Each test runs one flood (``tests/flare_server/flood.py``, in its own process) against one
``flare server start`` process, while this process plays a legitimate admin calling
``get_job_meta`` on its own, already open, connection, and samples the server's resident
memory (``VmRSS`` in ``/proc/<pid>/status``). Every test asserts the admin's p99 latency
(under :data:`P99_BOUND` s, no call failed) and the server's peak RSS (under
:data:`RSS_BOUND_MIB`), and what the flood itself was answered.

The CI variants (``slow``) are scaled down; the ``soak`` variants run the full sizes of
issue 13 (1,000 connections, 200 sessions): ``make test-soak``. Each prints one line
``FLOOD <kind> ...`` with the figures (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flare_protocol._generated import admin_pb2
from flare_server.jobs import JobStatus, JobStore, Submitter
from tests.flare_server.conftest import job_zip
from tests.kit_factory import copy_kit
from tests.server_harness import REPO, ServerProcess, admin_stub, wait_until

ADMIN = "admin@org_a.com"
#: The greedy or hostile identity (a lead may submit, download its own jobs, list).
FLOODER = "lead@org_b.com"
#: The legitimate admin's get_job_meta p99 must stay under this (seconds).
P99_BOUND = 0.100
#: The legitimate admin's list_jobs (a store read in a worker thread) must stay under this:
#: a flood must not take the server's worker threads (seconds).
LIST_BOUND = 1.0
#: The server's resident memory must stay under this during every flood (MiB).
RSS_BOUND_MIB = 400
#: Seconds an upload may stall before the server ends it (the test server's setting).
UPLOAD_IDLE_TIMEOUT = 3
#: Size of the result file the slow readers download.
RESULT_BYTES = 64 << 20


@dataclass
class Flooded:
    """What one flood did: the admin's latencies, the server's RSS, the flood's outcomes."""

    kind: str
    clients: int
    latencies: list[float]
    failures: list[str]
    #: The admin's list_jobs calls (work in the server's worker threads), one in ten.
    list_latencies: list[float]
    rss_before_kib: int
    rss_peak_kib: int
    outcomes: dict[str, int]

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98]

    def line(self) -> str:
        lat = sorted(self.latencies)
        return (
            f"FLOOD {self.kind} clients={self.clients} calls={len(lat)} "
            f"p50={statistics.median(lat) * 1000:.1f}ms p99={self.p99 * 1000:.1f}ms "
            f"max={lat[-1] * 1000:.1f}ms list_jobs_max={max(self.list_latencies) * 1000:.1f}ms "
            f"rss_before={self.rss_before_kib // 1024}MiB "
            f"rss_peak={self.rss_peak_kib // 1024}MiB outcomes={json.dumps(self.outcomes)}"
        )


def rss_kib(pid: int) -> int:
    """The process's resident set size (``VmRSS``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every 20 ms; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kib(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))


@dataclass
class FloodServer:
    srv: ServerProcess
    job_id: str
    workspace: Path
    kits: dict[str, Path]

    @property
    def pid(self) -> int:
        assert self.srv.proc is not None
        return self.srv.proc.pid


@pytest.fixture(scope="module")
def flood_server(
    provisioned: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FloodServer]:
    """One server process for the module's floods, with a finished job of FLOODER's whose
    result holds one 64 MiB file (for the slow readers)."""
    base = tmp_path_factory.mktemp("floods")
    kit = copy_kit(provisioned, "localhost", base)
    settings = kit / "local" / "settings.json"
    doc = json.loads(settings.read_text()) if settings.exists() else {}
    settings.write_text(json.dumps({**doc, "upload_idle_timeout": UPLOAD_IDLE_TIMEOUT}))
    workspace = base / "ws"
    job_id = _finished_job(workspace / "jobs", base)
    with ServerProcess(kit, workspace) as srv:
        yield FloodServer(srv, job_id, workspace, {n: Path(p) for n, p in provisioned.kits.items()})


def _finished_job(jobs: Path, scratch: Path) -> str:
    """A job submitted by FLOODER, ended, with a big result file (written offline)."""
    archive = scratch / "job.zip"
    archive.write_bytes(job_zip())
    store = JobStore.open(jobs)
    try:
        meta = store.create_job_from_archive(archive, Submitter(FLOODER, "org_b", "lead"))
        job_id = str(meta["job_id"])
        store.set_status(job_id, JobStatus.FINISHED_ABORTED, reason="for the flood tests")
        with open(store.result_dir(job_id) / "big.bin", "wb") as f:
            f.write(os.urandom(1 << 20) * (RESULT_BYTES >> 20))
    finally:
        store.close()
    return job_id


def flood(fs: FloodServer, kind: str, clients: int, seconds: float) -> Flooded:
    """Run ``clients`` clients of ``kind`` for ``seconds`` while the admin calls
    get_job_meta every 10 ms on its open connection and the server's RSS is sampled."""
    stub, channel = admin_stub(fs.kits[ADMIN], fs.srv.admin_address)
    request = admin_pb2.JobRequest(job_id=fs.job_id)
    with channel:
        for _ in range(20):  # connected and warm
            stub.GetJobMeta(request, timeout=10)
        rss_before = rss_kib(fs.pid)
        sampler = RssSampler(fs.pid)
        sampler.start()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.flare_server.flood",
                kind,
                "--kit",
                str(fs.kits[FLOODER]),
                "--address",
                fs.srv.admin_address,
                "-n",
                str(clients),
                "--seconds",
                str(seconds),
                "--job",
                fs.job_id,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            # Bounded: a server whose worker threads the flood took never lets it start.
            assert select.select([proc.stdout], [], [], 60)[0], f"flood {kind} not under way"
            first = proc.stdout.readline()
            assert first.strip() == "ready", f"flood {kind} did not start: {first}{proc.stderr}"
            latencies: list[float] = []
            list_latencies: list[float] = []
            failures: list[str] = []
            end = time.monotonic() + seconds - 0.5
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    stub.GetJobMeta(request, timeout=5)
                except Exception as exc:  # counted and reported, never hidden
                    failures.append(repr(exc)[:300])
                latencies.append(time.perf_counter() - t0)
                if len(latencies) % 10 == 0:
                    t0 = time.perf_counter()
                    try:
                        stub.ListJobs(admin_pb2.ListJobsRequest(limit=5), timeout=5)
                    except Exception as exc:
                        failures.append(repr(exc)[:300])
                    list_latencies.append(time.perf_counter() - t0)
                time.sleep(0.01)
            out, err = proc.communicate(timeout=seconds + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sampler.done.set()
            sampler.join()
    assert proc.returncode == 0, err[-3000:]
    result = Flooded(
        kind,
        clients,
        latencies,
        failures,
        list_latencies,
        rss_before,
        sampler.peak,
        json.loads(out.strip().splitlines()[-1]),
    )
    print(result.line())
    return result


def assert_served(result: Flooded) -> None:
    """The admin was served all along, fast, and the server's memory stayed bounded."""
    assert not result.failures, result.failures[:5]
    assert result.p99 < P99_BOUND, result.line()
    assert max(result.list_latencies) < LIST_BOUND, result.line()
    assert result.rss_peak_kib < RSS_BOUND_MIB * 1024, result.line()


def upload_temp_files(fs: FloodServer) -> list[Path]:
    return list((fs.workspace / "jobs").rglob("upload-*"))


# -- the floods -----------------------------------------------------------------------------


def check_handshake_flood(fs: FloodServer, clients: int, seconds: float) -> None:
    result = flood(fs, "handshake", clients, seconds)
    assert_served(result)
    assert result.outcomes["opened"] >= clients


def check_metadata_flood(fs: FloodServer, clients: int, seconds: float) -> None:
    result = flood(fs, "metadata", clients, seconds)
    assert_served(result)
    assert set(result.outcomes) == {"RESOURCE_EXHAUSTED"}  # refused by grpc core, every one


def check_stalled_uploads(fs: FloodServer, clients: int, seconds: float) -> None:
    result = flood(fs, "stalled-upload", clients, seconds)
    assert_served(result)
    stalled = result.outcomes.get("RESOURCE_EXHAUSTED/LimitExceeded/upload_idle_timeout", 0)
    refused = result.outcomes.get("RESOURCE_EXHAUSTED/LimitExceeded/max_uploads_per_identity", 0)
    assert stalled == min(clients, 8)  # the default max_uploads_per_identity
    assert refused == clients - stalled
    wait_until(lambda: not upload_temp_files(fs), timeout=5)


def check_slow_readers(fs: FloodServer, clients: int, seconds: float) -> None:
    result = flood(fs, "slow-download", clients, seconds)
    assert_served(result)
    # Each reader got a little (flow control holds the rest back), not the whole file.
    assert 0 < result.outcomes["messages"] < clients * (RESULT_BYTES >> 20)


def check_list_jobs_hammer(fs: FloodServer, clients: int, seconds: float) -> None:
    result = flood(fs, "list-jobs", clients, seconds)
    assert_served(result)
    assert result.outcomes["OK"] > 0
    over = set(result.outcomes) - {"OK"}
    assert over <= {"RESOURCE_EXHAUSTED/LimitExceeded/max_calls_per_identity"}


FLOODS = {
    "handshake": check_handshake_flood,
    "metadata": check_metadata_flood,
    "stalled-upload": check_stalled_uploads,
    "slow-download": check_slow_readers,
    "list-jobs": check_list_jobs_hammer,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "clients"),
    [
        ("handshake", 200),
        ("metadata", 10),
        ("stalled-upload", 12),
        ("slow-download", 8),  # more than the server's default worker threads (6 here)
        ("list-jobs", 40),
    ],
)
def test_a_flood_leaves_the_admin_served_and_memory_bounded(flood_server, kind, clients):
    FLOODS[kind](flood_server, clients, seconds=UPLOAD_IDLE_TIMEOUT + 1.5)


@pytest.mark.soak
@pytest.mark.parametrize(
    ("kind", "clients"),
    [
        ("handshake", 1000),
        ("metadata", 100),
        ("stalled-upload", 40),
        ("slow-download", 20),
        ("list-jobs", 200),
    ],
)
def test_a_full_size_flood_leaves_the_admin_served_and_memory_bounded(flood_server, kind, clients):
    FLOODS[kind](flood_server, clients, seconds=15)
