"""The public names of the job store and job format (what other packages may import)."""

from __future__ import annotations

import flare_protocol.job_format as job_format
import flare_server.jobs as jobs


def test_job_store_exports_are_pinned() -> None:
    assert sorted(jobs.__all__) == sorted(
        [
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
    )
    for name in jobs.__all__:
        assert getattr(jobs, name) is not None


def test_job_format_exports_are_pinned() -> None:
    for name in ("validate_meta", "validate_job_files", "validate_job_folder", "JobDefinition"):
        assert name in job_format.__all__
    assert jobs.JobDefinition is job_format.JobDefinition
