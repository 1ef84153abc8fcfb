"""Crash recovery of a job store: what a store finds on open, and what it does about it.

Theory of operation. A store that was not closed cleanly (``kill -9``, a power cut) may
hold unfinished uploads and staging folders in its ``tmp/``, a job folder whose row was
never committed, jobs that were DISPATCHED or RUNNING when the server died, and (after a
disk fault) a job whose archive is missing or truncated. On open, a store removes the
first two (:func:`clean_temp`, :func:`remove_orphans`) and applies the verdicts of
:func:`plan_recovery` in one transaction: in-flight jobs end ``FINISHED:ABNORMAL``
("server restarted while the job was RUNNING"), a job with missing files ends
``FINISHED:ABNORMAL`` unless it already finished, SUBMITTED jobs stay queued. A store
opened with ``keep_running`` (the server, which resumes them:
:mod:`flare_server.job_runner.resume`) leaves RUNNING jobs RUNNING and reports them in
``jobs_running``; their owner must resume or end each one. Recovery is
the only writer allowed to bypass the lifecycle table (a SUBMITTED job whose archive
vanished cannot legally reach ABNORMAL, yet must not be served). What it did is the
store's :class:`RecoveryReport`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from flare_protocol._fsync import fsync_dir
from flare_protocol.job_status import JOB_ID_RE
from flare_server.jobs.lifecycle import JobStatus, is_finished

__all__ = [
    "Ending",
    "RecoveryPlan",
    "RecoveryReport",
    "clean_temp",
    "plan_recovery",
    "remove_orphans",
]


@dataclass(frozen=True)
class RecoveryReport:
    """What a store found and repaired when it opened (:meth:`JobStore.open`)."""

    #: Names removed from ``tmp/`` (unfinished uploads and staging folders).
    temp_files_removed: tuple[str, ...] = ()
    #: Job folders without a committed row (a crash before the commit), removed.
    orphan_dirs_removed: tuple[str, ...] = ()
    #: ``(job_id, status it had)`` for jobs ended FINISHED:ABNORMAL because the server restarted.
    jobs_ended: tuple[tuple[str, str], ...] = ()
    #: Jobs whose archive is missing or truncated (ended ABNORMAL unless already finished).
    jobs_missing_files: tuple[str, ...] = ()
    #: SUBMITTED jobs that stay queued.
    jobs_queued: tuple[str, ...] = ()
    #: RUNNING jobs left RUNNING (opened with ``keep_running``): the server resumes or ends them.
    jobs_running: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """True when nothing had to be removed, ended or resumed."""
        return not (
            self.temp_files_removed
            or self.orphan_dirs_removed
            or self.jobs_ended
            or self.jobs_missing_files
            or self.jobs_running
        )


@dataclass(frozen=True)
class Ending:
    """A job recovery ends ``FINISHED:ABNORMAL``: its id, the status it had, and why."""

    job_id: str
    was: str
    reason: str


@dataclass(frozen=True)
class RecoveryPlan:
    """The verdicts of :func:`plan_recovery` (applied by the store in one transaction)."""

    endings: tuple[Ending, ...]
    missing_files: tuple[str, ...]
    queued: tuple[str, ...]
    running: tuple[str, ...] = ()


def plan_recovery(
    jobs: Iterable[tuple[str, str, int]],
    archive_of: Callable[[str], Path],
    *,
    keep_running: bool = False,
) -> RecoveryPlan:
    """What to do with each stored job ``(job_id, status, archive_size)`` after a restart.

    ``archive_of(job_id)``: where the job's archive should be. ``keep_running``: leave
    RUNNING jobs (archive intact) RUNNING, listed in ``running``, for the server to resume.
    """
    endings: list[Ending] = []
    missing: list[str] = []
    queued: list[str] = []
    running: list[str] = []
    for job_id, status, archive_size in jobs:
        archive = archive_of(job_id)
        try:
            intact = archive.stat().st_size == archive_size
        except OSError:
            intact = False
        if not intact:
            missing.append(job_id)
            if not is_finished(status):
                reason = f"job files missing or incomplete ({archive} on restart)"
                endings.append(Ending(job_id, status, reason))
        elif keep_running and status == JobStatus.RUNNING.value:
            running.append(job_id)
        elif status in (JobStatus.DISPATCHED.value, JobStatus.RUNNING.value):
            endings.append(Ending(job_id, status, f"server restarted while the job was {status}"))
        elif status == JobStatus.SUBMITTED.value:
            queued.append(job_id)
    return RecoveryPlan(tuple(endings), tuple(missing), tuple(queued), tuple(running))


def clean_temp(tmp: Path) -> tuple[str, ...]:
    """Remove everything in ``tmp`` (unfinished uploads, staging folders); the names removed."""
    removed = []
    for entry in sorted(tmp.iterdir()):
        removed.append(entry.name)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if removed:
        fsync_dir(tmp)
    return tuple(removed)


def remove_orphans(root: Path, known: Collection[str]) -> tuple[str, ...]:
    """Remove job folders under ``root`` that no committed job owns; the names removed."""
    orphans = []
    for entry in sorted(root.iterdir()):
        if JOB_ID_RE.match(entry.name) and entry.name not in known:
            orphans.append(entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    if orphans:
        fsync_dir(root)
    return tuple(orphans)
