"""The one exception tree of flare-admin.

Every error any flare package raises on purpose derives from :class:`FlareError`.
The admin Session's classes keep NVIDIA FLARE's FLARE API names so that migrated
scripts catch what they caught before::

    FlareError
    ├── ProjectFileError            project.yml is unreadable or invalid
    ├── ProvisionError              the provisioning workspace cannot be used
    ├── KitError                    a startup kit is unusable (also raised by pre-flight)
    │   ├── KitIncomplete           a required kit file is missing
    │   ├── KitTampered             a signed file was edited, added, removed or symlinked
    │   ├── KeyFilePermissions      a private key is readable by group or others
    │   ├── KeyMismatch             the private key does not belong to the certificate
    │   ├── CertificateNotTrusted   the certificate was not issued by the kit's root CA
    │   ├── CertificateExpired      the certificate's validity ended
    │   └── CertificateNotYetValid  the certificate's validity has not started
    ├── IdentityRejected            a peer certificate is not acceptable (server side)
    ├── InvalidTransition           an illegal job or server state change (a bug if it escapes)
    ├── InvalidModel                a model is not a safe .npz of numeric arrays (also a ValueError)
    ├── MessageError                a site message's body is malformed (also a ValueError)
    ├── ExecutionError              user code on a site failed: crash, bad output, no result
    ├── MissingDependency           an optional package a feature needs is not installed
    ├── BlobError                   a site's blob transfer failed or delivered something else
    ├── FrameError                  a site <-> user code frame is malformed or too big
    └── APIError                    raised by the admin Session
        ├── NoConnection            the server cannot be reached (also a ConnectionError)
        ├── SessionClosed           the Session was closed
        │   └── SessionExpired      the server no longer accepts this Session
        ├── AuthenticationError     the server did not accept who we are
        │   └── UsernameMismatch    username differs from the kit certificate's CN
        ├── AuthorizationError      our role may not do this
        ├── InvalidArgumentError    an argument is malformed (also a ValueError)
        │   ├── InvalidJobDefinition  a job folder or meta.json is invalid
        │   ├── InvalidTarget       an unknown target type or site name
        │   └── RevocationListRejected  a CRL is not the project CA's, or not newer
        ├── JobNotFound             no job has this id
        ├── JobNotRunning           the job is not running
        ├── JobNotDone              the job has not finished
        ├── JobTimeout              waiting for the job timed out
        ├── NoClientsAvailable      no site is connected
        ├── ClientsStillRunning     sites are still running something
        ├── NoReply                 the server did not answer in time
        ├── InternalError           the server failed unexpectedly
        ├── ResourceExhausted       the server refused a call to protect its resources
        │   ├── LimitExceeded       a per-identity limit (concurrent calls, uploads) or an
        │   │                       idle timeout was reached; names the limit and its setting
        │   └── StorageFull         the server's disk has no room for this (ENOSPC)
        └── LocalIOError            a local file could not be read or written (also an OSError)

Exceptions carry data (``job_id``, ``site``, ``status``, ``path``) as attributes, not
only text. Each class declares the attributes it carries (None when a raise did not set
one); the constructor takes them as keywords, ``FlareError(message, job_id=...)``, and
keeps them in ``details`` too, which is what crosses the wire (as text; the Session turns
the declared ``int`` attributes back into numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FlareError(Exception):
    """Root of every exception flare-admin raises on purpose."""

    message: str
    #: Every attribute given to the constructor (the data an error carries).
    details: dict[str, Any]

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details)
        for key, value in details.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class ProjectFileError(FlareError):
    """project.yml cannot be read or violates the schema (names file, participant, field)."""

    path: str | None = None
    participant: str | None = None
    field: str | None = None


class ProvisionError(FlareError):
    """The provisioning workspace or state cannot be used."""

    path: str | None = None


class KitError(FlareError):
    """A startup kit cannot be used; the message names the file and the fix."""

    #: The kit file (or folder) at fault.
    path: str | None = None


class KitIncomplete(KitError):
    """A file the kit needs is missing."""


class KitTampered(KitError):
    """A signed kit file was edited, added, removed or replaced by a symlink."""


class KeyFilePermissions(KitError):
    """A private key file is readable or writable by group or others."""

    #: The key's permission bits, as ``ls -l`` would show them in octal.
    mode: str | None = None


class KeyMismatch(KitError):
    """The kit's private key does not match its certificate."""

    cert_path: str | None = None


class CertificateNotTrusted(KitError):
    """The certificate was not issued by the kit's root CA."""

    issuer: str | None = None


class CertificateExpired(KitError):
    """The certificate's validity period has ended."""

    not_before: str | None = None
    not_after: str | None = None


class CertificateNotYetValid(KitError):
    """The certificate's validity period has not begun."""

    not_before: str | None = None
    not_after: str | None = None


class IdentityRejected(FlareError):
    """A peer certificate is not acceptable for the endpoint it called."""


class InvalidTransition(FlareError):
    """A job status (or server state) change that the lifecycle table forbids."""

    old: str | None = None
    new: str | None = None


class InvalidModel(FlareError, ValueError):
    """Model parameters are malformed: pickled/object arrays, bad names, too large, non-finite."""

    path: str | None = None
    #: The array at fault.
    name: str | None = None


class MessageError(FlareError, ValueError):
    """A message between server and site is malformed; names its ``topic`` and the field."""


class ExecutionError(FlareError):
    """A job's user code failed on a site; carries ``returncode`` and ``stderr_tail``."""

    job_id: str | None = None
    #: The user code was stopped by an abort rather than failing by itself.
    aborted: bool = False
    returncode: int | None = None
    stderr_tail: str | None = None


