"""DownloadJobResult's files-v1 format: one header per regular file, sizes exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flare_protocol._generated import admin_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.errors import JobNotFound
from flare_protocol.result_format import FILES, FILES_CONTENT_TYPE, METADATA_KEY
from flare_server.jobs import JobStatus
from flare_server.result_stream import files_stream, zip_stream
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


@pytest.mark.parametrize("kind", ["files-v1", "zip"])
async def test_a_result_deleted_while_it_is_sent_ends_as_job_not_found(
    tmp_path: Path, kind: str
) -> None:
    root = tmp_path / "result"
    root.mkdir()
    for i in range(20):  # many more chunks than the stream queues ahead
        (root / f"part-{i:02d}.bin").write_bytes(bytes(CHUNK_SIZE // 2))
    stream = files_stream(root, "job-1") if kind == "files-v1" else zip_stream(root, "job-1")
    await anext(stream)  # started: the folder is listed
    shutil.rmtree(root)  # the job is deleted meanwhile (seen in make soak)
    with pytest.raises(JobNotFound, match="job job-1 was deleted while its result was being sent"):
        async for _ in stream:
            pass
