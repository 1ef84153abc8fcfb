"""The public API is what flare_admin.__all__ lists; this pins it."""

from __future__ import annotations

import flare_admin
from flare_protocol import errors

EXPECTED = {
    "AsyncJobWatch",
    "AsyncSession",
    "JobWatch",
    "Session",
    "SessionState",
    "new_secure_async_session",
    "new_secure_session",
    "ClientInfo",
    "ClientJobStatus",
    "DirEntry",
    "DirListing",
    "FileText",
    "JobEvent",
    "JobMeta",
    "JobRunSummary",
    "JobStatus",
    "JobSummary",
    "MetaChanged",
    "MetricRow",
    "MetricsArrived",
    "MonitorReturnCode",
    "RoundSummary",
    "ServerInfo",
    "SessionInfo",
    "SiteInfo",
    "SystemCommandResult",
    "SystemInfo",
    "TargetErrors",
    "TargetStats",
    "TargetType",
    "ValidationRow",
    "ValidationsArrived",
    "rounds_table",
    "APIError",
    "AuthenticationError",
    "AuthorizationError",
    "CertificateExpired",
    "CertificateNotTrusted",
    "CertificateNotYetValid",
    "ClientsStillRunning",
    "FlareError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidJobDefinition",
    "InvalidTarget",
    "JobNotDone",
    "JobNotFound",
    "JobNotRunning",
    "JobTimeout",
    "KeyFilePermissions",
    "KeyMismatch",
    "KitError",
    "KitIncomplete",
    "KitTampered",
    "NoClientsAvailable",
    "NoConnection",
    "NoReply",
    "SessionClosed",
    "SessionExpired",
    "UsernameMismatch",
}


def test_all_is_pinned():
    assert set(flare_admin.__all__) == EXPECTED
    assert len(flare_admin.__all__) == len(EXPECTED)


def test_every_exported_name_exists():
    for name in flare_admin.__all__:
        assert getattr(flare_admin, name) is not None


def test_every_session_exception_of_the_flare_api_is_exported_and_shared():
    for name in errors.WIRE_ERRORS:
        assert getattr(flare_admin, name) is errors.WIRE_ERRORS[name]
    for name in ("NoConnection", "SessionClosed", "UsernameMismatch"):
        assert issubclass(getattr(flare_admin, name), flare_admin.APIError)


def test_job_status_is_the_one_shared_with_the_server():
    from flare_protocol.job_status import JobStatus
    from flare_server.jobs import JobStatus as ServerJobStatus

    assert flare_admin.JobStatus is JobStatus is ServerJobStatus


def test_monitor_return_codes_have_flares_values():
    codes = flare_admin.MonitorReturnCode
    assert (codes.JOB_FINISHED, codes.TIMEOUT, codes.ENDED_BY_CB) == (0, 1, 2)
