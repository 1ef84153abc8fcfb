"""The Admin service's job RPCs through a real server, with raw stubs over mutual TLS."""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import time
import zipfile
from collections.abc import Iterator

import grpc
import pytest

from flare_protocol._generated import admin_pb2, admin_pb2_grpc, common_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.wire_errors import decode_detail
from flare_server.jobs import JobStatus
from tests.flare_server.conftest import job_files, job_zip
from tests.server_harness import admin_stub

ADMIN = "admin@org_a.com"


def chunks(
    data: bytes,
    *,
    name: str = "job.zip",
    sha256: bool = True,
    size: int | None = None,
    params: dict[str, str] | None = None,
) -> Iterator[common_pb2.TransferChunk]:
    yield common_pb2.TransferChunk(
        header=common_pb2.TransferHeader(
            name=name,
            size=len(data) if size is None else size,
            sha256=hashlib.sha256(data).hexdigest() if sha256 else "",
            content_type="application/zip",
            params=params or {},
        )
    )
    for i in range(0, len(data), CHUNK_SIZE):
        yield common_pb2.TransferChunk(data=data[i : i + CHUNK_SIZE])


def submit(stub: admin_pb2_grpc.AdminStub, data: bytes, **kw) -> str:
    reply = stub.SubmitJob(chunks(data, **kw), timeout=10)
    return reply.job_id


def error_of(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    detail = decode_detail(info.value.trailing_metadata())
    assert detail is not None, info.value
    return info.value.code(), detail


@pytest.fixture
def admin(server, kits):
    stub, channel = admin_stub(kits[ADMIN], server.admin_address)
    with channel:
        yield stub


def test_submit_job_replies_with_the_durable_meta(admin, server):
    reply = admin.SubmitJob(chunks(job_zip()), timeout=10)
    meta = json.loads(reply.meta_json)
    assert meta["job_id"] == reply.job_id
    assert meta["status"] == "SUBMITTED"
    assert (meta["submitter_name"], meta["submitter_org"], meta["submitter_role"]) == (
        ADMIN,
        "org_a",
        "project_admin",
    )
    stored = server.server.store.get(reply.job_id)
    assert stored["name"] == "hello"


def test_submit_job_audits_the_call(admin, server):
    job_id = submit(admin, job_zip())
    lines = [
        json.loads(ln)
        for ln in (server.server.workspace / "logs" / "audit.log").read_text().splitlines()
    ]
    entry = next(e for e in lines if e["command"] == "submit_job")
    assert entry["result"] == "ok" and entry["job_id"] == job_id and entry["name"] == ADMIN
    assert entry["peer"].startswith("ipv4:127.0.0.1:") and entry["role"] == "project_admin"


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("hello/../evil.txt", ".."),
        ("/etc/evil.txt", "absolute"),
        ("hello\\evil.txt", "backslash"),
    ],
)
def test_submit_job_refuses_a_traversal_archive_naming_the_entry(admin, server, entry, needle):
    files = {f"hello/{k}": v for k, v in job_files().items()}
    files[entry] = b"x"
    code, detail = error_of(admin.SubmitJob, chunks(job_zip(files=files, top=None)), timeout=10)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert detail.type == "InvalidJobDefinition"
    assert needle in detail.message
    assert server.server.store.list() == []


@pytest.mark.parametrize(
    ("entry", "mode", "content"),
    [
        ("hello/app/custom/link", 0o120777, "/etc/passwd"),  # a symlink
        ("hello/app/custom/tty", 0o020666, ""),  # a character device
        ("hello/app/custom/pipe", 0o010666, ""),  # a fifo
    ],
)
def test_submit_job_refuses_links_and_special_files(admin, server, entry, mode, content):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in job_files().items():
            zf.writestr(f"hello/{k}", v)
        info = zipfile.ZipInfo(entry)
        info.external_attr = mode << 16
        zf.writestr(info, content)
    code, detail = error_of(admin.SubmitJob, chunks(buf.getvalue()), timeout=10)
    assert detail.type == "InvalidJobDefinition" and entry in detail.message
    assert server.server.store.list() == []


