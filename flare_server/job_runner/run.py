"""One running job: the state its phases share, its event queue, and its upload policy.

A :class:`JobRun` is created by the :class:`~flare_server.job_runner.runner.JobRunner` (with
the parts every run shares, a :class:`RunContext`) and
driven by :func:`~flare_server.job_runner.flow.run_job` through its phases (prepare,
deploy, rounds, finish), each in its own module. Only that one coroutine touches the
state below; everything else reaches the run through :meth:`JobRun.post`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flare_protocol import errors
from flare_protocol._generated import site_pb2
from flare_protocol.job_status import JobStatus
from flare_protocol.models import BufferPool
from flare_server.authz import Policy
from flare_server.blobs import BlobRegistry, ServedBlob, UploadedBlob
from flare_server.job_runner.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointWriter,
    LoadedCheckpoint,
)
from flare_server.job_runner.events import DRIVER_EVENTS, Event, SiteLost, refuse_driver
from flare_server.job_runner.plan import Plan
from flare_server.jobs import JobRepository
from flare_server.results import ResultFolder, RowSignals
from flare_server.settings import ServerSettings
from flare_server.sites import SiteRegistry
from flare_server.workflows import JobFinished, RoundController

__all__ = [
    "FAILED_TO_RUN",
    "LOG_CAP",
    "MAX_LOG_UPLOADS",
    "Finish",
    "JobRun",
    "ReplyUploads",
    "RunContext",
]

FAILED_TO_RUN = JobStatus.FINISHED_FAILED_TO_RUN.value
#: The largest job log a site may upload, and how many per site and job.
LOG_CAP = 256 * 1024 * 1024
MAX_LOG_UPLOADS = 3
#: Uploads of one task's update: a site whose upload was cut off with its connection cannot
#: know whether it was stored, so it sends it again after the reconnect (as often as it
#: tries a transfer: three times). Only the one its task.result names is aggregated.
MAX_UPDATE_UPLOADS = 3


class Finish(Exception):
    """Ends a run early with a status (deployment failures, aborts)."""

    def __init__(self, status: str, reason: str, failed_sites: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.failed_sites = failed_sites


class ReplyUploads(Protocol):
    """Where a driver job's sites upload the arrays of their replies (the relay)."""

    def upload_target(self, site: str, message_id: str) -> tuple[Path, int]:
        """The folder and byte cap for the reply to ``message_id``; raise to refuse."""
        ...

    def on_uploaded(self, blob: UploadedBlob) -> None:
        """A reply's arrays arrived whole."""
        ...


@dataclass(frozen=True)
class RunContext:
    """What every run uses of its runner (one per runner, shared by its runs)."""

    store: JobRepository
    registry: SiteRegistry
    settings: ServerSettings
    policy: Policy
    blobs: BlobRegistry
    #: Model-sized buffers shared by the runs (see the JobRunner).
    buffers: BufferPool
    #: Told when a run appends metric or validation rows (their watchers).
    result_rows: RowSignals
    #: Called with the job id when a run is over.
    run_ended: Callable[[str], None]


