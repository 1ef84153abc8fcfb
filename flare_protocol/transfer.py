"""The chunked transfer protocol, without I/O: one receiver and one sender for every side.

Theory of operation. A large payload (a job archive, a result, a global model, a site's
update or log) moves as a stream of ``TransferChunk`` messages: one ``TransferHeader``
(a name hint, ``size`` in bytes or -1, ``sha256`` in hex or ``""``, a content type,
params), then ``data`` chunks of at most :data:`CHUNK_SIZE` bytes.

:class:`ChunkReceiver` is fed the messages of one stream in order and keeps its rules:
the header comes first and only once; the announced size is within the cap (and
announced at all, where that is required), as is the SHA-256; no more bytes arrive than
announced or allowed; at the end exactly the announced size has arrived and its SHA-256
matches. :meth:`ChunkReceiver.feed` hands each data message's bytes back for the caller
to write wherever it wants. A broken rule raises the class the caller chose for "the
peer broke the protocol" (the server: ``InvalidArgumentError``; the Session:
``InternalError``; a site: ``BlobError``), with one message per rule, written here once.
:class:`ChunkSender` builds the messages of a stream and checks that what is sent is
what its header announced (a file that shrinks or grows while it is sent).

Neither does any I/O. The transports (blocking iterators in the Session, asyncio loops in
the AsyncSession and on sites, grpc.aio handlers on the server) are thin loops around
them that read, write and hash where their performance wants it: the receiver only
counts unless told to hash (``hash_data``), so a caller can hash in the worker thread
that writes, or let its store compute the digest and pass it to :meth:`finish`.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flare_protocol._generated import common_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.errors import FlareError, InternalError, InvalidArgumentError

__all__ = ["CHUNK_SIZE", "ChunkReceiver", "ChunkSender", "TransferState"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TransferState(enum.Enum):
    """Where a transfer is: waiting for its header, receiving data, done, or failed."""

    HEADER = "header"
    DATA = "data"
    DONE = "done"
    FAILED = "failed"


class ChunkReceiver:
    """Checks one received stream: header, size, SHA-256, caps (no I/O).

    Args:
        what: the payload as the error messages name it (``"the job archive"``,
            ``"blob 3f2c…"``, ``"the final global model of job …"``).
        error: raised when the peer breaks the protocol.
        max_bytes: the cap, announced or real (None: no cap).
        cap_error: raised for a cap instead of ``error`` (it gets ``size``).
        cap_setting: where the cap is set, named in its message.
        require_size: the header must announce the exact size.
        require_sha256: the header must announce the SHA-256.
        size: the size known from elsewhere (a ``BlobRef``); the header's wins.
        sha256: a digest known from elsewhere (a ``BlobRef``), checked as well.
        hash_data: :meth:`feed` hashes the data; False: the caller calls :meth:`hash`
            (e.g. in the thread that writes) or passes the digest to :meth:`finish`.
        max_chunk: the most bytes one data message may carry (None: any).
        remedy: what to do after a damaged transfer, appended to those messages.
        details: attributes every error carries (``job_id``, ``path``, ...).
    """

    def __init__(
        self,
        what: str,
        *,
        error: type[FlareError] = InvalidArgumentError,
        max_bytes: int | None = None,
        cap_error: type[FlareError] | None = None,
        cap_setting: str = "",
        require_size: bool = False,
        require_sha256: bool = False,
        size: int = -1,
        sha256: str = "",
        hash_data: bool = True,
        max_chunk: int | None = None,
        remedy: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.what = what
        self.error = error
        self.max_bytes = max_bytes
        self.cap_error = cap_error or error
        self.cap_setting = cap_setting
        self.require_size = require_size
        self.require_sha256 = require_sha256
        self.hash_data = hash_data
        self.max_chunk = max_chunk
        self.remedy = f"; {remedy}" if remedy else ""
        self.details = dict(details or {})
        self.state = TransferState.HEADER
        #: The header, once it arrived.
        self.header: common_pb2.TransferHeader | None = None
        #: Bytes of data received so far.
        self.received = 0
        #: Bytes announced (the header's, else the one known from elsewhere; -1: unknown).
        self.size = size
        self._digests = [sha256.lower()] if sha256 else []
        self._hash: Any = None

    # -- the stream ----------------------------------------------------------------------

    def feed(self, message: common_pb2.TransferChunk) -> bytes | None:
        """The next message: None for the header, else the data bytes to write.

        Raises:
            the ``error`` class: the message breaks a rule (the transfer has failed).
        """
        kind = message.WhichOneof("item")
        if kind == "data":
            return self.data(message.data)  # one copy out of the message (each access copies)
        if kind == "header":
            self.on_header(message.header)
            return None
        raise self._fail(f"{self.what}: a message with neither a header nor data")

    def first_header(self, message: common_pb2.TransferChunk | None) -> common_pb2.TransferHeader:
        """The header in a stream's first message (None: the stream was empty), not yet
        checked: for a caller that sets the caps from its params, then calls
        :meth:`on_header` with it."""
        if message is None:
            self.finish()  # raises: ended before its header
        assert message is not None
        if message.WhichOneof("item") != "header":
            self.feed(message)  # raises: did not start with a header
        return message.header

    def on_header(self, header: common_pb2.TransferHeader) -> common_pb2.TransferHeader:
        """The stream's header: checked against the caps and requirements."""
        self._check_not_over()
        if self.state is not TransferState.HEADER:
            raise self._fail(
                f"{self.what}: a second header in the stream (a transfer has one header, "
                "then its data)"
            )
        self.header = header
        size, sha256 = int(header.size), header.sha256.lower()
        cap = self.max_bytes
        if self.require_size and size < 0:
            at_most = f", at most {cap} bytes" if cap is not None else ""
            raise self._fail(f"{self.what} must announce its exact size{at_most}; got {size}")
        if cap is not None and size > cap:
            raise self._cap(f"{self.what} is {size} bytes; at most {cap} are accepted", size)
        if (sha256 and not _SHA256.match(sha256)) or (self.require_sha256 and not sha256):
            raise self._fail(f"{self.what} must announce its SHA-256 (64 hex digits)")
        if size >= 0:
            self.size = size
        if sha256:
            self._digests.insert(0, sha256)
        if self._digests:
            self._hash = hashlib.sha256()
        self.state = TransferState.DATA
        return header

    def data(self, data: bytes) -> bytes:
        """The bytes of the next data message, counted (and hashed with ``hash_data``)."""
        self._check_not_over()
        if self.state is TransferState.HEADER:
            raise self._fail(f"{self.what}: the stream did not start with a header")
        if self.state is TransferState.DONE:
            raise self._fail(f"{self.what}: data after the end of the transfer")
        n = len(data)
        if self.max_chunk is not None and n > self.max_chunk:
            raise self._fail(
                f"{self.what}: a chunk of {n} bytes, more than the {self.max_chunk} allowed"
            )
        total = self.received + n
        if 0 <= self.size < total:
            raise self._fail(f"{self.what} is longer than its announced {self.size} bytes")
        if self.max_bytes is not None and total > self.max_bytes:
            raise self._cap(f"{self.what} exceeds the cap of {self.max_bytes} bytes", total)
        if self.hash_data and self._hash is not None:
            self._hash.update(data)
        self.received = total
        return data

    def hash(self, data: bytes | memoryview) -> None:
        """Add ``data`` to the digest (with ``hash_data=False``; any thread, in order)."""
        if self._hash is not None:
            self._hash.update(data)

    @property
    def wants_digest(self) -> bool:
        """A SHA-256 was announced (or is known), so the data must be hashed."""
        return bool(self._digests)

    def finish(self, sha256: str | None = None) -> None:
        """The stream ended: check that all announced bytes arrived and their digest.

        ``sha256``: the digest the caller computed itself (default: the receiver's).

        Raises:
            the ``error`` class: nothing or too little arrived, or the digest differs.
        """
        self._check_not_over()
        if self.state is TransferState.HEADER:
            raise self._fail(f"{self.what}: the stream ended before its header")
        if self.size >= 0 and self.received != self.size:
            raise self._fail(
                f"{self.what} was cut short: received {self.received} of the announced "
                f"{self.size} bytes{self.remedy}"
            )
        if self._digests:
            actual = (sha256 if sha256 is not None else self._hash.hexdigest()).lower()
            for announced in self._digests:
                if actual != announced:
                    raise self._fail(
                        f"{self.what} is corrupt: its SHA-256 {actual} does not match the "
                        f"announced {announced}; it was damaged in transit{self.remedy}"
                    )
        self.state = TransferState.DONE

    def cancel(self) -> FlareError:
        """End the transfer unfinished (the call was cancelled, the caller gave up); what
        is fed afterwards is refused. Returns the error for the caller to raise, if any."""
        was = self.state
        self.state = TransferState.FAILED
        if was is TransferState.DONE:
            return self._error(f"{self.what}: the transfer was already complete")
        return self._error(
            f"{self.what}: the transfer was cancelled after {self.received} bytes{self.remedy}"
        )

    # -- errors -------------------------------------------------------------------------

    def _check_not_over(self) -> None:
        if self.state is TransferState.FAILED:
            raise self._error(f"{self.what}: the transfer failed or was cancelled; start again")

    def _error(self, message: str, cls: type[FlareError] | None = None, **extra: Any) -> FlareError:
        return (cls or self.error)(message, **self.details, **extra)

    def _fail(self, message: str) -> FlareError:
        self.state = TransferState.FAILED
        return self._error(message)

    def _cap(self, message: str, size: int) -> FlareError:
        self.state = TransferState.FAILED
        where = f" (set by {self.cap_setting})" if self.cap_setting else ""
        return self._error(message + where, self.cap_error, size=size)


