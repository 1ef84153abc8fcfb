"""The seam between the server and where its jobs are kept: :class:`JobRepository`.

Every part of the server that reads or writes jobs (the Admin service, the commands, the
scheduler, the job runner, model-source checks) depends on this protocol, never on a
backend. Today's backend is :class:`~flare_server.jobs.store.JobStore` (SQLite plus one
folder per job); another (PostgreSQL for the rows, the same folders for the files) plugs
in by implementing it, and proves it by passing the contract tests written once for every
backend (``tests/flare_server/jobs/test_job_repository_contract.py``).

What every backend guarantees:

- **Acknowledged means durable**: a job whose ``commit``/``clone_job`` returned, and a
  status or field whose ``set_status``/``update`` returned, survive a crash; a job is
  never visible half-made (its archive is whole before anyone can see its row).
- **Status changes follow the lifecycle table**
  (:func:`~flare_server.jobs.lifecycle.check_transition`); only recovery bypasses it.
- **Subscribers** see every committed change, in commit order, after it is committed
  (a delete as a meta with ``deleted=True``); a failing subscriber never fails a writer.
- **Ids** are checked (:func:`~flare_server.jobs.meta.parse_job_id`) before anything is
  looked up: a malformed id is an ``InvalidArgumentError``, an unknown one ``JobNotFound``.
- **Recovery on open**: DISPATCHED and RUNNING jobs end ``FINISHED:ABNORMAL``, SUBMITTED
  jobs stay queued (:mod:`flare_server.jobs.recovery`), reported as ``recovery``; opened
  with ``keep_running``, RUNNING jobs stay RUNNING (``recovery.jobs_running``) for the
  server to resume.

Methods may block (disk, database): call them in a worker thread from an event loop,
except :meth:`JobRepository.cached` and :meth:`JobRepository.subscribe`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from flare_server.jobs.archive import ArchiveLimits
from flare_server.jobs.lifecycle import JobStatus
from flare_server.jobs.meta import JobMeta, JobSummary, Submitter
from flare_server.jobs.recovery import RecoveryReport

__all__ = ["JobRepository", "JobUpload"]


class JobUpload(Protocol):
    """A job archive being received (:meth:`JobRepository.begin_upload`).

    ``write()`` chunks as they arrive; ``commit()`` validates and stores the job (or
    raises and keeps nothing); ``abort()`` discards. As a context manager it aborts unless
    committed.
    """

    @property
    def size(self) -> int:
        """Bytes written so far."""
        ...

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes written so far."""
        ...

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append a chunk (InvalidJobDefinition beyond ``max_upload_bytes``: discarded)."""
        ...

    def commit(
        self,
        submitter: Submitter,
        *,
        cloned_from: str | None = None,
        params: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> JobMeta:
        """Validate the archive and store the job durably; its meta (SUBMITTED)."""
        ...

    def abort(self) -> None:
        """Discard the upload (idempotent)."""
        ...

    def __enter__(self) -> JobUpload: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class JobRepository(Protocol):
    """Where the server keeps its jobs: rows (meta, status) and files (archive, results)."""

    @property
    def limits(self) -> ArchiveLimits:
        """The caps every archive is checked against (also when it is extracted)."""
        ...

    @property
    def recovery(self) -> RecoveryReport:
        """What recovery found and repaired when the repository was opened."""
        ...

    # -- creating jobs -----------------------------------------------------------------
    def begin_upload(self) -> JobUpload:
        """Start receiving a job archive."""
        ...

    def create_job_from_archive(
        self,
        zip_path: Path,
        submitter: Submitter,
        *,
        cloned_from: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> JobMeta:
        """A new SUBMITTED job from an archive on disk (as an upload of its bytes)."""
        ...

    def clone_job(
        self, job_id: str, submitter: Submitter, *, extra: Mapping[str, Any] | None = None
    ) -> JobMeta:
        """A new SUBMITTED job with ``job_id``'s archive and definition, owned by
        ``submitter``; no server-owned field is copied (``extra`` may set
        ``initial_model_job_id`` only)."""
        ...

    # -- reading -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobMeta:
        """The job's meta (InvalidArgumentError: malformed id; JobNotFound: unknown)."""
        ...

    def cached(self, job_id: str) -> JobMeta | None:
        """The job's meta if it is at hand without blocking, else None (never raises)."""
        ...

    def list(
        self,
        *,
        id_prefix: str | None = None,
        name_prefix: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
        statuses: Iterable[JobStatus | str] | None = None,
    ) -> list[JobSummary]:
        """Jobs ordered by submit time (newest first if ``reverse``), filtered, then cut
        to ``limit``."""
        ...

    def job_dir(self, job_id: str) -> Path:
        """The job's folder."""
        ...

    def job_archive(self, job_id: str) -> Path:
        """The job's validated archive, read-only (InternalError when it is not whole)."""
        ...

    def result_dir(self, job_id: str) -> Path:
        """The folder for the job's results."""
        ...

    # -- changing jobs -----------------------------------------------------------------
    def set_status(
        self, job_id: str, status: JobStatus | str, *, reason: str | None = None
    ) -> JobMeta:
        """Move the job to ``status`` (InvalidTransition when the table forbids it)."""
        ...

    def update(self, job_id: str, /, **fields: Any) -> JobMeta:
        """Set server-owned meta fields (never the status or a field fixed at submission)."""
        ...

    def delete(self, job_id: str) -> None:
        """Delete a SUBMITTED or finished job with its files (JobNotDone otherwise)."""
        ...

    # -- notifications and lifetime ----------------------------------------------------
    def subscribe(self, callback: Callable[[JobMeta], None]) -> Callable[[], None]:
        """Call ``callback(meta)`` after every committed change (quickly, in the writer's
        thread); returns the function that unsubscribes."""
        ...

    def close(self) -> None:
        """Release the repository (idempotent); later calls raise FlareError."""
        ...
