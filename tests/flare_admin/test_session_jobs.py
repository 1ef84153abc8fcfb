"""Session job methods against a real server over mutual TLS, with kits from provisioning."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from flare_admin import (
    AuthorizationError,
    InvalidArgumentError,
    InvalidJobDefinition,
    JobMeta,
    JobNotDone,
    JobNotFound,
    JobNotRunning,
    JobSummary,
    JobTimeout,
    MonitorReturnCode,
    new_secure_session,
)
from flare_server.jobs import JobStatus
from tests.flare_admin.conftest import ADMIN, advance, finish_with_result, make_job

UNKNOWN = str(uuid.uuid4())


# -- submit ------------------------------------------------------------------------------


def test_submit_job_uploads_a_folder_and_returns_a_server_uuid(session, job_folder):
    job_id = session.submit_job(job_folder)
    assert str(uuid.UUID(job_id)) == job_id
    meta = session.get_job_meta(job_id)
    assert meta.status == "SUBMITTED" and meta["status"] == "SUBMITTED"
    assert meta.name == "hello" and meta.submitter_name == ADMIN


def test_submit_job_reports_progress_up_to_the_total(session, job_folder):
    seen: list[tuple[int, int]] = []
    session.submit_job(job_folder, progress=lambda sent, total: seen.append((sent, total)))
    total = sum(p.stat().st_size for p in job_folder.rglob("*") if p.is_file())
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_submit_job_streams_an_existing_zip_as_is(session, job_folder, tmp_path):
    archive = tmp_path / "hello.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(job_folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"hello/{path.relative_to(job_folder).as_posix()}")
    job_id = session.submit_job(str(archive))
    assert session.get_job_meta(job_id).name == "hello"


@pytest.mark.parametrize(
    "problem",
    ["missing", "no_meta", "bad_json", "meta_not_object", "not_a_zip", "symlink"],
)
def test_a_bad_local_job_is_refused_before_upload_naming_the_path(session, tmp_path, problem):
    job = make_job(tmp_path / "job")
    offending = job
    if problem == "missing":
        offending = tmp_path / "nope"
        job = offending
    elif problem == "no_meta":
        offending = job / "meta.json"
        offending.unlink()
    elif problem == "bad_json":
        offending = job / "meta.json"
        offending.write_text("{name: ")
    elif problem == "meta_not_object":
        offending = job / "meta.json"
        offending.write_text("[1, 2]")
    elif problem == "not_a_zip":
        offending = job = tmp_path / "job.zip"
        offending.write_text("not a zip")
    elif problem == "symlink":
        offending = job / "app" / "custom" / "link.py"
        offending.symlink_to("/etc/passwd")
    with pytest.raises(InvalidJobDefinition) as info:
        session.submit_job(job)
    assert str(offending) in str(info.value) and info.value.path == str(offending)
    assert session.list_jobs() == []


def test_a_malformed_meta_is_refused_by_the_server_naming_the_field(session, tmp_path):
    job = make_job(tmp_path / "job", min_clients="two")
    with pytest.raises(InvalidJobDefinition, match="min_clients"):
        session.submit_job(job)
    assert session.list_jobs() == []


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_traversal_archive_is_refused_naming_the_entry(session, tmp_path):
    meta = json.dumps({"name": "evil", "deploy_map": {"app": ["@ALL"]}}).encode()
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"evil/meta.json": meta, "evil/../../escape.txt": b"x"}))
    with pytest.raises(InvalidJobDefinition, match=r"\.\."):
        session.submit_job(archive)
    assert session.list_jobs() == []


def test_a_zip_bomb_is_refused(provisioned, tmp_path, kits):
    from flare_admin import new_secure_session
    from tests.server_harness import ServerThread

    meta = json.dumps({"name": "bomb", "deploy_map": {"app": ["@ALL"]}}).encode()
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_zip_bytes({"bomb/meta.json": meta, "bomb/app/zeros.bin": bytes(64 << 20)}))
    assert archive.stat().st_size < 1 << 20
    with ServerThread(
        Path(provisioned.kits["localhost"]), tmp_path / "ws", max_uncompressed_bytes=8 << 20
    ) as srv:
        with new_secure_session(ADMIN, kits[ADMIN], server_address=srv.admin_address) as s:
            with pytest.raises(InvalidJobDefinition):
                s.submit_job(archive)
            assert s.list_jobs() == []


# -- list and meta -----------------------------------------------------------------------


def test_list_jobs_rows_have_flares_keys(session, tmp_path):
    ids = [session.submit_job(make_job(tmp_path / f"j{i}", name=f"job{i}")) for i in range(3)]
    rows = session.list_jobs()
    assert [r.job_id for r in rows] == ids
    row = rows[0]
    assert isinstance(row, JobSummary)
    assert {"job_id", "job_name", "status", "submit_time", "duration"} <= set(row)
    assert row["job_name"] == "job0" and row["status"] == "SUBMITTED"
    assert row["submit_time"].startswith(time.strftime("%Y-", time.gmtime()))
    json.dumps([r.to_dict() for r in rows])


def test_list_jobs_filters_limits_and_reverses(session, tmp_path):
    ids = [session.submit_job(make_job(tmp_path / f"j{i}", name=f"n{i % 2}-{i}")) for i in range(4)]
    assert [r.job_id for r in session.list_jobs(reverse=True)] == ids[::-1]
    assert len(session.list_jobs(limit=2)) == 2
    assert {r.job_name for r in session.list_jobs(name_prefix="n1")} == {"n1-1", "n1-3"}
    assert [r.job_id for r in session.list_jobs(id_prefix=ids[2][:8])] == [ids[2]]


def test_list_jobs_detailed_gives_full_metas(session, job_folder):
    job_id = session.submit_job(job_folder)
    (meta,) = session.list_jobs(detailed=True)
    assert isinstance(meta, JobMeta) and meta.job_id == job_id
    assert meta["deploy_map"] == {"app": ["@ALL"]} and meta.min_clients == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": -1},
        {"limit": "3"},
        {"id_prefix": "../x"},
        {"name_prefix": 5},
        {"all": True, "limit": 2},
        {"all": "yes"},
    ],
)
def test_list_jobs_refuses_malformed_arguments(session, kwargs):
    with pytest.raises(InvalidArgumentError):
        session.list_jobs(**kwargs)


def test_job_meta_reads_like_flares_dict_and_like_an_object(session, job_folder):
    meta = session.get_job_meta(session.submit_job(job_folder))
    assert meta["job_id"] == meta.job_id and meta.get("name") == "hello"
    assert "status_history" in meta  # keys the typed view does not name are kept
    assert json.loads(json.dumps(meta.to_dict()))["status"] == "SUBMITTED"
    assert dict(meta)["submitter_role"] == "project_admin"


@pytest.mark.parametrize(
    "method", ["get_job_meta", "abort_job", "delete_job", "clone_job", "download_job_result"]
)
def test_an_unknown_job_id_is_job_not_found(session, method):
    with pytest.raises(JobNotFound) as info:
        getattr(session, method)(UNKNOWN)
    assert info.value.job_id == UNKNOWN


@pytest.mark.parametrize("bad", ["../../etc/passwd", "123", "", None, UNKNOWN + "x", 42])
@pytest.mark.parametrize(
    "method",
    ["get_job_meta", "abort_job", "delete_job", "clone_job", "download_job_result", "monitor_job"],
)
def test_a_malformed_job_id_is_refused_before_any_call(session, server, method, bad):
    audit = Path(server.server.workspace) / "logs" / "audit.log"
    before = audit.read_text() if audit.exists() else ""
    with pytest.raises(InvalidArgumentError):
        getattr(session, method)(bad)
    assert (audit.read_text() if audit.exists() else "") == before


# -- clone, abort, delete ----------------------------------------------------------------


def test_clone_job_returns_a_new_job_cloned_from_the_first(session, job_folder):
    first = session.submit_job(job_folder)
    second = session.clone_job(first)
    assert second != first
    assert session.get_job_meta(second).cloned_from == first


def test_abort_job_ends_it_aborted_and_a_second_abort_is_job_not_running(session, job_folder):
    job_id = session.submit_job(job_folder)
    assert session.abort_job(job_id) is None
    assert session.get_job_meta(job_id).status == "FINISHED:ABORTED"
    with pytest.raises(JobNotRunning) as info:
        session.abort_job(job_id)
    assert info.value.job_id == job_id and info.value.status == "FINISHED:ABORTED"


def test_delete_job_removes_it(session, job_folder):
    job_id = session.submit_job(job_folder)
    session.abort_job(job_id)
    session.delete_job(job_id)
    with pytest.raises(JobNotFound):
        session.get_job_meta(job_id)


# -- authorization -----------------------------------------------------------------------


def test_a_member_cannot_abort_anothers_job(open_session, session, job_folder):
    job_id = session.submit_job(job_folder)
    member = open_session("member@org_b.com")
    with pytest.raises(AuthorizationError) as info:
        member.abort_job(job_id)
    assert info.value.job_id == job_id
    assert session.get_job_meta(job_id).status == "SUBMITTED"


def test_a_member_cannot_submit(open_session, job_folder):
    with pytest.raises(AuthorizationError):
        open_session("member@org_b.com").submit_job(job_folder)


def test_a_lead_cannot_delete_another_orgs_job(open_session, job_folder):
    job_id = open_session("lead@org_a.com").submit_job(job_folder)
    with pytest.raises(AuthorizationError) as info:
        open_session("lead@org_b.com").delete_job(job_id)
    assert info.value.job_id == job_id


def test_a_member_may_view(open_session, session, job_folder):
    job_id = session.submit_job(job_folder)
    member = open_session("member@org_b.com")
    assert member.get_job_meta(job_id).job_id == job_id
    assert [r.job_id for r in member.list_jobs()] == [job_id]


# -- monitor -----------------------------------------------------------------------------


def test_monitor_job_calls_back_at_once_and_on_every_pushed_change(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    seen: list[tuple[str, float]] = []
    changed_at: dict[str, float] = {}

    def drive() -> None:
        for status in (JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.FINISHED_COMPLETED):
            time.sleep(0.1)
            changed_at[status.value] = time.perf_counter()
            advance(server, job_id, status)

    def cb(s, jid, meta, tag, *, sink):
        assert s is session and jid == job_id and tag == "t"
        sink.append((meta.status, time.perf_counter()))
        return True

    thread = threading.Thread(target=drive)
    thread.start()
    code = session.monitor_job(job_id, 0.0, 2.0, cb, "t", sink=seen)
    thread.join()
    assert code is MonitorReturnCode.JOB_FINISHED and code == 0
    # A meta change within one status (the scheduler's waiting reason) is pushed too.
    statuses = [s for i, (s, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != s]
    assert statuses == ["SUBMITTED", "DISPATCHED", "RUNNING", "FINISHED:COMPLETED"]
    for status, at in [(s, t) for s, t in seen if s != "SUBMITTED"]:
        assert at - changed_at[status] < 0.5  # pushed, not polled every 2 s


def test_monitor_job_ends_when_the_callback_returns_false(session, job_folder):
    job_id = session.submit_job(job_folder)
    calls = []
    code = session.monitor_job(job_id, cb=lambda s, j, m: calls.append(m) and False)
    assert code is MonitorReturnCode.ENDED_BY_CB and len(calls) == 1


def test_monitor_job_times_out(session, job_folder):
    job_id = session.submit_job(job_folder)
    start = time.monotonic()
    assert session.monitor_job(job_id, timeout=0.3) is MonitorReturnCode.TIMEOUT
    assert 0.25 < time.monotonic() - start < 15  # honoured; the ceiling is generous


def test_monitor_of_a_finished_job_returns_at_once(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    session.abort_job(job_id)
    assert session.monitor_job(job_id) is MonitorReturnCode.JOB_FINISHED


def test_a_callback_exception_propagates_unchanged(session, job_folder):
    job_id = session.submit_job(job_folder)

    def cb(*_a):
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        session.monitor_job(job_id, cb=cb)


def test_wait_for_job_returns_the_final_meta(session, server, job_folder):
    job_id = session.submit_job(job_folder)
    threading.Timer(0.1, lambda: session_abort(server, job_id)).start()
    meta = session.wait_for_job(job_id, timeout=5)
    assert meta.status == "FINISHED:ABORTED"


def session_abort(server, job_id):
    advance(server, job_id, JobStatus.FINISHED_ABORTED)


def test_wait_for_job_raises_job_timeout(session, job_folder):
    job_id = session.submit_job(job_folder)
    with pytest.raises(JobTimeout) as info:
        session.wait_for_job(job_id, timeout=0.2)
    assert info.value.job_id == job_id and info.value.status == "SUBMITTED"


# -- download ----------------------------------------------------------------------------


def test_download_of_an_unfinished_job_is_job_not_done(session, job_folder, admin_kit):
    job_id = session.submit_job(job_folder)
    with pytest.raises(JobNotDone) as info:
        session.download_job_result(job_id)
    assert info.value.job_id == job_id and info.value.status == "SUBMITTED"
    assert not (admin_kit / "transfer" / job_id).exists()


def test_download_job_result_lands_in_the_kits_transfer_folder(
    session, server, job_folder, admin_kit
):
    job_id = session.submit_job(job_folder)
    files = {"model.npz": b"\x93NUMPY" + bytes(3000), "logs/round-1.txt": b"ok\n"}
    finish_with_result(server, job_id, files)
    path = session.download_job_result(job_id)
    assert Path(path) == admin_kit / "transfer" / job_id
    for rel, data in files.items():
        assert (Path(path) / rel).read_bytes() == data
    assert [p.name for p in (admin_kit / "transfer").iterdir()] == [job_id]  # no temp left


def test_download_into_a_destination_and_again_replaces_it(session, server, job_folder, tmp_path):
    job_id = session.submit_job(job_folder)
    finish_with_result(server, job_id, {"a.txt": b"a"})
    dest = tmp_path / "out"
    dest.mkdir()
    first = session.download_job_result(job_id, destination=dest)
    (Path(first) / "stale.txt").write_text("old")
    second = session.download_job_result(job_id, dest)
    assert first == second == str(dest / job_id)
    assert sorted(p.name for p in Path(second).iterdir()) == ["a.txt"]


def test_download_into_a_missing_folder_is_invalid_argument(session, server, job_folder, tmp_path):
    job_id = session.submit_job(job_folder)
    finish_with_result(server, job_id, {"a.txt": b"a"})
    with pytest.raises(InvalidArgumentError, match="not an existing folder"):
        session.download_job_result(job_id, destination=tmp_path / "missing")


_FULL_DISK_SCRIPT = """
import json, resource, sys
from flare_admin import LocalIOError, new_secure_session
kit, address, job_id, dest = sys.argv[1:]
with new_secure_session("admin@org_a.com", kit, server_address=address) as s:
    # Files over 1 MiB fail with EFBIG, as on a full disk (CPython ignores SIGXFSZ).
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    for download in (s.download_job_result, s.download_model):
        try:
            download(job_id, dest)
        except LocalIOError as exc:
            print(json.dumps([type(exc).__name__, str(exc), exc.path, exc.errno, exc.job_id]))
