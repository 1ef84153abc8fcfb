"""The local channel between a site and the user code it runs: no pickle, no network.

The site listens on a Unix domain socket in a private (0700) folder and passes its path
and a random token to the subprocess in environment variables. Every message either way
is one frame: a 4-byte big-endian length, then a UTF-8 JSON object (at most
:data:`MAX_FRAME` bytes). Models never travel in frames: the site writes the global model
to an ``.npz`` file in the job workspace and names the file the script must write its
update to, so frames stay small and large models cost one file write each way.

Script -> site: ``hello`` (token, pid), ``next`` (give me a task), ``result`` (task_id,
params_type, metrics, meta; or ``error``: the task failed), ``reply`` (message_id, message:
a Driver API reply's JSON, npz: whether its arrays were written to reply_path), ``metric``
(key, value, step, round, time; no reply).
Site -> script: ``welcome``, ``task`` (task_id, kind, round, total_rounds, model_path,
output_path), ``message`` (task_id: the message id, message: its JSON, npz_path: its
arrays or null, reply_path), ``stop``, ``ok``, ``error`` (message).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from flare_protocol.errors import FrameError

ENV_SOCKET = "FLARE_IPC_SOCKET"
ENV_TOKEN = "FLARE_IPC_TOKEN"
ENV_MODE = "FLARE_IPC_MODE"  # "script": tasks and metrics; "command": metrics only
ENV_SITE = "FLARE_SITE_NAME"
ENV_JOB = "FLARE_JOB_ID"
ENV_WORKSPACE = "FLARE_JOB_WORKSPACE"
ENV_APP_DIR = "FLARE_APP_DIR"

MAX_FRAME = 1024 * 1024
_HEADER = struct.Struct(">I")


def encode_frame(message: dict[str, Any]) -> bytes:
    """One frame: length prefix plus compact JSON (NaN and infinity are refused)."""
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise FrameError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse a frame body; it must be a JSON object with a string ``op``."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8 or not JSON, or an integer of more digits than Python
        # converts; RecursionError: nested deeper than the parser's stack.
        raise FrameError(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise FrameError("frame is not a JSON object with an 'op'")
    return message


def frame_length(header: bytes) -> int:
    """The body length announced by a 4-byte header, checked against the cap."""
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    return int(length)


class BlockingChannel:
    """The script's end: a blocking Unix socket (training scripts are synchronous)."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)

    def send(self, message: dict[str, Any]) -> None:
        self._sock.sendall(encode_frame(message))

    def recv(self) -> dict[str, Any]:
        header = self._recv_exact(_HEADER.size)
        return decode_body(self._recv_exact(frame_length(header)))

    def _recv_exact(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self._sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionError("the flare site closed the channel")
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        self._sock.close()
