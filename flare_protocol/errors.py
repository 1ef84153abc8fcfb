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
    └── APIError                    raised by the admin Session
        ├── NoConnection            the server cannot be reached (also a ConnectionError)
        ├── SessionClosed           the Session was closed
        │   └── SessionExpired      the server no longer accepts this Session
        ├── AuthenticationError     the server did not accept who we are
        │   └── UsernameMismatch    username differs from the kit certificate's CN
        ├── AuthorizationError      our role may not do this
        ├── InvalidArgumentError    an argument is malformed (also a ValueError)
        │   ├── InvalidJobDefinition  a job folder or meta.json is invalid
        │   └── InvalidTarget       an unknown target type or site name
        ├── JobNotFound             no job has this id
        ├── JobNotRunning           the job is not running
        ├── JobNotDone              the job has not finished
        ├── JobTimeout              waiting for the job timed out
        ├── NoClientsAvailable      no site is connected
        ├── ClientsStillRunning     sites are still running something
        ├── NoReply                 the server did not answer in time
        └── InternalError           the server failed unexpectedly

Exceptions carry data (``job_id``, ``site``, ``status``, ``path``) as attributes,
not only text.
"""

from __future__ import annotations

from typing import Any


class FlareError(Exception):
    """Root of every exception flare-admin raises on purpose."""

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details)
        for key, value in details.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class ProjectFileError(FlareError):
    """project.yml cannot be read or violates the schema (names file, participant, field)."""


class ProvisionError(FlareError):
    """The provisioning workspace or state cannot be used."""


class KitError(FlareError):
    """A startup kit cannot be used; the message names the file and the fix."""


class KitIncomplete(KitError):
    """A file the kit needs is missing."""


class KitTampered(KitError):
    """A signed kit file was edited, added, removed or replaced by a symlink."""


class KeyFilePermissions(KitError):
    """A private key file is readable or writable by group or others."""


class KeyMismatch(KitError):
    """The kit's private key does not match its certificate."""


class CertificateNotTrusted(KitError):
    """The certificate was not issued by the kit's root CA."""


class CertificateExpired(KitError):
    """The certificate's validity period has ended."""


class CertificateNotYetValid(KitError):
    """The certificate's validity period has not begun."""


class IdentityRejected(FlareError):
    """A peer certificate is not acceptable for the endpoint it called."""


class InvalidTransition(FlareError):
    """A job status (or server state) change that the lifecycle table forbids."""


class InvalidModel(FlareError, ValueError):
    """Model parameters are malformed: pickled/object arrays, bad names, too large, non-finite."""


class MessageError(FlareError, ValueError):
    """A message between server and site is malformed; names its ``topic`` and the field."""


class ExecutionError(FlareError):
    """A job's user code failed on a site; carries ``returncode`` and ``stderr_tail``."""


class MissingDependency(FlareError, ImportError):
    """An optional package a feature needs is not installed; names the extra to install."""


class APIError(FlareError):
    """Root of the errors the admin Session raises."""


class NoConnection(APIError, ConnectionError):
    """The server cannot be reached."""


class SessionClosed(APIError):
    """The Session was closed and cannot be used any more."""


class SessionExpired(SessionClosed):
    """The server no longer accepts this Session."""


class AuthenticationError(APIError):
    """The server did not accept our identity."""


class UsernameMismatch(AuthenticationError):
    """The username passed to the Session differs from the kit certificate's CN."""


class AuthorizationError(APIError):
    """Our role does not allow this command on this job or site."""


class InvalidArgumentError(APIError, ValueError):
    """An argument is malformed or out of range."""


class InvalidJobDefinition(InvalidArgumentError):
    """A job folder, archive or meta.json is invalid."""


class InvalidTarget(InvalidArgumentError):
    """An unknown target type or site name."""


class JobNotFound(APIError):
    """No job has this id."""


class JobNotRunning(APIError):
    """The job is not running."""


class JobNotDone(APIError):
    """The job has not finished yet."""


class JobTimeout(APIError):
    """Waiting for the job took longer than allowed."""


class NoClientsAvailable(APIError):
    """No site is connected."""


class ClientsStillRunning(APIError):
    """Sites are still running jobs."""


class NoReply(APIError):
    """The server did not answer in time."""


class InternalError(APIError):
    """The server failed unexpectedly; its log has the details."""


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
        JobNotFound,
        JobNotRunning,
        JobNotDone,
        JobTimeout,
        NoClientsAvailable,
        ClientsStillRunning,
        NoReply,
        InternalError,
        NoConnection,
    )
}
