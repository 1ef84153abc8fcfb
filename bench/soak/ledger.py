"""What the soak knows about its jobs and its operations, shared by every worker thread.

:class:`Ledger` holds every job whose submit or clone was acknowledged (the Session
returned its id), the last status any operation saw for it, and whether the soak deleted
it (``deleted``: the server answered; ``delete_unacknowledged``: the call failed in a way
that leaves it unknown whether the row went). A job being deleted is claimed first, so no
other worker picks it. :class:`OpStats` counts operations per kind: successes with their
latencies, and errors by exception type, split into expected ones (faults, races the
soak makes on purpose) and unexpected ones (failures of the soak).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

FINISHED_PREFIX = "FINISHED"


@dataclass
class JobRecord:
    job_id: str
    origin: str  # "submit" or "clone"
    acked_at: float
    status: str = "SUBMITTED"
    deleting: bool = False
    deleted: bool = False
    delete_unacknowledged: bool = False
    vanished: bool = False  # the server said JobNotFound though the soak never deleted it

    @property
    def finished(self) -> bool:
        return self.status.startswith(FINISHED_PREFIX)


class Ledger:
    """Every acknowledged job, thread-safe."""

    def __init__(self, rng: random.Random) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()
        self._rng = rng

    def acked(self, job_id: str, origin: str) -> None:
        with self._lock:
            self._jobs[job_id] = JobRecord(job_id, origin, time.time())

    def saw(self, job_id: str, status: str) -> None:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is not None and not record.deleted:
                record.status = status

    def pick(self, *, finished: bool | None = None) -> JobRecord | None:
        """A random live job (finished or not, or either when ``finished`` is None)."""
        with self._lock:
            live = [
                r
                for r in self._jobs.values()
                if not (r.deleting or r.deleted or r.delete_unacknowledged or r.vanished)
                and (finished is None or r.finished == finished)
            ]
            return self._rng.choice(live) if live else None

    def claim_for_delete(self) -> JobRecord | None:
        with self._lock:
            live = [
                r
                for r in self._jobs.values()
                if r.finished
                and not (r.deleting or r.deleted or r.delete_unacknowledged or r.vanished)
            ]
            if not live:
                return None
            record = self._rng.choice(live)
            record.deleting = True
            return record

    def delete_done(self, job_id: str, *, acknowledged: bool) -> None:
        with self._lock:
            record = self._jobs[job_id]
            record.deleting = False
            if acknowledged:
                record.deleted = True
            else:
                record.delete_unacknowledged = True

    def vanished(self, job_id: str) -> None:
        """The server does not know a job the soak never deleted (a lost job)."""
        with self._lock:
            record = self._jobs[job_id]
            record.deleting = False
            record.vanished = True

    def is_being_deleted(self, job_id: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            return record is not None and (
                record.deleting or record.deleted or record.delete_unacknowledged
            )

    def backlog(self) -> int:
        """Live jobs not yet seen finished (queued or running)."""
        with self._lock:
            return sum(
                1
                for r in self._jobs.values()
                if not (r.finished or r.deleted or r.deleting or r.vanished)
            )

    def live(self) -> int:
        """Jobs on the server as far as the soak knows (not deleted, not being deleted)."""
        with self._lock:
            return sum(
                1
                for r in self._jobs.values()
                if not (r.deleted or r.deleting or r.delete_unacknowledged or r.vanished)
            )

    def records(self) -> list[JobRecord]:
        with self._lock:
            return [JobRecord(**vars(r)) for r in self._jobs.values()]


@dataclass
class KindStats:
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    unexpected_samples: list[str] = field(default_factory=list)


class OpStats:
    """Operations per kind: successes and latencies, errors by type (thread-safe)."""

    def __init__(self) -> None:
        self.kinds: dict[str, KindStats] = defaultdict(KindStats)
        #: submits/clones turned into another kind: "list" (backlog full), "delete" (store full)
        self.substituted: Counter[str] = Counter()
        self.last_ok = 0.0
        #: (monotonic time, kind, error type) of every expected error
        self.expected_at: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def substitute(self, kind: str) -> None:
        with self._lock:
            self.substituted[kind] += 1

    def success(self, kind: str, seconds: float) -> None:
        with self._lock:
            stats = self.kinds[kind]
            stats.ok += 1
            stats.latencies.append(seconds)
            self.last_ok = time.monotonic()

    def error(self, kind: str, name: str, *, expected: bool, detail: str = "") -> None:
        with self._lock:
            stats = self.kinds[kind]
            if expected:
                stats.expected[name] += 1
                self.expected_at.append((time.monotonic(), kind, name))
            else:
                stats.unexpected[name] += 1
                if len(stats.unexpected_samples) < 5:
                    stats.unexpected_samples.append(f"{name}: {detail[:300]}")

    def unexpected_total(self) -> int:
        with self._lock:
            return sum(sum(s.unexpected.values()) for s in self.kinds.values())
