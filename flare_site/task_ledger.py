"""Which tasks a site has received, per job, so that a re-sent task never runs twice.

The server may send a ``task.train``/``task.validate`` again (a retry after a reconnect,
a duplicate delivery). User code must not train twice on one task: the runtime claims
each (job, task id) before running it. A claim for a task still running is refused; a
claim for a task already answered returns the ``task.result`` that was sent, for the
runtime to send again. The ledger is bounded: per job the oldest entries go first,
and the jobs least recently touched are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from flare_protocol.site_topics import DriverReply, TaskResult
from flare_site.blobs import Blob

__all__ = ["RUNNING", "SentResult", "TaskLedger"]


@dataclass(frozen=True)
class SentResult:
    """The ``task.result`` body (a ``driver.reply`` for a Driver API message) and blobs sent
    for a task."""

    body: TaskResult | DriverReply
    blobs: tuple[Blob, ...] = field(default=())


class _Running:
    def __repr__(self) -> str:
        return "RUNNING"


#: What :meth:`TaskLedger.claim` returns for a task received before and still running.
RUNNING = _Running()


class TaskLedger:
    """Task ids received per job (bounded), with the result sent for each finished one."""

    def __init__(self, *, per_job: int = 1024, jobs: int = 256) -> None:
        self.per_job = per_job
        self.jobs = jobs
        self._jobs: OrderedDict[str, OrderedDict[str, SentResult | _Running]] = OrderedDict()

    def claim(self, job_id: str, task_id: str) -> SentResult | _Running | None:
        """None: a new task, now recorded as running; else what is known of the earlier one."""
        tasks = self._jobs.get(job_id)
        if tasks is None:
            tasks = self._jobs[job_id] = OrderedDict()
            while len(self._jobs) > self.jobs:
                self._jobs.popitem(last=False)
        self._jobs.move_to_end(job_id)
        known = tasks.get(task_id)
        if known is not None:
            return known
        tasks[task_id] = RUNNING
        while len(tasks) > self.per_job:
            tasks.popitem(last=False)
        return None

    def done(self, job_id: str, task_id: str, result: SentResult) -> None:
        """Record the result sent for a claimed task."""
        tasks = self._jobs.get(job_id)
        if tasks is not None and task_id in tasks:
            tasks[task_id] = result

    def forget(self, job_id: str) -> None:
        """Drop a job's tasks (the job ended)."""
        self._jobs.pop(job_id, None)
