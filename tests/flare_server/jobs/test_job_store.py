"""The SQLite job store's own guarantees: its files on disk, its lock, a full disk.

What every job repository must do (CRUD, listing, ids, notifications, recovery) is the
contract in ``test_job_repository_contract.py``, which runs against this store too.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flare_protocol.errors import FlareError, InternalError, InvalidJobDefinition
from flare_server.jobs import ArchiveLimits, JobMeta, JobStatus, JobStore, Submitter

S = JobStatus


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


@pytest.fixture
def store(root: Path) -> Iterator[JobStore]:
    with JobStore.open(root) as opened:
        yield opened


@pytest.fixture
def job(store: JobStore, make_zip: Callable[..., Path], submitter: Submitter) -> JobMeta:
    return store.create_job_from_archive(make_zip(), submitter)


def temp_files(store: JobStore) -> list[str]:
    return sorted(p.name for p in (store.root / "tmp").iterdir())


def test_a_job_is_one_folder_under_the_root_with_its_archive_and_results(
    store: JobStore, job: JobMeta
) -> None:
    folder = store.job_dir(job.job_id)
    assert folder == store.root / job.job_id
    assert store.job_archive(job.job_id) == folder / "job.zip"
    assert store.result_dir(job.job_id) == folder / "result"
    assert temp_files(store) == []


def test_uploads_leave_nothing_in_tmp_whatever_their_outcome(
    root: Path, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    with JobStore.open(root, limits=ArchiveLimits(max_upload_bytes=100_000)) as store:
        data = make_zip().read_bytes()
        with store.begin_upload() as upload:
            upload.write(data)
            assert upload.sha256 == hashlib.sha256(data).hexdigest()
            upload.commit(submitter)
        assert temp_files(store) == []
        with store.begin_upload() as upload:
            upload.write(make_zip(meta={"min_clients": "two"}).read_bytes())
            with pytest.raises(InvalidJobDefinition):
                upload.commit(submitter)
        assert temp_files(store) == []
        upload = store.begin_upload()
        with pytest.raises(InvalidJobDefinition, match="larger than"):
            upload.write(b"x" * 100_001)
        assert temp_files(store) == []
        upload = store.begin_upload()
        upload.write(b"partial")
        upload.abort()
        assert temp_files(store) == []
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
            ["tmp", store.list()[0].job_id]
        )


def test_a_truncated_archive_is_not_cloned_and_leaves_nothing(
    store: JobStore, job: JobMeta
) -> None:
    with open(store.job_archive(job.job_id), "r+b") as f:
        f.truncate(10)
    with pytest.raises(InternalError, match="missing or incomplete"):
        store.clone_job(job.job_id, Submitter("a@b.c", "org_a", "lead"))
    assert temp_files(store) == [] and len(store.list()) == 1


def test_second_open_of_the_same_store_is_refused(store: JobStore, root: Path) -> None:
    with pytest.raises(FlareError, match="in use by another process"):
        JobStore.open(root)


def test_open_removes_temp_files_and_orphan_job_folders(root: Path) -> None:
    JobStore.open(root).close()
    (root / "tmp" / "upload-dead.zip").write_bytes(b"half")
    (root / "tmp" / "stage-x").mkdir()
    orphan = root / str(uuid.uuid4())
    orphan.mkdir()
    (orphan / "job.zip").write_bytes(b"never committed")
    with JobStore.open(root) as store:
        assert sorted(store.recovery.temp_files_removed) == ["stage-x", "upload-dead.zip"]
        assert store.recovery.orphan_dirs_removed == (orphan.name,)
        assert not orphan.exists() and list((root / "tmp").iterdir()) == []
    with JobStore.open(root) as store:
        assert store.recovery.clean


def test_store_root_is_private(root: Path, store: JobStore) -> None:
    assert os.stat(root).st_mode & 0o077 == 0


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int], None]]:
    """Simulate a full disk: writes past ``n`` bytes fail with EFBIG (restored afterwards)."""
    import resource
    import signal

    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, old_limit[1]))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_disk_full_during_upload_is_a_clear_error_and_leaves_nothing(
    store: JobStore, job: JobMeta, file_size_limit: Callable[[int], None]
) -> None:
    upload = store.begin_upload()
    file_size_limit(2 * 1024 * 1024)
    with pytest.raises(InternalError, match="check the server's disk"):
        for _ in range(4):
            upload.write(b"x" * (1024 * 1024))
    file_size_limit(resource_unlimited())
    assert list((store.root / "tmp").iterdir()) == []
    assert store.set_status(job.job_id, S.DISPATCHED).status is S.DISPATCHED


def resource_unlimited() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_FSIZE)[1]
