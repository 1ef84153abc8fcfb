"""watch_job follows a job really run by two site processes: the server pushes every meta
change and every metric and validation row as the runner writes it."""

from __future__ import annotations

import asyncio

import pytest

from flare_admin import (
    AsyncSession,
    JobStatus,
    MetaChanged,
    MetricsArrived,
    ValidationsArrived,
)
from tests.e2e.jobs_helpers import ADMIN, Cluster, write_job
from tests.server_harness import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(provisioned, tmp_path_factory):
    with Cluster(provisioned, tmp_path_factory.mktemp("watch")) as c:
        yield c


def _no_watchers(cluster: Cluster) -> bool:
    server = cluster.server
    return server.call(
        lambda: not server.server.watchers and not server.server.result_rows.watched_jobs()
    )


def test_a_watch_sees_the_job_to_its_end_and_every_row_once_in_order(cluster, tmp_path):
    job = write_job(tmp_path, tmp_path / "sends", rounds=2, validate=True)
    job_id = cluster.submit(job)

    events = list(cluster.session.watch_job(job_id, timeout=90))

    metas = [e.meta for e in events if isinstance(e, MetaChanged)]
    assert metas[-1] is events[-1].meta and metas[-1].job_status is JobStatus.FINISHED_COMPLETED
    assert not any(m.finished for m in metas[:-1])
    statuses = [m.status for m in metas]
    assert statuses.index("RUNNING") < len(statuses) - 1
    metrics = [r for e in events if isinstance(e, MetricsArrived) for r in e.rows]
    assert metrics == cluster.session.get_job_metrics(job_id)
    assert len(metrics) == len(set(metrics)) == 2 * 2 * 3  # sites x rounds x steps
    validations = [r for e in events if isinstance(e, ValidationsArrived) for r in e.rows]
    assert validations == cluster.session.get_validations(job_id)
    assert {(v.site, v.round) for v in validations} == {
        (s, r) for s in ("site-1", "site-2") for r in (1, 2)
    }
    # Pushed as written: round 1's rows came before the meta saying round 1 was aggregated.
    first_row = next(i for i, e in enumerate(events) if isinstance(e, MetricsArrived))
    aggregated = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, MetaChanged) and (e.meta.get("rounds_completed") or 0) >= 1
    )
    assert first_row < aggregated
    assert events[first_row].rows[0].round == 1
    wait_until(lambda: _no_watchers(cluster), 5)


def test_the_async_watch_sees_the_same(cluster, tmp_path):
    job = write_job(tmp_path, tmp_path / "sends", rounds=1)
    job_id = cluster.submit(job)

    async def main() -> list:
        async with await AsyncSession.open(
            ADMIN, cluster.provisioned.kits[ADMIN], server_address=cluster.server.admin_address
        ) as s:
            events = [e async for e in s.watch_job(job_id, timeout=90)]
            assert [r for e in events if e.kind == "metrics" for r in e.rows] == (
                await s.get_job_metrics(job_id)
            )
            return events

    events = asyncio.run(main())
    assert events[-1].kind == "meta" and events[-1].meta.finished
    assert any(e.kind == "metrics" for e in events)


def test_leaving_a_watch_early_leaves_no_watcher_on_the_server(cluster, tmp_path):
    job = write_job(tmp_path, tmp_path / "sends", rounds=1)
    job_id = cluster.submit(job)
    for event in cluster.session.watch_job(job_id):
        if isinstance(event, MetricsArrived):
            break
    wait_until(lambda: _no_watchers(cluster), 5)
    assert cluster.session.wait_for_job(job_id, timeout=60).status == "FINISHED:COMPLETED"
