"""The server's durable job store: SQLite (WAL, synchronous=FULL) plus one folder per job.

:class:`JobStore` is the SQLite backend of :class:`~flare_server.jobs.repository.JobRepository`
(the meta views are in :mod:`~flare_server.jobs.meta`, archive uploads in
:mod:`~flare_server.jobs.uploads`, crash recovery in :mod:`~flare_server.jobs.recovery`).

Theory of operation. Layout under ``root`` (the server workspace's ``jobs/``)::

    jobs.db (+ -wal, -shm)   one row per job: summary columns + the full meta as JSON
    .lock                    flock held while a JobStore is open (one server per workspace)
    tmp/                     uploads in progress and staging folders; emptied on open()
    <job_id>/job.zip         the validated archive, immutable once acknowledged
    <job_id>/result/         the job's results (written by the server's job runner)

Acknowledged means durable, and a job is never visible half-made: an upload is written to
``tmp/``, fsynced and validated; it is moved into ``tmp/stage-<id>/job.zip``, the staging
folder is fsynced and renamed to ``<job_id>/``, ``root`` is fsynced, and only then is the
row inserted (a committed SQLite transaction with synchronous=FULL). A ``<job_id>/`` folder
without a row is therefore garbage from a crash and is removed on open; a row whose archive
is missing or has the wrong size is reported and ended ``FINISHED:ABNORMAL`` (it is never
served). Status changes go through :func:`~flare_server.jobs.lifecycle.check_transition`, are
committed before the call returns, and only then announced to subscribers. Deleting removes
the row first (commit), then the folder. On open, jobs that were DISPATCHED or RUNNING end
``FINISHED:ABNORMAL`` ("server restarted while the job was RUNNING"), unless the store is
opened with ``keep_running`` (the server, which resumes RUNNING jobs: they stay RUNNING and
are reported in ``recovery.jobs_running``); SUBMITTED jobs stay queued. Recovery is the
only writer allowed to bypass the transition table (a SUBMITTED job whose archive vanished
cannot legally reach ABNORMAL, yet must not be served).

Thread-safety: one connection guarded by one re-entrant lock; subscriber callbacks run under
that lock, in commit order, so they must be quick (e.g. ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flare_protocol._fsync import fsync_dir
from flare_protocol.errors import (
    FlareError,
    InternalError,
    InvalidArgumentError,
    InvalidJobDefinition,
    JobNotDone,
    JobNotFound,
)
from flare_protocol.job_format import SERVER_OWNED_KEYS
from flare_server.jobs._errors import storage_errors
from flare_server.jobs.archive import ArchiveLimits, validate_job_archive
from flare_server.jobs.lifecycle import JobStatus, check_transition, is_finished, parse_status
from flare_server.jobs.meta import JobMeta, JobSummary, Submitter, iso_time, parse_job_id
from flare_server.jobs.recovery import (
    RecoveryReport,
    clean_temp,
    plan_recovery,
    remove_orphans,
)
from flare_server.jobs.repository import JobRepository
from flare_server.jobs.uploads import Upload

__all__ = ["JobStore"]

log = logging.getLogger(__name__)

DB_FILE = "jobs.db"
ARCHIVE_FILE = "job.zip"
RESULT_DIR = "result"
TMP_DIR = "tmp"
LOCK_FILE = ".lock"
_CHUNK = 1024 * 1024
#: Server-owned fields a new job may be given (``params``/``extra``): the server sets them
#: from a request it has authorized (and re-checks them when it reads what they name).
CREATION_FIELDS = frozenset({"initial_model_job_id"})
#: Job metas kept in memory by JobStore.get (a few KB each).
META_CACHE_SIZE = 4096
_DEFAULT_LIMITS = ArchiveLimits()
_STATUS_BY_VALUE = {status.value: status for status in JobStatus}
_PREFIX_RE = re.compile(r"^[0-9a-fA-F-]{0,36}$")
#: Fields :meth:`JobStore.update` may not touch (status has its own method).
_NOT_UPDATABLE = frozenset(
    {
        "job_id",
        "status",
        "status_history",
        "submitter_name",
        "submitter_org",
        "submitter_role",
        "submit_time",
        "submit_time_iso",
        "cloned_from",
        "archive_size",
        "archive_sha256",
    }
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    status         TEXT NOT NULL,
    submit_time    REAL NOT NULL,
    duration       REAL,
    submitter_name TEXT NOT NULL,
    submitter_org  TEXT NOT NULL,
    archive_size   INTEGER NOT NULL,
    meta           TEXT NOT NULL
);
-- Covering index: list() reads only this index, never the rows with their meta JSON.
CREATE INDEX IF NOT EXISTS jobs_by_submit_time ON jobs (
    submit_time, seq, job_id, name, status, duration, submitter_name, submitter_org
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
"""


