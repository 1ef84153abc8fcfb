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
        ├── InvalidArgumentError (InvalidJobDefinition, InvalidTarget, RevocationListRejected)
        ├── JobNotFound, JobNotRunning, JobNotDone, JobTimeout
        ├── NoClientsAvailable, ClientsStillRunning
        ├── NoReply, InternalError
        ├── ResourceExhausted (LimitExceeded, StorageFull): the server refused to protect
        │   its resources (a per-identity limit, an idle upload, a full disk)
        └── LocalIOError (a local file could not be read or written; also an OSError)

Importing this package is kept cheap (a command-line tool starts with it): the asyncio
Session is loaded on first use (``from flare_admin import AsyncSession`` works as
always) and the file-transfer machinery by the methods that move files. gRPC's C core
is kept off the terminal (:mod:`flare_admin._quiet`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# First: keeps grpc's C core quiet, which works only before anything imports grpc.
from flare_admin import _quiet  # noqa: F401
from flare_admin.results import (
    CertificateExpiry,
    ClientInfo,
    ClientJobStatus,
    DirEntry,
    DirListing,
    FileText,
    JobEvent,
    JobMeta,
    JobRunSummary,
    JobStatus,
    JobSummary,
    MessageRow,
    MetaChanged,
    MetricRow,
    MetricsArrived,
    MonitorReturnCode,
    RevocationUpdate,
    RoundSummary,
    ServerInfo,
    SessionInfo,
    SiteInfo,
    SystemCommandResult,
    SystemInfo,
    TargetErrors,
    TargetStats,
    TargetType,
    ValidationRow,
    ValidationsArrived,
    rounds_table,
)
from flare_admin.session import JobWatch, Session, SessionState, new_secure_session
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
    LimitExceeded,
    LocalIOError,
    NoClientsAvailable,
    NoConnection,
    NoReply,
    ResourceExhausted,
    RevocationListRejected,
    SessionClosed,
    SessionExpired,
    StorageFull,
    UsernameMismatch,
)

if TYPE_CHECKING:
    from flare_admin.aio import AsyncJobWatch, AsyncSession, new_secure_async_session
    from flare_admin.driver import AsyncDriver, Driver, ServerApp
    from flare_protocol.message import Error, ErrorCode, Message, MessageType, Metadata
    from flare_protocol.records import (
        Array,
        ArrayRecord,
        ConfigRecord,
        ConfigsRecord,
        Context,
        MetricRecord,
        MetricsRecord,
        ParametersRecord,
        RecordDict,
        RecordSet,
    )

#: Names loaded on first access (PEP 562): the asyncio Session pulls in grpc.aio, the
#: Driver API its records (numpy).
_LAZY = {
    "AsyncJobWatch": "flare_admin.aio",
    "AsyncSession": "flare_admin.aio",
    "new_secure_async_session": "flare_admin.aio",
    "AsyncDriver": "flare_admin.driver",
    "Driver": "flare_admin.driver",
    "ServerApp": "flare_admin.driver",
    **dict.fromkeys(
        ("Error", "ErrorCode", "Message", "MessageType", "Metadata"), "flare_protocol.message"
    ),
    **dict.fromkeys(
        (
            "Array",
            "ArrayRecord",
            "ConfigRecord",
            "ConfigsRecord",
            "Context",
            "MetricRecord",
            "MetricsRecord",
            "ParametersRecord",
            "RecordDict",
            "RecordSet",
        ),
        "flare_protocol.records",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flare_admin' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    # sessions
    "AsyncJobWatch",
    "AsyncSession",
    "JobWatch",
    "Session",
    "SessionState",
    "new_secure_async_session",
    "new_secure_session",
    # the Driver API (docs/driver.md), with Flower's names
    "Array",
    "ArrayRecord",
    "AsyncDriver",
    "ConfigRecord",
    "ConfigsRecord",
    "Context",
    "Driver",
    "Error",
    "ErrorCode",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "MetricsRecord",
    "ParametersRecord",
    "RecordDict",
    "RecordSet",
    "ServerApp",
    # results
    "CertificateExpiry",
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
    "MessageRow",
    "MetaChanged",
    "MetricRow",
    "MetricsArrived",
    "MonitorReturnCode",
    "RevocationUpdate",
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
    "LimitExceeded",
    "LocalIOError",
    "NoClientsAvailable",
    "NoConnection",
    "NoReply",
    "ResourceExhausted",
    "RevocationListRejected",
    "SessionClosed",
    "SessionExpired",
    "StorageFull",
    "UsernameMismatch",
]
