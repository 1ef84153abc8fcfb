"""Per-identity limits: calls and uploads in progress, and uploads that stall."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import grpc
import pytest

from flare_admin import LimitExceeded, new_secure_session
from flare_protocol import errors
from flare_protocol._generated import admin_pb2, common_pb2
from flare_server.call_limits import CallLimits
from tests.flare_server.conftest import job_zip
from tests.flare_server.test_server_jobs import error_of, submit
from tests.server_harness import ServerThread, admin_stub, wait_until

ADMIN = "admin@org_a.com"
LEAD = "lead@org_a.com"


def limits(**kw) -> CallLimits:
    return CallLimits(
        **{"max_calls": 2, "max_uploads": 1, "upload_idle_timeout": 1.0, "endpoint": "admin", **kw}
    )


# -- the counting, without a server ----------------------------------------------------------


def test_calls_over_the_limit_are_refused_naming_the_limit_and_the_setting():
    lim = limits()
    lim.enter("a", "list_jobs")
    lim.enter("a", "list_jobs")
    with pytest.raises(errors.LimitExceeded) as info:
        lim.enter("a", "get_job_meta")
    exc = info.value
    assert (exc.limit, exc.setting, exc.identity) == (2, "max_calls_per_identity", "a")
    assert "get_job_meta refused: a already has 2 calls in progress" in exc.message
    assert "local/settings.json" in exc.message
    assert isinstance(exc, errors.ResourceExhausted)


def test_limits_are_per_identity():
    lim = limits()
    lim.enter("a", "x")
    lim.enter("a", "x")
    lim.enter("b", "x")  # another identity has its own slots
    assert (lim.calls("a"), lim.calls("b")) == (2, 1)


def test_a_released_slot_can_be_taken_again_and_release_is_idempotent():
    lim = limits()
    release = lim.enter("a", "x")
    lim.enter("a", "x")
    release()
    release()
    assert lim.calls("a") == 1
    lim.enter("a", "x")
    assert lim.calls("a") == 2


def test_uploads_have_their_own_limit_within_the_calls():
    lim = limits(max_calls=3, max_uploads=1)
    done = lim.enter("a", "submit_job", upload=True)
    with pytest.raises(errors.LimitExceeded) as info:
        lim.enter("a", "submit_job", upload=True)
    assert info.value.setting == "max_uploads_per_identity"
    lim.enter("a", "list_jobs")  # other calls still fit
    assert (lim.calls("a"), lim.uploads("a")) == (2, 1)  # the refusal took nothing
    done()
    assert (lim.calls("a"), lim.uploads("a")) == (1, 0)


# -- on a real server -----------------------------------------------------------------------


def _header(size: int = 10 << 20) -> common_pb2.TransferChunk:
    return common_pb2.TransferChunk(
        header=common_pb2.TransferHeader(
            name="job.zip", size=size, sha256=hashlib.sha256(b"x").hexdigest()
        )
    )


def _stalling(release: threading.Event) -> Iterator[common_pb2.TransferChunk]:
    """A header and 1 MiB, then nothing until ``release``."""
    yield _header()
    yield common_pb2.TransferChunk(data=b"\0" * (1 << 20))
    release.wait(30)


def _upload_files(srv: ServerThread) -> list:
    return list(srv.server.store.root.rglob("upload-*"))  # type: ignore[attr-defined]


@pytest.fixture
def limited(server_kit, tmp_path):
    with ServerThread(
        server_kit,
        tmp_path / "ws",
        max_calls_per_identity=3,
        max_uploads_per_identity=1,
        upload_idle_timeout=1.0,
    ) as srv:
        yield srv


def test_an_identity_over_its_calls_limit_is_refused_and_others_are_served(limited, kits):
    stub, channel = admin_stub(kits[ADMIN], limited.admin_address)
    other, other_channel = admin_stub(kits[LEAD], limited.admin_address)
    with channel, other_channel:
        job_id = submit(stub, job_zip(min_clients=2))
        streams = [stub.WatchJob(admin_pb2.JobRequest(job_id=job_id), timeout=10) for _ in range(3)]
        for s in streams:
            next(s)
        code, detail = error_of(stub.GetJobMeta, admin_pb2.JobRequest(job_id=job_id), timeout=5)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert detail.type == "LimitExceeded"
        assert detail.details["setting"] == "max_calls_per_identity"
        assert detail.details["limit"] == "3"
        assert other.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5).job_id == job_id
        streams[0].cancel()  # its slot is given back when the stream ends

        def served() -> bool:
            try:
                return bool(stub.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5))
            except grpc.RpcError:
                return False

        wait_until(served)
        for s in streams[1:]:
            s.cancel()


def test_the_session_raises_limit_exceeded(limited, kits):
    stub, channel = admin_stub(kits[ADMIN], limited.admin_address)
    with channel, new_secure_session(ADMIN, kits[ADMIN], server_address=limited.admin_address) as s:
        job_id = submit(stub, job_zip(min_clients=2))
        streams = [stub.WatchJob(admin_pb2.JobRequest(job_id=job_id), timeout=10) for _ in range(3)]
        for w in streams:
            next(w)
        with pytest.raises(LimitExceeded) as info:
            s.get_job_meta(job_id)
        assert info.value.setting == "max_calls_per_identity"
        assert info.value.limit == 3
        for w in streams:
            w.cancel()


def test_a_second_upload_of_one_identity_is_refused_while_the_first_runs(limited, kits):
    stub, channel = admin_stub(kits[ADMIN], limited.admin_address)
    release = threading.Event()
    with channel:
        first = stub.SubmitJob.future(_stalling(release), timeout=30)
        wait_until(lambda: _upload_files(limited))
        code, detail = error_of(stub.SubmitJob, iter([_header()]), timeout=5)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (detail.type, detail.details["setting"]) == (
            "LimitExceeded",
            "max_uploads_per_identity",
        )
        release.set()
        with pytest.raises(grpc.RpcError):
            first.result()


def test_a_stalled_upload_is_ended_and_its_temp_file_removed(limited, kits):
    stub, channel = admin_stub(kits[ADMIN], limited.admin_address)
    release = threading.Event()
    with channel:
        call = stub.SubmitJob.future(_stalling(release), timeout=30)
        wait_until(lambda: _upload_files(limited))
        with pytest.raises(grpc.RpcError) as info:
            call.result(timeout=10)  # upload_idle_timeout is 1 s
        release.set()
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "stalled: nothing arrived for 1 s (server setting upload_idle_timeout)" in (
            info.value.details()
        )
        wait_until(lambda: not _upload_files(limited))
        assert submit(stub, job_zip())  # the slot is free again
