"""The admin workload: N threads, each with its own Session, running a weighted mix.

Each :class:`AdminWorker` opens a ``new_secure_session`` with the project admin's kit
(re-opening it when opening fails while the server is down) and, until told to stop,
picks an operation by weight, runs it against a job the :class:`~bench.soak.ledger.Ledger`
offers, and records the outcome in :class:`~bench.soak.ledger.OpStats`. Only the public
``flare_admin`` API is used. While the backlog of unfinished jobs is at ``backlog_cap``,
a submit or clone becomes a list (so the queue stays bounded and the mix steady); while
the server holds ``keep_jobs`` of the soak's jobs, it becomes a delete (so the store's
size, and with it the memory the server legitimately uses for its jobs, stays steady:
growth of the server's memory then means a leak, not a bigger store).

Which errors are expected: ``NoConnection`` and ``NoReply`` (a server restarting, a
stream broken by a kill) from any operation; ``JobNotFound`` about a job the soak is
deleting or deleted; ``JobNotRunning`` from an abort that raced the job's end. Any other
exception, of any type, is unexpected and counted as a failure of the soak.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.soak.ledger import Ledger, OpStats
from flare_admin import (
    JobNotFound,
    JobNotRunning,
    NoConnection,
    NoReply,
    Session,
    new_secure_session,
)

#: Operation weights (relative).
WEIGHTS: dict[str, int] = {
    "submit": 4,
    "list": 5,
    "monitor": 3,
    "abort": 1,
    "clone": 2,
    "download": 3,
    "delete": 1,
}
FAULT_ERRORS = (NoConnection, NoReply)


class Workload:
    """Settings and shared state of every worker."""

    def __init__(
        self,
        *,
        admin: str,
        kit: Path,
        address: str,
        job_folder: Path,
        ledger: Ledger,
        stats: OpStats,
        seed: int,
        backlog_cap: int,
        keep_jobs: int,
        monitor_timeout: float = 3.0,
    ) -> None:
        self.admin = admin
        self.kit = kit
        self.address = address
        self.job_folder = job_folder
        self.ledger = ledger
        self.stats = stats
        self.seed = seed
        self.backlog_cap = backlog_cap
        self.keep_jobs = keep_jobs
        self.monitor_timeout = monitor_timeout
        self.stop = threading.Event()

    def session(self) -> Session:
        return new_secure_session(self.admin, self.kit, timeout=10.0, server_address=self.address)


class AdminWorker(threading.Thread):
    """One admin Session running the mix until ``workload.stop`` is set."""

    def __init__(self, workload: Workload, index: int) -> None:
        super().__init__(name=f"admin-{index}", daemon=True)
        self.w = workload
        self.rng = random.Random(workload.seed * 1000 + index)
        self.downloads = Path(tempfile.mkdtemp(prefix=f"soak-dl-{index}-"))
        self.crash: BaseException | None = None
        self.job_id: str | None = None  # the job the current operation is about
        self._ops: dict[str, Callable[[Session], str | None]] = {
            "submit": self.submit,
            "list": self.list,
            "monitor": self.monitor,
            "abort": self.abort,
            "clone": self.clone,
            "download": self.download,
            "delete": self.delete,
        }

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug of the soak itself: reported, never hidden
            self.crash = exc
        finally:
            shutil.rmtree(self.downloads, ignore_errors=True)

    def _loop(self) -> None:
        session: Session | None = None
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        while not self.w.stop.is_set():
            if session is None:
                session = self._open()
                if session is None:
                    continue
            kind = self.rng.choices(kinds, weights)[0]
            if kind in ("submit", "clone"):
                if self.w.ledger.live() >= self.w.keep_jobs:
                    kind = "delete"
                    self.w.stats.substitute(kind)
                elif self.w.ledger.backlog() >= self.w.backlog_cap:
                    kind = "list"
                    self.w.stats.substitute(kind)
            self._run(kind, session)
            self.w.stop.wait(self.rng.uniform(0.05, 0.4))
        if session is not None:
            session.close()

    def _open(self) -> Session | None:
        start = time.perf_counter()
        try:
            session = self.w.session()
        except FAULT_ERRORS as exc:
            self.w.stats.error("open", type(exc).__name__, expected=True)
            self.w.stop.wait(0.5)
            return None
        except Exception as exc:
            self.w.stats.error("open", type(exc).__name__, expected=False, detail=str(exc))
            self.w.stop.wait(0.5)
            return None
        self.w.stats.success("open", time.perf_counter() - start)
        return session

    def _run(self, kind: str, session: Session) -> None:
        job_id: str | None = None
        self.job_id = None
        start = time.perf_counter()
        try:
            job_id = self._ops[kind](session)
        except FAULT_ERRORS as exc:
            self.w.stats.error(kind, type(exc).__name__, expected=True)
        except JobNotFound as exc:
            job = getattr(exc, "job_id", None) or ""
            expected = bool(job) and self.w.ledger.is_being_deleted(job)
            self.w.stats.error(kind, "JobNotFound", expected=expected, detail=str(exc))
        except JobNotRunning as exc:
            self.w.stats.error(kind, "JobNotRunning", expected=kind == "abort", detail=str(exc))
        except Exception as exc:
            name = type(exc).__name__
            if kind != "delete" and self.job_id and self.w.ledger.is_being_deleted(self.job_id):
                name += " (racing a delete of the job)"  # still a failure: named, not hidden
            self.w.stats.error(kind, name, expected=False, detail=f"{self.job_id}: {exc}")
        else:
            if job_id != "skipped":
                self.w.stats.success(kind, time.perf_counter() - start)

    # -- the operations; each returns "skipped" when it found nothing to act on ------------

    def submit(self, s: Session) -> str | None:
        job_id = s.submit_job(str(self.w.job_folder))
        self.w.ledger.acked(job_id, "submit")
        return None

    def clone(self, s: Session) -> str | None:
        record = self.w.ledger.pick()
        if record is None:
            return "skipped"
        self.job_id = record.job_id
        job_id = s.clone_job(record.job_id)
        self.w.ledger.acked(job_id, "clone")
        return None

    def list(self, s: Session) -> str | None:
        rows: Any
        if self.rng.random() < 0.3:
            rows = s.list_jobs(detailed=True, reverse=True, limit=20)
            for meta in rows:
                self.w.ledger.saw(meta.job_id, str(meta["status"]))
        else:
            rows = s.list_jobs()
            for row in rows:
                self.w.ledger.saw(row.job_id, row.status)
        return None

    def monitor(self, s: Session) -> str | None:
        record = self.w.ledger.pick(finished=False) or self.w.ledger.pick()
        if record is None:
            return "skipped"
        self.job_id = record.job_id

        def seen(_s: Session, job_id: str, meta: Any) -> bool:
            self.w.ledger.saw(job_id, str(meta["status"]))
            return True

        s.monitor_job(record.job_id, timeout=self.w.monitor_timeout, cb=seen)
        return None

    def abort(self, s: Session) -> str | None:
        record = self.w.ledger.pick(finished=False)
        if record is None:
            return "skipped"
        self.job_id = record.job_id
        s.abort_job(record.job_id)
        return None

    def download(self, s: Session) -> str | None:
        record = self.w.ledger.pick(finished=True)
        if record is None:
            return "skipped"
        self.job_id = record.job_id
        path = s.download_job_result(record.job_id, self.downloads)
        shutil.rmtree(path, ignore_errors=True)
        return None

    def delete(self, s: Session) -> str | None:
        record = self.w.ledger.claim_for_delete()
        if record is None:
            return "skipped"
        self.job_id = record.job_id
        try:
            s.delete_job(record.job_id)
        except JobNotFound as exc:  # nobody else deletes it: the job was lost
            self.w.ledger.vanished(record.job_id)
            self.w.stats.error("delete", "JobNotFound", expected=False, detail=str(exc))
            return "skipped"
        except BaseException:
            self.w.ledger.delete_done(record.job_id, acknowledged=False)
            raise
        self.w.ledger.delete_done(record.job_id, acknowledged=True)
        return None