class JobRun:
    """One running job; see :mod:`flare_server.job_runner`."""

    def __init__(
        self, context: RunContext, job_id: str, meta: dict[str, Any], sites: tuple[str, ...]
    ) -> None:
        self.context = context
        self.registry = context.registry
        self.settings = context.settings
        self.store = context.store
        self.blobs = context.blobs
        self.job_id = job_id
        self.meta = meta
        #: The sites running the job (those whose deployment failed are dropped).
        self.sites = sites
        #: Sites whose deployment failed while enough others deployed: site -> why.
        self.deploy_failures: dict[str, str] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.ending = False
        self.server_stopping = False
        self.abort_reason: str | None = None
        self.controller: RoundController | None = None
        #: A driver job's relay (set by the relay; None for the built-in workflows).
        self.driver: ReplyUploads | None = None
        self.plan: Plan | None = None
        self.results: ResultFolder | None = None
        self.work = Path()
        self.log = logging.getLogger(f"flare_server.job.{job_id}")
        self.log_handler: logging.Handler | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.grace: dict[str, asyncio.TimerHandle] = {}
        self.disconnected: set[str] = set()
        self.outstanding: dict[str, str] = {}  # train task id -> site (may upload)
        self.uploaded_tasks: dict[str, int] = {}  # train task id -> updates uploaded
        self.log_uploads: dict[str, int] = {}
        self.sent: dict[str, tuple[site_pb2.Envelope, str]] = {}  # task id -> (env, session)
        self.model_blobs: dict[int, ServedBlob] = {}
        #: The latest (round, npz, sha256); the npz is a view of a pooled buffer.
        self.round_model: tuple[int, memoryview, str] | None = None
        self.writes: list[asyncio.Task[None]] = []  # round models being written
        self.logs: dict[str, UploadedBlob | str] = {}  # site -> its log, or why there is none
        self.site_errors: dict[str, str] = {}
        self.rounds: list[dict[str, Any]] = []
        #: Set when the job must end whatever the workflow says (a site's user code failed
        #: between tasks, the server stops).
        self.forced: JobFinished | None = None
        self.started = time.time()
        #: Saves the run's resume points (set once the job is deployed; not for drivers).
        self.checkpoints: CheckpointWriter | None = None
        #: The resume point of a run resumed after a server restart (None: a new run).
        self.resumed: LoadedCheckpoint | None = None
        #: Server restarts the job went through (meta ``interruptions``, summary.json).
        self.interruptions: list[dict[str, Any]] = []
        #: How many times the job was resumed (part of every task id of the controller).
        self.attempt = 0

    def post(self, event: Event) -> None:
        """Queue an event for the run (on the server's loop)."""
        self.events.put_nowait(event)

    # -- upload policy (BlobRegistry) ------------------------------------------------------
    def upload_target(self, site: str, kind: str, task_id: str) -> tuple[Path, int]:
        if site not in self.sites:
            raise errors.AuthorizationError(f"job {self.job_id} does not run on site {site}")
        if kind == "update":
            if self.uploaded_tasks.get(task_id, 0) >= MAX_UPDATE_UPLOADS:
                raise errors.InvalidArgumentError(
                    f"task {task_id[:128]!r} of job {self.job_id}: its update was already "
                    f"uploaded {MAX_UPDATE_UPLOADS} times"
                )
            if self.outstanding.get(task_id) != site:
                raise errors.InvalidArgumentError(
                    f"task {task_id[:128]!r} of job {self.job_id} is not awaiting an update "
                    f"from {site}"
                )
            return self.work / "uploads", self.settings.max_blob_bytes
        if kind == "reply":
            if self.driver is None:
                raise errors.InvalidArgumentError(
                    f"job {self.job_id} is not a driver job: it takes no reply uploads"
                )
            return self.driver.upload_target(site, task_id)
        if kind == "log":
            if self.log_uploads.get(site, 0) >= MAX_LOG_UPLOADS:
                raise errors.InvalidArgumentError(
                    f"site {site} already sent {MAX_LOG_UPLOADS} logs for job {self.job_id}"
                )
            return self.work / "uploads", LOG_CAP
        raise errors.InvalidArgumentError(
            f"unknown upload kind {kind[:32]!r}; expected update, log or reply"
        )

    def on_uploaded(self, blob: UploadedBlob) -> None:
        if blob.kind == "reply" and self.driver is not None:
            self.driver.on_uploaded(blob)
        elif blob.kind == "update":
            self.uploaded_tasks[blob.task_id] = self.uploaded_tasks.get(blob.task_id, 0) + 1
        else:
            self.log_uploads[blob.site] = self.log_uploads.get(blob.site, 0) + 1

    # -- sites coming and going ------------------------------------------------------------
    def site_left(self, site: str) -> None:
        """A site disconnected: it has ``reconnect_grace`` seconds to come back."""
        self.disconnected.add(site)
        grace = self.settings.reconnect_grace
        self.log.info(
            "job %s: site %s disconnected; waiting %g s for it to return", self.job_id, site, grace
        )
        old = self.grace.pop(site, None)
        if old:
            old.cancel()
        self.grace[site] = asyncio.get_running_loop().call_later(
            grace, self.post, SiteLost(site, f"disconnected for more than {grace:g} s")
        )

    def site_back(self, site: str) -> None:
        handle = self.grace.pop(site, None)
        if handle:
            handle.cancel()
        self.disconnected.discard(site)

    def send(self, site: str, message: site_pb2.Envelope, task_id: str) -> None:
        """Send a task to ``site``, remembering on which session (sent again after a
        reconnect if the site did not answer it)."""
        connected = self.registry.get(site)
        if connected is None:
            self.sent[task_id] = (message, "")  # sent again when the site returns
            return
        self.registry.send(site, message)
        self.sent[task_id] = (message, connected.session_id)

    # -- the end ---------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Release everything the run held (last thing it does, whatever happened)."""
        while not self.events.empty():  # a driver waiting on an event gets its answer
            event = self.events.get_nowait()
            if isinstance(event, DRIVER_EVENTS):
                refuse_driver(
                    event,
                    errors.JobNotRunning(f"job {self.job_id} has ended", job_id=self.job_id),
                )
        self.context.run_ended(self.job_id)  # its sites may have room for a waiting job now
        self.blobs.forget_job(self.job_id)
        if self.results is not None:
            self.results.close()
        if self.log_handler is not None:
            self.log.removeHandler(self.log_handler)
            self.log_handler.close()
        if self.work != Path():
            shutil.rmtree(self.work, ignore_errors=True)
            # The job has its final status: nothing will resume it.
            shutil.rmtree(self.work.parent / CHECKPOINT_DIR, ignore_errors=True)
