"""Provisioning benchmarks: 1,000 participants, key types, flush strategies, re-runs, verify.

Every provisioning figure is a whole run of :func:`provisioning.provision` (project.yml
parsed, CA on a first run, keys, certificates, every kit written, signed and made
durable, state saved) into a fresh workspace under ``$TMPDIR`` (the same disk as the
repository here), median of a few runs. A tmpfs run (``/dev/shm``) separates CPU from
file-system cost.

Usage: ``.venv/bin/python bench/run.py provision`` (or run this file directly).
Environment: ``BENCH_PROVISION_N`` (default 1000), ``BENCH_PROVISION_RSA=0`` skips the
slow RSA-2048 run at full size.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from flare_protocol.signature import verify_kit  # noqa: E402
from provisioning import ProvisionResult, provision  # noqa: E402

ROLES = ["project_admin", "org_admin", "lead", "member"]


def project_doc(n: int, name: str = "bench") -> dict[str, Any]:
    """A project of ``n`` participants: one server, 5% admins, the rest sites."""
    participants: list[dict[str, Any]] = [
        {
            "name": "server.bench.example.org",
            "type": "server",
            "org": "bench",
            "fed_learn_port": 8002,
            "admin_port": 8003,
            "host_names": ["127.0.0.1"],
        }
    ]
    admins = max(1, n // 20)
    for i in range(n - 1 - admins):
        participants.append({"name": f"site-{i:04d}", "type": "client", "org": f"org_{i % 10}"})
    for i in range(admins):
        participants.append(
            {
                "name": f"admin{i:03d}@org-{i % 10}.example.org",
                "type": "admin",
                "org": f"org_{i % 10}",
                "role": ROLES[i % 4],
            }
        )
    return {"api_version": 3, "name": name, "participants": participants}


def _write_project(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / f"{doc['name']}.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _timed(fn: Callable[[], ProvisionResult]) -> tuple[float, ProvisionResult]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _fresh_runs(
    n: int, repeats: int, root: Path | None = None, **kwargs: Any
) -> tuple[list[float], ProvisionResult]:
    times = []
    result = None
    for _ in range(repeats):
        work = Path(tempfile.mkdtemp(prefix="bench-prov-", dir=root))
        try:
            project = _write_project(work, project_doc(n))
            seconds, result = _timed(functools.partial(provision, project, work / "ws", **kwargs))
            times.append(seconds)
        finally:
            if len(times) < repeats:
                shutil.rmtree(work, ignore_errors=True)
    assert result is not None
    return times, result


def _row(benchmark: str, times: list[float], target: str = "", notes: str = "") -> dict[str, Any]:
    spread = (
        f"median of {len(times)}: min {min(times):.2f}, max {max(times):.2f}"
        if len(times) > 1
        else ""
    )
    return {
        "benchmark": benchmark,
        "value": round(statistics.median(times), 3),
        "unit": "s",
        "target": target,
        "notes": "; ".join(x for x in (spread, notes) if x),
    }


def run(n: int | None = None, repeats: int = 3) -> list[dict[str, Any]]:
    n = n or int(os.environ.get("BENCH_PROVISION_N", "1000"))
    with_rsa = os.environ.get("BENCH_PROVISION_RSA", "1") != "0"
    rows: list[dict[str, Any]] = []
    keep: list[Path] = []
    try:
        # 1. The headline: n participants, EC P-256, default flush (syncfs).
        times, result = _fresh_runs(n, repeats)
        keep.append(result.state_dir.parents[2])
        rows.append(
            _row(
                f"provision {n:,} participants, ec-p256 (first run, syncfs)",
                times,
                "<= 2 s",
                f"{len(result.kits)} kits written and signed",
            )
        )

        # 2. The same on tmpfs: what is CPU and what is the file system.
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            times, res = _fresh_runs(n, repeats, root=shm, flush="none")
            shutil.rmtree(res.state_dir.parents[2], ignore_errors=True)
            rows.append(
                _row(
                    f"provision {n:,}, ec-p256, on tmpfs, no flush (CPU share)",
                    times,
                    "",
                    "same work without disk: the rest of row 1 is the disk",
                )
            )

        # 3. Flush strategies at full size, one fresh run each.
        for flush, note in [
            ("none", "not crash-safe; the floor"),
            ("syncfs", "default: one syncfs(2) of the workspace file system, then renames"),
            ("fsync", "fsync every file and folder in one batch after writing"),
            ("each", "fsync each file as it is written (the naive way)"),
        ]:
            times, res = _fresh_runs(n, 1, flush=flush)
            shutil.rmtree(res.state_dir.parents[2], ignore_errors=True)
            rows.append(_row(f"provision {n:,}, ec-p256, flush={flush}", times, "", note))

        # 4. Incremental: one new participant, everything else reused.
        project_dir = result.state_dir.parent
        project = project_dir.parents[1] / "bench.yml"
        inc_times = []
        for i in range(repeats):
            doc = yaml.safe_load(project.read_text())
            doc["participants"].append(
                {"name": f"late-site-{i}", "type": "client", "org": "org_late"}
            )
            project.write_text(yaml.safe_dump(doc, sort_keys=False))
            seconds, again = _timed(functools.partial(provision, project, project_dir.parent))
            assert again.issued == [f"late-site-{i}"], again.issued
            inc_times.append(seconds)
        rows.append(
            _row(
                f"re-run with 1 new participant ({n:,} reused)",
                inc_times,
                "",
                "reuses CA, keys, certificates; writes every kit into the next prod_NN",
            )
        )

        # 5. verify_kit: it runs on every server/site start and Session open.
        kits = list(again.kits.values())
        start = time.perf_counter()
        for kit in kits:
            verify_kit(kit, again.ca_fingerprint)
        per_kit = (time.perf_counter() - start) / len(kits)
        rows.append(
            {
                "benchmark": "verify_kit (with fingerprint), per kit",
                "value": round(per_kit * 1e3, 3),
                "unit": "ms",
                "target": "<= 5 ms",
                "notes": f"mean over {len(kits)} kits",
            }
        )

        # 6. Key types: 100 participants (NVIDIA FLARE: 100 clients in 6.5 s with RSA-2048).
        for key_type in ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072"):
            times, res = _fresh_runs(100, 1, key_type=key_type)
            shutil.rmtree(res.state_dir.parents[2], ignore_errors=True)
            rows.append(
                _row(
                    f"provision 100 participants, {key_type}",
                    times,
                    "",
                    "NVIDIA FLARE 2.9 here: 6.5 s (RSA-2048)" if key_type == "rsa-2048" else "",
                )
            )
        if with_rsa:
            times, res = _fresh_runs(n, 1, key_type="rsa-2048")
            shutil.rmtree(res.state_dir.parents[2], ignore_errors=True)
            rows.append(
                _row(
                    f"provision {n:,} participants, rsa-2048",
                    times,
                    "",
                    "RSA key generation dominates (about 40 ms a key here)",
                )
            )
    finally:
        for folder in keep:
            shutil.rmtree(folder, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
