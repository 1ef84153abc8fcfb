"""flare_admin: the admin Session, NVIDIA FLARE's FLARE API over mutual-TLS gRPC.

    from flare_admin import new_secure_session

    with new_secure_session("admin@org_a.com", "prod_00/admin@org_a.com") as s:
        job_id = s.submit_job("jobs/hello-numpy")
        s.monitor_job(job_id, cb=lambda s, jid, meta: print(meta.status) or True)
        print(s.download_job_result(job_id))

Exception tree (one root, :class:`FlareError`; see :mod:`flare_protocol.errors`)::

    FlareError
    ├── KitError: KitIncomplete, KitTampered, KeyFilePermissions, KeyMismatch,
    │             CertificateNotTrusted, CertificateExpired, CertificateNotYetValid
    └── APIError
        ├── NoConnection, SessionClosed (SessionExpired)
        ├── AuthenticationError (UsernameMismatch), AuthorizationError
        ├── InvalidArgumentError (InvalidJobDefinition, InvalidTarget)
        ├── JobNotFound, JobNotRunning, JobNotDone, JobTimeout
        ├── NoClientsAvailable, ClientsStillRunning
        └── NoReply, InternalError
"""

from __future__ import annotations

from flare_admin.aio import AsyncSession, new_secure_async_session
from flare_admin.results import (
    ClientInfo,
    JobMeta,
    JobSummary,
    MetricRow,
    MonitorReturnCode,
    ServerInfo,
    SessionInfo,
    SiteInfo,
    SystemInfo,
    TargetType,
    ValidationRow,
    rounds_table,
)
from flare_admin.session import Session, SessionState, new_secure_session
from flare_protocol.errors import (
    APIError,
    AuthenticationError,
    AuthorizationError,
    CertificateExpired,
    CertificateNotTrusted,
    CertificateNotYetValid,
    ClientsStillRunning,
    FlareError,
    InternalError,
    InvalidArgumentError,
    InvalidJobDefinition,
    InvalidTarget,
    JobNotDone,
    JobNotFound,
    JobNotRunning,
    JobTimeout,
    KeyFilePermissions,
    KeyMismatch,
    KitError,
    KitIncomplete,
    KitTampered,
    NoClientsAvailable,
    NoConnection,
    NoReply,
    SessionClosed,
    SessionExpired,
    UsernameMismatch,
)

__all__ = [
    # sessions
    "AsyncSession",
    "Session",
    "SessionState",
    "new_secure_async_session",
    "new_secure_session",
    # results
    "ClientInfo",
    "JobMeta",
    "JobSummary",
    "MetricRow",
    "MonitorReturnCode",
    "ServerInfo",
    "SessionInfo",
    "SiteInfo",
    "SystemInfo",
    "TargetType",
    "ValidationRow",
    "rounds_table",
    # exceptions
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
]
