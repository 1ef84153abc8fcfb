"""The site's ledger of received tasks: what a re-sent task gets instead of a second run."""

from __future__ import annotations

from flare_protocol.site_topics import TaskResult
from flare_site.blobs import Blob
from flare_site.task_ledger import RUNNING, SentResult, TaskLedger


def test_a_new_task_is_claimed_and_then_known_as_running() -> None:
    ledger = TaskLedger()
    assert ledger.claim("job", "r1") is None
    assert ledger.claim("job", "r1") is RUNNING


def test_a_finished_task_returns_the_result_that_was_sent() -> None:
    ledger = TaskLedger()
    ledger.claim("job", "r1")
    sent = SentResult(TaskResult("r1", "train", 1), (Blob("b1", "r1.npz", 3, "ab"),))
    ledger.done("job", "r1", sent)
    assert ledger.claim("job", "r1") == sent


def test_task_ids_are_remembered_per_job() -> None:
    ledger = TaskLedger()
    ledger.claim("job-a", "r1")
    assert ledger.claim("job-b", "r1") is None


def test_the_oldest_task_ids_of_a_job_are_forgotten_beyond_the_bound() -> None:
    ledger = TaskLedger(per_job=2)
    for task_id in ("r1", "r2", "r3"):
        ledger.claim("job", task_id)
    assert ledger.claim("job", "r3") is RUNNING
    assert ledger.claim("job", "r1") is None  # forgotten, so new again


def test_the_least_recently_used_jobs_are_forgotten_beyond_the_bound() -> None:
    ledger = TaskLedger(jobs=2)
    ledger.claim("job-a", "r1")
    ledger.claim("job-b", "r1")
    ledger.claim("job-a", "r2")  # job-a is now the most recent
    ledger.claim("job-c", "r1")
    assert ledger.claim("job-a", "r1") is RUNNING
    assert ledger.claim("job-b", "r1") is None


def test_a_forgotten_job_starts_afresh() -> None:
    ledger = TaskLedger()
    ledger.claim("job", "r1")
    ledger.forget("job")
    assert ledger.claim("job", "r1") is None