class JobStore:
    """The durable job store (see the module docstring for the guarantees)."""

    def __init__(
        self,
        root: Path,
        limits: ArchiveLimits,
        lock_fd: int,
        definition_check: Callable[[Mapping[str, Any]], None] | None = None,
        keep_running: bool = False,
    ) -> None:
        """Use :meth:`open`."""
        self.root = root
        self.limits = limits
        self._lock_fd = lock_fd
        self._tmp = root / TMP_DIR
        self._lock = threading.RLock()
        self._subscribers: tuple[Callable[[JobMeta], None], ...] = ()
        # Committed metas by job id, newest last: get() without SQLite or JSON parsing.
        # Written only under _lock, after the change is committed; read without it.
        self._metas: OrderedDict[str, JobMeta] = OrderedDict()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            root / DB_FILE, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self.recovery = RecoveryReport()
        #: Called with a new job's checked meta.json before it is stored; may raise
        #: InvalidJobDefinition (the server refuses sites outside its project here).
        self.definition_check = definition_check
        self._keep_running = keep_running

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        limits: ArchiveLimits = _DEFAULT_LIMITS,
        definition_check: Callable[[Mapping[str, Any]], None] | None = None,
        keep_running: bool = False,
    ) -> JobStore:
        """Open (creating if needed) the store at ``root`` and run crash recovery.

        ``definition_check``: called with each new job's checked meta.json before it is
        stored; may raise InvalidJobDefinition (the server refuses sites outside its
        project there). ``keep_running``: recovery leaves RUNNING jobs RUNNING (listed in
        ``recovery.jobs_running``) instead of ending them; the caller must resume or end
        each one (the server resumes them from their last completed round).

        Raises:
            FlareError: another process holds the store open, or the database is unusable.
        """
        root = Path(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / TMP_DIR).mkdir(mode=0o700, exist_ok=True)
        lock_fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise FlareError(
                f"job store {root} is in use by another process; stop the other server first",
                path=str(root),
            ) from None
        try:
            store = cls(root, limits, lock_fd, definition_check, keep_running)
            store.recovery = store._recover()
        except sqlite3.DatabaseError as exc:
            os.close(lock_fd)
            raise FlareError(f"job database {root / DB_FILE} is unusable: {exc}") from exc
        except BaseException:
            os.close(lock_fd)
            raise
        return store

    def close(self) -> None:
        """Close the database and release the store (idempotent)."""
        with self._lock:
            if self._conn is None:
                return
            self._conn.close()
            self._conn = None
            self._metas.clear()
            os.close(self._lock_fd)

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise FlareError("the job store is closed")
        return self._conn

    # -- recovery ----------------------------------------------------------------------------

    def _recover(self) -> RecoveryReport:
        """Clean up after a crash (:mod:`flare_server.jobs.recovery`), in one transaction."""
        removed_tmp = clean_temp(self._tmp)
        with self._lock:
            rows = self._db.execute("SELECT job_id, status, archive_size FROM jobs").fetchall()
            orphans = remove_orphans(self.root, {row[0] for row in rows})
            plan = plan_recovery(
                rows,
                lambda job_id: self.root / job_id / ARCHIVE_FILE,
                keep_running=self._keep_running,
            )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for ending in plan.endings:
                    self._write_status(
                        ending.job_id, JobStatus.FINISHED_ABNORMAL, ending.reason, force=True
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        for job_id in plan.missing_files:
            log.error("job %s: archive missing or truncated; it is not served", job_id)
        return RecoveryReport(
            temp_files_removed=removed_tmp,
            orphan_dirs_removed=orphans,
            jobs_ended=tuple((e.job_id, e.was) for e in plan.endings),
            jobs_missing_files=plan.missing_files,
            jobs_queued=plan.queued,
            jobs_running=plan.running,
        )

    # -- creating jobs -----------------------------------------------------------------------

    @storage_errors
    def begin_upload(self) -> Upload:
        """Start receiving a job archive (written under ``tmp/``, removed on abort or crash)."""
        self._db  # noqa: B018 - raises if closed
        return Upload(
            self._tmp / f"upload-{secrets.token_hex(8)}.zip",
            max_bytes=self.limits.max_upload_bytes,
            commit=self._commit_upload,
        )

    @storage_errors
    def create_job_from_archive(
        self,
        zip_path: Path,
        submitter: Submitter,
        *,
        cloned_from: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> JobMeta:
        """Copy an archive from disk into the store as a new SUBMITTED job (see :class:`Upload`)."""
        zip_path = Path(zip_path)
        try:
            size = zip_path.stat().st_size
            if size > self.limits.max_upload_bytes:
                raise InvalidJobDefinition(
                    f"archive is {size} bytes; at most {self.limits.max_upload_bytes} are allowed"
                )
            src = open(zip_path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read job archive {zip_path}: {exc}") from None
        with src, self.begin_upload() as upload:
            while chunk := src.read(_CHUNK):
                upload.write(chunk)
            return upload.commit(submitter, cloned_from=cloned_from, extra=extra)

    @storage_errors
    def clone_job(
        self, job_id: str, submitter: Submitter, *, extra: Mapping[str, Any] | None = None
    ) -> JobMeta:
        """A new SUBMITTED job with the same archive and job definition, owned by ``submitter``.

        No server-owned field is copied: ``initial_model_job_id`` comes only from ``extra``,
        once the caller has checked that ``submitter`` may read that model.
        """
        source = self.get(job_id)
        src_archive = self.job_archive(source.job_id)
        definition = {k: v for k, v in source.items() if k not in SERVER_OWNED_KEYS}
        new_id = str(uuid.uuid4())
        stage = self._tmp / f"stage-{new_id}"
        stage.mkdir(mode=0o700)
        try:
            staged = stage / ARCHIVE_FILE
            try:
                os.link(src_archive, staged)  # archives are immutable: sharing the inode is safe
            except OSError:
                shutil.copyfile(src_archive, staged)
                with open(staged, "rb+") as f:
                    os.fsync(f.fileno())
            if staged.stat().st_size != source["archive_size"]:
                raise FlareError(f"job {source.job_id}: archive is incomplete; cannot clone it")
            return self._publish(
                new_id,
                stage,
                definition,
                submitter,
                source.job_id,
                {**_check_extra(extra)},
                source["archive_size"],
                source["archive_sha256"],
            )
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def _commit_upload(
        self,
        path: Path,
        size: int,
        sha256: str,
        submitter: Submitter,
        cloned_from: str | None,
        fields: Mapping[str, Any],
    ) -> JobMeta:
        fields = _check_extra(fields)
        if cloned_from is not None:
            cloned_from = parse_job_id(cloned_from)
        definition = validate_job_archive(path, self.limits)
        if self.definition_check is not None:
            self.definition_check(definition.meta)
        job_id = str(uuid.uuid4())
        stage = self._tmp / f"stage-{job_id}"
        stage.mkdir(mode=0o700)
        try:
            os.rename(path, stage / ARCHIVE_FILE)
            return self._publish(
                job_id, stage, definition.meta, submitter, cloned_from, fields, size, sha256
            )
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def _publish(
        self,
        job_id: str,
        stage: Path,
        definition: Mapping[str, Any],
        submitter: Submitter,
        cloned_from: str | None,
        fields: Mapping[str, Any],
        size: int,
        sha256: str,
    ) -> JobMeta:
        now = time.time()
        meta: dict[str, Any] = {k: v for k, v in definition.items() if k not in SERVER_OWNED_KEYS}
        meta.update(fields)
        meta.update(
            job_id=job_id,
            status=JobStatus.SUBMITTED.value,
            submitter_name=submitter.name,
            submitter_org=submitter.org,
            submitter_role=submitter.role,
            submit_time=now,
            submit_time_iso=iso_time(now),
            start_time=None,
            end_time=None,
            duration=None,
            cloned_from=cloned_from,
            status_history=[{"status": JobStatus.SUBMITTED.value, "time": now, "reason": None}],
            schedule_history=[],
            archive_size=size,
            archive_sha256=sha256,
        )
        (stage / RESULT_DIR).mkdir(mode=0o700)
        fsync_dir(stage)
        final = self.root / job_id
        os.rename(stage, final)
        try:
            fsync_dir(self._tmp)
            fsync_dir(self.root)
            with self._lock:
                self._db.execute(
                    "INSERT INTO jobs (job_id, name, status, submit_time, duration, submitter_name,"
                    " submitter_org, archive_size, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        str(meta["name"]),
                        meta["status"],
                        now,
                        None,
                        submitter.name,
                        submitter.org,
                        size,
                        json.dumps(meta),
                    ),
                )
                result = JobMeta(meta)
                self._notify(result)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return result

    # -- reading -----------------------------------------------------------------------------

    @storage_errors
    def get(self, job_id: str) -> JobMeta:
        """The job's meta.

        Raises:
            InvalidArgumentError: ``job_id`` is not a UUID.
            JobNotFound: no job has this id.
        """
        job_id = parse_job_id(job_id)
        hit = self._metas.get(job_id)
        if hit is not None and self._conn is not None:
            return hit
        with self._lock:
            row = self._db.execute("SELECT meta FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job has id {job_id}", job_id=job_id)
            meta = JobMeta(json.loads(row[0]))
            self._remember(meta)
        return meta

    def cached(self, job_id: str) -> JobMeta | None:
        """The job's meta if it is in memory (never blocks, never raises), else None.

        For callers on an event loop: a hit costs a dictionary lookup, a miss means
        calling :meth:`get` in a worker thread.
        """
        if self._conn is None or not isinstance(job_id, str):
            return None
        return self._metas.get(job_id)

    def _remember(self, meta: JobMeta) -> None:
        """Cache a committed meta (caller holds the lock); the oldest entries make room."""
        metas = self._metas
        metas[meta.job_id] = meta
        metas.move_to_end(meta.job_id)
        while len(metas) > META_CACHE_SIZE:
            metas.popitem(last=False)  # O(1); next(iter(dict)) after many pops is not

    @storage_errors
    def list(
        self,
        *,
        id_prefix: str | None = None,
        name_prefix: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
        statuses: Iterable[JobStatus | str] | None = None,
    ) -> list[JobSummary]:
        """Jobs ordered by submit time (newest first if ``reverse``); ``limit`` cuts that order.

        Raises:
            InvalidArgumentError: a malformed prefix, limit or status.
        """
        where: list[str] = []
        args: list[Any] = []
        if id_prefix:
            if not _PREFIX_RE.match(id_prefix):
                raise InvalidArgumentError(
                    f"job id prefix {id_prefix!r} is malformed: use hex digits and '-'",
                    id_prefix=id_prefix,
                )
            where.append("substr(job_id, 1, ?) = ?")
            args += [len(id_prefix), id_prefix.lower()]
        if name_prefix:
            where.append("substr(name, 1, ?) = ?")
            args += [len(name_prefix), name_prefix]
        if isinstance(statuses, (str, JobStatus)):
            statuses = [statuses]
        if statuses is not None:
            wanted = [parse_status(s).value for s in statuses]
            where.append(f"status IN ({', '.join('?' * len(wanted))})" if wanted else "0")
            args += wanted
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise InvalidArgumentError(f"limit must be an integer >= 0, got {limit!r}", limit=limit)
        order = "DESC" if reverse else "ASC"
        sql = (
            "SELECT job_id, name, status, submit_time, duration, submitter_name, submitter_org"
            f" FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''}"
            f" ORDER BY submit_time {order}, seq {order}"
        )
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        status_of = _STATUS_BY_VALUE
        return [JobSummary(r[0], r[1], status_of[r[2]], r[3], r[4], r[5], r[6]) for r in rows]

    def _job_path(self, job_id: str) -> Path:
        job = self.get(job_id)  # validates the id and checks the row first
        path = self.root / job.job_id
        if path.parent != self.root:  # cannot happen for a canonical UUID; belt and braces
            raise InvalidArgumentError(f"job id {job_id!r} is malformed", job_id=job_id)
        return path

    @storage_errors
    def job_dir(self, job_id: str) -> Path:
        """The job's folder inside the store root."""
        return self._job_path(job_id)

    @storage_errors
    def job_archive(self, job_id: str) -> Path:
        """The job's validated archive (read-only: never modify it).

        Raises:
            InternalError: the archive is missing or truncated (never served half).
        """
        meta = self.get(job_id)
        path = self.root / meta.job_id / ARCHIVE_FILE
        try:
            intact = path.stat().st_size == meta["archive_size"]
        except OSError:
            intact = False
        if not intact:
            raise InternalError(
                f"job {meta.job_id}: its archive is missing or incomplete on the server",
                job_id=meta.job_id,
            )
        return path

    @storage_errors
    def result_dir(self, job_id: str) -> Path:
        """The folder for the job's results (created with the job)."""
        path = self._job_path(job_id) / RESULT_DIR
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    # -- changing jobs -----------------------------------------------------------------------

    @storage_errors
    def set_status(
        self, job_id: str, status: JobStatus | str, *, reason: str | None = None
    ) -> JobMeta:
        """Move the job to ``status``; durable before it returns, then announced.

        Raises:
            InvalidArgumentError / JobNotFound: as :meth:`get`.
            InvalidTransition: the lifecycle table forbids the move.
        """
        job_id = parse_job_id(job_id)
        new = parse_status(status)
        with self._lock:
            meta = self._write_status(job_id, new, reason, force=False)
            self._remember(meta)
            self._notify(meta)
        return meta

    def _write_status(
        self, job_id: str, new: JobStatus, reason: str | None, *, force: bool
    ) -> JobMeta:
        row = self._db.execute("SELECT meta FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job has id {job_id}", job_id=job_id)
        meta = json.loads(row[0])
        if not force:
            check_transition(meta["status"], new)
        now = time.time()
        meta["status"] = new.value
        meta.setdefault("status_history", []).append(
            {"status": new.value, "time": now, "reason": reason}
        )
        if new is JobStatus.RUNNING and meta.get("start_time") is None:
            meta["start_time"] = now
        if is_finished(new):
            meta["end_time"] = now
            start = meta.get("start_time")
            meta["duration"] = None if start is None else max(0.0, now - float(start))
        self._save(job_id, meta)
        return JobMeta(meta)

    @storage_errors
    def update(self, job_id: str, /, **fields: Any) -> JobMeta:
        """Set meta fields the server writes (e.g. ``schedule_reason``); never the status.

        Only keys of :data:`~flare_protocol.job_format.SERVER_OWNED_KEYS` may be written, so
        that no meta.json can pre-set one (a new key must be added to that set first).
        Raises:
            InvalidArgumentError: a field fixed at submission, a key that is not
                server-owned, or a value that is not JSON.
            JobNotFound: as :meth:`get`.
        """
        job_id = parse_job_id(job_id)
        refused = sorted(set(fields) & _NOT_UPDATABLE)
        if refused:
            raise InvalidArgumentError(
                f"cannot update field(s) {', '.join(refused)} of job {job_id}"
                + (": use set_status" if "status" in refused else ""),
                job_id=job_id,
            )
        foreign = sorted(set(fields) - SERVER_OWNED_KEYS)
        if foreign:
            raise InvalidArgumentError(
                f"cannot update field(s) {', '.join(foreign)} of job {job_id}: the server "
                "writes only keys of SERVER_OWNED_KEYS (flare_protocol/job_format.py); "
                "add a new key there first",
                job_id=job_id,
            )
        _check_json(fields)
        with self._lock:
            row = self._db.execute("SELECT meta FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job has id {job_id}", job_id=job_id)
            meta = json.loads(row[0])
            meta.update(copy.deepcopy(fields))
            self._save(job_id, meta)
            result = JobMeta(meta)
            self._remember(result)
            self._notify(result)
        return result

    def _save(self, job_id: str, meta: dict[str, Any]) -> None:
        self._metas.pop(job_id, None)  # re-read after the write unless the caller caches it
        duration = meta.get("duration")
        self._db.execute(
            "UPDATE jobs SET name = ?, status = ?, duration = ?, meta = ? WHERE job_id = ?",
            (
                str(meta["name"]),
                meta["status"],
                float(duration) if isinstance(duration, (int, float)) else None,
                json.dumps(meta),
                job_id,
            ),
        )

    @storage_errors
    def delete(self, job_id: str) -> None:
        """Delete a job that is SUBMITTED or finished (its row, archive and results).

        Raises:
            JobNotDone: the job is DISPATCHED or RUNNING (abort it first).
            InvalidArgumentError / JobNotFound: as :meth:`get`.
        """
        job_id = parse_job_id(job_id)
        with self._lock:
            meta = self.get(job_id)
            if meta.status in (JobStatus.DISPATCHED, JobStatus.RUNNING):
                raise JobNotDone(
                    f"cannot delete job {job_id}: it is {meta.status.value}; abort it first",
                    job_id=job_id,
                    status=meta.status.value,
                )
            self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            self._metas.pop(job_id, None)
            folder = self.root / job_id
            trash = self._tmp / f"deleted-{job_id}"
            if folder.exists():
                os.rename(folder, trash)
                fsync_dir(self.root)
                shutil.rmtree(trash, ignore_errors=True)
            self._notify(JobMeta(meta, deleted=True))

    # -- notifications -----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[JobMeta], None]) -> Callable[[], None]:
        """Call ``callback(meta)`` after every committed change; returns the unsubscribe function.

        Callbacks run in the writer's thread, in commit order, under the store lock: keep them
        quick. An exception in a callback is logged, never raised to the writer.
        """
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(cb for cb in self._subscribers if cb is not callback)

        return unsubscribe

    def _notify(self, meta: JobMeta) -> None:
        for callback in self._subscribers:
            try:
                callback(meta)
            except Exception:
                log.exception("job store subscriber %r failed", callback)


def _check_json(fields: Mapping[str, Any]) -> None:
    try:
        json.dumps(dict(fields), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"job meta fields must be JSON values: {exc}") from None


def _check_extra(fields: Mapping[str, Any] | None) -> dict[str, Any]:
    fields = dict(fields or {})
    refused = sorted(set(fields) - CREATION_FIELDS)
    if refused:
        raise InvalidArgumentError(
            f"cannot set field(s) {', '.join(refused)} on a new job: only "
            f"{', '.join(sorted(CREATION_FIELDS))} may be given"
        )
    if fields.get("initial_model_job_id") is not None:
        fields["initial_model_job_id"] = parse_job_id(fields["initial_model_job_id"])
    _check_json(fields)
    return fields


if TYPE_CHECKING:  # mypy checks that the SQLite store is a JobRepository
    _backend: type[JobRepository] = JobStore
