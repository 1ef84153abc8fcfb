"""The soak's end checks (bench/soak/checks.py) find what they claim to find.

The workspace check runs on a real job store with real files, then on the same store with
one defect added at a time; the accounting and the memory verdict on small made-up inputs.
The soak itself (``make soak``) is never run by the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.soak.checks import Incarnation, account, check_workspace, rss_summary
from bench.soak.ledger import JobRecord
from bench.soak.report import judge_rss
from flare_server.jobs import JobStore, Submitter
from tests.flare_server.jobs.jobzip_helpers import valid_job_files, write_zip


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A server workspace with two jobs, one with a whole result folder."""
    ws = tmp_path / "server-ws"
    archive = write_zip(tmp_path / "job.zip", valid_job_files())
    with JobStore.open(ws / "jobs") as store:
        submitter = Submitter("admin@poc.local", "poc", "project_admin")
        first = store.create_job_from_archive(archive, submitter)
        store.create_job_from_archive(archive, submitter)
        result = store.result_dir(first.job_id)
        result.mkdir(parents=True, exist_ok=True)
        (result / "summary.json").write_text(json.dumps({"status": "FINISHED:COMPLETED"}))
        (result / "metrics.jsonl").write_text('{"key": "loss", "value": 1.0}\n{"complete": true}\n')
        np.savez(result / "global_model.npz", w=np.arange(3.0))
    return ws


def append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def first_job(ws: Path) -> Path:
    return next(p for p in (ws / "jobs").iterdir() if (p / "result").is_dir())


def test_a_whole_workspace_passes_with_every_file_counted(workspace: Path) -> None:
    found = check_workspace(workspace)
    assert found.problems == []
    assert (found.rows, found.archives_checked) == (2, 2)
    assert (found.json_files, found.jsonl_files, found.npz_files) == (1, 1, 1)


def test_a_truncated_archive_is_found_by_its_size_and_hash(workspace: Path) -> None:
    archive = first_job(workspace) / "job.zip"
    archive.write_bytes(archive.read_bytes()[:-10])
    problems = check_workspace(workspace).problems
    assert any("job.zip is" in p for p in problems)
    assert any("SHA-256 differs" in p for p in problems)


@pytest.mark.parametrize(
    "defect, expected",
    [
        (lambda r: (r / ".summary.json.a1b2c3.tmp").write_text("{"), "temp file left"),
        (lambda r: append(r / "metrics.jsonl", '{"key": "lo'), "no newline"),
        (lambda r: (r / "summary.json").write_text('{"status": '), "does not read"),
        (lambda r: (r / "global_model.npz").write_bytes(b"PK\x03\x04 half"), "does not read"),
        (lambda r: (r.parents[1] / "tmp" / "upload-1").write_bytes(b"x"), "jobs/tmp/ not empty"),
        (lambda r: (r.parents[1] / ("0" * 8)).mkdir(), "job folder without a row"),
    ],
    ids=["temp-file", "half-line", "bad-json", "bad-npz", "tmp-left", "orphan-folder"],
)
def test_each_half_written_or_left_over_file_is_named(
    workspace: Path, defect: object, expected: str
) -> None:
    defect(first_job(workspace) / "result")  # type: ignore[operator]
    problems = check_workspace(workspace).problems
    assert len(problems) == 1 and expected in problems[0], problems


def record(job_id: str, status: str = "FINISHED:COMPLETED", **flags: bool) -> JobRecord:
    return JobRecord(job_id, "submit", 0.0, status, **flags)


def test_accounting_accepts_finished_queued_and_our_own_deletes_only() -> None:
    records = [
        record("done"),
        record("queued", "SUBMITTED"),
        record("gone-by-us", deleted=True),
        record("maybe-gone", delete_unacknowledged=True),
        record("maybe-kept", delete_unacknowledged=True),
        record("lost"),
        record("stuck", "RUNNING"),
        record("back", deleted=True),
    ]
    on_server = {
        "done": "FINISHED:ABNORMAL",
        "queued": "SUBMITTED",
        "maybe-kept": "FINISHED:COMPLETED",
        "stuck": "RUNNING",
        "back": "FINISHED:COMPLETED",
        "not-ours": "SUBMITTED",
    }
    result = account(records, on_server)
    assert result.lost == ["lost"]
    assert result.stuck == ["stuck RUNNING"]
    assert result.resurrected == ["back"]
    assert (result.deleted, result.delete_unacknowledged) == (2, 2)
    assert result.unacknowledged_present == 1
    assert not result.ok


def samples(start: float, seconds: int, mib: float, per_min: float, n: int) -> list:
    return [(start + t, n, int((mib + per_min * t / 60) * 1024)) for t in range(0, seconds + 1, 2)]


def test_memory_fails_only_on_steady_growth_of_a_long_incarnation_or_the_cap() -> None:
    flat = rss_summary(samples(0, 300, 80, 0.0, 1) + samples(301, 60, 80, 30, 2), warmup=30)
    assert [i.number for i in flat] == [1, 2]
    assert judge_rss(flat, 256, 3.0, min_seconds=120).problems == []  # 2: too short to judge
    growing = rss_summary(samples(0, 300, 80, 10.0, 1), warmup=30)
    slope = growing[0].slope_mib_per_min
    assert slope is not None and slope == pytest.approx(10.0, abs=0.1)
    assert "grew" in judge_rss(growing, 256, 3.0, min_seconds=120).problems[0]
    big = [Incarnation(1, 0, 10, 80, 300, 90, None)]
    assert "peak 300 MiB" in judge_rss(big, 256, 3.0, min_seconds=120).problems[0]
