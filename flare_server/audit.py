"""The audit log: one JSON line per admin command, in ``<workspace>/logs/audit.log``.

Each line: ``{"time": ISO-8601 UTC, "peer": "ipv4:127.0.0.1:51234", "name", "org",
"role", "command", "args": {...}, "result": "ok" | "denied" | "<ErrorType>"}`` and, when the
call named one, ``"job_id"``. Arguments are the call's parameters, never file contents or
secrets. Lines are appended and flushed one at a time, so a crash loses at most the line
being written, and a reader never sees two lines interleaved.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from flare_protocol.identity import Identity

log = logging.getLogger("flare_server.audit")

#: Argument values longer than this are cut (a grep pattern, a path) to keep lines short.
_MAX_ARG_CHARS = 512


class AuditLog:
    """Appends audit records to a file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh: TextIO | None = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def record(
        self,
        *,
        peer: str,
        identity: Identity | None,
        command: str,
        args: dict[str, Any] | None = None,
        result: str = "ok",
        job_id: str | None = None,
    ) -> None:
        """Write one line; ``result`` is ``ok``, ``denied`` or an error type name."""
        entry: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "peer": peer,
            "name": identity.name if identity else None,
            "org": identity.org if identity else None,
            "role": identity.role.value if identity and identity.role else None,
            "command": command,
            "args": _clip(args or {}),
            "result": result,
        }
        if job_id:
            entry["job_id"] = job_id
        line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self._fh is None:
                return
            try:
                self._fh.write(line)
            except OSError as exc:  # disk full: the call has happened; say so loudly
                log.error("cannot write the audit log %s: %s; lost: %s", self.path, exc, line)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.close()
                except OSError as exc:
                    log.error("cannot close the audit log %s: %s", self.path, exc)
                self._fh = None


def _clip(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, str) and len(value) > _MAX_ARG_CHARS:
            value = value[:_MAX_ARG_CHARS] + "…"
        out[key] = value
    return out
