"""A job archive being received into a job store, chunk by chunk, before it becomes a job.

The bytes go to a private temp file written around the page cache
(:class:`~flare_protocol._direct_io.DirectWriter`: a GiB upload must not cost a GiB of
fresh page-cache pages), hashed while they are written and counted against the store's
``max_upload_bytes``. :meth:`Upload.commit` hands the complete file to the store, which
validates it and makes it a durable job; anything else discards it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from flare_protocol._direct_io import DirectWriter
from flare_protocol.errors import InvalidArgumentError, InvalidJobDefinition
from flare_server.jobs._errors import storage_errors
from flare_server.jobs.meta import JobMeta, Submitter

__all__ = ["Commit", "Upload"]

#: What makes a received archive a job: ``(path, size, sha256, submitter, cloned_from,
#: fields)`` -> the new job's meta (the store validates, stores durably, or raises).
Commit = Callable[[Path, int, str, Submitter, str | None, Mapping[str, Any]], JobMeta]


class Upload:
    """A job archive being received; obtained from a store's ``begin_upload``.

    ``write()`` chunks as they arrive; ``commit()`` validates and stores the job (or raises and
    discards everything); ``abort()`` discards. As a context manager it aborts unless committed.
    """

    def __init__(self, path: Path, *, max_bytes: int, commit: Commit) -> None:
        """Use the store's ``begin_upload``."""
        self._path = path
        self._max_bytes = max_bytes
        self._commit = commit
        # O_DIRECT: a GiB upload must not cost a GiB of fresh page-cache pages (_direct_io)
        self._file = DirectWriter(path, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._hash = hashlib.sha256()
        # Hashing a chunk (~0.7 ms/MiB, GIL released) overlaps with writing it (the same).
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, "upload-sha256")
        self._hashing: concurrent.futures.Future[None] | None = None
        self._size = 0
        self._done = False

    @property
    def path(self) -> Path:
        """The temp file the archive is written to (removed on abort)."""
        return self._path

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes written so far."""
        self._hashed()
        return self._hash.hexdigest()

    def _hashed(self) -> None:
        if self._hashing is not None:
            self._hashing.result()
            self._hashing = None

    @storage_errors
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append a chunk.

        Raises:
            InvalidJobDefinition: the upload exceeds ``max_upload_bytes`` (it is discarded).
        """
        if self._done:
            raise InvalidArgumentError("this upload was already committed or aborted")
        cap = self._max_bytes
        if self._size + len(data) > cap:
            self.abort()
            raise InvalidJobDefinition(
                f"upload is larger than the {cap} bytes allowed for a job archive"
            )
        self._hashed()  # the previous chunk's: at most one chunk is being hashed
        if isinstance(data, bytes):  # immutable: safe to hash while it is written
            self._hashing = self._hasher.submit(self._hash.update, data)
        else:
            self._hash.update(data)
        try:
            self._file.write(data)
        except OSError:
            self.abort()
            raise
        self._size += len(data)

    @storage_errors
    def commit(
        self,
        submitter: Submitter,
        *,
        cloned_from: str | None = None,
        params: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> JobMeta:
        """Validate the archive and store the job durably; returns its meta (SUBMITTED).

        ``params``/``extra``: fields of :data:`CREATION_FIELDS` (anything else is refused).
        Raises:
            InvalidJobDefinition: the archive or its meta.json is invalid (nothing is kept).
        """
        if self._done:
            raise InvalidArgumentError("this upload was already committed or aborted")
        self._done = True
        try:
            self._file.finish()  # the tail, then fsync
            fields = {**(params or {}), **(extra or {})}
            return self._commit(self._path, self._size, self.sha256, submitter, cloned_from, fields)
        finally:
            self._discard()

    def abort(self) -> None:
        """Discard the upload (idempotent)."""
        self._done = True
        self._discard()

    def _discard(self) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=True)
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:  # the file is removed anyway
                pass
        try:
            self._path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()
