"""JobStore keeps committed metas in memory: reads never see a change that was not made,
and always see one that was."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flare_protocol.errors import FlareError, JobNotFound
from flare_server.jobs import JobMeta, JobStatus, JobStore, Submitter


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with JobStore.open(tmp_path / "jobs") as opened:
        yield opened


@pytest.fixture
def job(store: JobStore, make_zip: Callable[..., Path], submitter: Submitter) -> JobMeta:
    return store.create_job_from_archive(make_zip(), submitter)


def test_a_read_meta_is_served_from_memory_until_it_changes(store: JobStore, job: JobMeta) -> None:
    assert store.cached(job.job_id) is None
    first = store.get(job.job_id)
    assert store.cached(job.job_id) is first and store.get(job.job_id) is first


def test_a_status_change_is_seen_by_the_next_read(store: JobStore, job: JobMeta) -> None:
    store.get(job.job_id)
    store.set_status(job.job_id, JobStatus.DISPATCHED)
    assert store.get(job.job_id).status is JobStatus.DISPATCHED
    assert store.cached(job.job_id).status is JobStatus.DISPATCHED  # type: ignore[union-attr]


def test_an_update_is_seen_by_the_next_read(store: JobStore, job: JobMeta) -> None:
    store.get(job.job_id)
    store.update(job.job_id, schedule_reason="waiting for sites")
    assert store.get(job.job_id)["schedule_reason"] == "waiting for sites"


def test_a_deleted_job_is_not_served_from_memory(store: JobStore, job: JobMeta) -> None:
    store.get(job.job_id)
    store.delete(job.job_id)
    assert store.cached(job.job_id) is None
    with pytest.raises(JobNotFound):
        store.get(job.job_id)


def test_a_served_meta_cannot_be_changed_by_its_reader(store: JobStore, job: JobMeta) -> None:
    meta = store.get(job.job_id)
    meta["status_history"].append({"status": "FAKE"})
    assert len(store.get(job.job_id)["status_history"]) == 1


def test_wire_json_is_the_compact_meta(store: JobStore, job: JobMeta) -> None:
    meta = store.get(job.job_id)
    assert json.loads(meta.wire_json()) == meta.to_dict()
    assert ", " not in meta.wire_json() and meta.wire_json() is meta.wire_json()


def test_a_closed_store_serves_nothing_from_memory(store: JobStore, job: JobMeta) -> None:
    store.get(job.job_id)
    store.close()
    assert store.cached(job.job_id) is None
    with pytest.raises(FlareError, match="closed"):
        store.get(job.job_id)


def test_cached_never_raises(store: JobStore) -> None:
    assert store.cached("not-a-uuid") is None
    assert store.cached(42) is None  # type: ignore[arg-type]
