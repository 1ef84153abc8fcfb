"""The site's blob client over real mutual TLS: chunks, checks, and nothing half-written."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flare_protocol.credentials import CHUNK_SIZE
from flare_site.blobs import Blob, BlobError, download, upload
from tests.flare_site.runtime_helpers import (
    FaultInjectingBlobService,
    fault_injecting_blob_server,
)

DATA = random.Random(17).randbytes(2 * CHUNK_SIZE + 12345)  # three chunks


@pytest.fixture
async def blobs(provisioned: Any) -> AsyncIterator[tuple[FaultInjectingBlobService, Any]]:
    async with fault_injecting_blob_server(provisioned) as pair:
        yield pair


async def test_a_multi_chunk_download_arrives_whole_and_private(
    blobs: tuple[FaultInjectingBlobService, Any], tmp_path: Path
) -> None:
    service, stub = blobs
    ref = Blob.from_pb(service.put(DATA))
    dest = await download(stub, ref, tmp_path / "model.npz")
    assert dest.read_bytes() == DATA
    assert dest.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["model.npz"]


async def test_a_sha256_mismatch_leaves_nothing_behind(
    blobs: tuple[FaultInjectingBlobService, Any], tmp_path: Path
) -> None:
    service, stub = blobs
    ref = Blob.from_pb(service.put(DATA, sha256="ab" * 32))
    with pytest.raises(BlobError, match="does not match the announced"):
        await download(stub, ref, tmp_path / "model.npz")
    assert os.listdir(tmp_path) == []


async def test_a_stream_cut_midway_leaves_nothing_and_may_be_retried(
    blobs: tuple[FaultInjectingBlobService, Any], tmp_path: Path
) -> None:
    service, stub = blobs
    service.cut_after = 1
    ref = Blob.from_pb(service.put(DATA))
    with pytest.raises(BlobError, match="UNAVAILABLE") as info:
        await download(stub, ref, tmp_path / "model.npz")
    assert info.value.retryable is True  # type: ignore[attr-defined]
    assert os.listdir(tmp_path) == []


async def test_a_blob_over_the_cap_is_refused_by_its_announced_size(
    blobs: tuple[FaultInjectingBlobService, Any], tmp_path: Path
) -> None:
    service, stub = blobs
    ref = Blob.from_pb(service.put(DATA))
    with pytest.raises(BlobError, match="at most 1000 are accepted"):
        await download(stub, ref, tmp_path / "x", max_bytes=1000)
    assert os.listdir(tmp_path) == []


async def test_a_blob_that_sends_more_than_announced_is_stopped_at_its_first_extra_chunk(
    blobs: tuple[FaultInjectingBlobService, Any], tmp_path: Path
) -> None:
    service, stub = blobs
    service.lie_size = 10
    ref = Blob(service.put(DATA).blob_id)  # no size or digest in the reference either
    with pytest.raises(BlobError, match="longer than its announced 10 bytes"):
        await download(stub, ref, tmp_path / "x", max_bytes=CHUNK_SIZE + 1)
    assert os.listdir(tmp_path) == []


async def test_an_upload_streams_chunks_with_size_and_digest_up_front(
    blobs: tuple[FaultInjectingBlobService, Any], tmp_path: Path
) -> None:
    service, stub = blobs
    path = tmp_path / "update.npz"
    path.write_bytes(DATA)
    ref = await upload(
        stub, path, name="t1.npz", content_type="application/x-npz", params={"job_id": "j"}
    )
    assert service.blobs[ref.blob_id] == DATA
    assert ref.sha256 == hashlib.sha256(DATA).hexdigest() and ref.size == len(DATA)
    header = service.headers[ref.blob_id]
    assert (header.name, header.size, header.content_type) == (
        "t1.npz",
        len(DATA),
        "application/x-npz",
    )
    assert dict(header.params) == {"job_id": "j"}