def test_submit_job_refuses_duplicate_entries(admin, server):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in job_files().items():
            zf.writestr(f"hello/{k}", v)
        with pytest.warns(UserWarning):
            zf.writestr("hello/meta.json", b"{}")
    code, detail = error_of(admin.SubmitJob, chunks(buf.getvalue()), timeout=10)
    assert detail.type == "InvalidJobDefinition" and "hello/meta.json" in detail.message


def test_submit_job_stops_a_zip_bomb_at_the_inflated_cap(server_kit, kits, tmp_path):
    from tests.server_harness import ServerThread

    files = {f"hello/{k}": v for k, v in job_files().items()}
    files["hello/app/custom/zeros.bin"] = b"\0" * (64 * 1024 * 1024)
    bomb = job_zip(files=files, top=None)
    assert len(bomb) < 1024 * 1024
    with ServerThread(server_kit, tmp_path / "ws", max_uncompressed_bytes=8 * 1024 * 1024) as srv:
        stub, channel = admin_stub(kits[ADMIN], srv.admin_address)
        with channel:
            code, detail = error_of(stub.SubmitJob, chunks(bomb), timeout=20)
        assert detail.type == "InvalidJobDefinition"
        assert srv.server.store.list() == []


def test_submit_job_refuses_an_upload_over_the_cap_while_streaming(server_kit, kits, tmp_path):
    from tests.server_harness import ServerThread

    big = job_zip(
        files={
            **{f"hello/{k}": v for k, v in job_files().items()},
            "hello/app/custom/noise.bin": random.Random(3).randbytes(2 * 1024 * 1024),
        },
        top=None,
    )
    with ServerThread(server_kit, tmp_path / "ws", max_upload_bytes=1024 * 1024) as srv:
        stub, channel = admin_stub(kits[ADMIN], srv.admin_address)
        with channel:
            code, detail = error_of(stub.SubmitJob, chunks(big, size=-1, sha256=False), timeout=20)
            assert detail.type == "InvalidJobDefinition" and "cap" in detail.message
            code, detail = error_of(stub.SubmitJob, chunks(big), timeout=20)  # announced size
            assert detail.type == "InvalidJobDefinition"
        assert srv.server.store.list() == []


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({"name": "x", "min_clients": "two", "deploy_map": {"app": ["@ALL"]}}, "min_clients"),
        ({"name": "x", "min_clients": 1, "deploy_map": {"missing_app": ["@ALL"]}}, "missing_app"),
        ({"min_clients": 1, "deploy_map": {"app": ["@ALL"]}}, "name"),
    ],
)
def test_submit_job_refuses_malformed_meta_naming_the_field(admin, meta, field):
    code, detail = error_of(admin.SubmitJob, chunks(job_zip(meta)), timeout=10)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert detail.type == "InvalidJobDefinition"
    assert "meta.json" in detail.message and field in detail.message


def test_submit_job_refuses_meta_that_is_not_json(admin):
    files = job_files()
    files["meta.json"] = b"{not json"
    code, detail = error_of(admin.SubmitJob, chunks(job_zip(files=files)), timeout=10)
    assert detail.type == "InvalidJobDefinition" and "meta.json" in detail.message


def test_submit_job_refuses_a_damaged_upload(admin):
    data = job_zip()
    msgs = list(chunks(data))
    msgs[1] = common_pb2.TransferChunk(data=data[:-1] + b"!")
    code, detail = error_of(admin.SubmitJob, iter(msgs), timeout=10)
    assert detail.type == "InvalidArgumentError" and "SHA-256" in detail.message


def test_submit_job_refuses_a_stream_without_header(admin):
    code, detail = error_of(
        admin.SubmitJob, iter([common_pb2.TransferChunk(data=b"PK")]), timeout=10
    )
    assert detail.type == "InvalidArgumentError" and "did not start with a header" in detail.message


