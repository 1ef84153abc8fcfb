"""Job-runner benchmarks: what the control plane adds to each round of a real job.

A local project (``flare_local.poc``: ``flare server start`` and two ``flare site
start`` processes on 127.0.0.1, mutual TLS, real provisioning) runs FedAvg jobs whose
Client API script records, per round, when ``flare.receive()`` returned and how long
its own work took until it called ``flare.send()``. The time between two rounds' receives
is one full round trip: the site writes and uploads its update, the server loads both
updates, aggregates, saves the round's model, hashes and serves it, the sites download
it and hand it to the script. **Round overhead** = that cycle time minus the scripts'
own compute (the slower site's). Rows:

* 100 MB model (one float32 array of 25M values), 3 rounds: round overhead, and the
  whole job's wall time minus the scripts' compute (deploy, start-up, 3 rounds, end and
  log collection included);
* tiny model (a few floats), 20 rounds: round overhead and rounds per second.

Usage: ``.venv/bin/python bench/run.py jobs``. ``BENCH_JOBS_MB`` (default 100) sets the
large model's size.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from flare_local.poc import LocalProject, provision_local  # noqa: E402
from flare_protocol.job_status import JobStatus  # noqa: E402

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    import flare_site.client as flare

    out = Path(sys.argv[1])
    size = int(sys.argv[2])
    flare.init()
    site = flare.get_site_name()
    log = open(out / f"{site}.jsonl", "a")
    while flare.is_running():
        ask = time.time()
        model = flare.receive()
        if model is None:
            break
        t0 = time.time()
        if model.params:
            params = {"w": model.params["w"] + np.float32(0.001)}
        else:
            params = {"w": np.zeros(size, dtype=np.float32)}
        t1 = time.time()
        flare.send(flare.FLModel(params=params, params_type="FULL", meta={"num_examples": 10}))
        row = {"round": model.current_round, "recv": t0, "compute": t1 - t0,
               "receive": t0 - ask, "send": time.time() - t1}
        log.write(json.dumps(row) + "\\n")
        log.flush()
    """
)


def _job(root: Path, out: Path, rounds: int, size: int) -> Path:
    job = root / f"job-{rounds}-{size}"
    (job / "app" / "config").mkdir(parents=True)
    (job / "app" / "custom").mkdir()
    (job / "meta.json").write_text(
        json.dumps({"name": "bench", "min_clients": 2, "deploy_map": {"app": ["@ALL"]}})
    )
    (job / "app" / "config" / "config_fed_server.json").write_text(
        json.dumps({"workflow": "fedavg", "num_rounds": rounds, "round_timeout": 600})
    )
    (job / "app" / "config" / "config_fed_client.json").write_text(
        json.dumps(
            {"executor": "script", "script": "custom/train.py", "args": [str(out), str(size)]}
        )
    )
    (job / "app" / "custom" / "train.py").write_text(SCRIPT)
    return job


def _run_job(
    project: LocalProject, root: Path, rounds: int, size: int, tag: str = ""
) -> dict[str, Any]:
    out = root / f"out-{rounds}-{size}{tag}"
    out.mkdir()
    job = _job(root / f"jobs{tag}", out, rounds, size)
    with project.session(timeout=60.0) as session:
        start = time.time()
        job_id = session.submit_job(str(job))
        while True:
            meta = session.get_job_meta(job_id)
            if meta.finished:
                break
            time.sleep(0.02)
        wall = time.time() - start
    if meta.job_status is not JobStatus.FINISHED_COMPLETED:
        raise RuntimeError(f"bench job ended {meta['status']}: {meta['status_history'][-1]}")
    per_site = {}
    for path in out.glob("*.jsonl"):
        per_site[path.stem] = {
            r["round"]: r for r in map(json.loads, path.read_text().splitlines())
        }
    compute = {
        rnd: max(site[rnd]["compute"] for site in per_site.values()) for rnd in range(1, rounds + 1)
    }
    first_recv = {rnd: min(site[rnd]["recv"] for site in per_site.values()) for rnd in compute}
    cycles = [first_recv[r + 1] - first_recv[r] - compute[r] for r in range(1, rounds)]
    # The script's own model I/O from round 2 on (round 1 has no model to load).
    later = [site[r] for site in per_site.values() for r in range(2, rounds + 1)]
    return {
        "receive": [row["receive"] for row in later],
        "send": [row["send"] for row in later],
        "wall": wall,
        "compute": sum(compute.values()),
        "cycles": cycles,
        "round_overhead": statistics.median(cycles),
        "rounds_per_s": (rounds - 1) / (first_recv[rounds] - first_recv[1]),
    }


def run() -> list[dict[str, Any]]:
    megabytes = int(os.environ.get("BENCH_JOBS_MB", "100"))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        root = Path(tmp)
        kits = provision_local(root / "poc", ["site-1", "site-2"])
        with LocalProject(kits) as project:
            # Two 3-round jobs: four round cycles, their median reported (a shared box is noisy).
            big = _run_job(project, root, 3, megabytes * 1024 * 1024 // 4)
            again = _run_job(project, root, 3, megabytes * 1024 * 1024 // 4, "-again")
            tiny = _run_job(project, root, 20, 4)
    cycles = big["cycles"] + again["cycles"]
    receive = statistics.median(big["receive"] + again["receive"])
    send = statistics.median(big["send"] + again["send"])
    rows.append(
        {
            "benchmark": f"round overhead, {megabytes} MB model, 2 sites",
            "value": statistics.median(cycles),
            "unit": "s/round",
            "target": "<= 2",
            "notes": f"median of 4 round cycles (range {min(cycles):.2f}-{max(cycles):.2f} s) "
            "minus the slower site's compute: upload, load, aggregate, save, serve, "
            f"download, the script's model I/O (median flare.receive() {receive:.2f} s, "
            f"flare.send() {send:.2f} s incl. the site's check of the update)",
        }
    )
    rows.append(
        {
            "benchmark": f"3-round FedAvg job overhead, {megabytes} MB model, 2 sites",
            "value": min(big["wall"] - big["compute"], again["wall"] - again["compute"]),
            "unit": "s",
            "target": "",
            "notes": "best of 2 jobs: wall (submit -> COMPLETED seen) minus the scripts' "
            f"compute; walls {big['wall']:.2f} / {again['wall']:.2f} s; includes submit, "
            "deploy, script start, 3 rounds, end and log collection",
        }
    )
    rows.append(
        {
            "benchmark": "round overhead, tiny model, 2 sites",
            "value": tiny["round_overhead"],
            "unit": "s/round",
            "target": "<= 0.5",
            "notes": "median over a 20-round job",
        }
    )
    rows.append(
        {
            "benchmark": "rounds per second, tiny model, 2 sites",
            "value": tiny["rounds_per_s"],
            "unit": "rounds/s",
            "target": ">= 2",
            "notes": f"20-round job wall {tiny['wall']:.2f} s",
        }
    )
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
