"""``flare admin`` start-up: a one-shot command from a shell, start to exit.

A real server runs in this process (``tests.server_harness.ServerThread``, real mTLS on
127.0.0.1) with 100 finished jobs; each measured command is a fresh process, as a
person or a script would run it: ``flare admin KIT -c whoami`` (imports, kit pre-flight,
TLS, Hello, one table), ``-c list_jobs`` (plus one call and a 100-row table) and the
same with ``--format json``. ``python -c pass`` and ``python -c "import grpc"`` are
measured in the same run to show how much is the interpreter and grpc itself.

Usage: ``.venv/bin/python bench/bench_shell.py [--runs 20]``; ``run()`` returns the rows
for ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ADMIN = "admin@org_a.com"


def _times(argv: list[str], runs: int) -> tuple[float, float]:
    """Median and best wall time of ``argv`` over ``runs`` runs (after one warm-up)."""
    subprocess.run(argv, check=True, capture_output=True, cwd=REPO)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def _row(benchmark: str, seconds: tuple[float, float], target: str, notes: str) -> dict[str, Any]:
    median, best = seconds
    return {
        "benchmark": benchmark,
        "value": round(median * 1e3, 1),
        "unit": "ms",
        "target": target,
        "notes": f"median of runs, best {best * 1e3:.0f} ms; {notes}".rstrip("; "),
    }


def run(runs: int = 20) -> list[dict[str, Any]]:
    from flare_server.jobs import Submitter
    from provisioning import provision
    from tests.conftest import TEST_PROJECT_YML
    from tests.server_harness import ServerThread

    py = sys.executable
    rows = [
        _row("python -c pass", _times([py, "-c", "pass"], runs), "", "the interpreter alone"),
        _row("python -c 'import grpc'", _times([py, "-c", "import grpc"], runs), "", ""),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-shell-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "project.yml").write_text(TEST_PROJECT_YML)
        kit = str(provision(tmp / "project.yml", tmp / "ws").kits[ADMIN])
        server_kit = Path(tmp / "ws" / "testproj" / "prod_00" / "localhost")
        with ServerThread(server_kit, tmp / "server-ws") as srv:
            from flare_admin import new_secure_session

            job = tmp / "job"
            (job / "app" / "config").mkdir(parents=True)
            (job / "app" / "custom").mkdir()
            (job / "meta.json").write_text('{"name": "bench", "deploy_map": {"app": ["@ALL"]}}')
            (job / "app" / "config" / "config_fed_server.json").write_text(
                '{"workflow": "fedavg", "num_rounds": 1}'
            )
            (job / "app" / "config" / "config_fed_client.json").write_text(
                '{"executor": "script", "script": "custom/train.py"}'
            )
            (job / "app" / "custom" / "train.py").write_text("pass\n")
            with new_secure_session(ADMIN, kit, server_address=srv.admin_address) as session:
                first = session.submit_job(job)
            submitter = Submitter(ADMIN, "org_a", "project_admin")
            for _ in range(99):
                srv.call(lambda: srv.server.store.clone_job(first, submitter))
            admin = [py, "-m", "flare_cli.main", "admin", kit, "--server", srv.admin_address]
            rows += [
                _row("flare admin KIT -c whoami", _times([*admin, "-c", "whoami"], runs),
                     "<= 400", "NVIDIA FLARE console start to bye: 1,700 ms; flwr ls: 1,300 ms"),
                _row("flare admin KIT -c list_jobs (100 jobs)",
                     _times([*admin, "-c", "list_jobs"], runs), "", "a 100-row table"),
                _row("flare admin KIT --format json -c list_jobs",
                     _times([*admin, "--format", "json", "-c", "list_jobs"], runs), "", ""),
            ]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    for r in run(args.runs):
        print(f"{r['benchmark']:<45} {r['value']:>8} {r['unit']}  {r['notes']}")


if __name__ == "__main__":
    main()