@pytest.mark.parametrize(
    ("job_id", "code", "kind"),
    [
        ("../../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgumentError"),
        ("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgumentError"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgumentError"),
        ("6f1c1d7e-2b1a-4c1e-9a8b-0123456789ab", grpc.StatusCode.NOT_FOUND, "JobNotFound"),
    ],
)
def test_unknown_or_malformed_job_id(admin, job_id, code, kind):
    for rpc in (admin.GetJobMeta, admin.AbortJob, admin.DeleteJob):
        got, detail = error_of(rpc, admin_pb2.JobRequest(job_id=job_id), timeout=5)
        assert (got, detail.type) == (code, kind)
    with pytest.raises(grpc.RpcError) as info:
        next(admin.DownloadJobResult(admin_pb2.JobRequest(job_id=job_id), timeout=5))
    assert info.value.code() is code


def test_list_jobs_filters_orders_and_limits(admin):
    ids = [
        submit(admin, job_zip(name=n, min_clients=2, deploy_map={"app": ["@ALL"]}))
        for n in ("alpha", "beta", "alps")
    ]
    reply = admin.ListJobs(admin_pb2.ListJobsRequest(), timeout=5)
    assert [j.job_id for j in reply.jobs] == ids
    assert reply.jobs[0].name == "alpha" and reply.jobs[0].status == "SUBMITTED"
    assert reply.jobs[0].submitter_name == ADMIN
    names = [
        j.name for j in admin.ListJobs(admin_pb2.ListJobsRequest(name_prefix="al"), timeout=5).jobs
    ]
    assert names == ["alpha", "alps"]
    rev = admin.ListJobs(admin_pb2.ListJobsRequest(reverse=True, limit=2), timeout=5)
    assert [j.job_id for j in rev.jobs] == ids[::-1][:2]
    by_id = admin.ListJobs(admin_pb2.ListJobsRequest(id_prefix=ids[1][:8]), timeout=5)
    assert [j.job_id for j in by_id.jobs] == [ids[1]]
    detailed = admin.ListJobs(admin_pb2.ListJobsRequest(detailed=True), timeout=5)
    assert [json.loads(m)["job_id"] for m in detailed.meta_json] == ids


def test_get_job_meta_shows_the_scheduling_reason(admin):
    job_id = submit(admin, job_zip(min_clients=2))
    from tests.server_harness import wait_until

    meta = wait_until(
        lambda: (
            (
                m := json.loads(
                    admin.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5).meta_json
                )
            ).get("schedule_reason")
            and m
        )
    )
    assert meta["status"] == "SUBMITTED"
    assert meta["schedule_reason"] == "0 of 2 min_clients connected"


def test_watch_job_pushes_the_current_meta_then_every_change(admin, server):
    job_id = submit(admin, job_zip(min_clients=2))
    stream = admin.WatchJob(admin_pb2.JobRequest(job_id=job_id), timeout=10)
    first = json.loads(next(stream).meta_json)
    assert first["status"] == "SUBMITTED"
    store = server.server.store
    received: list[tuple[str, float]] = []

    def read() -> None:
        for reply in stream:
            received.append((json.loads(reply.meta_json)["status"], time.perf_counter()))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)
    changed = time.perf_counter()
    store.set_status(job_id, JobStatus.DISPATCHED)
    store.set_status(job_id, JobStatus.RUNNING)
    store.set_status(job_id, JobStatus.FINISHED_COMPLETED)
    reader.join(5)
    assert not reader.is_alive(), "the stream did not end after FINISHED"
    statuses = [s for s, _ in received if s != "SUBMITTED"]  # (the scheduler's reason update)
    assert [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s] == [
        "DISPATCHED",
        "RUNNING",
        "FINISHED:COMPLETED",
    ]  # every status, even within microseconds of each other
    first_change = next(t for s, t in received if s != "SUBMITTED")
    assert first_change - changed < 0.5  # pushed, not polled


