"""Job store micro-benchmark: list() of 10,000 jobs, get() latency, upload write throughput.

Usage: .venv/bin/python bench/job_store_bench.py [--jobs 10000] [--upload-mib 1024] [--dir DIR]
Everything is created in a temporary folder (under --dir if given) and removed at the end.
Not a test: numbers depend on the machine and its disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from flare_server.jobs import ArchiveLimits, JobStatus, JobStore, Submitter


def _job_zip(path: Path) -> Path:
    meta = {"name": "bench-job", "deploy_map": {"app": ["@ALL"]}, "min_clients": 1}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bench-job/meta.json", json.dumps(meta))
        zf.writestr(
            "bench-job/app/config/config_fed_server.json",
            json.dumps({"workflow": "fedavg", "num_rounds": 1}),
        )
        zf.writestr(
            "bench-job/app/config/config_fed_client.json",
            json.dumps({"executor": "script", "script": "custom/train.py"}),
        )
        zf.writestr("bench-job/app/custom/train.py", "print('train')\n")
    return path


def _timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jobstore-bench-", dir=args.dir))
    try:
        submitter = Submitter("lead@org_a.com", "org_a", "lead")
        store = JobStore.open(work / "jobs")
        t0 = time.perf_counter()
        first = store.create_job_from_archive(_job_zip(work / "job.zip"), submitter)
        ids = [first.job_id]
        while len(ids) < args.jobs:
            ids.append(store.clone_job(first.job_id, submitter).job_id)
        for job_id in ids[::3]:
            store.set_status(job_id, JobStatus.FINISHED_ABORTED)
        seed = time.perf_counter() - t0
        print(f"seeded {len(ids)} jobs in {seed:.1f} s ({seed / len(ids) * 1000:.2f} ms/job)")

        full = _timed(lambda: store.list(), 20)
        print(
            f"list() of {len(ids)} jobs: median {statistics.median(full) * 1000:.1f} ms, "
            f"max {max(full) * 1000:.1f} ms"
        )
        recent = _timed(lambda: store.list(limit=100, reverse=True), 50)
        print(f"list(limit=100, reverse=True): median {statistics.median(recent) * 1000:.2f} ms")
        subset = _timed(lambda: store.list(statuses=[JobStatus.SUBMITTED]), 20)
        print(f"list(statuses=[SUBMITTED]): median {statistics.median(subset) * 1000:.1f} ms")
        probe = ids[len(ids) // 2]
        gets = _timed(lambda: store.get(probe), 2000)
        print(
            f"get(): median {statistics.median(gets) * 1e6:.0f} us, "
            f"p99 {sorted(gets)[int(len(gets) * 0.99)] * 1e6:.0f} us"
        )
        store.close()
        t0 = time.perf_counter()
        store = JobStore.open(work / "jobs")
        print(
            f"open() with recovery over {len(ids)} jobs: {(time.perf_counter() - t0) * 1000:.0f} ms"
        )

        if args.upload_mib:
            chunk = os.urandom(1024 * 1024)
            big = JobStore.open(work / "big", limits=_limits(args.upload_mib))
            upload = big.begin_upload()
            t0 = time.perf_counter()
            for _ in range(args.upload_mib):
                upload.write(chunk)
            wrote = time.perf_counter() - t0
            t1 = time.perf_counter()
            upload._file.flush()  # what commit() does before validating
            os.fsync(upload._file.fileno())
            synced = time.perf_counter() - t1
            mib = args.upload_mib
            print(
                f"Upload.write() of {mib} MiB in 1 MiB chunks: {wrote:.2f} s"
                f" = {mib / wrote:.0f} MiB/s;"
                f" + flush/fsync {synced:.2f} s = {mib / (wrote + synced):.0f} MiB/s overall"
            )
            upload.abort()
            big.close()
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _limits(upload_mib: int) -> ArchiveLimits:
    return ArchiveLimits(max_upload_bytes=(upload_mib + 1) * 1024 * 1024)


if __name__ == "__main__":
    main()
