"""The server's jobs: lifecycle table, archive validation, the repository seam and its
SQLite backend (:class:`JobStore`)."""

from __future__ import annotations

from flare_server.jobs.archive import (
    ArchiveLimits,
    JobDefinition,
    safe_extract,
    validate_job_archive,
)
from flare_server.jobs.lifecycle import (
    TRANSITIONS,
    JobStatus,
    check_transition,
    is_finished,
    parse_status,
)
from flare_server.jobs.meta import JobMeta, JobSummary, Submitter, parse_job_id
from flare_server.jobs.recovery import RecoveryReport
from flare_server.jobs.repository import JobRepository, JobUpload
from flare_server.jobs.store import JobStore
from flare_server.jobs.uploads import Upload

__all__ = [
    "TRANSITIONS",
    "ArchiveLimits",
    "JobDefinition",
    "JobMeta",
    "JobRepository",
    "JobStatus",
    "JobStore",
    "JobSummary",
    "JobUpload",
    "RecoveryReport",
    "Submitter",
    "Upload",
    "check_transition",
    "is_finished",
    "parse_job_id",
    "parse_status",
    "safe_extract",
    "validate_job_archive",
]