def test_abort_job_finishes_a_waiting_job_and_refuses_a_finished_one(admin):
    job_id = submit(admin, job_zip(min_clients=2))
    meta = json.loads(admin.AbortJob(admin_pb2.JobRequest(job_id=job_id), timeout=5).meta_json)
    assert meta["status"] == "FINISHED:ABORTED"
    assert meta["status_history"][-1]["reason"] == f"aborted by {ADMIN}"
    code, detail = error_of(admin.AbortJob, admin_pb2.JobRequest(job_id=job_id), timeout=5)
    assert (code, detail.type) == (grpc.StatusCode.FAILED_PRECONDITION, "JobNotRunning")
    assert "FINISHED:ABORTED" in detail.message and detail.details["job_id"] == job_id


def test_delete_job_removes_it(admin, server):
    job_id = submit(admin, job_zip(min_clients=2))
    admin.DeleteJob(admin_pb2.JobRequest(job_id=job_id), timeout=5)
    code, detail = error_of(admin.GetJobMeta, admin_pb2.JobRequest(job_id=job_id), timeout=5)
    assert detail.type == "JobNotFound"


def test_delete_job_refuses_a_running_job(admin, server):
    job_id = submit(admin, job_zip(min_clients=2))
    server.server.store.set_status(job_id, JobStatus.DISPATCHED)
    code, detail = error_of(admin.DeleteJob, admin_pb2.JobRequest(job_id=job_id), timeout=5)
    assert detail.type == "JobNotDone"


def test_clone_job_copies_the_definition_for_the_caller(admin):
    job_id = submit(admin, job_zip(min_clients=2))
    reply = admin.CloneJob(admin_pb2.CloneJobRequest(job_id=job_id), timeout=5)
    meta = json.loads(reply.meta_json)
    assert reply.job_id != job_id and meta["cloned_from"] == job_id
    assert meta["status"] == "SUBMITTED" and meta["min_clients"] == 2


def test_download_job_result_refuses_an_unfinished_job(admin):
    job_id = submit(admin, job_zip(min_clients=2))
    with pytest.raises(grpc.RpcError) as info:
        next(admin.DownloadJobResult(admin_pb2.JobRequest(job_id=job_id), timeout=5))
    detail = decode_detail(info.value.trailing_metadata())
    assert detail.type == "JobNotDone" and "SUBMITTED" in detail.message


def test_download_job_result_streams_the_result_folder_as_a_zip(admin, server, tmp_path):
    job_id = submit(admin, job_zip(min_clients=2))
    store = server.server.store
    result = store.result_dir(job_id)
    (result / "models").mkdir()
    payload = bytes(range(256)) * 10_000  # 2.5 MB: several chunks
    (result / "models" / "final.npz").write_bytes(payload)
    (result / "log.txt").write_text("done\n")
    (result / "escape").symlink_to("/etc/passwd")
    store.set_status(job_id, JobStatus.FINISHED_ABORTED)
    stream = admin.DownloadJobResult(admin_pb2.JobRequest(job_id=job_id), timeout=10)
    header = next(stream).header
    assert header.content_type == "application/zip" and header.params["job_id"] == job_id
    parts = [msg.data for msg in stream]
    assert max(len(p) for p in parts) <= CHUNK_SIZE
    with zipfile.ZipFile(io.BytesIO(b"".join(parts))) as zf:
        assert sorted(zf.namelist()) == ["log.txt", "models/final.npz"]
        assert zf.read("models/final.npz") == payload


def test_get_system_info_and_connected_sites_are_empty_without_sites(admin):
    info = admin.GetSystemInfo(common_pb2.Empty(), timeout=5)
    assert info.project == "testproj" and info.server_name == "localhost"
    assert list(info.sites) == [] and info.start_time > 0
    assert list(admin.GetConnectedSites(common_pb2.Empty(), timeout=5).sites) == []
