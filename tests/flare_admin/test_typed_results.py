"""What the shell shows comes back typed, keeping what the server said (truncation, entries),
and still reads like the plain dicts and strings the FLARE API returned."""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from flare_admin import (
    AsyncSession,
    ClientJobStatus,
    DirEntry,
    DirListing,
    FileText,
    JobRunSummary,
    RoundSummary,
    SystemCommandResult,
    TargetErrors,
    TargetStats,
)
from flare_protocol.models import save_params
from flare_protocol.workspace_files import MAX_LINES, MAX_TEXT_BYTES
from tests.flare_admin.conftest import ADMIN, finish_with_result

SUMMARY = {
    "job_id": "to be replaced",
    "name": "hello",
    "workflow": "fedavg",
    "num_rounds": 2,
    "rounds_completed": 2,
    "status": "FINISHED:COMPLETED",
    "reason": "2 round(s) completed",
    "failed_sites": [],
    "sites": ["site-1", "site-2"],
    "deploy_failures": {},
    "has_final_model": True,
    "rounds": [
        {
            "round": 1,
            "participants": {"site-1": 30, "site-2": 70},
            "params_types": {},
            "late_sites": [],
            "lost_sites": [],
        },
        {
            "round": 2,
            "participants": {"site-1": 30},
            "params_types": {"site-1": "FULL"},
            "late_sites": ["site-2"],
            "lost_sites": [],
        },
    ],
    "metrics_dropped": 0,
    "start_time": 1700000000.0,
    "end_time": 1700000012.5,
    "complete": True,
}


# -- file commands -----------------------------------------------------------------------


@pytest.fixture
def workspace(server) -> Path:
    return Path(server.server.workspace)


def test_a_capped_cat_says_it_is_truncated_and_is_still_a_string(session, workspace):
    (workspace / "big.log").write_bytes(b"x" * (MAX_TEXT_BYTES + 10))
    (workspace / "small.log").write_text("hello\n")

    big = session.cat_target("server", file="big.log")
    small = session.cat_target("server", file="small.log")

    assert isinstance(big, str) and isinstance(big, FileText)
    assert big.truncated and len(big) == MAX_TEXT_BYTES
    assert (big.target, big.path) == ("server", "big.log")
    assert not small.truncated and small == "hello\n" and small.split() == ["hello"]
    assert small.to_dict() == {
        "text": "hello\n",
        "truncated": False,
        "target": "server",
        "path": "small.log",
    }
    assert type(small.text) is str and f"{small}" == "hello\n"
    with pytest.raises(AttributeError):
        small.truncated = True  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(big))
    assert copy == big and copy.truncated


def test_head_tail_grep_logs_and_pwd_are_file_texts(session, workspace, job_folder):
    (workspace / "n.txt").write_text("".join(f"line {i}\n" for i in range(1, 6)))
    for text in (
        session.head_target("server", "-n 2", "n.txt"),
        session.tail_target("server", "-2", "n.txt"),
        session.grep_target("server", None, "line", "n.txt"),
        session.head_target_log("server"),
        session.tail_target_log("server"),
        session.get_job_logs(session.submit_job(job_folder)),
        session.get_working_directory("server"),
    ):
        assert isinstance(text, FileText) and text.target == "server" and not text.truncated
    assert session.tail_target_log("server").path == "logs/server.log"


def test_ls_gives_typed_entries_with_its_text(session, workspace):
    (workspace / "folder").mkdir()
    (workspace / "data.bin").write_bytes(b"12345")

    listing = session.ls_target("server", "-l")

    assert isinstance(listing, DirListing) and isinstance(listing, str)
    assert "data.bin" in listing and not listing.truncated
    by_name = {e.name: e for e in listing.entries}
    assert by_name["data.bin"] == DirEntry("data.bin", "file", 5, by_name["data.bin"].mtime)
    assert by_name["folder"].is_dir and by_name["data.bin"].mtime > 0
    doc = json.loads(json.dumps(listing.to_dict()))
    assert doc["text"] == listing and {"name": "folder", "type": "dir"}.items() <= (
        [e for e in doc["entries"] if e["name"] == "folder"][0].items()
    )


def test_a_listing_over_the_cap_says_it_is_truncated(session, workspace):
    many = workspace / "many"
    many.mkdir()
    for i in range(MAX_LINES + 1):
        (many / f"f{i:05d}").touch()
    listing = session.ls_target("server", path="many")
    assert listing.truncated and len(listing.entries) == MAX_LINES


# -- job and system results --------------------------------------------------------------


