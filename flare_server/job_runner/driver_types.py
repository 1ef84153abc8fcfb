"""What the driver relay passes around: pushed messages, their arrays, stored replies.

The Admin service receives a push (:mod:`flare_server.driver_service`) and checks it
before the run sees it: every message's JSON (:func:`flare_protocol.message.metadata_from`
and its records' manifest) and the arrays it names, from the ``.npz`` headers alone
(:func:`content_names`), so the server never loads a model it only relays. The run
(:mod:`flare_server.job_runner.driver`) then gives the messages their ids and sends them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flare_protocol.errors import InvalidArgumentError, InvalidModel, MessageError
from flare_protocol.message import INLINE_NPZ_BYTES, MAX_JSON_BYTES, metadata_from
from flare_protocol.models import MAX_ARRAYS, load_params
from flare_protocol.npz_layout import array_regions
from flare_protocol.records import decode_content, dumps
from flare_server.blobs import ServedBlob

__all__ = [
    "INLINE_BYTES",
    "Content",
    "Outgoing",
    "StoredReply",
    "check_wire",
    "content_names",
    "decode_b64",
]

#: Arrays up to this many bytes travel inside the message (base64 in its JSON).
INLINE_BYTES = INLINE_NPZ_BYTES


@dataclass(eq=False)
class Content:
    """The ``.npz`` of one or more messages' arrays, in memory (small) or a file."""

    sha256: str
    size: int
    data: bytes | None = None
    path: Path | None = None
    #: The names of its arrays (checked from the headers).
    names: frozenset[str] = frozenset()
    #: Served to the destination sites (a file's content only).
    blob: ServedBlob | None = None
    #: Messages that still need it (served until none does).
    users: int = 0

    def read(self) -> bytes:
        """The bytes (a file is read: call it off the event loop)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def discard(self) -> None:
        """Delete its file (the bytes are dropped with the object)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass(eq=False)
class Outgoing:
    """A message the driver pushed, checked, before it has an id."""

    data: dict[str, Any]
    content: Content | None
    #: Bytes of its JSON.
    json_bytes: int


@dataclass(eq=False)
class StoredReply:
    """A reply that arrived (or the server made), kept until the driver acknowledges it."""

    reply_to: str
    data: dict[str, Any]
    content: Content | None = None
    #: The replying site, or "server" for an error reply the server made.
    source: str = "server"
    extra: dict[str, Any] = field(default_factory=dict)

    def wire_json(self, *, inline: bool) -> str:
        """The ``reply_json`` of a DriverReplies item (arrays inline when small)."""
        out: dict[str, Any] = {"message": self.data, "npz_b64": None, "npz": False}
        if self.content is not None:
            if inline and self.content.data is not None:
                out["npz_b64"] = base64.b64encode(self.content.data).decode("ascii")
            else:
                out["npz"] = True
        return dumps(out)


def decode_b64(text: str, what: str, cap: int) -> bytes:
    """Inline arrays: base64 text of at most ``cap`` bytes decoded.

    Raises:
        InvalidArgumentError: not base64, or too big to be inline.
    """
    if len(text) > (cap * 4) // 3 + 8:
        raise InvalidArgumentError(
            f"{what}: inline arrays of more than {cap} bytes must travel as a transfer"
        )
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidArgumentError(f"{what}: npz_b64 is not base64: {exc}") from None


def content_names(source: bytes | Path, *, max_bytes: int, where: str) -> frozenset[str]:
    """The array names of an ``.npz``, checked as :func:`~flare_protocol.models.load_params`
    checks them before reading a value (numeric dtypes, no pickle, the caps), from the
    headers alone; a compressed archive is loaded whole. Blocking (a worker thread).

    Raises:
        InvalidArgumentError: naming ``where`` and the problem.
    """
    try:
        if isinstance(source, bytes):
            import io

            regions = array_regions(
                io.BytesIO(source),
                len(source),
                max_bytes=max_bytes,
                max_arrays=MAX_ARRAYS,
                where=where,
            )
        else:
            with open(source, "rb") as fh:
                size = fh.seek(0, 2)
                regions = array_regions(
                    fh, size, max_bytes=max_bytes, max_arrays=MAX_ARRAYS, where=where
                )
        if regions is not None:
            return frozenset(r.name for r in regions)
        return frozenset(
            load_params(source, max_bytes=max_bytes, allow_nonfinite=True)  # compressed
        )
    except InvalidModel as exc:
        raise InvalidArgumentError(f"{where}: its arrays: {exc.message}") from None


def check_wire(
    data: object, names: frozenset[str], *, where: str, error: type[Exception] = MessageError
) -> dict[str, Any]:
    """An untrusted message's JSON object, checked: its metadata and its records' manifest
    against the array names of its ``.npz`` (``names``). Returns it.

    Raises:
        ``error`` (MessageError by default): naming ``where`` and the problem.
    """
    try:
        if not isinstance(data, Mapping):
            raise MessageError(f"{where}: a message must be a JSON object")
        metadata_from(data, where=where)
        content, fault = data.get("content"), data.get("error")
        if (content is None) == (fault is None):
            raise MessageError(f"{where}: a message carries either 'content' or 'error'")
        if fault is not None:
            if names:
                raise MessageError(f"{where}: an error reply carries no arrays")
            if not isinstance(fault, Mapping) or isinstance(fault.get("code"), bool):
                raise MessageError(f"{where}: 'error' must be an object with an integer 'code'")
            if not isinstance(fault.get("code"), int) or not isinstance(
                fault.get("reason"), (str, type(None))
            ):
                raise MessageError(f"{where}: 'error' must hold an integer code and a reason")
        else:
            decode_content(content, {n: _PLACEHOLDER for n in names}, where=where)
        try:
            size = len(dumps(data))
        except ValueError as exc:  # NaN or infinity: Python's JSON reader takes them
            raise MessageError(f"{where}: not plain JSON ({exc})") from None
        if size > MAX_JSON_BYTES:
            raise MessageError(f"{where}: its JSON is more than {MAX_JSON_BYTES} bytes")
    except MessageError as exc:
        if error is MessageError:
            raise
        raise error(exc.message) from None
    return dict(data)


_PLACEHOLDER = np.empty(0)
