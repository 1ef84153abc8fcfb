"""Session.watch_job against a real server: events, their order, the end, errors, cancelling.

Jobs here have no sites (they stay SUBMITTED until the test moves them, as the scheduler
would) and their result files are written by hand; the watch of a job really run by
sites, rows pushed as they are written, is in tests/e2e/test_jobs_watch.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from flare_admin import (
    AsyncSession,
    AuthorizationError,
    InvalidArgumentError,
    JobTimeout,
    MetaChanged,
    MetricRow,
    MetricsArrived,
    SessionClosed,
    ValidationsArrived,
)
from flare_server.jobs import JobStatus
from tests.flare_admin.conftest import ADMIN, advance
from tests.server_harness import wait_until

UNKNOWN_JOB = "3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11"


def _write_rows(server, job_id: str, name: str, rows: list[dict]) -> None:
    result = Path(server.server.store.result_dir(job_id))
    lines = [json.dumps(r) + "\n" for r in rows] + ['{"complete": true}\n']
    (result / name).write_text("".join(lines))


def _metric(i: int) -> dict:
    return {
        "site": f"site-{i % 2 + 1}",
        "round": i // 10,
        "key": "loss",
        "value": i / 7,
        "step": i % 10,
        "time": 1700000000.0 + i,
    }


def _no_watchers(server) -> bool:
    return server.call(
        lambda: not server.server.watchers and not server.server.result_rows.watched_jobs()
    )


def test_a_finished_job_gives_its_rows_then_its_final_meta_and_ends(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    rows = [_metric(i) for i in range(30_000)]  # ~3 MB: more than one message
    _write_rows(server, job_id, "metrics.jsonl", rows)
    _write_rows(
        server,
        job_id,
        "validations.jsonl",
        [{"site": "site-1", "round": 1, "metrics": {"acc": 0.5}}],
    )
    advance(server, job_id, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.FINISHED_COMPLETED)

    events = list(session.watch_job(job_id, timeout=30))

    assert isinstance(events[-1], MetaChanged) and events[-1].meta.finished
    assert events[-1].meta.job_status is JobStatus.FINISHED_COMPLETED
    assert [type(e) for e in events[:-1]].count(MetaChanged) == 0
    batches = [e for e in events if isinstance(e, MetricsArrived)]
    assert len(batches) >= 2
    watched = [row for batch in batches for row in batch.rows]
    assert watched == session.get_job_metrics(job_id) == [MetricRow.from_dict(r) for r in rows]
    (validations,) = [e for e in events if isinstance(e, ValidationsArrived)]
    assert validations.rows == tuple(session.get_validations(job_id))
    assert {e.kind for e in events} == {"meta", "metrics", "validations"}
    assert _no_watchers(server)


def test_metas_arrive_as_the_job_moves_and_the_watch_ends_with_the_finished_one(
    session, server, job_folder
):
    job_id = session.submit_job(job_folder)
    threading.Thread(
        target=advance,
        args=(server, job_id, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.FINISHED_ABORTED),
        kwargs={"pause": 0.2},
        daemon=True,
    ).start()
    statuses = [e.meta.status for e in session.watch_job(job_id, timeout=30)]
    assert statuses == ["SUBMITTED", "DISPATCHED", "RUNNING", "FINISHED:ABORTED"]


def test_without_rows_only_metas_come(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    _write_rows(server, job_id, "metrics.jsonl", [_metric(1)])
    advance(server, job_id, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.FINISHED_COMPLETED)
    events = list(session.watch_job(job_id, metrics=False, validations=False))
    assert [e.kind for e in events] == ["meta"]


def test_each_event_converts_to_json(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    _write_rows(server, job_id, "metrics.jsonl", [_metric(1)])
    advance(server, job_id, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.FINISHED_COMPLETED)
    docs = [json.loads(json.dumps(e.to_dict())) for e in session.watch_job(job_id)]
    assert docs[0] == {"kind": "metrics", "rows": [_metric(1)]}
    assert docs[-1]["kind"] == "meta" and docs[-1]["meta"]["status"] == "FINISHED:COMPLETED"


def test_a_role_without_the_download_right_is_refused_rows_at_the_start(
    open_session, server, job_folder
):
    job_id = open_session(ADMIN).submit_job(job_folder)
    member = open_session("member@org_b.com")
    with pytest.raises(AuthorizationError, match="without metrics and validations") as info:
        next(member.watch_job(job_id))
    assert info.value.job_id == job_id
    first = next(member.watch_job(job_id, metrics=False, validations=False))
    assert first.meta.status == "SUBMITTED"


def test_a_watch_that_outlives_its_timeout_raises_job_timeout(session, job_folder):
    job_id = session.submit_job(job_folder)
    watch = session.watch_job(job_id, timeout=0.5)
    assert next(watch).meta.status == "SUBMITTED"
    start = time.monotonic()
    with pytest.raises(JobTimeout) as info:
        for event in watch:  # a job no site can run may change (its waiting reason) first
            assert event.meta.status == "SUBMITTED"
    assert time.monotonic() - start < 30  # a generous ceiling: the 0.5 s timeout ends it
    assert info.value.job_id == job_id and info.value.status == "SUBMITTED"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"job_id": "nope"}, "malformed"),
        ({"job_id": UNKNOWN_JOB, "timeout": 0}, "timeout"),
        ({"job_id": UNKNOWN_JOB, "timeout": -1}, "timeout"),
        ({"job_id": UNKNOWN_JOB, "metrics": "yes"}, "metrics"),
    ],
)
def test_bad_arguments_are_refused_before_any_call(session, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        session.watch_job(**kwargs)


def test_breaking_out_of_a_watch_cancels_the_server_stream(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    for event in session.watch_job(job_id):
        assert event.meta.status == "SUBMITTED"
        wait_until(lambda: not _no_watchers(server), 5)  # the server is watching
        break
    wait_until(lambda: _no_watchers(server), 5)


def test_close_and_with_cancel_the_server_stream(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    with session.watch_job(job_id) as watch:
        next(watch)
        wait_until(lambda: not _no_watchers(server), 5)
    wait_until(lambda: _no_watchers(server), 5)
    watch.close()  # idempotent
    unstarted = session.watch_job(job_id)
    wait_until(lambda: not _no_watchers(server), 5)
    unstarted.close()
    wait_until(lambda: _no_watchers(server), 5)


def test_closing_the_session_ends_a_running_watch(session, job_folder):
    job_id = session.submit_job(job_folder)
    watch = session.watch_job(job_id)
    next(watch)
    threading.Timer(0.2, session.close).start()
    with pytest.raises(SessionClosed):
        for _ in watch:  # a meta change (e.g. its waiting reason) may still come first
            pass


def test_the_async_watch_gives_the_same_events(server, kits, job_folder):
    import asyncio

    async def main() -> None:
        async with await AsyncSession.open(
            ADMIN, kits[ADMIN], server_address=server.admin_address
        ) as s:
            job_id = await s.submit_job(job_folder)
            _write_rows(server, job_id, "metrics.jsonl", [_metric(i) for i in range(5)])
            got = []
            async for event in s.watch_job(job_id):
                got.append(event)
                if len(got) == 1:
                    assert event.meta.status == "SUBMITTED"
                    await asyncio.to_thread(
                        advance,
                        server,
                        job_id,
                        JobStatus.DISPATCHED,
                        JobStatus.RUNNING,
                        JobStatus.FINISHED_COMPLETED,
                    )
            assert [e.kind for e in got][-2:] == ["metrics", "meta"]
            assert list(got[-2].rows) == await s.get_job_metrics(job_id)
            assert got[-1].meta.finished

            async with s.watch_job(job_id, metrics=False) as watch:  # aclose cancels
                async for _ in watch:
                    break
            await asyncio.to_thread(wait_until, lambda: _no_watchers(server), 5)

    asyncio.run(main())


def test_revoking_the_watcher_s_certificate_ends_its_watch(open_session, server, kits, job_folder):
    from cryptography import x509

    from flare_admin import AuthenticationError

    job_id = open_session(ADMIN).submit_job(job_folder)
    member = "member@org_b.com"
    watch = open_session(member).watch_job(job_id, metrics=False, validations=False)
    assert next(watch).meta.status == "SUBMITTED"
    cert = (kits[member] / "startup" / "client.crt").read_bytes()
    serial = x509.load_pem_x509_certificate(cert).serial_number
    assert server.call(lambda: server.server.revoke([serial])) == 1
    with pytest.raises(AuthenticationError, match="revoked"):
        next(watch)
    wait_until(lambda: _no_watchers(server), 5)
