"""The JobRepository contract, written once and run against every backend.

Every method of :class:`~flare_server.jobs.repository.JobRepository` is specified here
through the protocol alone: a new backend (PostgreSQL is next) is added to ``BACKENDS``
and must pass this module unchanged. What only one backend can show (its files on disk,
its locks, a real SIGKILL) stays in that backend's own tests (``test_job_store*.py``).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    JobRepository,
    JobStatus,
    JobStore,
    Submitter,
    validate_job_archive,
)

S = JobStatus
Open = Callable[..., JobRepository]


@dataclass
class Backend:
    """How the contract opens a backend, and how it damages one (for the checks of what
    a repository must refuse to serve)."""

    name: str
    #: ``open(**options)``: the repository at this test's place (``limits``,
    #: ``definition_check``); opening it again after ``close`` sees the same jobs.
    open: Open
    #: Make a stored job's archive incomplete, as a disk fault would.
    damage_archive: Callable[[JobRepository, str], None]


def _sqlite(tmp_path: Path) -> Backend:
    def damage(repo: JobRepository, job_id: str) -> None:
        with open(repo.job_archive(job_id), "r+b") as fh:
            fh.truncate(10)

    return Backend("sqlite", lambda **options: JobStore.open(tmp_path / "jobs", **options), damage)


#: Every backend the server can run on, by name.
BACKENDS: dict[str, Callable[[Path], Backend]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def repo(backend: Backend) -> Iterator[JobRepository]:
    opened = backend.open()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def job(repo: JobRepository, make_zip: Callable[..., Path], submitter: Submitter) -> JobMeta:
    return repo.create_job_from_archive(make_zip(), submitter)


def run_to(repo: JobRepository, job_id: str, *statuses: JobStatus) -> JobMeta:
    meta = repo.get(job_id)
    for status in statuses:
        meta = repo.set_status(job_id, status)
    return meta


def upload(repo: JobRepository, data: bytes, submitter: Submitter, **commit: Any) -> JobMeta:
    with repo.begin_upload() as up:
        for i in range(0, len(data), 100):
            up.write(data[i : i + 100])
        return up.commit(submitter, **commit)


# -- submitting: begin_upload, commit, create_job_from_archive ---------------------------


def test_an_upload_becomes_a_submitted_job_with_flare_style_meta(
    repo: JobRepository, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    data = make_zip().read_bytes()
    with repo.begin_upload() as up:
        for i in range(0, len(data), 100):
            up.write(data[i : i + 100])
        assert up.size == len(data) and up.sha256 == hashlib.sha256(data).hexdigest()
        meta = up.commit(submitter)
    assert uuid.UUID(meta.job_id).version == 4 and meta.status is S.SUBMITTED
    d = meta.to_dict()
    assert d["name"] == "hello-numpy" and d["deploy_map"] == {"app": ["@ALL"]}
    assert meta.submitter == submitter and d["submitter_role"] == "lead"
    assert d["min_clients"] == 1 and d["mandatory_clients"] == [] and d["resource_spec"] == {}
    assert isinstance(d["submit_time"], float) and d["submit_time_iso"].endswith("+00:00")
    assert d["start_time"] is None and d["duration"] is None and d["cloned_from"] is None
    assert d["status_history"] == [
        {"status": "SUBMITTED", "time": d["submit_time"], "reason": None}
    ]
    assert (d["archive_size"], d["archive_sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert repo.get(meta.job_id).to_dict() == d


def test_a_new_job_takes_only_a_model_source_from_the_server(
    repo: JobRepository, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    source = "3F2C1B9E-0000-4000-8000-000000000000"
    by_param = upload(
        repo, make_zip().read_bytes(), submitter, params={"initial_model_job_id": source}
    )
    by_extra = repo.create_job_from_archive(
        make_zip(), submitter, extra={"initial_model_job_id": source}
    )
    assert by_param["initial_model_job_id"] == by_extra["initial_model_job_id"] == source.lower()
    for extra in ({"note": "x"}, {"errors": []}, {"initial_model_job_id": "../x"}):
        with pytest.raises(InvalidArgumentError):
            repo.create_job_from_archive(make_zip(), submitter, extra=extra)
    assert len(repo.list()) == 2


@pytest.mark.parametrize("key", ["status", "submitter_name", "errors", "initial_model_job_id"])
def test_server_owned_keys_in_meta_json_are_refused_and_nothing_is_kept(
    repo: JobRepository, make_zip: Callable[..., Path], submitter: Submitter, key: str
) -> None:
    with pytest.raises(InvalidJobDefinition, match=f"key '{key}' is set by the server"):
        repo.create_job_from_archive(make_zip(meta={key: "x"}), submitter)
    assert repo.list() == []


def test_an_invalid_archive_is_refused_at_commit_and_nothing_is_kept(
    repo: JobRepository, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    with repo.begin_upload() as up:
        up.write(make_zip(meta={"min_clients": "two"}).read_bytes())
        with pytest.raises(InvalidJobDefinition, match="field 'min_clients'"):
            up.commit(submitter)
    with pytest.raises(InvalidArgumentError, match="already committed or aborted"):
        up.commit(submitter)
    assert repo.list() == []


def test_an_upload_over_the_cap_is_refused_while_it_is_written(
    backend: Backend, submitter: Submitter
) -> None:
    repo = backend.open(limits=ArchiveLimits(max_upload_bytes=1000))
    try:
        up = repo.begin_upload()
        up.write(b"x" * 600)
        with pytest.raises(InvalidJobDefinition, match="larger than the 1000 bytes"):
            up.write(b"x" * 600)
        with pytest.raises(InvalidArgumentError):
            up.commit(submitter)
        assert repo.limits.max_upload_bytes == 1000 and repo.list() == []
    finally:
        repo.close()


def test_an_aborted_or_abandoned_upload_leaves_no_job(
    repo: JobRepository, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    up = repo.begin_upload()
    up.write(make_zip().read_bytes())
    up.abort()
    up.abort()
    with pytest.raises(RuntimeError), repo.begin_upload() as abandoned:
        abandoned.write(make_zip().read_bytes())
        raise RuntimeError("the connection broke")
    assert repo.list() == []


def test_the_definition_check_sees_each_new_job_and_may_refuse_it(
    backend: Backend, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    seen: list[Mapping[str, Any]] = []

    def check(meta: Mapping[str, Any]) -> None:
        seen.append(meta)
        if meta["name"] == "outside":
            raise InvalidJobDefinition("site-9 is not in the project")

    repo = backend.open(definition_check=check)
    try:
        repo.create_job_from_archive(make_zip(), submitter)
        with pytest.raises(InvalidJobDefinition, match="site-9"):
            repo.create_job_from_archive(make_zip(meta={"name": "outside"}), submitter)
        assert [m["name"] for m in seen] == ["hello-numpy", "outside"]
        assert [j.name for j in repo.list()] == ["hello-numpy"]
    finally:
        repo.close()


# -- reading: get, cached, list, job_dir, job_archive, result_dir ------------------------


def test_get_returns_what_was_stored_by_canonical_id(repo: JobRepository, job: JobMeta) -> None:
    assert repo.get(job.job_id).to_dict() == job.to_dict()
    assert repo.get(job.job_id.upper()).job_id == job.job_id


@pytest.mark.parametrize("bad", ["../../etc", "not-a-uuid", "", "1234", "../" + str(uuid.uuid4())])
def test_a_malformed_job_id_is_an_invalid_argument_everywhere(
    repo: JobRepository, bad: str
) -> None:
    for call in (repo.get, repo.job_dir, repo.job_archive, repo.result_dir, repo.delete):
        with pytest.raises(InvalidArgumentError, match="malformed"):
            call(bad)
    with pytest.raises(InvalidArgumentError):
        repo.set_status(bad, S.DISPATCHED)
    with pytest.raises(InvalidArgumentError):
        repo.update(bad, schedule_reason="x")
    with pytest.raises(InvalidArgumentError):
        repo.clone_job(bad, Submitter("a@b.c", "org_a", "lead"))


def test_an_unknown_job_id_is_not_found_everywhere(repo: JobRepository) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(JobNotFound) as info:
        repo.get(missing)
    assert info.value.job_id == missing
    for call in (repo.job_dir, repo.job_archive, repo.result_dir, repo.delete):
        with pytest.raises(JobNotFound):
            call(missing)
    with pytest.raises(JobNotFound):
        repo.set_status(missing, S.DISPATCHED)
    with pytest.raises(JobNotFound):
        repo.update(missing, schedule_reason="x")
    with pytest.raises(JobNotFound):
        repo.clone_job(missing, Submitter("a@b.c", "org_a", "lead"))


def test_cached_gives_a_known_meta_or_none_and_never_raises(
    repo: JobRepository, job: JobMeta
) -> None:
    repo.get(job.job_id)
    hit = repo.cached(job.job_id)
    assert hit is None or hit.to_dict() == job.to_dict()
    repo.set_status(job.job_id, S.DISPATCHED)
    hit = repo.cached(job.job_id)
    assert hit is None or hit.status is S.DISPATCHED  # never a superseded meta
    assert repo.cached("not-a-uuid") is None
    assert repo.cached(42) is None  # type: ignore[arg-type]
    assert repo.cached(str(uuid.uuid4())) is None


def test_a_served_meta_cannot_be_changed_by_its_reader(repo: JobRepository, job: JobMeta) -> None:
    meta = repo.get(job.job_id)
    meta["status_history"].append({"status": "FAKE"})
    meta.to_dict()["deploy_map"]["app"].append("evil")
    with pytest.raises(TypeError):
        meta["status"] = "x"  # type: ignore[index]
    again = repo.get(job.job_id)
    assert len(again["status_history"]) == 1 and again["deploy_map"] == {"app": ["@ALL"]}


def test_list_orders_by_submit_time_filters_then_limits(
    repo: JobRepository, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    names = ["alpha-1", "alpha-2", "beta-1", "beta-2"]
    ids = [
        repo.create_job_from_archive(make_zip(meta={"name": n}), submitter).job_id for n in names
    ]
    repo.set_status(ids[1], S.FINISHED_ABORTED)
    assert [j.job_id for j in repo.list()] == ids
    assert [j.job_id for j in repo.list(reverse=True)] == ids[::-1]
    assert [j.name for j in repo.list(limit=2)] == ["alpha-1", "alpha-2"]
    assert [j.name for j in repo.list(limit=2, reverse=True)] == ["beta-2", "beta-1"]
    assert repo.list(limit=0) == []
    assert [j.name for j in repo.list(name_prefix="beta")] == ["beta-1", "beta-2"]
    assert [j.name for j in repo.list(name_prefix="beta", limit=1, reverse=True)] == ["beta-2"]
    assert [j.job_id for j in repo.list(id_prefix=ids[2][:8])] == [ids[2]]
    assert [j.job_id for j in repo.list(id_prefix=ids[2][:8].upper())] == [ids[2]]
    assert [j.name for j in repo.list(statuses=[S.FINISHED_ABORTED])] == ["alpha-2"]
    assert [j.name for j in repo.list(statuses="FINISHED:ABORTED")] == ["alpha-2"]
    assert len(repo.list(statuses=[S.SUBMITTED, "FINISHED:ABORTED"])) == 4
    assert repo.list(statuses=[]) == []
    summary = repo.list(name_prefix="alpha-2")[0]
    assert summary.status is S.FINISHED_ABORTED and summary.duration is None
    assert summary.to_dict()["status"] == "FINISHED:ABORTED"
    assert (summary.submitter_name, summary.submitter_org) == ("lead@org_a.com", "org_a")
    assert summary.submit_time == repo.get(ids[1]).submit_time


def test_list_refuses_malformed_arguments(repo: JobRepository) -> None:
    for bad in ({"id_prefix": "../"}, {"limit": -1}, {"limit": True}, {"statuses": ["DONE"]}):
        with pytest.raises(InvalidArgumentError):
            repo.list(**bad)  # type: ignore[arg-type]


def test_the_archive_is_kept_byte_for_byte_and_results_have_a_folder(
    repo: JobRepository, job: JobMeta, make_zip: Callable[..., Path]
) -> None:
    archive = repo.job_archive(job.job_id)
    assert archive.read_bytes() == make_zip(name="again.zip").read_bytes()
    assert job["archive_size"] == archive.stat().st_size
    assert validate_job_archive(archive).meta["name"] == "hello-numpy"
    result = repo.result_dir(job.job_id)
    assert result.is_dir() and result.is_relative_to(repo.job_dir(job.job_id))
    assert repo.result_dir(job.job_id) == result


def test_a_damaged_archive_is_never_served_or_cloned(
    backend: Backend, repo: JobRepository, job: JobMeta
) -> None:
    backend.damage_archive(repo, job.job_id)
    with pytest.raises(InternalError, match="missing or incomplete") as info:
        repo.job_archive(job.job_id)
    assert info.value.job_id == job.job_id
    with pytest.raises(FlareError):
        repo.clone_job(job.job_id, Submitter("a@b.c", "org_a", "lead"))
    assert len(repo.list()) == 1


# -- changing: set_status, update, clone_job, delete -------------------------------------


def test_status_changes_follow_the_table_and_are_recorded(
    repo: JobRepository, job: JobMeta
) -> None:
    meta = run_to(repo, job.job_id, S.DISPATCHED, S.RUNNING)
    assert meta["start_time"] is not None and meta["end_time"] is None
    meta = repo.set_status(job.job_id, "FINISHED:COMPLETED", reason="all rounds done")
    assert [h["status"] for h in meta.status_history] == [
        "SUBMITTED",
        "DISPATCHED",
        "RUNNING",
        "FINISHED:COMPLETED",
    ]
    assert meta.status_history[-1]["reason"] == "all rounds done"
    assert meta["duration"] >= 0 and meta["end_time"] >= meta["start_time"]
    assert repo.get(job.job_id).to_dict() == meta.to_dict()
    assert repo.list()[0].duration == meta["duration"]


def test_an_illegal_status_change_is_refused_and_not_written(
    repo: JobRepository, job: JobMeta
) -> None:
    with pytest.raises(InvalidTransition, match="from SUBMITTED to RUNNING"):
        repo.set_status(job.job_id, S.RUNNING)
    repo.set_status(job.job_id, S.FINISHED_ABORTED)
    with pytest.raises(InvalidTransition):
        repo.set_status(job.job_id, S.DISPATCHED)  # a finished job stays finished
    with pytest.raises(InvalidArgumentError):
        repo.set_status(job.job_id, "DONE")
    assert [h["status"] for h in repo.get(job.job_id).status_history] == [
        "SUBMITTED",
        "FINISHED:ABORTED",
    ]


def test_update_writes_server_owned_keys_only(repo: JobRepository, job: JobMeta) -> None:
    meta = repo.update(job.job_id, schedule_reason="site-2 not connected", start_time=12.5)
    assert meta["schedule_reason"] == "site-2 not connected" and meta["start_time"] == 12.5
    assert repo.get(job.job_id)["schedule_reason"] == "site-2 not connected"
    for field in ("status", "job_id", "submitter_name", "status_history", "submit_time"):
        with pytest.raises(InvalidArgumentError, match=field):
            repo.update(job.job_id, **{field: "x"})
    with pytest.raises(InvalidArgumentError, match="SERVER_OWNED_KEYS") as info:
        repo.update(job.job_id, waiting_for="site-2")
    assert "waiting_for" in str(info.value)
    with pytest.raises(InvalidArgumentError, match="JSON"):
        repo.update(job.job_id, errors=[object()])
    after = repo.get(job.job_id)
    assert "waiting_for" not in after and after.status is S.SUBMITTED and "errors" not in after


def test_clone_copies_the_definition_for_a_new_submitter(repo: JobRepository, job: JobMeta) -> None:
    repo.update(job.job_id, schedule_reason="x", errors=[{"message": "e"}])
    other = Submitter("admin@org_a.com", "org_a", "project_admin")
    source = "3f2c1b9e-0000-4000-8000-000000000000"
    clone = repo.clone_job(job.job_id, other, extra={"initial_model_job_id": source})
    assert "schedule_reason" not in clone and "errors" not in clone  # the server's, not copied
    assert clone.job_id != job.job_id and clone.cloned_from == job.job_id
    assert clone.status is S.SUBMITTED and clone.submitter == other
    assert clone["deploy_map"] == job["deploy_map"] and clone["name"] == job["name"]
    assert clone["initial_model_job_id"] == source
    assert repo.job_archive(clone.job_id).read_bytes() == repo.job_archive(job.job_id).read_bytes()
    with pytest.raises(InvalidArgumentError):
        repo.clone_job(job.job_id, other, extra={"note": "x"})
    assert len(repo.list()) == 2


def test_delete_refuses_a_dispatched_or_running_job(repo: JobRepository, job: JobMeta) -> None:
    run_to(repo, job.job_id, S.DISPATCHED)
    with pytest.raises(JobNotDone, match="abort it first") as info:
        repo.delete(job.job_id)
    assert info.value.job_id == job.job_id and info.value.status == "DISPATCHED"
    run_to(repo, job.job_id, S.RUNNING)
    with pytest.raises(JobNotDone):
        repo.delete(job.job_id)
    assert repo.get(job.job_id).status is S.RUNNING


def test_delete_removes_the_job_and_its_files(repo: JobRepository, job: JobMeta) -> None:
    folder = repo.job_dir(job.job_id)
    repo.result_dir(job.job_id)
    repo.delete(job.job_id)
    assert not folder.exists()
    with pytest.raises(JobNotFound):
        repo.get(job.job_id)
    assert repo.cached(job.job_id) is None and repo.list() == []
    with pytest.raises(JobNotFound):
        repo.delete(job.job_id)


# -- watching: subscribe -----------------------------------------------------------------


def test_subscribers_see_every_committed_change_in_order(
    repo: JobRepository, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    seen: list[tuple[str, str, bool]] = []

    def record(meta: JobMeta) -> None:
        assert meta.deleted or repo.get(meta.job_id).status is meta.status  # already committed
        seen.append((meta.job_id, meta.status.value, meta.deleted))

    unsubscribe = repo.subscribe(record)
    job = repo.create_job_from_archive(make_zip(), submitter)
    repo.update(job.job_id, schedule_reason="x")
    with pytest.raises(InvalidTransition):
        repo.set_status(job.job_id, S.RUNNING)  # refused: nothing to announce
    repo.set_status(job.job_id, S.FINISHED_ABORTED)
    clone = repo.clone_job(job.job_id, submitter)
    repo.delete(job.job_id)
    unsubscribe()
    repo.create_job_from_archive(make_zip(), submitter)
    assert seen == [
        (job.job_id, "SUBMITTED", False),
        (job.job_id, "SUBMITTED", False),
        (job.job_id, "FINISHED:ABORTED", False),
        (clone.job_id, "SUBMITTED", False),
        (job.job_id, "FINISHED:ABORTED", True),
    ]


def test_a_failing_subscriber_does_not_fail_the_writer_or_the_others(
    repo: JobRepository, job: JobMeta
) -> None:
    seen: list[str] = []

    def broken(meta: JobMeta) -> None:
        raise RuntimeError("bug in a subscriber")

    repo.subscribe(broken)
    repo.subscribe(lambda meta: seen.append(meta.status.value))
    assert repo.set_status(job.job_id, S.DISPATCHED).status is S.DISPATCHED
    assert seen == ["DISPATCHED"]


def test_the_repository_is_safe_across_threads(
    repo: JobRepository, job: JobMeta, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    errors: list[BaseException] = []
    archive = make_zip()

    def work() -> None:
        try:
            for _ in range(10):
                repo.update(job.job_id, schedule_reason=str(threading.get_ident()))
                repo.list()
                repo.get(job.job_id)
            repo.create_job_from_archive(archive, submitter)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(repo.list()) == 5


# -- lifetime: close, reopen, recovery ---------------------------------------------------


def test_a_closed_repository_refuses_use(backend: Backend, submitter: Submitter) -> None:
    repo = backend.open()
    repo.close()
    repo.close()
    with pytest.raises(FlareError, match="closed"):
        repo.list()
    with pytest.raises(FlareError, match="closed"):
        repo.get(str(uuid.uuid4()))
    with pytest.raises(FlareError):
        repo.begin_upload()


def test_recovery_after_a_crash_ends_in_flight_jobs_and_keeps_the_queue(
    backend: Backend, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    repo = backend.open()
    assert repo.recovery.clean and repo.recovery.jobs_ended == ()
    queued = repo.create_job_from_archive(make_zip(), submitter).job_id
    dispatched = repo.create_job_from_archive(make_zip(), submitter).job_id
    running = repo.create_job_from_archive(make_zip(), submitter).job_id
    done = repo.create_job_from_archive(make_zip(), submitter).job_id
    run_to(repo, dispatched, S.DISPATCHED)
    run_to(repo, running, S.DISPATCHED, S.RUNNING)
    run_to(repo, done, S.DISPATCHED, S.RUNNING, S.FINISHED_COMPLETED)
    repo.close()  # without ending its jobs: what the next start finds after a crash
    repo = backend.open()
    try:
        report = repo.recovery
        assert set(report.jobs_ended) == {(dispatched, "DISPATCHED"), (running, "RUNNING")}
        assert report.jobs_queued == (queued,) and report.jobs_missing_files == ()
        assert not report.clean
        assert repo.get(queued).status is S.SUBMITTED
        assert repo.get(done).status is S.FINISHED_COMPLETED
        for job_id, was in ((dispatched, "DISPATCHED"), (running, "RUNNING")):
            meta = repo.get(job_id)
            assert meta.status is S.FINISHED_ABNORMAL and meta["end_time"] is not None
            assert meta.status_history[-1]["reason"] == f"server restarted while the job was {was}"
        assert [j.job_id for j in repo.list()] == [queued, dispatched, running, done]
    finally:
        repo.close()
    repo = backend.open()
    try:
        assert repo.recovery.clean and repo.recovery.jobs_queued == (queued,)
    finally:
        repo.close()


def test_recovery_with_keep_running_leaves_running_jobs_for_the_server_to_resume(
    backend: Backend, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    repo = backend.open()
    dispatched = repo.create_job_from_archive(make_zip(), submitter).job_id
    running = repo.create_job_from_archive(make_zip(), submitter).job_id
    run_to(repo, dispatched, S.DISPATCHED)
    run_to(repo, running, S.DISPATCHED, S.RUNNING)
    repo.close()
    repo = backend.open(keep_running=True)
    try:
        report = repo.recovery
        assert report.jobs_running == (running,) and not report.clean
        assert report.jobs_ended == ((dispatched, "DISPATCHED"),)  # being prepared: ended
        assert repo.get(running).status is S.RUNNING
        assert repo.get(running)["end_time"] is None
        repo.set_status(running, S.FINISHED_ABNORMAL, reason="not resumable")  # legal move
    finally:
        repo.close()


def test_recovery_ends_a_job_whose_archive_is_damaged(
    backend: Backend, make_zip: Callable[..., Path], submitter: Submitter
) -> None:
    repo = backend.open()
    job_id = repo.create_job_from_archive(make_zip(), submitter).job_id
    backend.damage_archive(repo, job_id)
    repo.close()
    repo = backend.open()
    try:
        assert repo.recovery.jobs_missing_files == (job_id,)
        assert repo.recovery.jobs_ended == ((job_id, "SUBMITTED"),)
        meta = repo.get(job_id)
        assert meta.status is S.FINISHED_ABNORMAL
        assert "job files missing or incomplete" in meta.status_history[-1]["reason"]
    finally:
        repo.close()
