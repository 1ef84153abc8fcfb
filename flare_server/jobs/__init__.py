"""The server's job store: lifecycle table, archive validation and durable storage."""

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
from flare_server.jobs.store import (
    JobMeta,
    JobStore,
    JobSummary,
    RecoveryReport,
    Submitter,
    Upload,
    parse_job_id,
)

__all__ = [
    "TRANSITIONS",
    "ArchiveLimits",
    "JobDefinition",
    "JobMeta",
    "JobStatus",
    "JobStore",
    "JobSummary",
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
