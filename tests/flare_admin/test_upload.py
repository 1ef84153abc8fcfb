"""Upload zips a job folder while streaming, in bounded memory, framed as one transfer."""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile

import pytest

from flare_admin._upload import JobUpload
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.transfer import ChunkReceiver
from tests.flare_admin.conftest import make_job


def streamed_zip(upload: JobUpload) -> zipfile.ZipFile:
    chunks = list(upload.chunks())
    assert all(len(c) <= CHUNK_SIZE for c in chunks)
    return zipfile.ZipFile(io.BytesIO(b"".join(chunks)))


def test_a_folder_streams_as_a_zip_under_its_own_name(tmp_path):
    job = make_job(tmp_path / "hello")
    weights = os.urandom(3 * CHUNK_SIZE + 17)
    (job / "app" / "custom" / "weights.bin").write_bytes(weights)
    zf = streamed_zip(JobUpload.from_path(job))
    names = zf.namelist()
    assert "hello/meta.json" in names and "hello/app/custom/weights.bin" in names
    assert zf.read("hello/app/custom/weights.bin") == weights
    assert zf.testzip() is None


def test_small_files_are_deflated_and_large_ones_stored(tmp_path):
    job = make_job(tmp_path / "hello")
    (job / "app" / "big.bin").write_bytes(bytes(5 * CHUNK_SIZE))
    zf = streamed_zip(JobUpload.from_path(job))
    assert zf.getinfo("hello/meta.json").compress_type == zipfile.ZIP_DEFLATED
    assert zf.getinfo("hello/app/big.bin").compress_type == zipfile.ZIP_STORED


def test_an_existing_zip_is_streamed_byte_for_byte(tmp_path):
    archive = tmp_path / "job.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("job/meta.json", "{}")
        zf.writestr("job/blob", os.urandom(CHUNK_SIZE * 2))
    upload = JobUpload.from_path(archive)
    assert upload.is_zip and upload.total == archive.stat().st_size
    assert b"".join(upload.chunks()) == archive.read_bytes()


def test_progress_counts_source_bytes_up_to_the_total(tmp_path):
    job = make_job(tmp_path / "hello")
    (job / "data.bin").write_bytes(bytes(2 * CHUNK_SIZE + 5))
    upload = JobUpload.from_path(job)
    seen: list[tuple[int, int]] = []
    list(upload.chunks(lambda sent, total: seen.append((sent, total))))
    assert seen[0][0] == 0 and seen[-1] == (upload.total, upload.total)


def test_a_fifo_in_the_folder_is_refused(tmp_path):
    job = make_job(tmp_path / "hello")
    os.mkfifo(job / "pipe")
    with pytest.raises(InvalidJobDefinition, match="not a regular file"):
        JobUpload.from_path(job)


def test_a_symlinked_folder_is_refused(tmp_path):
    job = make_job(tmp_path / "hello")
    (job / "outside").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InvalidJobDefinition, match="symbolic link"):
        JobUpload.from_path(job)


def test_a_file_that_vanishes_during_upload_is_an_invalid_job_definition(tmp_path):
    job = make_job(tmp_path / "hello")
    upload = JobUpload.from_path(job)
    (job / "app" / "custom" / "train.py").unlink()
    with pytest.raises(InvalidJobDefinition, match="train.py"):
        list(upload.chunks())


def test_upload_memory_stays_bounded(tmp_path):
    job = make_job(tmp_path / "hello")
    with open(job / "big.bin", "wb") as fh:
        for _ in range(48):
            fh.write(os.urandom(CHUNK_SIZE))
    upload = JobUpload.from_path(job)
    tracemalloc.start()
    try:
        for _ in upload.chunks():
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * CHUNK_SIZE, f"peak {peak} bytes for a 48 MiB job"


def test_the_stream_is_a_header_then_the_zip_naming_the_model_source(tmp_path):
    job = make_job(tmp_path / "hello")
    messages = list(JobUpload.from_path(job).messages(initial_model_job_id="j-1"))
    head = messages[0].header
    assert (head.name, head.size, head.content_type) == ("hello", -1, "application/zip")
    assert dict(head.params) == {"initial_model_job_id": "j-1"}
    receiver = ChunkReceiver("the job archive")
    data = b"".join(d for m in messages if (d := receiver.feed(m)) is not None)
    receiver.finish()
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None


def test_a_zip_that_changes_size_while_it_is_sent_is_an_invalid_job_definition(tmp_path):
    archive = tmp_path / "job.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("job/meta.json", "{}")
    upload = JobUpload.from_path(archive)
    with open(archive, "ab") as fh:
        fh.write(b"more")
    with pytest.raises(InvalidJobDefinition, match="grew while it was being sent"):
        list(upload.messages())
