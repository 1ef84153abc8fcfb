"""DownloadJobResult's files-v1 format: one header per regular file, sizes exact."""

from __future__ import annotations

import pytest

from flare_protocol._generated import admin_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.result_format import FILES, FILES_CONTENT_TYPE, METADATA_KEY
from flare_server.jobs import JobStatus
from tests.flare_server.conftest import job_zip
from tests.flare_server.test_server_jobs import ADMIN, submit
from tests.server_harness import admin_stub


@pytest.fixture
def admin(server, kits):
    stub, channel = admin_stub(kits[ADMIN], server.admin_address)
    with channel:
        yield stub


def test_download_job_result_sends_one_header_per_file_when_asked(admin, server):
    job_id = submit(admin, job_zip(min_clients=2))
    store = server.server.store
    result = store.result_dir(job_id)
    (result / "models").mkdir()
    payload = bytes(range(256)) * 10_000  # 2.5 MB: several chunks
    (result / "models" / "final.npz").write_bytes(payload)
    (result / "log.txt").write_text("done\n")
    (result / "empty.txt").write_bytes(b"")
    (result / "escape").symlink_to("/etc/passwd")
    store.set_status(job_id, JobStatus.FINISHED_ABORTED)
    stream = admin.DownloadJobResult(
        admin_pb2.JobRequest(job_id=job_id), timeout=10, metadata=((METADATA_KEY, FILES),)
    )
    first = next(stream).header
    assert first.content_type == FILES_CONTENT_TYPE and first.params["files"] == "3"
    assert first.size == len(payload) + 5 and first.params["job_id"] == job_id
    files: dict[str, bytearray] = {}
    sizes: dict[str, int] = {}
    name = ""
    for msg in stream:
        if msg.WhichOneof("item") == "header":
            name = msg.header.name
            files[name], sizes[name] = bytearray(), msg.header.size
        else:
            assert len(msg.data) <= CHUNK_SIZE
            files[name] += msg.data
    assert sorted(files) == ["empty.txt", "log.txt", "models/final.npz"]  # no symlink
    assert files["models/final.npz"] == payload and files["log.txt"] == b"done\n"
    assert all(len(files[n]) == sizes[n] for n in files)


def test_download_job_result_of_an_empty_folder_is_a_header_alone(admin, server):
    job_id = submit(admin, job_zip(min_clients=2))
    server.server.store.set_status(job_id, JobStatus.FINISHED_ABORTED)
    stream = admin.DownloadJobResult(
        admin_pb2.JobRequest(job_id=job_id), timeout=10, metadata=((METADATA_KEY, FILES),)
    )
    messages = list(stream)
    assert len(messages) == 1 and messages[0].header.params["files"] == "0"