"""


def test_a_local_disk_failure_during_a_download_is_a_local_io_error_naming_the_path(
    server, job_folder, admin_kit, tmp_path
):
    import errno
    import subprocess
    import sys

    session_job = None
    with new_secure_session(ADMIN, admin_kit, server_address=server.admin_address) as s:
        session_job = s.submit_job(job_folder)
    big = os.urandom(3 * 1024 * 1024)
    finish_with_result(server, session_job, {"model.npz": big, "global_model.npz": big})
    dest = tmp_path / "dest"
    dest.mkdir()
    args = [str(admin_kit), server.admin_address, session_job, str(dest)]
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result, model = (json.loads(line) for line in done.stdout.splitlines())
    assert result[0] == model[0] == "LocalIOError"
    assert result[1].startswith(f"cannot write the result of job {session_job} into {dest}: ")
    assert result[1].endswith("File too large") and result[2] == str(dest)
    assert result[3] == errno.EFBIG and result[4] == session_job
    assert model[1] == (
        f"cannot write the final global model of job {session_job} into {dest}: File too large"
    )
    assert sorted(os.listdir(dest)) == []  # nothing half-written is left


def test_a_list_too_big_for_one_reply_is_fetched_in_parts(
    open_session, admin_kit, server, job_folder, caplog
):
    with caplog.at_level("DEBUG", logger="flare_admin"):  # restores the level afterwards
        session = open_session(ADMIN, admin_kit, debug=True)
    first = session.submit_job(job_folder)
    store = server.server.store
    submitter = store.get(first).to_dict()
    from flare_server.jobs import Submitter

    who = Submitter(submitter["submitter_name"], submitter["submitter_org"], "project_admin")
    ids = [first] + [store.clone_job(first, who).job_id for _ in range(47)]
    for job_id in ids:  # ~100 KB of meta each: 4.8 MB, over the 4 MiB message cap
        store.update(job_id, schedule_reason="x" * 100_000)
    with caplog.at_level("DEBUG", logger="flare_admin"):
        metas = session.list_jobs(detailed=True)
    calls = [r for r in caplog.records if "list_jobs took" in r.getMessage()]
    assert len(calls) >= 1 + 16  # the refused whole, then its parts
    assert [m.job_id for m in metas] == ids
    assert all(m["schedule_reason"] == "x" * 100_000 for m in metas)
    newest = session.list_jobs(detailed=True, limit=5, reverse=True)
    assert [m.job_id for m in newest] == ids[::-1][:5]


def test_an_upload_over_the_servers_cap_is_refused_while_streaming(provisioned, kits, tmp_path):
    from flare_admin import new_secure_session
    from tests.server_harness import ServerThread

    job = make_job(tmp_path / "big")
    (job / "app" / "custom" / "weights.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    with ServerThread(
        Path(provisioned.kits["localhost"]), tmp_path / "ws", max_upload_bytes=1024 * 1024
    ) as srv:
        with new_secure_session(ADMIN, kits[ADMIN], server_address=srv.admin_address) as s:
            with pytest.raises(InvalidJobDefinition):
                s.submit_job(job)
            assert s.list_jobs() == []


def test_a_server_that_stops_during_a_monitor_ends_it_with_no_connection(
    provisioned, kits, tmp_path
):
    from flare_admin import NoConnection, new_secure_session
    from tests.server_harness import ServerThread

    srv = ServerThread(Path(provisioned.kits["localhost"]), tmp_path / "ws").start()
    try:
        with new_secure_session(ADMIN, kits[ADMIN], server_address=srv.admin_address) as s:
            job_id = s.submit_job(make_job(tmp_path / "job"))
            stopper = threading.Timer(0.3, srv.stop)
            stopper.start()
            start = time.monotonic()
            with pytest.raises(NoConnection):
                s.monitor_job(job_id)
            assert time.monotonic() - start < 30  # ended by the lost server, not a timeout
            stopper.join()
    finally:
        srv.stop()


class Stop(Exception):
    pass


def test_a_failing_progress_callback_cancels_the_upload(session, tmp_path):
    job = make_job(tmp_path / "job")
    (job / "app" / "custom" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))

    def progress(sent, total):
        if sent > 1024 * 1024:
            raise Stop("user pressed stop")

    with pytest.raises(Stop):
        session.submit_job(job, progress=progress)
    assert session.list_jobs() == []
    assert session.submit_job(job)  # the session is still usable


def test_a_file_vanishing_mid_upload_is_invalid_job_definition_and_nothing_is_kept(
    session, tmp_path
):
    job = make_job(tmp_path / "job")
    doomed = job / "app" / "custom" / "z_last.bin"
    doomed.write_bytes(b"x" * 10)

    def progress(sent, total):
        doomed.unlink(missing_ok=True)

    with pytest.raises(InvalidJobDefinition, match="z_last.bin"):
        session.submit_job(job, progress=progress)
    assert session.list_jobs() == []