def test_get_job_summary_is_typed_and_keeps_every_key_of_summary_json(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    doc = {**SUMMARY, "job_id": job_id, "something_new": [1]}
    finish_with_result(server, job_id, {"summary.json": json.dumps(doc).encode()})

    summary = session.get_job_summary(job_id)

    assert isinstance(summary, JobRunSummary)
    assert (summary.workflow, summary.num_rounds, summary.rounds_completed) == ("fedavg", 2, 2)
    assert summary.job_status.ok and summary.has_final_model
    assert summary.sites == ("site-1", "site-2") and summary.duration == 12.5
    assert summary.rounds[0] == RoundSummary(1, {"site-1": 30, "site-2": 70})
    assert summary.rounds[1].late_sites == ("site-2",)
    assert summary["something_new"] == [1] and set(summary) == set(doc)
    assert summary == doc and summary.to_dict() == doc


def test_stats_and_errors_are_keyed_by_target(session, job_folder):
    job_id = session.submit_job(job_folder)
    stats = session.show_stats(job_id, "server")
    errors = session.show_errors(job_id, "server")
    assert isinstance(stats, TargetStats) and stats.targets == ("server",)
    assert stats["server"]["status"] == "SUBMITTED"
    assert isinstance(errors, TargetErrors) and errors.count == 0 and errors == {"server": []}
    assert json.loads(json.dumps(stats.to_dict()))["server"]["status"] == "SUBMITTED"


def test_target_errors_count_every_target_s_entries():
    errors = TargetErrors.from_dict(
        {"server": [{"time": 1.0, "message": "boom"}], "site-1": [{"error": "x"}, "odd"]}
    )
    assert errors.count == 3 and errors["site-1"][1] == {"message": "odd"}


def test_site_job_status_rows_are_typed(session):
    assert session.get_client_job_status() == []
    row = ClientJobStatus.from_dict({"name": "site-1", "running_jobs": ["a"]})
    assert row == {"name": "site-1", "running_jobs": ["a"]} and row.running_jobs == ("a",)


def test_shutdown_and_restart_return_what_the_server_does(session, server):
    restart = session.restart("server")
    assert isinstance(restart, SystemCommandResult)
    assert (restart.command, restart.server, dict(restart.sites)) == ("restart", "restarting", {})
    assert restart == {"server": "restarting"} and restart.to_dict() == {"server": "restarting"}
    stop = session.shutdown_system()
    assert (stop.command, stop.server) == ("shutdown_system", "stopping")


def test_a_site_shutdown_result_names_each_site():
    result = SystemCommandResult.from_dict("shutdown", {"site-1": "stopping", "server": "stopping"})
    assert dict(result.sites) == {"site-1": "stopping"} and result.server == "stopping"
    everything = SystemCommandResult.from_dict(
        "shutdown_system", {"server": "stopping", "sites": ["site-1", "site-2"]}
    )
    assert dict(everything.sites) == {"site-1": "stopping", "site-2": "stopping"}


# -- download progress -------------------------------------------------------------------


def _finished_job_with_model(session, server, job_folder) -> tuple[str, int]:
    job_id = session.submit_job(job_folder)
    result = Path(server.server.store.result_dir(job_id))
    save_params({"w": np.arange(700_000, dtype=np.float32)}, result / "global_model.npz")
    finish_with_result(server, job_id, {"notes/big.bin": b"\1" * 3_000_000})
    total = sum(p.stat().st_size for p in result.rglob("*") if p.is_file())
    return job_id, total


def _check_progress(seen: list[tuple[int, int]], total: int) -> None:
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})  # growing, no repeats
    assert len(seen) > 2


def test_downloads_report_progress_as_data_arrives(session, server, job_folder, tmp_path):
    job_id, total = _finished_job_with_model(session, server, job_folder)
    seen: list[tuple[int, int]] = []
    session.download_job_result(job_id, tmp_path, progress=lambda d, t: seen.append((d, t)))
    _check_progress(seen, total)

    model: list[tuple[int, int]] = []
    path = session.download_model(job_id, tmp_path, progress=lambda d, t: model.append((d, t)))
    _check_progress(model, Path(path).stat().st_size)


def test_async_downloads_report_progress_too(session, server, job_folder, tmp_path, kits):
    job_id, total = _finished_job_with_model(session, server, job_folder)

    async def main() -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
        async with await AsyncSession.open(
            ADMIN, kits[ADMIN], server_address=server.admin_address
        ) as s:
            result: list[tuple[int, int]] = []
            await s.download_job_result(job_id, tmp_path, progress=lambda *a: result.append(a))
            model: list[tuple[int, int]] = []
            path = await s.download_model(job_id, tmp_path, progress=lambda *a: model.append(a))
            return result, model, Path(path).stat().st_size

    result, model, size = asyncio.run(main())
    _check_progress(result, total)
    _check_progress(model, size)
