"""A job's result folder: the layout the job runner writes and the result readers read.

Theory of operation. The folder (``JobStore.result_dir(job_id)``) holds::

    global_model.npz          the final global model (only when the job produced one)
    models/round_NNN.npz      the global model after round NNN (1-based, zero-padded)
    metrics.jsonl             one JSON object per metric: site, round, key, value, step, time
    params.jsonl              one JSON object per param, tag or text: site, round, kind, key,
                              value (a string), step, time
    validations.jsonl         one JSON object per validation: site, round, metrics
    messages.jsonl            driver jobs: one JSON object per Driver API message or reply
                              (ids, type, group, ends, sizes, timing, error; docs/driver.md)
    logs/server.log           the job's server log
    logs/<site>.log           each site's job log, shipped back at the end of the job
    summary.json              workflow, rounds completed, final status, per-round participants

Models, logs and ``summary.json`` are written atomically (temp file, fsync, rename), so a
file that exists is whole. The ``.jsonl`` files are append-only while the job runs;
when the job is over the runner appends the line ``{"complete": true}``. A reader skips a
last line without its newline (a write in progress) and never returns the marker as a row.

Watching rows as they are written. The runner's :class:`ResultFolder` calls its
``on_rows(kind)`` hook after every row it keeps; the server routes that to
:class:`RowSignals`, where a watcher (the ``WatchJobEvents`` RPC) subscribes for one job
and, woken, reads what was appended since its last read with a :class:`JsonlTail`. The
rows themselves come from the file, so a watcher sees exactly what the readers see.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from flare_protocol._direct_io import replace_file
from flare_protocol.errors import InvalidArgumentError

__all__ = [
    "COMPLETE_MARKER",
    "FINAL_MODEL",
    "MESSAGES",
    "METRICS",
    "PARAMS",
    "SUMMARY",
    "VALIDATIONS",
    "JsonlTail",
    "JsonlWriter",
    "ResultFolder",
    "RowSignals",
    "read_rows",
    "reopen_result_folder",
    "round_model_name",
    "seal_jsonl",
    "write_atomic",
]

FINAL_MODEL = "global_model.npz"
MODELS = "models"
METRICS = "metrics.jsonl"
#: Non-numeric tracking records (MLflow's params, tags and texts), kept apart from metrics
#: so metrics.jsonl stays numbers only.
PARAMS = "params.jsonl"
VALIDATIONS = "validations.jsonl"
#: Driver jobs: every message the driver sent and every reply (docs/driver.md).
MESSAGES = "messages.jsonl"
LOGS = "logs"
SUMMARY = "summary.json"
COMPLETE_MARKER = {"complete": True}
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
#: Most bytes of rows kept in metrics.jsonl / validations.jsonl of one job.
MAX_JSONL_BYTES = 512 * 1024 * 1024
#: Largest page of rows returned by one reader call (keeps a reply far below 4 MiB).
MAX_PAGE_BYTES = 2 * 1024 * 1024


def round_model_name(number: int) -> str:
    """``round_003.npz`` for round 3."""
    return f"round_{number:03d}.npz"


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, rename.

    A big file (a round's model) bypasses the page cache: nothing reads it back soon.
    """
    replace_file(path, data, durable=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """An append-only JSON-lines file; each row is flushed as one complete line.

    At most ``max_bytes`` of rows are kept (a site cannot fill the server's disk with
    metrics); :attr:`dropped` counts the rows refused after that.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = MAX_JSONL_BYTES,
        on_append: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        self.dropped = 0
        self._on_append = on_append
        self._fh: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def append(self, row: Mapping[str, Any]) -> bool:
        """Append one row; False when it was dropped (over the cap, or closed)."""
        if self._fh is None:
            return False
        line = json.dumps(dict(row), separators=(",", ":"), allow_nan=False) + "\n"
        if self.written + len(line) > self.max_bytes:
            self.dropped += 1
            return False
        self._fh.write(line)
        self._fh.flush()
        self.written += len(line)
        if self._on_append is not None:
            self._on_append()
        return True

    def complete(self) -> None:
        """Append the completion marker, fsync and close (idempotent)."""
        if self._fh is None:
            return
        self._fh.write(json.dumps(COMPLETE_MARKER) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def seal_jsonl(path: Path) -> None:
    """Append the completion marker to a ``.jsonl`` file a crash left open (a torn last
    line is ended first, so it stays a bad line that readers skip)."""
    with open(path, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        torn = False
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
        fh.seek(0, os.SEEK_END)
        fh.write((b"\n" if torn else b"") + json.dumps(COMPLETE_MARKER).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def unseal_jsonl(path: Path) -> None:
    """Make a ``.jsonl`` file a crash left behind appendable again, for a resumed job: a
    torn last line is ended (it stays a bad line that readers skip) and a completion
    marker at the end (the crash came while the job was ending) is removed."""
    marker = (json.dumps(COMPLETE_MARKER) + "\n").encode()
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
            fh.write(b"\n")
            size += 1
        tail = len(marker) + 1
        while size >= len(marker):
            fh.seek(max(0, size - tail))
            end = fh.read()
            if not (end == marker or end.endswith(b"\n" + marker)):
                break
            size -= len(marker)
            fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


def reopen_result_folder(root: Path) -> None:
    """Prepare the result folder of a job resumed after a server crash (blocking): its
    ``.jsonl`` files take rows again (:func:`unseal_jsonl`), and a ``summary.json`` or
    final model from an end that did not happen is removed (the resumed run writes them)."""
    for name in (METRICS, VALIDATIONS, PARAMS, MESSAGES):
        if (root / name).is_file():
            unseal_jsonl(root / name)
    for name in (SUMMARY, FINAL_MODEL):
        (root / name).unlink(missing_ok=True)


def _hook(on_rows: Callable[[str], None] | None, kind: str) -> Callable[[], None] | None:
    return None if on_rows is None else functools.partial(on_rows, kind)


class ResultFolder:
    """Writes one job's result folder (used by the job runner only).

    ``on_rows(kind)`` (optional) is called after every kept row, ``kind`` being
    ``"metrics"`` or ``"validations"``, in the writer's thread.
    """

    def __init__(self, root: Path, on_rows: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        (self.root / MODELS).mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / LOGS).mkdir(mode=0o700, exist_ok=True)
        self.metrics = JsonlWriter(self.root / METRICS, on_append=_hook(on_rows, "metrics"))
        self.validations = JsonlWriter(
            self.root / VALIDATIONS, on_append=_hook(on_rows, "validations")
        )
        self.params = JsonlWriter(self.root / PARAMS)
        #: Opened by a driver job (:meth:`open_messages`).
        self.messages: JsonlWriter | None = None

    def open_messages(self) -> JsonlWriter:
        """The message log of a driver job (created on first use)."""
        if self.messages is None:
            self.messages = JsonlWriter(self.root / MESSAGES)
        return self.messages

    def round_model_path(self, number: int) -> Path:
        return self.root / MODELS / round_model_name(number)

    @property
    def final_model_path(self) -> Path:
        return self.root / FINAL_MODEL

    def add_metric(
        self, site: str, round: int | None, key: str, value: float, step: int | None, time: float
    ) -> bool:
        return self.metrics.append(
            {"site": site, "round": round, "key": key, "value": value, "step": step, "time": time}
        )

    def add_param(
        self,
        site: str,
        round: int | None,
        kind: str,
        key: str,
        value: str,
        step: int | None,
        time: float,
    ) -> bool:
        """A param, tag or text (``kind``) a site recorded; False when it was dropped."""
        return self.params.append(
            {
                "site": site,
                "round": round,
                "kind": kind,
                "key": key,
                "value": value,
                "step": step,
                "time": time,
            }
        )

    def add_validation(self, site: str, round: int, metrics: Mapping[str, float]) -> None:
        clean = {str(k): _finite(float(v)) for k, v in metrics.items()}
        self.validations.append({"site": site, "round": round, "metrics": clean})

    def write_log(self, name: str, data: bytes) -> None:
        """``logs/<name>.log`` (``name`` is a site name or ``server``)."""
        if not _SITE_NAME.match(name):
            raise InvalidArgumentError(f"{name!r} cannot name a log file")
        write_atomic(self.root / LOGS / f"{name}.log", data)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        text = json.dumps(dict(summary), indent=2, default=str, allow_nan=False)
        write_atomic(self.root / SUMMARY, text.encode())

    def complete(self) -> None:
        """Mark every ``.jsonl`` file complete."""
        self.metrics.complete()
        self.validations.complete()
        self.params.complete()
        if self.messages is not None:
            self.messages.complete()

    def close(self) -> None:
        self.metrics.close()
        self.validations.close()
        self.params.close()
        if self.messages is not None:
            self.messages.close()


def read_rows(
    path: Path,
    *,
    offset: int = 0,
    limit: int = 10_000,
    where: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Rows ``offset..`` of a ``.jsonl`` result file matching ``where``; (rows, next_offset).

    ``offset`` counts matching rows. ``next_offset`` is None when no matching row remains.
    A missing file has no rows; the completion marker and a torn last line are skipped.
    """
    rows: list[dict[str, Any]] = []
    size = 0
    matched = 0
    if not path.is_file():
        return rows, None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # a write in progress
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or row == COMPLETE_MARKER:
                continue
            if where and any(row.get(k) != v for k, v in where.items() if v is not None):
                continue
            matched += 1
            if matched <= offset:
                continue
            if len(rows) >= limit or size + len(line) > MAX_PAGE_BYTES:
                return rows, offset + len(rows)
            rows.append(row)
            size += len(line)
    return rows, None


class RowSignals:
    """Per job, who wants to hear that rows were appended to its metrics or validations.

    Callbacks run in the writer's thread (the job runner's event loop): keep them quick
    and thread-safe. An exception in a callback is swallowed, never raised to the writer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, tuple[Callable[[str], None], ...]] = {}

    def subscribe(self, job_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(kind)`` after every row of ``job_id``; returns the unsubscribe."""
        with self._lock:
            self._subscribers[job_id] = (*self._subscribers.get(job_id, ()), callback)

        def unsubscribe() -> None:
            with self._lock:
                left = tuple(cb for cb in self._subscribers.get(job_id, ()) if cb is not callback)
                if left:
                    self._subscribers[job_id] = left
                else:
                    self._subscribers.pop(job_id, None)

        return unsubscribe

    def notify(self, job_id: str, kind: str) -> None:
        """Rows of ``kind`` (``"metrics"``/``"validations"``) were appended to ``job_id``'s."""
        for callback in self._subscribers.get(job_id, ()):
            try:
                callback(kind)
            except Exception:  # a watcher must never break the job that writes
                pass

    def watched_jobs(self) -> list[str]:
        """The jobs somebody is watching now."""
        with self._lock:
            return sorted(self._subscribers)


class JsonlTail:
    """A cursor over a ``.jsonl`` result file: each :meth:`read` returns the rows appended
    since the previous one, starting after the first ``skip`` rows.

    Rows are counted as :func:`read_rows` counts them (bad lines and the completion marker
    are not rows), so ``skip`` is the ``start``/``offset`` of the readers. A last line
    without its newline (a write in progress) is left for the next read. A missing file
    has no rows yet.
    """

    def __init__(self, path: Path, skip: int = 0, max_bytes: int = MAX_PAGE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        #: True once the completion marker was read: no row will follow.
        self.complete = False
        self._skip = skip
        self._pos = 0

    def read(self) -> list[dict[str, Any]]:
        """The next rows (at most about ``max_bytes`` of JSON); ``[]`` when none are new."""
        rows: list[dict[str, Any]] = []
        size = 0
        try:
            fh = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return rows
        with fh:
            fh.seek(self._pos)
            while True:
                line = fh.readline()
                if not line.endswith(b"\n"):
                    break  # the end, or a write in progress
                if rows and size + len(line) > self.max_bytes:
                    break  # the rest in the next read
                self._pos += len(line)
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if not isinstance(row, dict):
                    continue
                if row == COMPLETE_MARKER:
                    self.complete = True
                    continue
                if self._skip:
                    self._skip -= 1
                    continue
                if len(line) > self.max_bytes:
                    continue  # too big for one message (read_rows cannot page it either)
                rows.append(row)
                size += len(line)
        return rows
