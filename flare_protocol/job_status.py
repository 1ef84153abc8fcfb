"""The job vocabulary every package shares: NVIDIA FLARE's status strings and the job id form.

A job is ``SUBMITTED``, ``DISPATCHED`` to its sites, ``RUNNING``, and ends in exactly one
``FINISHED:*`` status. The strings are NVIDIA FLARE's, so its users' scripts
(``meta["status"] == "RUNNING"``) keep working; :class:`JobStatus` is a ``str``, so a
member compares, hashes and serialises as its string. The legal moves between statuses
are the server's business (:mod:`flare_server.jobs.lifecycle`); this module only names
them, says which are finished, and tells a client how to read a status it does not know.

Compatibility rule: a status string this build does not know (a newer server) is not an
error for a reader. :meth:`JobStatus.parse` returns ``None`` for it, and
:func:`is_finished` still treats any ``FINISHED*`` string as terminal, as NVIDIA FLARE
does. The server, which writes statuses, refuses unknown ones (``parse_status`` there).

A job id is a UUID in canonical form (lower-case hex, hyphenated), as the server
generates it: :data:`JOB_ID_RE`, :func:`is_job_id`.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "JOB_ID_PREFIX_RE",
    "JOB_ID_RE",
    "JobStatus",
    "is_finished",
    "is_job_id",
    "is_job_id_prefix",
]

#: A job id as the server generates it: a UUID, lower-case, hyphenated (whole string).
JOB_ID_RE = re.compile(r"\A[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}\Z")
#: The start of a job id (1 to 36 hex digits and hyphens, either case).
JOB_ID_PREFIX_RE = re.compile(r"\A[0-9a-fA-F-]{1,36}\Z")

_FINISHED = "FINISHED"


class JobStatus(str, enum.Enum):
    """A job's status, spelled as NVIDIA FLARE spells it (``str(s)`` is that spelling)."""

    SUBMITTED = "SUBMITTED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    FINISHED_COMPLETED = "FINISHED:COMPLETED"
    FINISHED_ABORTED = "FINISHED:ABORTED"
    FINISHED_EXECUTION_EXCEPTION = "FINISHED:EXECUTION_EXCEPTION"
    FINISHED_ABNORMAL = "FINISHED:ABNORMAL"
    FINISHED_CAN_NOT_SCHEDULE = "FINISHED:CAN_NOT_SCHEDULE"
    FINISHED_FAILED_TO_RUN = "FINISHED:FAILED_TO_RUN"
    #: Written by NVIDIA FLARE for a job its server lost; never produced here, but read
    #: (a status copied from a FLARE store) it must parse and count as finished.
    FINISHED_ABANDONED = "FINISHED:ABANDONED"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def finished(self) -> bool:
        """True for the ``FINISHED:*`` statuses (terminal: nothing moves a job out)."""
        return self.value.startswith(_FINISHED)

    @property
    def ok(self) -> bool:
        """True only for ``FINISHED:COMPLETED`` (the job did all its rounds)."""
        return self is JobStatus.FINISHED_COMPLETED

    @property
    def failed(self) -> bool:
        """True for a finished job that neither completed nor was aborted by an admin."""
        return self.finished and self not in (
            JobStatus.FINISHED_COMPLETED,
            JobStatus.FINISHED_ABORTED,
        )

    @classmethod
    def parse(cls, text: object) -> JobStatus | None:
        """The member spelled ``text``; ``None`` for anything else (e.g. a status a newer
        server introduced), so a reader never fails on a status it does not know."""
        if isinstance(text, JobStatus):
            return text
        if not isinstance(text, str):
            return None
        return _BY_VALUE.get(text)


_BY_VALUE = {status.value: status for status in JobStatus}


def is_finished(status: object) -> bool:
    """True for every ``FINISHED*`` status string, known to this build or not."""
    return isinstance(status, str) and status.startswith(_FINISHED)


def is_job_id(value: object) -> bool:
    """True for a job id in canonical form (a lower-case hyphenated UUID, nothing else).

    Callers that accept upper-case ids from people lower-case them first.
    """
    return isinstance(value, str) and JOB_ID_RE.match(value) is not None


def is_job_id_prefix(value: object) -> bool:
    """True for a possible start of a job id (1..36 hex digits and hyphens, any case)."""
    return isinstance(value, str) and JOB_ID_PREFIX_RE.match(value) is not None
