"""The public API is what flare_admin.__all__ lists; this pins it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import flare_admin
from flare_protocol import errors

REPO = Path(__file__).resolve().parents[2]

EXPECTED = {
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
    "MessageRow",
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


def test_async_names_are_loaded_on_first_use_and_listed_by_dir():
    assert "AsyncSession" in dir(flare_admin)
    from flare_admin import AsyncSession, new_secure_async_session

    assert AsyncSession.__module__ == "flare_admin.aio" and callable(new_secure_async_session)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flare_admin.nope  # noqa: B018


def test_importing_flare_admin_leaves_heavy_machinery_unloaded():
    """`flare admin KIT -c whoami` starts with this import: the asyncio Session, the
    transfer code (zip, job format, jsonschema) and the kit checks (cryptography) load
    only when used."""
    script = (
        "import sys, flare_admin\n"
        "heavy = ['flare_admin.aio', 'flare_admin._upload', 'flare_admin._download',\n"
        "         'flare_admin._connect', 'flare_protocol.transfer',\n"
        "         'zipfile', 'jsonschema', 'flare_protocol.job_format', 'cryptography.x509',\n"
        "         'flare_admin.driver', 'flare_protocol.records', 'numpy']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("package", ["flare_admin", "flare_job", "flare_site", "flare_protocol"])
def test_the_packages_users_import_say_they_are_typed(package: str):
    """PEP 561: the marker at a package's top level makes type checkers read its hints
    (flare_site's covers the Client API, flare_site.client)."""
    from importlib.resources import files

    assert files(package).joinpath("py.typed").is_file()
