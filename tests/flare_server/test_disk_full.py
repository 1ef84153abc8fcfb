"""A full disk under the server's workspace: a clear StorageFull, nothing partial, recovery.

The workspace lives on a real small file system (a tmpfs, :mod:`tests.small_fs`; skipped
where it cannot be mounted). The admin Session sees the typed error, the server keeps
answering, and a submit succeeds again once space is freed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flare_admin import StorageFull, new_secure_session
from tests.flare_server.conftest import job_files
from tests.server_harness import ServerThread
from tests.small_fs import fill, small_filesystem

ADMIN = "admin@org_a.com"


def job_folder(root: Path, name: str, payload: int = 0) -> Path:
    """A valid job folder, with ``payload`` bytes of incompressible data in its app."""
    folder = root / name
    for rel, data in job_files(name=name).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if payload:
        (folder / "app" / "custom" / "weights.bin").write_bytes(os.urandom(payload))
    return folder


def left_behind(jobs: Path) -> list[Path]:
    """Upload and staging files of the store (none may survive a failed submit)."""
    return [p for p in jobs.rglob("*") if p.name.startswith(("upload-", "stage-"))]


def test_a_submit_that_does_not_fit_fails_clearly_leaves_nothing_and_recovers(
    server_kit, kits, tmp_path
):
    with (
        small_filesystem(tmp_path / "small", 12 << 20) as small,
        ServerThread(server_kit, small / "ws") as srv,
        new_secure_session(ADMIN, kits[ADMIN], server_address=srv.admin_address) as s,
    ):
        jobs = small / "ws" / "jobs"
        with pytest.raises(StorageFull) as info:
            s.submit_job(str(job_folder(tmp_path / "src", "too-big", payload=16 << 20)))
        exc = info.value
        assert "the server's disk is full" in exc.message
        assert "free space" in exc.message and "try again" in exc.message
        assert exc.path is not None and exc.path.startswith(str(jobs))
        assert exc.operation == "write the uploaded job archive"
        assert left_behind(jobs) == []
        assert s.list_jobs() == []  # nothing half-submitted shows, and the server answers

        # The disk is full for good now: even a small job does not fit ...
        ballast = fill(small, leave=64 * 1024)
        small_job = job_folder(tmp_path / "src", "small-job", payload=1 << 20)
        with pytest.raises(StorageFull):
            s.submit_job(str(small_job))
        assert left_behind(jobs) == []
        assert s.list_jobs() == []
        # ... until space returns.
        ballast.unlink()
        job_id = s.submit_job(str(small_job))
        assert [m.job_id for m in s.list_jobs()] == [job_id]
