"""The durable job store: CRUD, listing, id validation, notifications and recovery on open."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flare_protocol.errors import (
    FlareError,
    InternalError,
    InvalidArgumentError,
    InvalidJobDefinition,
    InvalidTransition,
    JobNotDone,
    JobNotFound,
)
from flare_server.jobs import (
    ArchiveLimits,
    JobMeta,
    JobStatus,
    JobStore,
    Submitter,
    validate_job_archive,
)

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


def run_to(store: JobStore, job_id: str, *statuses: JobStatus) -> JobMeta:
    meta = store.get(job_id)
    for status in statuses:
        meta = store.set_status(job_id, status)
    return meta


def test_new_job_has_flare_style_meta(job: JobMeta, submitter: Submitter) -> None:
    assert uuid.UUID(job.job_id).version == 4
    assert job.status is S.SUBMITTED
    d = job.to_dict()
    assert d["name"] == "hello-numpy"
    assert (d["submitter_name"], d["submitter_org"], d["submitter_role"]) == (
        "lead@org_a.com",
        "org_a",
        "lead",
    )
    assert d["deploy_map"] == {"app": ["@ALL"]} and d["min_clients"] == 1
    assert d["resource_spec"] == {} and d["mandatory_clients"] == []
    assert isinstance(d["submit_time"], float) and d["submit_time_iso"].endswith("+00:00")
    assert d["start_time"] is None and d["duration"] is None and d["cloned_from"] is None
    assert d["status_history"] == [
        {"status": "SUBMITTED", "time": d["submit_time"], "reason": None}
    ]
    assert json.loads(job.to_json()) == d


def test_get_returns_what_was_stored(store: JobStore, job: JobMeta) -> None:
    assert store.get(job.job_id).to_dict() == job.to_dict()
    assert store.get(job.job_id.upper()).job_id == job.job_id


def test_archive_is_kept_byte_for_byte(
    store: JobStore, job: JobMeta, make_zip: Callable[..., Path]
) -> None:
    archive = store.job_archive(job.job_id)
    assert archive.read_bytes() == make_zip(name="again.zip").read_bytes()
    assert archive.parent == store.job_dir(job.job_id) and archive.parent.parent == store.root
    assert job["archive_size"] == archive.stat().st_size
    assert validate_job_archive(archive).meta["name"] == "hello-numpy"


def test_result_dir_is_inside_the_job_folder(store: JobStore, job: JobMeta) -> None:
    result = store.result_dir(job.job_id)
    assert result.is_dir() and result.parent == store.job_dir(job.job_id)


@pytest.mark.parametrize("key", ["status", "submitter_name", "errors", "initial_model_job_id"])
def test_server_owned_keys_in_meta_json_are_refused_and_nothing_is_kept(
    store: JobStore, make_zip: Callable[..., Path], submitter: Submitter, key: str
) -> None:
    with pytest.raises(InvalidJobDefinition, match=f"key '{key}' is set by the server"):
        store.create_job_from_archive(make_zip(meta={key: "x"}), submitter)
    assert store.list() == [] and list((store.root / "tmp").iterdir()) == []


def test_a_new_job_takes_only_a_model_source_from_the_server(
    store: JobStore, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    source = "3F2C1B9E-0000-4000-8000-000000000000"
    meta = store.create_job_from_archive(
        make_zip(), submitter, extra={"initial_model_job_id": source}
    )
    assert meta["initial_model_job_id"] == source.lower()
    for extra in ({"note": "x"}, {"errors": []}, {"initial_model_job_id": "../x"}):
        with pytest.raises(InvalidArgumentError):
            store.create_job_from_archive(make_zip(), submitter, extra=extra)


def test_update_writes_only_server_owned_keys(store: JobStore, job: JobMeta) -> None:
    with pytest.raises(InvalidArgumentError, match="SERVER_OWNED_KEYS") as info:
        store.update(job.job_id, waiting_for="site-2")
    assert "waiting_for" in str(info.value)
    assert "waiting_for" not in store.get(job.job_id)


def test_upload_streams_and_commits(
    store: JobStore, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    data = make_zip().read_bytes()
    upload = store.begin_upload()
    for i in range(0, len(data), 100):
        upload.write(data[i : i + 100])
    assert upload.size == len(data)
    import hashlib

    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    source = "3f2c1b9e-0000-4000-8000-000000000000"
    meta = upload.commit(submitter, params={"initial_model_job_id": source})
    assert meta["initial_model_job_id"] == source and meta["archive_sha256"] == upload.sha256
    assert list((store.root / "tmp").iterdir()) == []


def test_invalid_upload_leaves_nothing(
    store: JobStore, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    with store.begin_upload() as upload:
        upload.write(make_zip(meta={"min_clients": "two"}).read_bytes())
        with pytest.raises(InvalidJobDefinition, match="field 'min_clients'"):
            upload.commit(submitter)
    assert store.list() == []
    assert list((store.root / "tmp").iterdir()) == []
    assert [p.name for p in store.root.iterdir() if p.is_dir()] == ["tmp"]


def test_upload_over_the_cap_is_refused_while_writing(
    root: Path, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    with JobStore.open(root, limits=ArchiveLimits(max_upload_bytes=1000)) as store:
        upload = store.begin_upload()
        upload.write(b"x" * 600)
        with pytest.raises(InvalidJobDefinition, match="larger than the 1000 bytes"):
            upload.write(b"x" * 600)
        assert list((root / "tmp").iterdir()) == []


def test_aborted_upload_leaves_nothing(store: JobStore) -> None:
    upload = store.begin_upload()
    upload.write(b"partial")
    upload.abort()
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", ["../../etc", "not-a-uuid", "", "1234", "../" + str(uuid.uuid4())])
def test_malformed_job_id_is_an_invalid_argument(store: JobStore, bad: str) -> None:
    for call in (store.get, store.job_dir, store.job_archive, store.result_dir, store.delete):
        with pytest.raises(InvalidArgumentError, match="malformed"):
            call(bad)
    with pytest.raises(InvalidArgumentError):
        store.set_status(bad, S.DISPATCHED)


def test_unknown_job_id_is_not_found(store: JobStore) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(JobNotFound) as info:
        store.get(missing)
    assert info.value.job_id == missing
    for call in (store.job_dir, store.job_archive, store.delete):
        with pytest.raises(JobNotFound):
            call(missing)


def test_status_changes_follow_the_table_and_are_recorded(store: JobStore, job: JobMeta) -> None:
    meta = run_to(store, job.job_id, S.DISPATCHED, S.RUNNING)
    assert meta["start_time"] is not None
    meta = store.set_status(job.job_id, S.FINISHED_COMPLETED, reason="all rounds done")
    assert [h["status"] for h in meta.status_history] == [
        "SUBMITTED",
        "DISPATCHED",
        "RUNNING",
        "FINISHED:COMPLETED",
    ]
    assert meta.status_history[-1]["reason"] == "all rounds done"
    assert meta["duration"] >= 0 and meta["end_time"] >= meta["start_time"]
    assert store.get(job.job_id).to_dict() == meta.to_dict()


def test_illegal_status_change_is_refused_and_not_written(store: JobStore, job: JobMeta) -> None:
    with pytest.raises(InvalidTransition, match="from SUBMITTED to RUNNING"):
        store.set_status(job.job_id, S.RUNNING)
    assert store.get(job.job_id).status is S.SUBMITTED


def test_update_sets_extra_fields_but_never_status(store: JobStore, job: JobMeta) -> None:
    meta = store.update(job.job_id, schedule_reason="site-2 not connected", start_time=12.5)
    assert meta["schedule_reason"] == "site-2 not connected" and meta["start_time"] == 12.5
    for field in ("status", "job_id", "submitter_name", "status_history", "submit_time"):
        with pytest.raises(InvalidArgumentError, match=field):
            store.update(job.job_id, **{field: "x"})
    with pytest.raises(InvalidArgumentError, match="JSON"):
        store.update(job.job_id, errors=[object()])


def test_list_orders_by_submit_time_and_filters(
    store: JobStore, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    names = ["alpha-1", "alpha-2", "beta-1", "beta-2"]
    ids = [
        store.create_job_from_archive(make_zip(meta={"name": n}), submitter).job_id for n in names
    ]
    store.set_status(ids[1], S.FINISHED_ABORTED)
    assert [j.job_id for j in store.list()] == ids
    assert [j.job_id for j in store.list(reverse=True)] == ids[::-1]
    assert [j.name for j in store.list(limit=2)] == ["alpha-1", "alpha-2"]
    assert [j.name for j in store.list(limit=2, reverse=True)] == ["beta-2", "beta-1"]
    assert [j.name for j in store.list(name_prefix="beta")] == ["beta-1", "beta-2"]
    assert [j.job_id for j in store.list(id_prefix=ids[2][:8])] == [ids[2]]
    assert [j.job_id for j in store.list(id_prefix=ids[2][:8].upper())] == [ids[2]]
    assert [j.name for j in store.list(statuses=[S.FINISHED_ABORTED])] == ["alpha-2"]
    assert store.list(statuses=[]) == []
    summary = store.list(name_prefix="alpha-2")[0]
    assert summary.to_dict()["status"] == "FINISHED:ABORTED"
    assert (summary.submitter_name, summary.submitter_org) == ("lead@org_a.com", "org_a")


def test_list_rejects_malformed_arguments(store: JobStore) -> None:
    with pytest.raises(InvalidArgumentError):
        store.list(id_prefix="../")
    with pytest.raises(InvalidArgumentError):
        store.list(limit=-1)
    with pytest.raises(InvalidArgumentError):
        store.list(statuses=["DONE"])


def test_clone_copies_the_definition_for_a_new_submitter(store: JobStore, job: JobMeta) -> None:
    store.update(job.job_id, schedule_reason="x", errors=[{"message": "e"}])
    other = Submitter("admin@org_a.com", "org_a", "project_admin")
    clone = store.clone_job(job.job_id, other)
    assert "schedule_reason" not in clone and "errors" not in clone  # the server's, not copied
    assert clone.job_id != job.job_id and clone.cloned_from == job.job_id
    assert clone.status is S.SUBMITTED and clone.submitter == other
    assert clone["deploy_map"] == job["deploy_map"] and clone["name"] == job["name"]
    assert (
        store.job_archive(clone.job_id).read_bytes() == store.job_archive(job.job_id).read_bytes()
    )


def test_delete_refuses_a_running_job(store: JobStore, job: JobMeta) -> None:
    run_to(store, job.job_id, S.DISPATCHED, S.RUNNING)
    with pytest.raises(JobNotDone, match="abort it first") as info:
        store.delete(job.job_id)
    assert info.value.job_id == job.job_id and info.value.status == "RUNNING"


def test_delete_removes_row_and_files(store: JobStore, job: JobMeta) -> None:
    folder = store.job_dir(job.job_id)
    store.delete(job.job_id)
    assert not folder.exists()
    with pytest.raises(JobNotFound):
        store.get(job.job_id)
    assert store.list() == []


def test_subscribers_see_every_committed_change_in_order(
    store: JobStore, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    seen: list[tuple[str, bool]] = []

    def record(meta: JobMeta) -> None:
        assert meta.deleted or store.get(meta.job_id).status is meta.status  # already committed
        seen.append((meta.status.value, meta.deleted))

    unsubscribe = store.subscribe(record)
    job = store.create_job_from_archive(make_zip(), submitter)
    store.update(job.job_id, schedule_reason="x")
    store.set_status(job.job_id, S.FINISHED_ABORTED)
    store.delete(job.job_id)
    unsubscribe()
    store.create_job_from_archive(make_zip(), submitter)
    assert seen == [
        ("SUBMITTED", False),
        ("SUBMITTED", False),
        ("FINISHED:ABORTED", False),
        ("FINISHED:ABORTED", True),
    ]


def test_failing_subscriber_does_not_fail_the_writer(store: JobStore, job: JobMeta) -> None:
    def broken(meta: JobMeta) -> None:
        raise RuntimeError("bug in a subscriber")

    store.subscribe(broken)
    assert store.set_status(job.job_id, S.DISPATCHED).status is S.DISPATCHED


def test_store_is_safe_across_threads(store: JobStore, job: JobMeta, submitter: Submitter) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                store.update(job.job_id, schedule_reason=str(threading.get_ident()))
                store.list()
                store.get(job.job_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_second_open_of_the_same_store_is_refused(store: JobStore, root: Path) -> None:
    with pytest.raises(FlareError, match="in use by another process"):
        JobStore.open(root)


def test_closed_store_refuses_use(root: Path) -> None:
    store = JobStore.open(root)
    store.close()
    store.close()
    with pytest.raises(FlareError, match="closed"):
        store.list()


def test_reopen_keeps_jobs_and_ends_in_flight_ones(
    root: Path, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    with JobStore.open(root) as store:
        queued = store.create_job_from_archive(make_zip(), submitter).job_id
        dispatched = store.create_job_from_archive(make_zip(), submitter).job_id
        running = store.create_job_from_archive(make_zip(), submitter).job_id
        done = store.create_job_from_archive(make_zip(), submitter).job_id
        run_to(store, dispatched, S.DISPATCHED)
        run_to(store, running, S.DISPATCHED, S.RUNNING)
        run_to(store, done, S.DISPATCHED, S.RUNNING, S.FINISHED_COMPLETED)
    with JobStore.open(root) as store:
        report = store.recovery
        assert set(report.jobs_ended) == {(dispatched, "DISPATCHED"), (running, "RUNNING")}
        assert report.jobs_queued == (queued,)
        assert store.get(queued).status is S.SUBMITTED
        assert store.get(done).status is S.FINISHED_COMPLETED
        for job_id, was in ((dispatched, "DISPATCHED"), (running, "RUNNING")):
            meta = store.get(job_id)
            assert meta.status is S.FINISHED_ABNORMAL
            assert meta.status_history[-1]["reason"] == f"server restarted while the job was {was}"


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


def test_row_with_missing_files_is_ended_abnormal_not_served(
    root: Path, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    with JobStore.open(root) as store:
        job_id = store.create_job_from_archive(make_zip(), submitter).job_id
        archive = store.job_archive(job_id)
    with open(archive, "r+b") as f:
        f.truncate(10)
    with JobStore.open(root) as store:
        assert store.recovery.jobs_missing_files == (job_id,)
        meta = store.get(job_id)
        assert meta.status is S.FINISHED_ABNORMAL
        assert "job files missing or incomplete" in meta.status_history[-1]["reason"]


def test_store_root_is_private(root: Path, store: JobStore) -> None:
    assert os.stat(root).st_mode & 0o077 == 0


def test_truncated_archive_is_never_served(store: JobStore, job: JobMeta) -> None:
    with open(store.job_archive(job.job_id), "r+b") as f:
        f.truncate(10)
    with pytest.raises(InternalError, match="missing or incomplete") as info:
        store.job_archive(job.job_id)
    assert info.value.job_id == job.job_id
    with pytest.raises(InternalError):
        store.clone_job(job.job_id, Submitter("a@b.c", "org_a", "lead"))
    assert len(store.list()) == 1 and list((store.root / "tmp").iterdir()) == []


def test_single_status_filter_may_be_a_string(store: JobStore, job: JobMeta) -> None:
    assert [j.job_id for j in store.list(statuses="SUBMITTED")] == [job.job_id]


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


def test_job_meta_is_read_only(job: JobMeta) -> None:
    copy = job.to_dict()
    copy["status"] = "FINISHED:COMPLETED"
    copy["deploy_map"]["app"].append("evil")
    job["deploy_map"]["app"].append("evil")
    assert job.status is S.SUBMITTED and job["deploy_map"] == {"app": ["@ALL"]}
    with pytest.raises(TypeError):
        job["status"] = "x"  # type: ignore[index]