class MissingDependency(FlareError, ImportError):
    """An optional package a feature needs is not installed; names the extra to install."""

    #: What to install (``pip install ...``).
    package: str | None = None


class APIError(FlareError):
    """Root of the errors the admin Session raises."""

    #: The job the failed call was about.
    job_id: str | None = None
    #: The gRPC status code's name, for an error that came from a call.
    status_code: str | None = None


class NoConnection(APIError, ConnectionError):
    """The server cannot be reached."""

    #: The server address dialled.
    address: str | None = None
    action: str | None = None


class SessionClosed(APIError):
    """The Session was closed and cannot be used any more."""


class SessionExpired(SessionClosed):
    """The server no longer accepts this Session."""

    site: str | None = None


class AuthenticationError(APIError):
    """The server did not accept our identity."""

    username: str | None = None
    server_name: str | None = None


class UsernameMismatch(AuthenticationError):
    """The username passed to the Session differs from the kit certificate's CN."""

    certificate_name: str | None = None
    path: str | None = None


class AuthorizationError(APIError):
    """Our role does not allow this command on this job or site."""

    #: The right that was missing (``submit_job``, ``download_job``, ...).
    right: str | None = None
    user: str | None = None


class InvalidArgumentError(APIError, ValueError):
    """An argument is malformed or out of range."""

    #: The file or folder at fault, when there is one.
    path: str | None = None


class InvalidJobDefinition(InvalidArgumentError):
    """A job folder, archive or meta.json is invalid."""

    #: The ``meta.json`` field at fault.
    field: str | None = None
    key: str | None = None
    #: The archive's size, for an archive over a cap.
    size: int | None = None
    #: Sites a job names that the project does not have (comma-separated).
    sites: str | None = None


class InvalidTarget(InvalidArgumentError):
    """An unknown target type or site name."""

    target: str | None = None
    site: str | None = None


class RevocationListRejected(InvalidArgumentError):
    """A revocation list (CRL) was refused: not signed by the project CA, malformed, or
    not newer than the one in force."""

    #: ``not_signed_by_project_ca`` | ``not_newer`` | ``malformed``.
    reason: str | None = None
    #: The refused list's CRL number (when it has one).
    crl_number: int | None = None
    #: The CRL number of the list in force.
    in_force: int | None = None


class JobNotFound(APIError):
    """No job has this id."""


class JobNotRunning(APIError):
    """The job is not running."""

    #: The job's status when it was refused (or when waiting ended).
    status: str | None = None


class JobNotDone(APIError):
    """The job has not finished yet."""

    #: The job's status when it was refused (or when waiting ended).
    status: str | None = None


class JobTimeout(APIError):
    """Waiting for the job took longer than allowed."""

    #: The job's status when it was refused (or when waiting ended).
    status: str | None = None


class NoClientsAvailable(APIError):
    """No site is connected."""


class ClientsStillRunning(APIError):
    """Sites are still running jobs."""

    #: The running jobs (comma-separated).
    job_ids: str | None = None


class NoReply(APIError):
    """The server did not answer in time."""

    address: str | None = None
    site: str | None = None


class InternalError(APIError):
    """The server failed unexpectedly; its log has the details."""

    address: str | None = None


class ResourceExhausted(APIError):
    """The server refused or ended a call to protect a bounded resource (RESOURCE_EXHAUSTED)."""


class LimitExceeded(ResourceExhausted):
    """A server limit was reached: too many concurrent calls or uploads of one identity, or
    an upload idle for too long; names the limit and the server setting that sets it."""

    #: The limit's value (a count, or seconds for a timeout).
    limit: int | None = None
    #: The server setting (``local/settings.json``) that sets the limit.
    setting: str | None = None
    #: Whose calls were counted (the certificate's name).
    identity: str | None = None


class StorageFull(ResourceExhausted):
    """The server (or a site) ran out of disk space writing something; nothing partial was
    kept, and the call may be retried once space is freed."""

    #: The file or folder that could not be written.
    path: str | None = None
    #: What was being written (``store the job archive``, ``write round 2's model`` ...).
    operation: str | None = None


class LocalIOError(APIError, OSError):
    """A local file or folder could not be read or written during a transfer (disk full,
    no permission); names the path and the OS error, which ``errno``/``strerror`` keep."""

    path: str | None = None

    @classmethod
    def of(cls, exc: OSError, doing: str, path: str | Path, **details: Any) -> LocalIOError:
        """``cannot <doing> <path>: <the OS error>`` for ``exc``."""
        error = cls(f"cannot {doing} {path}: {exc.strerror or exc}", path=str(path), **details)
        error.errno, error.strerror, error.filename = exc.errno, exc.strerror, exc.filename
        return error


class BlobError(FlareError):
    """A site's blob transfer failed or delivered something other than announced."""

    #: The transfer may succeed on the next connection (the stream broke).
    retryable: bool = False


class FrameError(FlareError):
    """The site or its user code sent something that is not a valid IPC frame (not JSON,
    over the size limit, no ``op``)."""


#: Classes that may be named in an error crossing the wire, by name. The Session maps a
#: server-reported error type through this table only (an allowlist, never an import).
WIRE_ERRORS: dict[str, type[APIError]] = {
    cls.__name__: cls
    for cls in (
        SessionExpired,
        AuthenticationError,
        AuthorizationError,
        InvalidArgumentError,
        InvalidJobDefinition,
        InvalidTarget,
        RevocationListRejected,
        JobNotFound,
        JobNotRunning,
        JobNotDone,
        JobTimeout,
        NoClientsAvailable,
        ClientsStillRunning,
        NoReply,
        InternalError,
        NoConnection,
        ResourceExhausted,
        LimitExceeded,
        StorageFull,
    )
}
