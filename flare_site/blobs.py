"""The site's side of the Site service's ``Download`` and ``Upload``: chunked blobs.

Theory of operation. A blob (a job's app archive, a global model, an update, a job log)
moves as a stream of :class:`TransferChunk` messages: one ``TransferHeader`` (name hint,
size, SHA-256, content type, params), then ``data`` chunks of at most 1 MiB
(:data:`flare_protocol.credentials.CHUNK_SIZE`). Memory stays bounded by one chunk in
either direction.

A download is written to a temporary file beside its destination (``O_EXCL``, mode 0600,
never through a link), hashed while it arrives, checked against the announced size, the
announced SHA-256, the one the referencing ``BlobRef`` gave and a byte cap, fsynced
(except a model, read once right away), and only then renamed into place: a half-received
blob is never taken for a whole one. The header's name is a hint for logs only; the
caller chooses the destination path.

An upload hashes the file first (the header carries size and SHA-256 up front, so the
server can refuse early and check at the end), unless the caller read it already and
passes the digest, then streams it; the server's reply is the blob's :class:`Blob`
reference.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from flare_protocol._direct_io import DirectWriter
from flare_protocol._fsync import fsync_dir
from flare_protocol._generated import common_pb2, site_pb2
from flare_protocol._transfer_aio import file_messages
from flare_protocol.errors import BlobError, FlareError, LocalIOError
from flare_protocol.hashing import sha256_file
from flare_protocol.transfer import ChunkReceiver, ChunkSender

__all__ = ["Blob", "BlobError", "download", "sha256_file", "upload"]

#: Default cap on one downloaded blob (the server's own archive cap is 2 GiB).
MAX_DOWNLOAD_BYTES = 4 * 1024**3
#: A transfer that failed with one of these may succeed on the next connection.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


@dataclass(frozen=True)
class Blob:
    """A reference to a blob held by the server (mirrors ``BlobRef``)."""

    blob_id: str
    name: str = ""
    size: int = -1
    sha256: str = ""

    @classmethod
    def from_pb(cls, ref: common_pb2.BlobRef) -> Blob:
        return cls(ref.blob_id, ref.name, int(ref.size), ref.sha256.lower())

    def to_pb(self) -> common_pb2.BlobRef:
        return common_pb2.BlobRef(
            blob_id=self.blob_id, name=self.name, size=self.size, sha256=self.sha256
        )


def _open_temp(dest: Path) -> tuple[DirectWriter, Path]:
    tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(6)}")
    # Written around the page cache (see flare_protocol._direct_io): cheaper and steadier
    # than buffered writes of ~100s of MB per round, which writeback throttles.
    return DirectWriter(tmp, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), tmp


def _absorb(receiver: ChunkReceiver, writer: DirectWriter, data: bytes) -> None:
    # In a worker thread: hashlib and os.write release the GIL, so the event loop keeps
    # receiving the next chunks meanwhile instead of hashing 100 MB itself.
    receiver.hash(data)
    writer.write(data)


def _finish(tmp: Path, dest: Path, durable: bool) -> None:
    os.replace(tmp, dest)
    if durable:
        fsync_dir(dest.parent)


def _failed(what: str, exc: grpc.RpcError) -> BlobError:
    code = exc.code()
    return BlobError(
        f"{what} failed: {code.name}: {exc.details()}",
        retryable=code in _RETRYABLE,
    )


async def download(
    stub: Any,
    blob: Blob,
    dest: Path,
    *,
    job_id: str = "",
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout: float | None = None,
    durable: bool = True,
) -> Path:
    """Fetch ``blob`` into ``dest`` (complete or absent); return ``dest``.

    Args:
        stub: a ``SiteStub`` on a ``grpc.aio`` channel.
        blob: the reference from the envelope; a non-empty ``sha256`` is enforced.
        dest: the final path (its folder must exist); never taken from the wire.
        job_id: the job the blob belongs to (the server serves it only for that job).
        max_bytes: refuse a blob larger than this, announced or real.
        durable: fsync before the rename; a model read once, right away, skips it.

    Raises:
        BlobError: the stream broke, or the blob is not what was announced.
    """
    receiver = ChunkReceiver(
        f"blob {blob.blob_id}",
        error=BlobError,
        max_bytes=max_bytes,
        size=blob.size,
        sha256=blob.sha256,
        hash_data=False,  # hashed in the writing thread
    )
    call = stub.Download(site_pb2.BlobRequest(blob_id=blob.blob_id, job_id=job_id), timeout=timeout)
    writer, tmp = await asyncio.to_thread(_open_temp, dest)
    try:
        try:
            async for message in call:
                data = receiver.feed(message)
                if data is not None:
                    await asyncio.to_thread(_absorb, receiver, writer, data)
        except grpc.RpcError as exc:
            raise _failed(f"download of blob {blob.blob_id}", exc) from None
        receiver.finish()
        await asyncio.to_thread(writer.finish, fsync=durable)
        await asyncio.to_thread(_finish, tmp, dest, durable)
    except BaseException as exc:
        receiver.cancel()
        writer.close()
        tmp.unlink(missing_ok=True)
        call.cancel()
        if isinstance(exc, OSError) and not isinstance(exc, FlareError):
            raise _not_written(exc, f"blob {blob.blob_id}", dest) from exc
        raise
    return dest


def _not_written(exc: OSError, what: str, dest: Path) -> LocalIOError:
    """The error for a download that could not be written (a full disk, mostly)."""
    error = LocalIOError.of(exc, f"write {what} to", dest)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        error.message += (
            "; the site's disk is full: nothing partial was kept; free space on that file "
            "system (the site's workspace) and run the job again"
        )
        error.args = (error.message,)
    return error


async def upload(
    stub: Any,
    path: Path,
    *,
    name: str,
    content_type: str,
    params: Mapping[str, str] | None = None,
    timeout: float | None = None,
    digest: tuple[str, int] | None = None,
) -> Blob:
    """Send the file at ``path`` to the server; return the server's reference.

    ``params`` travel in the header (``job_id``, ``task_id``, ``kind``: ``update`` or
    ``log``), so the server can tie the blob to the job before it stores a byte.
    ``digest``: the file's (SHA-256, size) when the caller already read it (else the
    file is hashed first); the server refuses the blob if the bytes sent differ.

    Raises:
        BlobError: the server refused the upload, the stream broke, or the file changed
            size while it was sent.
    """
    sha, size = digest if digest is not None else await asyncio.to_thread(sha256_file, path)
    sender = ChunkSender(
        name,
        name=name,
        size=size,
        sha256=sha,
        content_type=content_type,
        params=params,
        error=BlobError,
    )
    try:
        ref = await stub.Upload(file_messages(sender, path), timeout=timeout)
    except grpc.RpcError as exc:
        raise _failed(f"upload of {name}", exc) from None
    return Blob.from_pb(ref)
