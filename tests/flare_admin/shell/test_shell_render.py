"""What the shell prints, rendered into an 80-column console without colour."""

from __future__ import annotations

import io
import json

from rich.console import Console

from flare_admin import JobMeta, JobSummary, MetricRow, SiteInfo, ValidationRow
from flare_admin.shell.render import (
    duration_text,
    renderables,
    sparkline,
    status_text,
)
from flare_admin.shell.theme import THEME, status_style
from flare_admin.shell.views import Done, MetricsView, ValidationsView, jsonable

JOB = "3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11"


def render(result: object) -> str:
    console = Console(file=io.StringIO(), width=80, color_system=None, theme=THEME)
    for item in renderables(result):
        console.print(item)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_jobs_table_shows_short_ids_names_statuses_and_durations():
    rows = [
        JobSummary(JOB, "hello-numpy", "FINISHED:COMPLETED", "2026-12-02T05:28:33+00:00", 4.2,
                   "admin@org_a.com", "org_a"),
        JobSummary("aa" + JOB[2:], "cifar", "RUNNING", "2026-12-02T05:30:00+00:00", 125.0),
    ]  # fmt: skip
    out = render(rows)
    assert "3f2c0a4e " in out and JOB not in out
    assert "hello-numpy" in out and "FINISHED:COMPLETED" in out and "RUNNING" in out
    assert "4.2s" in out and "2m 05s" in out
    assert "2 job(s)" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_an_empty_list_says_so():
    assert render([]).strip() == "(none)"


def test_job_meta_lists_every_key_with_readable_times():
    meta = JobMeta.from_dict(
        {"job_id": JOB, "name": "x", "status": "RUNNING", "start_time": 0, "duration": 65.0,
         "custom_key": {"a": 1}}
    )  # fmt: skip
    out = render(meta)
    assert "custom_key" in out and '{"a": 1}' in out
    assert "1m 05s" in out
    assert "RUNNING" in out


def test_server_text_is_printed_as_written_never_as_markup():
    out = render("[red]not markup[/red] and [bold]")
    assert "[red]not markup[/red] and [bold]" in out


def test_truncated_text_says_the_server_cut_it():
    class FileText(str):
        truncated = True

    assert "output truncated" in render(FileText("abc"))


def test_sites_table():
    sites = [SiteInfo("site-1", "org_a", 0.0, 0.0, (JOB,), "ipv4:127.0.0.1:5000")]
    out = render(sites)
    assert "site-1" in out and "org_a" in out and "3f2c0a4e" in out
    assert "127.0.0.1:5000" in out and "ipv4" not in out


def test_metrics_show_a_round_by_site_table_and_a_sparkline_per_site():
    rows = [
        MetricRow(site, rnd, "loss", value)
        for rnd, (a, b) in enumerate([(4.0, 5.0), (2.0, 3.0), (1.0, 1.5)], start=1)
        for site, value in (("site-1", a), ("site-2", b))
    ] + [MetricRow("site-1", None, "lr", 0.1)]
    out = render(MetricsView(JOB, tuple(rows)))
    assert "metrics: loss, lr (choose the table's with --key)" in out
    table = [line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]
    assert [line.split() for line in table] == [
        ["1", "│", "4", "│", "5", "│", "4.5"],
        ["2", "│", "2", "│", "3", "│", "2.5"],
        ["3", "│", "1", "│", "1.5", "│", "1.25"],
    ]
    assert "█▄▁" in out  # site-1's loss falls: 4, 2, 1
    assert "4 → 1" in out


def test_metrics_of_a_job_without_rows_say_so():
    assert "has logged no metrics yet" in render(MetricsView(JOB, ()))


def test_validations_table():
    rows = (ValidationRow("site-1", 1, {"acc": 0.5}), ValidationRow("site-2", 1, {"acc": 0.75}))
    out = render(ValidationsView(JOB, rows))
    assert "acc" in out and "0.75" in out and "site-2" in out


def test_nested_results_render_as_a_tree():
    out = render({"server": {"errors": []}, "site-1": {"tasks_done": 6}})
    assert out.startswith("server") and "tasks_done: 6" in out and "errors: []" in out


def test_done_prints_its_line():
    assert render(Done("aborted job x", {"job_id": "x"})).strip() == "aborted job x"


def test_statuses_have_a_colour_by_meaning():
    assert status_style("RUNNING") == "status.running"
    assert status_style("FINISHED:COMPLETED") == "status.completed"
    assert status_style("FINISHED:ABORTED") == "status.aborted"
    assert status_style("FINISHED:EXECUTION_EXCEPTION") == "status.failed"
    assert status_style("SOMETHING_NEW") == "status.unknown"
    assert status_text("RUNNING").style == "status.running"


def test_sparkline_scales_between_smallest_and_largest():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([2, 2]) == "▅▅"
    assert sparkline([1, float("nan"), 3]) == "▁ █"
    assert sparkline([]) == ""


def test_durations_read_like_a_person_would_write_them():
    assert duration_text(None) == "-"
    assert duration_text(3.14) == "3.1s"
    assert duration_text(3600 + 120) == "1h 02m"


def test_json_form_of_results_is_plain_data():
    view = MetricsView(JOB, (MetricRow("site-1", 1, "loss", float("nan")),))
    data = jsonable(view)
    assert data == {
        "job_id": JOB,
        "rows": [
            {"site": "site-1", "round": 1, "key": "loss", "value": None, "step": None, "time": 0.0}
        ],
    }
    json.dumps(data, allow_nan=False)


def test_a_status_history_reads_one_line_per_change():
    meta = JobMeta.from_dict(
        {"job_id": JOB, "name": "x", "status": "RUNNING", "status_history": [
            {"status": "SUBMITTED", "time": 1796189313.2, "reason": None},
            {"status": "DISPATCHED", "time": 1796189314.2, "reason": "dispatched to site-1"},
        ]}
    )  # fmt: skip
    lines = [line.strip() for line in render(meta).splitlines()]
    assert any(line.endswith("SUBMITTED") and ":" in line for line in lines)
    assert any(line.endswith("DISPATCHED dispatched to site-1") for line in lines)


def test_the_per_round_table_shows_every_metric_and_validation_of_each_site():
    from flare_admin.shell.render import rounds_metrics_table

    rows = [MetricRow("site-1", 1, "loss", 0.5), MetricRow("site-1", 1, "acc", 0.75)]
    vals = [ValidationRow("site-1", 1, {"mse": 0.25})]
    console = Console(file=io.StringIO(), width=80, color_system=None, theme=THEME)
    console.print(rounds_metrics_table(rows, vals, "per-round metrics"))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "per-round metrics" in out
    assert "acc=0.75  loss=0.5  val:mse=0.25" in out


def test_peer_addresses_read_as_people_write_them():
    from flare_admin.shell.render import peer_text

    assert peer_text("ipv6:%5B::1%5D:55814") == "[::1]:55814"
    assert peer_text("ipv4:127.0.0.1:5000") == "127.0.0.1:5000"
    assert peer_text("unix:/tmp/x") == "unix:/tmp/x"
