"""The live job view's state, folded from watch events (no server needed)."""

from __future__ import annotations

import io

from rich.console import Console

from flare_admin import (
    JobMeta,
    MetaChanged,
    MetricRow,
    MetricsArrived,
    ValidationRow,
    ValidationsArrived,
)
from flare_admin.shell.live import JobProgress
from flare_admin.shell.theme import THEME

JOB = "3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11"


def meta(status: str, **extra: object) -> MetaChanged:
    return MetaChanged(
        JobMeta.from_dict({"job_id": JOB, "name": "hello", "status": status, **extra})
    )


def drawn(progress: JobProgress) -> str:
    console = Console(file=io.StringIO(), width=80, color_system=None, theme=THEME)
    console.print(progress.render())
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_sites_rounds_and_latest_metrics_come_from_the_events():
    progress = JobProgress(JOB)
    progress.apply(meta("RUNNING", deployed_sites=["site-1", "site-2"], current_round=2,
                        num_rounds=3))  # fmt: skip
    progress.apply(MetricsArrived((MetricRow("site-1", 2, "loss", 0.5),)))
    progress.apply(ValidationsArrived((ValidationRow("site-2", 1, {"acc": 0.9}),)))
    out = drawn(progress)
    assert "hello" in out and "3f2c0a4e" in out and "RUNNING" in out and "round 2 of 3" in out
    assert "loss 0.5" in out and "val_acc 0.9" in out
    assert "site-2" in out


def test_the_sparkline_follows_the_mean_of_each_sites_last_value_per_round():
    progress = JobProgress(JOB)
    progress.apply(meta("RUNNING"))
    rows = [
        MetricRow("site-1", 1, "loss", 9.0),  # an earlier step of round 1: superseded
        MetricRow("site-1", 1, "loss", 4.0),
        MetricRow("site-2", 1, "loss", 2.0),
        MetricRow("site-1", 2, "loss", 1.0),
        MetricRow("site-2", 2, "loss", 1.0),
    ]
    progress.apply(MetricsArrived(tuple(rows)))
    assert progress.mean_per_round("loss") == [3.0, 1.0]
    assert "loss █▁" in drawn(progress)


def test_a_line_is_kept_for_each_status_or_round_change():
    progress = JobProgress(JOB)
    progress.apply(meta("SUBMITTED"))
    progress.apply(meta("SUBMITTED", schedule_reason="waiting"))  # no change of status/round
    progress.apply(meta("RUNNING", current_round=1))
    progress.apply(meta("RUNNING", current_round=2))
    assert [line.split(": ", 1)[1] for line in progress.changes] == [
        "SUBMITTED, round -",
        "RUNNING, round 1",
        "RUNNING, round 2",
    ]


def test_the_outcome_of_a_failed_job_gives_its_reason():
    progress = JobProgress(JOB)
    reason = "deployment failed on site-1: train.py exited\nTraceback ..."
    history = [{"status": "FINISHED:FAILED_TO_RUN", "time": 1.0, "reason": reason}]
    progress.apply(meta("FINISHED:FAILED_TO_RUN", status_history=history))
    outcome = progress.outcome()
    assert outcome.text.endswith("FINISHED:FAILED_TO_RUN (round -, -): deployment failed on "
                                 "site-1: train.py exited")  # fmt: skip
    assert outcome.to_dict()["status"] == "FINISHED:FAILED_TO_RUN"


def test_the_outcome_of_a_job_still_running_says_it_keeps_running():
    progress = JobProgress(JOB)
    progress.apply(meta("RUNNING"))
    assert (
        progress.outcome().text
        == f"stopped watching job {JOB[:8]}: it is RUNNING and keeps running"
    )
