"""Uploads from sites: updates go to memory within the budget, to files beyond it, checked alike."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flare_protocol import errors
from flare_protocol._generated import common_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.models import BufferPool
from flare_server.blobs import BlobRegistry, UploadedBlob

JOB = "job-1"
SIZE = 3 * CHUNK_SIZE + 123


class JobPolicy:
    """What a running job answers to uploads: every update and log goes to ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.arrived: list[UploadedBlob] = []

    def upload_target(self, site: str, kind: str, task_id: str) -> tuple[Path, int]:
        return self.folder, 1 << 30

    def on_uploaded(self, blob: UploadedBlob) -> None:
        self.arrived.append(blob)


async def stream(
    data: bytes, *, kind: str = "update", sha256: str | None = None
) -> AsyncIterator[common_pb2.TransferChunk]:
    header = common_pb2.TransferHeader(
        size=len(data),
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        params={"job_id": JOB, "kind": kind, "task_id": "r1-train-site-1"},
    )
    yield common_pb2.TransferChunk(header=header)
    for start in range(0, len(data), CHUNK_SIZE):
        yield common_pb2.TransferChunk(data=data[start : start + CHUNK_SIZE])


@pytest.fixture
def policy(tmp_path: Path) -> JobPolicy:
    return JobPolicy(tmp_path)


def registry(policy: JobPolicy, budget: int) -> BlobRegistry:
    blobs = BlobRegistry(BufferPool(), budget)
    blobs.allow_uploads(JOB, policy)
    return blobs


def payload(seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(SIZE))


async def test_an_update_within_the_budget_is_held_in_memory_and_no_file_is_written(
    policy: JobPolicy,
) -> None:
    blobs = registry(policy, budget=2 * SIZE)
    blob = await blobs.receive("site-1", stream(payload(1)))
    assert blob.data is not None and bytes(blob.data) == payload(1)
    assert policy.arrived == [blob] and blobs.memory_used == SIZE
    assert list(policy.folder.iterdir()) == []
    blobs.discard(blob.blob_id)
    assert blobs.memory_used == 0


async def test_updates_beyond_the_budget_go_to_files_with_the_same_bytes(
    policy: JobPolicy,
) -> None:
    blobs = registry(policy, budget=SIZE + 1)
    first = await blobs.receive("site-1", stream(payload(1)))
    second = await blobs.receive("site-2", stream(payload(2)))
    assert first.data is not None
    assert second.data is None and second.path.read_bytes() == payload(2)
    assert [p.name for p in policy.folder.iterdir()] == [second.path.name]
    blobs.discard(second.blob_id)
    assert not second.path.exists()
    blobs.discard(first.blob_id)
    third = await blobs.receive("site-1", stream(payload(3)))
    assert third.data is not None  # the budget freed by the discard is available again


async def test_a_damaged_update_in_memory_is_refused_and_gives_its_budget_back(
    policy: JobPolicy,
) -> None:
    blobs = registry(policy, budget=2 * SIZE)
    with pytest.raises(errors.InvalidArgumentError, match="does not match the announced"):
        await blobs.receive("site-1", stream(payload(1), sha256="0" * 64))
    assert blobs.memory_used == 0 and policy.arrived == []
    with pytest.raises(errors.InvalidArgumentError, match="longer than its announced"):

        async def longer() -> AsyncIterator[common_pb2.TransferChunk]:
            async for chunk in stream(payload(1)):
                yield chunk
            yield common_pb2.TransferChunk(data=b"extra")

        await blobs.receive("site-1", longer())
    assert blobs.memory_used == 0 and policy.arrived == []


async def test_a_log_always_goes_to_a_file(policy: JobPolicy) -> None:
    blobs = registry(policy, budget=1 << 30)
    blob = await blobs.receive("site-1", stream(b"site log\n", kind="log"))
    assert blob.data is None and blob.path.read_bytes() == b"site log\n"
    assert blobs.memory_used == 0


async def test_forgetting_a_job_releases_the_memory_of_its_updates(policy: JobPolicy) -> None:
    blobs = registry(policy, budget=2 * SIZE)
    blob = await blobs.receive("site-1", stream(payload(1)))
    blobs.forget_job(JOB)
    assert blobs.memory_used == 0
    assert blobs.uploaded(blob.blob_id, JOB, "site-1") is None