class ChunkSender:
    """Builds the messages of one stream and checks that they match the header (no I/O).

    Args:
        what: the payload as the error messages name it.
        name, size, sha256, content_type, params: the header's fields (``size`` -1 and
            ``sha256`` ``""``: not known up front).
        error: raised when the source does not match the header (it changed meanwhile).
        chunk_size: the most bytes per data message.
        details: attributes the errors carry.
    """

    def __init__(
        self,
        what: str,
        *,
        name: str = "",
        size: int = -1,
        sha256: str = "",
        content_type: str = "",
        params: Mapping[str, str] | None = None,
        error: type[FlareError] = InternalError,
        chunk_size: int = CHUNK_SIZE,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.what = what
        self.size = size
        self.error = error
        self.chunk_size = chunk_size
        self.details = dict(details or {})
        self._header = common_pb2.TransferHeader(
            name=name, size=size, sha256=sha256, content_type=content_type, params=params or {}
        )
        #: Bytes of data sent so far.
        self.sent = 0

    def header(self) -> common_pb2.TransferChunk:
        """The first message."""
        return common_pb2.TransferChunk(header=self._header)

    def next_read(self) -> int:
        """How many bytes to read for the next message (0: all announced were sent)."""
        if self.size < 0:
            return self.chunk_size
        return min(self.chunk_size, self.size - self.sent)

    def data(self, block: bytes) -> common_pb2.TransferChunk:
        """A data message of ``block`` (at most ``chunk_size`` bytes)."""
        self.sent += len(block)
        if 0 <= self.size < self.sent:
            raise self.error(
                f"{self.what} grew while it was being sent: more than the announced "
                f"{self.size} bytes",
                **self.details,
            )
        return common_pb2.TransferChunk(data=block)

    def split(self, payload: bytes | memoryview) -> Iterator[common_pb2.TransferChunk]:
        """The data messages of a payload held in memory."""
        view = memoryview(payload)
        for start in range(0, len(view), self.chunk_size):
            yield self.data(bytes(view[start : start + self.chunk_size]))

    def finish(self) -> None:
        """Everything was sent: check the total against the header."""
        if self.size >= 0 and self.sent != self.size:
            raise self.error(
                f"{self.what} shrank while it was being sent: {self.sent} of the announced "
                f"{self.size} bytes",
                **self.details,
            )

    def messages(self, blocks: Iterable[bytes]) -> Iterator[common_pb2.TransferChunk]:
        """The whole stream: the header, a data message per block, then the check."""
        yield self.header()
        for block in blocks:
            yield self.data(block)
        self.finish()
