"""What :class:`~flare_admin.Session` and :class:`~flare_admin.AsyncSession` share.

The state and its checks, the properties, the error mapping, the timeouts: everything of
a session that does not depend on how calls are made. Each subclass adds only its
transport (blocking stubs, or ``grpc.aio``), the loops of its streaming methods and its
``close``; argument checks, requests and reply parsing come from :mod:`flare_admin._ops`
and :mod:`flare_admin._streams`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import grpc

from flare_admin import _ops, _streams
from flare_admin._errors import map_rpc_error
from flare_admin.results import SessionInfo
from flare_protocol import errors
from flare_protocol._generated import admin_pb2_grpc

if TYPE_CHECKING:  # imported by the opening functions: `import flare_admin` stays cheap
    from flare_admin._connect import Target

logger = logging.getLogger("flare_admin")
T = TypeVar("T")


class SessionState(enum.Enum):
    """A session is OPEN from creation until ``close()``, then CLOSED for good."""

    OPEN = "open"
    CLOSED = "closed"


class SessionBase:
    """The transport-free half of a session (see the module docstring)."""

    #: How to open a new session, named when this one was closed.
    _open_again: ClassVar[str] = "new_secure_session()"

    def __init__(self, target: Target, channel: Any, info: SessionInfo, debug: bool) -> None:
        self._target = target
        self._channel = channel
        self._stub = admin_pb2_grpc.AdminStub(channel)
        self._info = info
        self._debug = debug
        self._timeout = target.timeout
        self._state = SessionState.OPEN
        if debug:
            logger.debug("session of %s open at %s", target.username, target.address)

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """OPEN or CLOSED."""
        return self._state

    @property
    def info(self) -> SessionInfo:
        """Who the server says we are: name, org, role, project, server version."""
        return self._info

    @property
    def timeout(self) -> float:
        """Seconds each call may take now (``set_timeout`` changes it)."""
        return self._timeout

    @property
    def address(self) -> str:
        """The server address this session dialled."""
        return self._target.address

    @property
    def startup_kit_location(self) -> str:
        """The admin kit this session was opened with."""
        return str(self._target.kit.root)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._target.username} @ {self._target.address} "
            f"{self._state.value}>"
        )

    def set_timeout(self, value: float) -> None:
        """Use ``value`` seconds as the deadline of this session's calls."""
        value = _ops.timeout_value(value, "value")
        if value == 0:
            raise errors.InvalidArgumentError("the timeout must be > 0 seconds")
        self._check_open()
        self._timeout = value

    def unset_timeout(self) -> None:
        """Go back to the timeout the session was opened with."""
        self._check_open()
        self._timeout = self._target.timeout

    # -- for the transports ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is SessionState.CLOSED:
            raise errors.SessionClosed(
                f"this session of {self._target.username} was closed; open a new one with "
                f"{self._open_again}"
            )

    def _map(
        self, exc: grpc.RpcError, action: str, job_id: str | None = None, **kw: Any
    ) -> errors.APIError:
        if self._state is SessionState.CLOSED:
            return errors.SessionClosed(f"{action}: the session was closed during the call")
        return map_rpc_error(exc, address=self._target.address, action=action, job_id=job_id, **kw)

    def _took(self, action: str, start: float) -> None:
        """``debug=True``: log how long a call took."""
        if self._debug:
            logger.debug("%s took %.2f ms", action, (time.perf_counter() - start) * 1e3)

    def _watch_failed(self, exc: grpc.RpcError, watch: _streams.Watch, timed_out: T) -> T:
        """What a failed watch ends with: ``timed_out`` when its own deadline ran out (a
        return code, or an exception for the caller to raise); any other failure is
        raised, mapped."""
        if watch.limit and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return timed_out
        raise self._map(exc, watch.action, watch.job_id) from exc

    @contextlib.contextmanager
    def _receiving(self, call: Any, download: _streams.Download) -> Iterator[None]:
        """Around a download's loop: after any failure nothing received is kept; a failed
        call is mapped, anything else (Ctrl-C, a broken rule) cancels the call."""
        try:
            yield
        except grpc.RpcError as exc:
            download.sink.discard()
            raise self._map(exc, download.action, download.job_id) from exc
        except BaseException:
            download.sink.discard()
            call.cancel()
            raise

    def _ping_limit(self, timeout: float | None) -> float:
        self._check_open()
        return self._timeout if timeout is None else _ops.timeout_value(timeout)

    def _ping_error(self, exc: grpc.RpcError, limit: float) -> errors.APIError:
        return _ops.ping_failed(exc, self.address, limit) or self._map(exc, "ping")
