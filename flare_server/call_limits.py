"""Per-identity limits on one endpoint: calls in progress, uploads in progress, idle uploads.

Theory of operation. grpc core bounds what a connection may do before authentication
(handshake time, metadata size, streams per connection, RPCs per endpoint:
:func:`~flare_server.endpoints.server_options`). Those bounds are shared by everyone, so one
authenticated peer that opens many calls could still take every slot. :class:`CallLimits`
counts, per identity (the certificate's name), the calls it has in progress and, among
them, its uploads; the call wrapper (:mod:`flare_server.calls`) takes a slot before the
handler runs and gives it back when the call ends, however it ends. A call over a limit is
refused at once with :class:`~flare_protocol.errors.LimitExceeded` (RESOURCE_EXHAUSTED)
naming the limit and the setting that raises it; the others' calls are not slowed.

An upload that stops sending (a stalled or malicious client) holds a slot, a temp file and
a receive window: :func:`idle_limited` ends it after ``upload_idle_timeout`` seconds
without a message, and the upload's own cleanup removes its temp file.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from flare_protocol import errors

__all__ = ["CallLimits", "idle_limited"]

T = TypeVar("T")


class CallLimits:
    """The calls and uploads each identity has in progress on one endpoint (loop-confined).

    Args:
        max_calls: calls one identity may have in progress at once (streams included).
        max_uploads: of those, uploads (client streams of chunks).
        upload_idle_timeout: seconds an upload may go without a message.
        endpoint: ``"admin"`` or ``"site"``, named in errors.
    """

    def __init__(
        self, *, max_calls: int, max_uploads: int, upload_idle_timeout: float, endpoint: str
    ) -> None:
        self.max_calls = max_calls
        self.max_uploads = max_uploads
        self.upload_idle_timeout = upload_idle_timeout
        self.endpoint = endpoint
        self._calls: dict[str, int] = {}
        self._uploads: dict[str, int] = {}

    def calls(self, identity: str) -> int:
        """Calls ``identity`` has in progress."""
        return self._calls.get(identity, 0)

    def uploads(self, identity: str) -> int:
        """Uploads ``identity`` has in progress."""
        return self._uploads.get(identity, 0)

    def enter(self, identity: str, command: str, *, upload: bool = False) -> Callable[[], None]:
        """Take a call slot (and an upload slot) for ``identity``; returns the release.

        Raises:
            LimitExceeded: ``identity`` already has ``max_calls`` calls (or
                ``max_uploads`` uploads) in progress; nothing was taken.
        """
        calls = self._calls.get(identity, 0)
        if calls >= self.max_calls:
            raise self._refusal(identity, command, "calls", calls, "max_calls_per_identity")
        uploads = self._uploads.get(identity, 0)
        if upload and uploads >= self.max_uploads:
            raise self._refusal(identity, command, "uploads", uploads, "max_uploads_per_identity")
        self._calls[identity] = calls + 1
        if upload:
            self._uploads[identity] = uploads + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            _decrement(self._calls, identity)
            if upload:
                _decrement(self._uploads, identity)

        return release

    def _refusal(
        self, identity: str, command: str, what: str, count: int, setting: str
    ) -> errors.LimitExceeded:
        return errors.LimitExceeded(
            f"{command} refused: {identity} already has {count} {what} in progress on the "
            f"{self.endpoint} endpoint, the most one identity may have "
            f"(server setting {setting} = {count}); wait for some to end and retry, or ask "
            f"the server's operator to raise {setting} in the server kit's local/settings.json",
            limit=count,
            setting=setting,
            identity=identity,
        )


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


async def idle_limited(
    messages: AsyncIterator[T], *, timeout: float, what: str, identity: str
) -> AsyncIterator[T]:
    """``messages``, ended with LimitExceeded when none arrives for ``timeout`` seconds.

    Raises:
        LimitExceeded: the sender went ``timeout`` seconds without a message (setting
            ``upload_idle_timeout``).
    """
    source = aiter(messages)
    while True:
        try:
            message = await asyncio.wait_for(anext(source), timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise errors.LimitExceeded(
                f"{what} from {identity} stalled: nothing arrived for {timeout:g} s "
                f"(server setting upload_idle_timeout); the upload was discarded, send it "
                "again from the start",
                limit=math.ceil(timeout),
                setting="upload_idle_timeout",
                identity=identity,
            ) from None
        yield message
