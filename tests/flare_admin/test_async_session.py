"""AsyncSession: the same operations as coroutines over grpc.aio, on a representative subset."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import pytest

from flare_admin import (
    AsyncSession,
    AuthorizationError,
    InvalidArgumentError,
    InvalidJobDefinition,
    JobMeta,
    JobNotDone,
    JobNotFound,
    JobTimeout,
    MonitorReturnCode,
    NoConnection,
    SessionClosed,
    SessionState,
    SystemInfo,
    UsernameMismatch,
    new_secure_async_session,
)
from flare_server.jobs import JobStatus
from tests.flare_admin.conftest import ADMIN, advance, finish_with_result


@pytest.fixture
async def asession(server, admin_kit):
    s = await AsyncSession.open(ADMIN, admin_kit, server_address=server.admin_address)
    yield s
    await s.close()


async def test_open_submit_list_and_meta(asession, job_folder):
    assert asession.info.role == "project_admin"
    job_id = await asession.submit_job(job_folder)
    rows = await asession.list_jobs()
    assert [r["job_id"] for r in rows] == [job_id]
    meta = await asession.get_job_meta(job_id)
    assert isinstance(meta, JobMeta) and meta.status == "SUBMITTED"
    assert isinstance(await asession.get_system_info(), SystemInfo)


async def test_monitor_pushes_changes_to_an_async_callback(asession, server, job_folder):
    job_id = await asession.submit_job(job_folder)
    seen = []

    async def cb(session, jid, meta):
        # The scheduler may push SUBMITTED twice (its waiting reason changes): advance once.
        seen.append(meta.status)
        if seen == ["SUBMITTED"]:
            await asyncio.to_thread(
                advance, server, job_id, JobStatus.DISPATCHED, JobStatus.FINISHED_ABORTED
            )
        return True

    code = await asession.monitor_job(job_id, 5.0, 2.0, cb)
    assert code is MonitorReturnCode.JOB_FINISHED
    assert seen[0] == "SUBMITTED" and seen[-1] == "FINISHED:ABORTED"


async def test_monitor_ends_by_callback_and_times_out(asession, job_folder):
    job_id = await asession.submit_job(job_folder)
    code = await asession.monitor_job(job_id, cb=lambda s, j, m: False)
    assert code is MonitorReturnCode.ENDED_BY_CB
    assert await asession.monitor_job(job_id, timeout=0.2) is MonitorReturnCode.TIMEOUT
    with pytest.raises(JobTimeout):
        await asession.wait_for_job(job_id, timeout=0.2)


async def test_download_streams_into_the_transfer_folder(asession, server, job_folder, admin_kit):
    job_id = await asession.submit_job(job_folder)
    with pytest.raises(JobNotDone):
        await asession.download_job_result(job_id)
    await asyncio.to_thread(finish_with_result, server, job_id, {"model.npz": b"m" * 5000})
    path = await asession.download_job_result(job_id)
    assert Path(path) == admin_kit / "transfer" / job_id
    assert (Path(path) / "model.npz").read_bytes() == b"m" * 5000


async def test_job_management_and_errors(asession, server, kits, job_folder):
    job_id = await asession.submit_job(job_folder)
    clone = await asession.clone_job(job_id)
    await asession.abort_job(clone)
    await asession.delete_job(clone)
    with pytest.raises(JobNotFound):
        await asession.get_job_meta(clone)
    with pytest.raises(InvalidArgumentError):
        await asession.get_job_meta("../etc")
    member = await AsyncSession.open(
        "member@org_b.com", kits["member@org_b.com"], server_address=server.admin_address
    )
    async with member:
        with pytest.raises(AuthorizationError) as info:
            await member.abort_job(job_id)
        assert info.value.job_id == job_id


async def test_a_bad_job_folder_is_refused(asession, tmp_path):
    with pytest.raises(InvalidJobDefinition):
        await asession.submit_job(tmp_path / "missing")


async def test_target_commands(asession, server):
    assert await asession.get_working_directory("server") == str(
        Path(server.server.workspace).resolve()
    )
    assert "logs/" in await asession.ls_target("server")


async def test_use_after_close_is_session_closed(asession):
    async with asession as s:
        assert s.state is SessionState.OPEN
    assert asession.state is SessionState.CLOSED
    with pytest.raises(SessionClosed):
        await asession.list_jobs()
    with pytest.raises(SessionClosed):
        await asession.monitor_job(str(uuid.uuid4()))
    await asession.close()


async def test_open_failures(kits):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(NoConnection, match=address):
        await new_secure_async_session(ADMIN, kits[ADMIN], server_address=address, timeout=60)
    assert time.monotonic() - start < 30  # refused at once, not after the timeout
    with pytest.raises(UsernameMismatch):
        await new_secure_async_session("x@y.z", kits[ADMIN], server_address=address)


async def test_the_same_methods_as_the_sync_session():
    from flare_admin import Session

    def public(cls):
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(Session) - {"open"} == public(AsyncSession) - {"open"}


async def test_a_failing_progress_callback_cancels_the_async_upload(asession, job_folder):
    import os

    (job_folder / "app" / "custom" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))

    def progress(sent, total):
        if sent > 1024 * 1024:
            raise KeyError("stop")

    with pytest.raises(KeyError):
        await asession.submit_job(job_folder, progress=progress)
    assert await asession.list_jobs() == []
