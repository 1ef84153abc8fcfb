"""The pure parts of the Session's streaming methods, shared by both transports.

:mod:`flare_admin._ops` describes the unary calls (and reads a watch's events); this
module does the same for the streaming methods: what an upload sends, what a download
asks for and which checked sink receives it, what the monitor decides for each meta,
what a wait returns or raises. :class:`~flare_admin.Session` and
:class:`~flare_admin.AsyncSession` only run the loops around them (a blocking iterator
or ``async for``); the chunk rules themselves are :mod:`flare_protocol.transfer`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare_admin import _ops
from flare_admin.results import JobMeta, MonitorReturnCode
from flare_protocol._generated import admin_pb2
from flare_protocol.errors import InternalError, JobTimeout, NoConnection

if TYPE_CHECKING:  # the transfer modules load with the first transfer (import time)
    from flare_admin._download import ModelDownload, ResultDownload
    from flare_admin._upload import JobUpload

MonitorCallback = Callable[..., Any]


# -- transfers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """A download to run: the server stream to call and the sink that checks and writes
    what arrives (``feed`` each message, then ``finish``; ``discard`` after a failure)."""

    rpc: str
    request: Any
    sink: ResultDownload | ModelDownload
    action: str
    job_id: str
    metadata: tuple[tuple[str, str], ...] | None = None


def job_upload(
    job_definition_path: str | os.PathLike[str], initial_model_job_id: str | None
) -> tuple[JobUpload, str | None]:
    """The checked job folder (or zip) to send, and the job whose model seeds it."""
    from flare_admin._upload import JobUpload

    source = _ops.initial_model_job_id(initial_model_job_id)
    return JobUpload.from_path(job_definition_path), source


def result_download(
    job_id: str, destination: str | os.PathLike[str] | None, default_folder: Path
) -> Download:
    """``DownloadJobResult`` into ``<destination>/<job_id>/``, asking for ``files-v1``."""
    from flare_admin._download import RESULT_FILES_METADATA, ResultDownload, check_destination

    jid = _ops.job_id(job_id)
    folder = check_destination(destination, default_folder)
    request = admin_pb2.JobRequest(job_id=jid)
    sink = ResultDownload(folder, jid)
    return Download(
        "DownloadJobResult", request, sink, "download_job_result", jid, RESULT_FILES_METADATA
    )


def model_download(
    job_id: str,
    destination: str | os.PathLike[str] | None,
    default_folder: Path,
    round_number: object,
) -> Download:
    """``DownloadModel`` of the final model (``round_number`` None) or a round's."""
    from flare_admin._download import ModelDownload, model_target

    jid = _ops.job_id(job_id)
    rnd = _ops.model_round(round_number)
    target = model_target(destination, default_folder, _ops.model_file_name(jid, rnd))
    request = model_request(jid, rnd)
    return Download(
        "DownloadModel", request, ModelDownload(target, model_what(jid, rnd)), "download_model", jid
    )


def model_request(job_id: str, round_number: int) -> Any:
    """The DownloadModel request (the RPC is newer than some servers: say so clearly)."""
    request_type = getattr(admin_pb2, "ModelRequest", None)
    if request_type is None:
        raise InternalError("this flare-admin build has no DownloadModel RPC; update flare-admin")
    return request_type(job_id=job_id, round=round_number)


def model_what(job_id: str, round_number: int) -> str:
    """The model as messages name it."""
    if round_number:
        return f"the global model of round {round_number} of job {job_id}"
    return f"the final global model of job {job_id}"


# -- following a job ---------------------------------------------------------------------


@dataclass(frozen=True)
class Watch:
    """A checked ``monitor_job`` or ``watch_job``: the job, the deadline (0 or None:
    none) and the request."""

    action: str
    job_id: str
    limit: float | None
    request: Any


def monitor(job_id: str, timeout: object, poll_interval: object) -> Watch:
    """Check ``monitor_job``'s arguments (``poll_interval`` is accepted and unused)."""
    jid = _ops.job_id(job_id)
    limit = _ops.timeout_value(timeout)
    _ops.timeout_value(poll_interval, "poll_interval")
    return Watch("monitor_job", jid, limit, admin_pb2.JobRequest(job_id=jid))


def watch(job_id: str, timeout: object, metrics: object, validations: object) -> Watch:
    """Check ``watch_job``'s arguments."""
    jid = _ops.job_id(job_id)
    limit = _ops.watch_timeout(timeout)
    return Watch("watch_job", jid, limit, _ops.watch_request(jid, metrics, validations))


class MonitorStep:
    """The monitor's decision for each meta pushed by the server: call ``cb`` (the
    transport awaits what it returns when that is awaitable), then :meth:`verdict`."""

    def __init__(
        self,
        session: Any,
        job_id: str,
        cb: MonitorCallback | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.session, self.job_id = session, job_id
        self.cb, self.args, self.kwargs = cb, args, kwargs

    def call(self, reply: Any) -> tuple[JobMeta, Any]:
        """The meta in ``reply`` and what ``cb`` returned for it (True without ``cb``)."""
        meta = _ops.parse_meta(reply)
        if self.cb is None:
            return meta, True
        return meta, self.cb(self.session, self.job_id, meta, *self.args, **self.kwargs)

    @staticmethod
    def verdict(meta: JobMeta, keep: Any) -> MonitorReturnCode | None:
        """How the monitor ends after this meta (None: it goes on)."""
        if not keep:
            return MonitorReturnCode.ENDED_BY_CB
        if meta.finished:
            return MonitorReturnCode.JOB_FINISHED
        return None


def stream_ended(address: str, job_id: str) -> NoConnection:
    """The server ended a watch before the job finished."""
    return NoConnection(
        f"the server at {address} ended the watch of job {job_id} before it finished "
        "(is it shutting down?); call monitor_job again once it is back",
        address=address,
        job_id=job_id,
    )


class LastMeta:
    """``wait_for_job``: a monitor callback keeping the last meta, then the answer."""

    def __init__(self) -> None:
        self.meta: JobMeta | None = None

    def __call__(self, _session: Any, _job_id: str, meta: JobMeta) -> bool:
        self.meta = meta
        return True

    def result(self, code: MonitorReturnCode, job_id: str, timeout: float) -> JobMeta:
        """The final meta.

        Raises:
            JobTimeout: the monitor timed out (with the last status seen).
        """
        if code is MonitorReturnCode.TIMEOUT or self.meta is None:
            last = self.meta.status if self.meta is not None else "unknown"
            raise JobTimeout(
                f"job {job_id} did not finish within {timeout} s (status {last})",
                job_id=job_id,
                status=last,
            )
        return self.meta
