"""Real crashes: a writer process is killed with SIGKILL at random points, then the store reopens.

After every kill: every acknowledged job is there with its acknowledged status or a later one
(in-flight jobs end FINISHED:ABNORMAL), every acknowledged delete stays deleted, no job is
half-written (archive complete, checksum matches), no orphan folder and no temp file remains.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobzip_helpers import valid_job_files, write_zip

from flare_server.jobs import TRANSITIONS, JobStatus, JobStore

WRITER = Path(__file__).with_name("store_crash_writer.py")
KILLS = 6


def reachable(old: JobStatus) -> set[JobStatus]:
    """``old`` and every status reachable from it."""
    seen, todo = {old}, [old]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def run_writer_until_killed(root: Path, archive: Path, seed: int, rng: random.Random) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(root), str(archive), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first == b"READY\n", proc.stderr.read() if proc.stderr else first
    # Work gets done before each kill however slow the machine is: the kill waits for a
    # number of acknowledged operations, then lands anywhere in the next ones.
    seen: list[bytes] = []
    for _ in range(rng.randint(25, 40)):
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
    time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    # Read the rest through the same buffered reader: communicate() would read the pipe
    # itself and miss the lines readline() had already buffered (acknowledgements lost).
    out = proc.stdout.read()
    err = proc.stderr.read() if proc.stderr else b""
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    # A line without its newline was not fully acknowledged: ignore it.
    return (b"".join(seen) + out).decode().split("\n")[:-1]


def test_store_survives_sigkill_during_uploads_and_status_changes(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    files = valid_job_files()
    files["app/custom/weights.bin"] = rng.randbytes(300 * 1024)  # uploads take several chunks
    archive = write_zip(tmp_path / "job.zip", files)
    root = tmp_path / "jobs"
    expected: dict[str, JobStatus] = {}
    deleted: set[str] = set()
    deleting: set[str] = set()  # delete started but not acknowledged: either outcome is fine
    acknowledged = 0
    for kill in range(KILLS):
        for line in run_writer_until_killed(root, archive, kill, rng):
            kind, _, rest = line.partition(" ")
            if kind == "C" or kind == "S":
                job_id, status = rest.split(" ")
                expected[job_id] = JobStatus(status)
                acknowledged += 1
            elif kind == "d":
                deleting.add(rest)
            elif kind == "D":
                deleting.discard(rest)
                deleted.add(rest)
                expected.pop(rest, None)
                acknowledged += 1
        with JobStore.open(root) as store:
            report = store.recovery
            assert report.jobs_missing_files == ()
            rows = {j.job_id: j for j in store.list()}
            for job_id in deleting - rows.keys():
                expected.pop(job_id, None)
            deleting.clear()
            for job_id, status in expected.items():
                assert job_id in rows, f"kill {kill}: acknowledged job {job_id} lost"
                assert rows[job_id].status in reachable(status), (job_id, status, rows[job_id])
            assert not deleted & rows.keys(), "an acknowledged delete came back"
            for job_id, summary in rows.items():
                assert summary.status not in (JobStatus.DISPATCHED, JobStatus.RUNNING)
                meta = store.get(job_id)
                data = store.job_archive(job_id).read_bytes()
                assert len(data) == meta["archive_size"]
                assert hashlib.sha256(data).hexdigest() == meta["archive_sha256"]
                expected[job_id] = summary.status  # recovery's verdict is the new baseline
            job_dirs = {p.name for p in root.iterdir() if p.is_dir() and p.name != "tmp"}
            assert job_dirs == set(rows), "job folder without a row (or a row without a folder)"
            assert list((root / "tmp").iterdir()) == []
    assert acknowledged > 10 * KILLS  # the writer really got work done between kills
