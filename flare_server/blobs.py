"""The server's blobs: files it serves to sites (apps, global models) and files sites upload.

Theory of operation. A blob is a file in a job's work area, known by a random id. The
:class:`BlobRegistry` maps the id to the file, the job and the sites allowed to fetch it:
``Site.Download`` serves a blob only to one of those sites and only when the request names
that job (anything else looks exactly like an unknown id, so ids cannot be probed).
``Site.Upload`` asks the job's :class:`UploadPolicy` (the job runner) whether this site may
upload this kind of blob for this job, and where; the bytes go to a temp file in the job's
work area (a name the server chose, never one from the wire), hashed and counted while
they arrive, checked against the header's exact size and SHA-256 and the cap, fsynced and
renamed. Chunks are 1 MiB (:data:`~flare_protocol.credentials.CHUNK_SIZE`).

Model updates live for one round and are read right away, so while the bytes of updates
held in memory stay under a budget (``update_memory_bytes``) an update is received into a
reused buffer of a :class:`~flare_protocol.models.BufferPool` instead of a file: no page
cache to fill (on the benchmark VM a buffered write of fresh pages costs ~1 s of CPU per
GiB) and nothing to read back. The same size, SHA-256 and cap checks apply; an update is
handed over only once whole and verified. Beyond the budget, updates go to files as above.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from flare_protocol import errors
from flare_protocol._direct_io import DirectWriter
from flare_protocol._generated import common_pb2
from flare_protocol._transfer_aio import file_messages
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.models import BufferPool
from flare_protocol.transfer import ChunkReceiver, ChunkSender

log = logging.getLogger("flare_server.blobs")

__all__ = ["BlobRegistry", "FileSink", "ServedBlob", "UploadPolicy", "UploadedBlob"]


@dataclass(frozen=True)
class ServedBlob:
    """A file the server serves to some sites of one job."""

    blob_id: str
    job_id: str
    path: Path
    sites: frozenset[str]
    name: str
    size: int
    sha256: str
    content_type: str
    #: The content itself, for a blob served from memory (``path`` is then unused).
    data: bytes | memoryview | None = field(default=None, repr=False)

    def ref(self) -> common_pb2.BlobRef:
        return common_pb2.BlobRef(
            blob_id=self.blob_id, name=self.name, size=self.size, sha256=self.sha256
        )


@dataclass(frozen=True)
class UploadedBlob:
    """A file a site uploaded for a job."""

    blob_id: str
    job_id: str
    site: str
    kind: str  # "update" | "log"
    task_id: str
    #: The file, for a blob received to disk (unused when ``data`` is set).
    path: Path
    size: int
    sha256: str
    #: The bytes, for an update received into memory.
    data: memoryview | None = field(default=None, repr=False)


class UploadPolicy(Protocol):
    """What a running job says about an upload (implemented by the job runner)."""

    def upload_target(self, site: str, kind: str, task_id: str) -> tuple[Path, int]:
        """The folder for this upload and its byte cap; raise a FlareError to refuse."""
        ...

    def on_uploaded(self, blob: UploadedBlob) -> None:
        """An upload it allowed arrived whole."""
        ...


def _not_served(blob_id: str, job_id: str) -> errors.InvalidArgumentError:
    return errors.InvalidArgumentError(
        f"blob {blob_id[:64]!r} is not served to this site for job {job_id[:64]!r}"
    )


class BlobRegistry:
    """Served and uploaded blobs of the running jobs (confined to the server's loop).

    ``memory``/``memory_budget``: receive updates into buffers of this pool while the
    updates held in memory total at most ``memory_budget`` bytes (0: always to files).
    """

    def __init__(self, memory: BufferPool | None = None, memory_budget: int = 0) -> None:
        self._served: dict[str, ServedBlob] = {}
        self._uploaded: dict[str, UploadedBlob] = {}
        self._policies: dict[str, UploadPolicy] = {}
        self._memory = memory
        self.memory_budget = memory_budget if memory is not None else 0
        #: Bytes of updates being received into, or held in, memory.
        self.memory_used = 0

    # -- serving ---------------------------------------------------------------------------
    def serve(
        self,
        job_id: str,
        path: Path,
        sites: Iterable[str],
        *,
        name: str,
        sha256: str,
        size: int,
        content_type: str,
        data: bytes | memoryview | None = None,
    ) -> ServedBlob:
        """Register ``path`` (complete, never modified afterwards), or ``data`` held in
        memory, for ``sites`` of ``job_id``."""
        blob = ServedBlob(
            secrets.token_hex(16),
            job_id,
            Path(path),
            frozenset(sites),
            name,
            size,
            sha256,
            content_type,
            data,
        )
        self._served[blob.blob_id] = blob
        return blob

    def unserve(self, blob_id: str) -> None:
        """Stop serving a blob (a download already under way finishes)."""
        self._served.pop(blob_id, None)

    def served(self, site: str, blob_id: str, job_id: str) -> ServedBlob:
        """The blob ``site`` asks for; InvalidArgumentError if it may not have it."""
        blob = self._served.get(blob_id)
        if blob is None or blob.job_id != job_id or site not in blob.sites:
            raise _not_served(blob_id, job_id)
        return blob

    async def stream(self, blob: ServedBlob) -> AsyncIterator[common_pb2.TransferChunk]:
        """A header, then the blob in 1 MiB chunks (a file is read off the event loop)."""
        sender = ChunkSender(
            f"blob {blob.blob_id}",
            name=blob.name,
            size=blob.size,
            sha256=blob.sha256,
            content_type=blob.content_type,
        )
        if blob.data is None:
            async for message in file_messages(sender, blob.path):
                yield message
            return
        yield sender.header()
        for message in sender.split(blob.data):
            yield message
        sender.finish()

    # -- uploads ---------------------------------------------------------------------------
    def allow_uploads(self, job_id: str, policy: UploadPolicy) -> None:
        self._policies[job_id] = policy

    def uploaded(self, blob_id: str, job_id: str, site: str) -> UploadedBlob | None:
        """An upload by ``site`` for ``job_id`` (None when the ref names anything else)."""
        blob = self._uploaded.get(blob_id)
        if blob is None or blob.job_id != job_id or blob.site != site:
            return None
        return blob

    def discard(self, blob_id: str) -> None:
        """Forget an upload and delete its file (memory: the buffer is reused once no
        array made from it is left)."""
        blob = self._uploaded.pop(blob_id, None)
        if blob is None:
            return
        if blob.data is not None:
            self.memory_used -= blob.size
        else:
            blob.path.unlink(missing_ok=True)

    def forget_job(self, job_id: str) -> None:
        """Stop serving and accepting anything of ``job_id``: its uploads not yet used are
        discarded (memory released, files deleted); served files stay where they are."""
        self._policies.pop(job_id, None)
        for blob_id in [b for b, blob in self._served.items() if blob.job_id == job_id]:
            del self._served[blob_id]
        for blob_id in [b for b, blob in self._uploaded.items() if blob.job_id == job_id]:
            self.discard(blob_id)

    async def receive(
        self, site: str, chunks: AsyncIterator[common_pb2.TransferChunk]
    ) -> UploadedBlob:
        """Receive one ``Site.Upload`` stream from ``site``.

        Raises:
            InvalidArgumentError: no header first, an unknown job or kind, a size or
                SHA-256 that does not match the header, or more bytes than the cap.
            AuthorizationError: the job does not run on this site.
        """
        receiver = ChunkReceiver(
            f"the upload from {site}", require_size=True, require_sha256=True, max_chunk=CHUNK_SIZE
        )
        first = await anext(aiter(chunks), None)
        header = receiver.first_header(first)
        params: Mapping[str, str] = dict(header.params)
        job_id = params.get("job_id", "")
        kind = params.get("kind", "")
        task_id = params.get("task_id", "")
        policy = self._policies.get(job_id)
        if policy is None:
            raise errors.InvalidArgumentError(
                f"job {job_id[:64]!r} accepts no uploads (it is not running on this server)"
            )
        folder, cap = policy.upload_target(site, kind, task_id)
        receiver.what, receiver.max_bytes = f"the {kind} upload from {site}", cap
        receiver.on_header(header)
        started = time.perf_counter()
        blob_id = secrets.token_hex(16)
        sink: _MemorySink | FileSink | None = self._memory_sink(kind, header.size)
        if sink is None:
            # Updates and driver replies live in the work area for a round at most.
            durable = kind not in ("update", "reply")
            file_sink = FileSink(folder, f"{kind}-{blob_id}", durable=durable)
            await asyncio.to_thread(file_sink.open)
            sink = file_sink
        try:
            final, data_view = await receive_into(receiver, chunks, sink)
        except BaseException:
            if isinstance(sink, _MemorySink):
                self.memory_used -= header.size
            raise
        log.debug(
            "upload %s of %d bytes from %s received %s in %.3f s",
            kind,
            receiver.received,
            site,
            "into memory" if data_view is not None else "to a file",
            time.perf_counter() - started,
        )
        blob = UploadedBlob(
            blob_id,
            job_id,
            site,
            kind,
            task_id,
            final,
            receiver.received,
            header.sha256.lower(),
            data_view,
        )
        self._uploaded[blob_id] = blob
        policy.on_uploaded(blob)
        return blob

    def _memory_sink(self, kind: str, size: int) -> _MemorySink | None:
        if kind != "update" or self._memory is None:
            return None
        if self.memory_used + size > self.memory_budget:
            return None
        self.memory_used += size
        return _MemorySink(self._memory.take(size))


class Sink(Protocol):
    """Where a received transfer's bytes go: a pooled buffer or a file."""

    async def write(self, data: bytes) -> None: ...

    async def finish(self) -> tuple[Path, memoryview | None]: ...

    async def abandon(self) -> None: ...


async def receive_into(
    receiver: ChunkReceiver, chunks: AsyncIterator[common_pb2.TransferChunk], sink: Sink
) -> tuple[Path, memoryview | None]:
    """Feed the rest of a transfer (its header taken) into ``sink``: whole and checked
    (size, SHA-256), or abandoned on any failure (nothing partial is left)."""
    try:
        async for message in chunks:
            data = receiver.feed(message)
            if data is not None:
                await sink.write(data)
        receiver.finish()
        return await sink.finish()
    except BaseException:
        receiver.cancel()
        await sink.abandon()
        raise


class _MemorySink:
    """Receives an upload into a pooled buffer of exactly the announced size."""

    def __init__(self, buffer: np.ndarray) -> None:
        self._view: memoryview | None = buffer.data
        self._filled = 0

    async def write(self, data: bytes) -> None:
        assert self._view is not None
        stop = self._filled + len(data)
        self._view[self._filled : stop] = data
        self._filled = stop

    async def finish(self) -> tuple[Path, memoryview]:
        assert self._view is not None
        view, self._view = self._view, None
        return Path(), view

    async def abandon(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None


class FileSink:
    """Receives an upload into a temp file beside ``folder/name``, renamed when whole
    (``open`` in a worker thread first; ``durable``: fsynced before the rename)."""

    def __init__(self, folder: Path, name: str, *, durable: bool) -> None:
        self.final = folder / name
        self.tmp = folder / f".{name}.part"
        self.durable = durable
        self._writer: DirectWriter | None = None

    def open(self) -> None:
        flags = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        # Big updates bypass the page cache (see _direct_io); small logs are written plainly.
        self._writer = DirectWriter(self.tmp, flags, 0o600, direct=not self.durable)

    async def write(self, data: bytes) -> None:
        assert self._writer is not None
        await asyncio.to_thread(self._writer.write, data)

    async def finish(self) -> tuple[Path, None]:
        writer = self._writer
        assert writer is not None
        # An update lives for one round (a crash ends the job anyway): no fsync for it.
        await asyncio.to_thread(writer.finish, fsync=self.durable)
        writer.close()
        self._writer = None
        await asyncio.to_thread(os.replace, self.tmp, self.final)
        return self.final, None

    async def abandon(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)


def ref_of(blob: UploadedBlob, name: str = "") -> common_pb2.BlobRef:
    """The ``BlobRef`` a site gets back for its upload."""
    return common_pb2.BlobRef(blob_id=blob.blob_id, name=name, size=blob.size, sha256=blob.sha256)
