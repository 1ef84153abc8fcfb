"""Driver API benchmarks: how fast a driver talks to its sites through the server.

A local project (``flare_local.poc``: ``flare server start`` and ``flare site start``
processes on 127.0.0.1, mutual TLS, real provisioning) runs a driver job whose sites run
a Flower-style ClientApp that answers a ``query`` at once. The driver is a Session in
this process. Rows:

* ``send_and_receive`` round trip with 2 sites and a tiny message (one ConfigsRecord of
  one number, one message per site): push, relay to both sites, each site hands the
  message to its script over the local socket, the script's reply back, the server pushes
  both replies on the reply stream. Median and p90 of 200 calls. Flower's guide pulls
  replies in a loop with ``time.sleep(3)``: a round trip there takes at least 3 s.
* messages per second with 10 sites: 50 rounds of ``send_and_receive`` of 10 tiny
  messages (one per site, each round waiting for all replies), and one push of 1,000
  messages (100 per site) received as they come.

Usage: ``.venv/bin/python bench/run.py driver``.
"""

from __future__ import annotations

import json
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

from flare_admin import ConfigsRecord, MessageType, RecordSet  # noqa: E402
from flare_local.poc import LocalProject, provision_local  # noqa: E402

CLIENT = textwrap.dedent(
    """
    from flare_site.client import ClientApp, Message

    app = ClientApp()

    @app.query()
    def echo(msg, context):
        return Message(msg.content, reply_to=msg)

    if __name__ == "__main__":
        app.run()
    """
)


def _job(root: Path, sites: int) -> Path:
    job = root / f"driver-{sites}"
    (job / "app" / "config").mkdir(parents=True)
    (job / "app" / "custom").mkdir()
    meta = {"name": "bench-driver", "min_clients": sites, "deploy_map": {"app": ["@ALL"]}}
    (job / "meta.json").write_text(json.dumps(meta))
    (job / "app/config/config_fed_server.json").write_text(
        json.dumps({"workflow": "driver", "default_ttl": 120})
    )
    (job / "app/config/config_fed_client.json").write_text(
        json.dumps({"executor": "script", "script": "custom/client.py"})
    )
    (job / "app/custom/client.py").write_text(CLIENT)
    return job


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _round_trips(project: LocalProject, root: Path, calls: int) -> list[float]:
    with project.session(timeout=60.0) as session:
        job_id = session.submit_job(str(_job(root, 2)))
        driver = session.get_driver(job_id, timeout=120)
        nodes = driver.get_node_ids()
        content = RecordSet({"c": ConfigsRecord({"x": 1})})
        times = []
        for i in range(calls + 10):
            messages = [driver.create_message(content, MessageType.QUERY, n) for n in nodes]
            start = time.perf_counter()
            replies = driver.send_and_receive(messages, timeout=60)
            elapsed = time.perf_counter() - start
            if len(replies) != len(nodes) or not all(r.has_content() for r in replies):
                raise RuntimeError(f"round trip {i}: {replies}")
            if i >= 10:  # the first calls warm up the script and the connections
                times.append(elapsed)
        driver.finish()
    return times


def _throughput(project: LocalProject, root: Path) -> tuple[float, float, int]:
    with project.session(timeout=60.0) as session:
        job_id = session.submit_job(str(_job(root, 10)))
        driver = session.get_driver(job_id, timeout=180)
        nodes = driver.get_node_ids()
        content = RecordSet({"c": ConfigsRecord({"x": 1})})
        for _ in range(3):  # warm-up
            driver.send_and_receive(
                [driver.create_message(content, MessageType.QUERY, n) for n in nodes], timeout=60
            )
        rounds = 50
        start = time.perf_counter()
        for _ in range(rounds):
            driver.send_and_receive(
                [driver.create_message(content, MessageType.QUERY, n) for n in nodes], timeout=60
            )
        closed = rounds * len(nodes) / (time.perf_counter() - start)
        batch = [
            driver.create_message(content, MessageType.QUERY, n) for _ in range(100) for n in nodes
        ]
        start = time.perf_counter()
        replies = driver.send_and_receive(batch, timeout=300)
        pipelined = len(replies) / (time.perf_counter() - start)
        if len(replies) != len(batch):
            raise RuntimeError(f"{len(replies)} of {len(batch)} replies")
        driver.finish()
    return closed, pipelined, len(nodes)


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp:
        root = Path(tmp)
        kits = provision_local(root / "poc2", ["site-1", "site-2"])
        with LocalProject(kits) as project:
            times = _round_trips(project, root, 200)
        ten = [f"site-{i}" for i in range(1, 11)]
        kits = provision_local(root / "poc10", ten)
        with LocalProject(kits) as project:
            closed, pipelined, sites = _throughput(project, root)
    median = statistics.median(times) * 1000
    rows.append(
        {
            "benchmark": "send_and_receive round trip, 2 sites, tiny message",
            "value": median,
            "unit": "ms",
            "target": "<= 20",
            "notes": f"median of {len(times)} calls (one message per site, both replies); "
            f"p90 {_pct(times, 0.9) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms; "
            "Flower's guide polls every 3 s",
        }
    )
    rows.append(
        {
            "benchmark": f"messages per second, {sites} sites, closed loop",
            "value": closed,
            "unit": "msg/s",
            "target": "",
            "notes": "50 rounds of send_and_receive of one tiny message per site, each round "
            "waiting for every reply",
        }
    )
    rows.append(
        {
            "benchmark": f"messages per second, {sites} sites, one push of 1,000",
            "value": pipelined,
            "unit": "msg/s",
            "target": "",
            "notes": "send_and_receive of 100 tiny messages per site at once (each site's "
            "script answers them one after another)",
        }
    )
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
