"""The site's job manager: one workspace and one executor per job, bounded in number.

Theory of operation. Each job the server deploys gets ``<site workspace>/jobs/<job_id>/``
(the id must be a canonical UUID: it becomes a folder name, so nothing else is accepted):

* ``app/``: the app archive, checked entry by entry and extracted atomically
  (:func:`flare_site.archive.extract_app`);
* ``models/``: global models in, updates out (the executor's exchange folder);
* ``downloads/``: blobs being received;
* ``log.txt``: the job's site log: what the site did and every line user code wrote to
  stdout or stderr, capped in size.

A job moves ``deploying -> running -> finished | failed | aborted``. Only ``deploying``
and ``running`` jobs count against ``max_jobs``; a deployment beyond it is refused (the
server learns the limit at Register). User code runs only in the executor's subprocesses
(:mod:`flare_site.executors`); the manager never imports it. ``abort`` may come at any
moment, also while the app is being extracted or the script is starting: it marks the
job aborted first, then kills the executor's process group, so a deployment in progress
fails instead of starting user code; an ``end`` or ``abort`` that comes before the
deployment reached the manager (the archive still downloading) makes it refuse that
deployment. ``end`` frees the job's slot at once and stops user code: an idle script gets
``stop_grace`` seconds, a task still running is killed. A task whose user code died
(non-zero exit, killed) fails the job and reaps its process group; a task whose output was
merely unusable fails alone and the job goes on.

The manager is confined to the site's event loop. It knows nothing of the network: the
runtime (:mod:`flare_site.runtime`) turns messages into calls and results into messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_protocol.app_config import (
    CLIENT_CONFIG,
    folder_reader,
    load_site_config,
    parse_client_config,
)
from flare_protocol.errors import ExecutionError, FlareError
from flare_protocol.job_status import is_job_id
from flare_protocol.site_topics import TaskResult
from flare_site.archive import AppLimits, extract_app
from flare_site.executors import (
    ExecutorHost,
    JobContext,
    MetricEvent,
    ScriptExecutor,
    TaskSpec,
    TrainOutcome,
    ValidateOutcome,
    create_executor,
)
from flare_site.executors.base import MessageOutcome, MessageSpec, remove_stale_ipc_folders
from flare_site.executors.python_env import PythonEnvs
from flare_site.executors.script import describe_exit
from flare_site.user_account import UserAccount, hand_over_tree

__all__ = ["JobLog", "JobManager", "JobRecord", "check_job_id"]

log = logging.getLogger("flare_site.jobs")

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: Job states; the first two count against the concurrency limit.
DEPLOYING, RUNNING, FINISHED, FAILED, ABORTED = (
    "deploying",
    "running",
    "finished",
    "failed",
    "aborted",
)
_ACTIVE = frozenset({DEPLOYING, RUNNING})

MetricCallback = Callable[[str, MetricEvent], None]
#: Ended jobs kept in memory for ``show_stats``; older ones are forgotten.
MAX_REMEMBERED = 1000


def check_job_id(job_id: object) -> str:
    """``job_id`` if it is a canonical (lower-case, hyphenated) UUID, else ExecutionError."""
    if isinstance(job_id, str) and is_job_id(job_id):
        return job_id
    shown = repr(job_id)[:80]
    raise ExecutionError(f"job id {shown} is not a canonical UUID; refused", job_id=str(job_id))


def check_task_id(task_id: object) -> str:
    """A task id safe to use in a file name, else ExecutionError."""
    if isinstance(task_id, str) and _TASK_ID.match(task_id):
        return task_id
    raise ExecutionError(f"task id {repr(task_id)[:80]} is malformed; refused")


class JobLog:
    """A job's append-only site log (``log.txt``), capped at ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fh = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._size = path.stat().st_size
        self._capped = False
        self._stderr: deque[str] = deque(maxlen=40)

    def _write(self, text: str) -> None:
        if self._fh.closed:
            return
        data = text if text.endswith("\n") else text + "\n"
        if self._size + len(data) > self.max_bytes:
            if not self._capped:
                self._capped = True
                self._fh.write(
                    f"[site] log capped at {self.max_bytes} bytes; later lines dropped\n"
                )
                self._fh.flush()
            return
        self._size += len(data)
        try:
            self._fh.write(data)
            self._fh.flush()
        except OSError as exc:
            # A full disk must not fail the task that is logging (the user code's own
            # error, kept in stderr_tail, is what the server must hear): stop writing.
            log.error("cannot write the job log %s (%s): later lines are not kept", self.path, exc)
            with contextlib.suppress(OSError):
                self._fh.close()

    def output(self, stream: str, line: str) -> None:
        """A line user code wrote (``stream`` is ``stdout`` or ``stderr``)."""
        if stream == "stderr":
            self._stderr.append(line)
        self._write(f"{_stamp()} [{stream}] {line}")

    def stderr_tail(self) -> str:
        """The last lines user code wrote to stderr (also after the cap)."""
        return "\n".join(self._stderr)[-8000:]

    def event(self, text: str) -> None:
        """Something the site did for this job."""
        self._write(f"{_stamp()} [site] {text}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


@dataclass
class JobRecord:
    """What the site knows of one job (mutable, owned by the manager)."""

    job_id: str
    folder: Path
    state: str = DEPLOYING
    app: str = ""
    total_rounds: int = 0
    started: float = field(default_factory=time.time)
    ended: float | None = None
    tasks_done: int = 0
    busy: bool = False
    error: str = ""
    stderr_tail: str = ""
    executor: ExecutorHost | None = field(default=None, repr=False)
    log: JobLog | None = field(default=None, repr=False)

    @property
    def app_dir(self) -> Path:
        return self.folder / "app"

    @property
    def log_path(self) -> Path:
        return self.folder / "log.txt"

    @property
    def downloads(self) -> Path:
        return self.folder / "downloads"

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "app": self.app,
            "started": self.started,
            "ended": self.ended,
            "tasks_done": self.tasks_done,
            "error": _headline(self.error),
        }


def _headline(error: str) -> str:
    """What failed, without user code's output: ``show_stats`` is for everyone who may view
    the job; the stderr tail is in ``show_errors`` and the job's log."""
    return error.split("\n", 1)[0].removesuffix("; last lines of stderr:")[:500]


def _unfinished_deployment(folder: Path) -> bool:
    """True when a job folder's log never got past its deployment (see ``deploy``): the
    folder of a deployment its site process did not live to finish."""
    try:
        with open(folder / "log.txt", "rb") as f:
            return b"[site] deployed; executor" not in f.read(1024 * 1024)
    except FileNotFoundError:
        return True
    except OSError:
        return False


class JobManager:
    """Deploys, runs, aborts and ends the jobs of one site."""

    def __init__(
        self,
        workspace: Path,
        site_name: str,
        *,
        max_jobs: int = 1,
        on_metric: MetricCallback | None = None,
        on_failed: Callable[[JobRecord], None] | None = None,
        stop_grace: float = 10.0,
        app_limits: AppLimits | None = None,
        max_log_bytes: int = 64 * 1024 * 1024,
        python_envs: PythonEnvs | None = None,
        run_as: UserAccount | None = None,
    ) -> None:
        """``run_as``: the OS user user code runs as (``run_user_code_as``); None: the
        site's own. Then each job's folder lets it pass but not list, and its ``app/``,
        ``models/`` and the models handed to it are its own (the rest stays the site's)."""
        self.workspace = Path(workspace)
        self.run_as = run_as
        self.jobs_dir = self.workspace / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_ipc_folders(self.jobs_dir)  # left by a killed site
        if stale:
            log.info("removed %d IPC folder(s) a previous run of this site left behind", stale)
        self.site_name = site_name
        self.max_jobs = max(1, int(max_jobs))
        self.on_metric = on_metric
        self.on_failed = on_failed
        self.stop_grace = stop_grace
        self.app_limits = app_limits or AppLimits()
        self.max_log_bytes = max_log_bytes
        #: Compute packages' python_env virtualenvs (default: ``<workspace>/envs``).
        self.python_envs = python_envs or PythonEnvs(self.workspace / "envs")
        self._jobs: dict[str, JobRecord] = {}
        #: Jobs ended or aborted before their deployment got this far (the archive was
        #: still downloading): their deployment is refused when it arrives.
        self._ended_early: OrderedDict[str, str] = OrderedDict()
        self._watchers: set[asyncio.Task[None]] = set()
        self.errors: deque[dict[str, Any]] = deque(maxlen=200)

    # -- queries -------------------------------------------------------------------------
    def running(self) -> list[str]:
        """Ids of jobs being deployed or running (sent at Register and in heartbeats)."""
        return sorted(j.job_id for j in self._jobs.values() if j.state in _ACTIVE)

    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def state(self, job_id: str) -> str | None:
        job = self._jobs.get(job_id)
        return job.state if job else None

    def stats(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for job in self._jobs.values():
            counts[job.state] = counts.get(job.state, 0) + 1
        return {
            "max_jobs": self.max_jobs,
            "running_jobs": self.running(),
            "jobs": counts,
            "recent": [j.summary() for j in list(self._jobs.values())[-20:]],
        }

    # -- lifecycle -----------------------------------------------------------------------
    async def deploy(
        self,
        job_id: str,
        app_archive: Path,
        *,
        client_config: Mapping[str, Any] | None = None,
        app: str = "",
        total_rounds: int = 0,
        base_env: Mapping[str, str] | None = None,
    ) -> JobRecord:
        """Extract the app and start its executor; the job is then ``running``.

        Raises:
            ExecutionError: the limit is reached, the id is bad or taken, user code failed
                to start (``stderr_tail`` attached), or the job was aborted meanwhile.
            InvalidJobDefinition: the archive or the client config is unsafe or invalid.
        """
        job_id = check_job_id(job_id)
        if job_id in self._ended_early:
            raise ExecutionError(
                f"job {job_id} was {self._ended_early.pop(job_id)} before it was deployed",
                job_id=job_id,
                aborted=True,
            )
        if job_id in self._jobs and self._jobs[job_id].state in _ACTIVE:
            raise ExecutionError(f"job {job_id} is already deployed on this site", job_id=job_id)
        active = self.running()
        if len(active) >= self.max_jobs:
            raise ExecutionError(
                f"site {self.site_name} already runs {len(active)} job(s), its limit "
                f"(max_concurrent_jobs in local/resources.json, or --max-jobs) is {self.max_jobs}",
                job_id=job_id,
            )
        folder = self.jobs_dir / job_id
        if folder.exists() and job_id not in self._jobs and _unfinished_deployment(folder):
            # An earlier site process was killed while deploying this job: what it left is
            # no deployment (the server deploys again once the site is back).
            log.warning(
                "job %s: removing what an interrupted deployment left in %s", job_id, folder
            )
            await asyncio.to_thread(shutil.rmtree, folder, True)
        if folder.exists():
            raise ExecutionError(
                f"job {job_id} was already deployed on this site before ({folder} exists); "
                "a job is deployed once",
                job_id=job_id,
            )
        folder.mkdir(mode=0o700)
        (folder / "downloads").mkdir(mode=0o700)
        if self.run_as is not None:  # user code may pass through, not list or write
            os.chmod(folder, 0o711)
            os.chmod(folder / "downloads", 0o711)
        job = JobRecord(job_id, folder, app=app, total_rounds=total_rounds)
        job.log = JobLog(job.log_path, self.max_log_bytes)
        self._jobs[job_id] = job
        job.log.event(f"deploying app {app or '?'} of job {job_id}")
        try:
            await asyncio.to_thread(extract_app, app_archive, job.app_dir, self.app_limits)
            if self.run_as is not None:  # user code's working folder: its own
                await asyncio.to_thread(hand_over_tree, job.app_dir, self.run_as)
            self._check_not_aborted(job)
            config = (
                parse_client_config(dict(client_config), source=f"{app or 'app'}/{CLIENT_CONFIG}")
                if client_config is not None
                # a compute package: the server sends none, its scaleout.yaml is in the app
                else load_site_config(folder_reader(job.app_dir), app_name=app or "app")
            )
            ctx = JobContext(
                job_id=job_id,
                site_name=self.site_name,
                app_dir=job.app_dir,
                workspace=folder,
                base_env=base_env,
                run_as=self.run_as,
            )
            job.executor = create_executor(
                config,
                ctx,
                on_metric=lambda event: self._metric(job_id, event),
                on_output=job.log.output,
                python_envs=self.python_envs,
            )
            self._check_not_aborted(job)
            await job.executor.start()
            self._check_not_aborted(job)
        except BaseException as exc:
            await self._fail(job, exc)
            raise
        job.state = RUNNING
        job.log.event(f"deployed; executor {type(job.executor).__name__} started")
        if isinstance(job.executor, ScriptExecutor):
            watcher = asyncio.get_running_loop().create_task(self._watch(job))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
        return job

    async def train(
        self,
        job_id: str,
        task_id: str,
        *,
        round: int,
        total_rounds: int,
        model_path: Path | None,
    ) -> TrainOutcome:
        """Run one training round through the job's executor.

        Raises:
            ExecutionError: the job is not running here, or the task failed; when user
                code died, the job is ``failed`` afterwards (see :meth:`state`).
        """
        outcome = await self._task(job_id, task_id, "train", round, total_rounds, model_path)
        assert isinstance(outcome, TrainOutcome)
        return outcome

    async def validate(
        self, job_id: str, task_id: str, *, round: int, model_path: Path | None
    ) -> ValidateOutcome:
        """Run one validation through the job's executor (errors as :meth:`train`)."""
        job = self._jobs.get(job_id)
        total = job.total_rounds if job else 0
        outcome = await self._task(job_id, task_id, "validate", round, total, model_path)
        assert isinstance(outcome, ValidateOutcome)
        return outcome

    async def message(self, job_id: str, spec: MessageSpec) -> MessageOutcome:
        """Hand a Driver API message to the job's user code; its reply.

        Raises:
            ExecutionError: the job is not running here, or user code failed; when it
                died, the job is ``failed`` afterwards (see :meth:`state`).
        """
        job = self._jobs.get(job_id)
        if job is None or job.state != RUNNING or job.executor is None:
            state = job.state if job else "not deployed"
            raise ExecutionError(
                f"cannot take a message for job {job_id} on this site: it is {state}",
                job_id=job_id,
            )
        check_task_id(spec.message_id)
        if spec.npz_path is not None:
            job.executor.ctx.hand_over(spec.npz_path)
        assert job.log is not None
        kind = str(spec.message.get("message_type", "?"))[:80]
        job.log.event(f"message {spec.message_id} ({kind}) started")
        job.busy = True
        try:
            outcome = await job.executor.run_message(spec)
        except ExecutionError as exc:
            job.log.event(f"message {spec.message_id} failed: {exc.message}")
            died = exc.details.get("returncode") is not None or exc.details.get("aborted")
            if died and job.state == RUNNING:
                await self._fail(job, exc)
            elif job.state == RUNNING:
                self._record_error(job, exc.message)
            raise
        finally:
            job.busy = False
        job.tasks_done += 1
        job.log.event(f"message {spec.message_id} answered")
        return outcome

    async def abort(self, job_id: str, reason: str = "") -> bool:
        """Kill the job's user code now; True if the job was active here."""
        job = self._jobs.get(job_id)
        if job is None:
            self._remember_ended(job_id, "aborted")
            return False
        if job.state not in _ACTIVE:
            return False
        job.state = ABORTED
        job.error = reason or "aborted"
        job.ended = time.time()
        if job.log:
            job.log.event(f"aborting: {job.error}")
        if job.executor is not None:
            await job.executor.abort()
        if job.log:
            job.log.event("aborted; user code's process group is gone")
        return True

    async def end(self, job_id: str, status: str = "") -> Path | None:
        """The job is over: free its slot and stop its user code; return its log's path.

        A script waiting for its next task gets ``stop`` and ``stop_grace`` seconds to
        exit; a task still running is killed (its result is no longer wanted). A job still
        deploying is aborted.
        """
        job = self._jobs.get(job_id)
        if job is None:
            self._remember_ended(job_id, "ended")
            return None
        if job.state == DEPLOYING:
            await self.abort(job_id, f"the job ended ({status or 'finished'}) while deploying")
        if job.state in _ACTIVE:
            job.state = FINISHED
            job.ended = time.time()
            if job.log:
                job.log.event(f"ending ({status or 'finished'}); stopping user code")
            if job.executor is not None:
                with contextlib.suppress(Exception):
                    await job.executor.stop(self.stop_grace)
        if job.log:
            job.log.event(f"job ended with state {job.state}")
            job.log.close()
        job.executor = None
        self._prune()
        return job.log_path

    async def shutdown(self, reason: str = "site stopping") -> list[str]:
        """Abort every active job (the site is going away); their ids."""
        active = self.running()
        await asyncio.gather(*(self.abort(j, reason) for j in active), return_exceptions=True)
        for watcher in list(self._watchers):
            watcher.cancel()
        await self.python_envs.close()
        for job_id in active:
            job = self._jobs[job_id]
            if job.log:
                job.log.close()
        return active

    def reset_errors(self, job_id: str) -> int:
        """Forget the errors recorded for ``job_id`` (what ``show_errors`` lists); how many."""
        kept = [e for e in self.errors if e["job_id"] != job_id]
        dropped = len(self.errors) - len(kept)
        self.errors.clear()
        self.errors.extend(kept)
        return dropped

    def forget(self, job_id: str, *, remove_files: bool = False) -> None:
        """Drop an ended job from memory (and its folder, if asked)."""
        job = self._jobs.get(job_id)
        if job is None or job.state in _ACTIVE:
            return
        del self._jobs[job_id]
        if remove_files:
            shutil.rmtree(job.folder, ignore_errors=True)

    # -- internals -----------------------------------------------------------------------
    async def _watch(self, job: JobRecord, period: float = 0.5) -> None:
        """A script that dies between tasks fails the job now, not at the next task."""
        executor = job.executor
        assert isinstance(executor, ScriptExecutor)
        while job.state == RUNNING:
            await asyncio.sleep(period)
            code = executor.returncode
            if job.state != RUNNING or job.busy or code is None:
                continue
            if code == 0:  # it may have finished its last round; a later task would fail
                if job.log:
                    job.log.event(f"{executor.config.script} exited with code 0")
                return
            tail = job.log.stderr_tail() if job.log else ""
            exc = ExecutionError(
                describe_exit(f"{executor.config.script} (between tasks)", code, tail),
                returncode=code,
                stderr_tail=tail,
            )
            await self._fail(job, exc)
            if self.on_failed is not None:
                self.on_failed(job)
            return

    def _remember_ended(self, job_id: str, how: str) -> None:
        """A job we do not know yet was ended: its deployment may be on its way."""
        self._ended_early[job_id] = how
        while len(self._ended_early) > MAX_REMEMBERED:
            self._ended_early.popitem(last=False)

    def _prune(self) -> None:
        """Forget the oldest ended jobs beyond ``MAX_REMEMBERED`` (their folders stay)."""
        ended = [j for j in self._jobs.values() if j.state not in _ACTIVE]
        for job in ended[: max(0, len(ended) - MAX_REMEMBERED)]:
            del self._jobs[job.job_id]

    @staticmethod
    def _check_not_aborted(job: JobRecord) -> None:
        if job.state == ABORTED:
            raise ExecutionError(f"job {job.job_id} was aborted while deploying", aborted=True)

    async def _fail(self, job: JobRecord, exc: BaseException) -> None:
        if job.state != ABORTED:
            job.state = FAILED
            job.ended = time.time()
            job.error = str(exc) or type(exc).__name__
            job.stderr_tail = str(getattr(exc, "stderr_tail", "") or "")
            self._record_error(job, job.error)
        if job.log:
            job.log.event(f"failed: {job.error}")
        if job.executor is not None:
            with contextlib.suppress(Exception):
                await job.executor.abort()

    def _record_error(self, job: JobRecord, message: str) -> None:
        self.errors.append({"time": time.time(), "job_id": job.job_id, "error": message[-2000:]})

    def _metric(self, job_id: str, event: MetricEvent) -> None:
        if self.on_metric is not None:
            with contextlib.suppress(Exception):
                self.on_metric(job_id, event)

    async def _task(
        self,
        job_id: str,
        task_id: str,
        kind: str,
        round: int,
        total_rounds: int,
        model_path: Path | None,
    ) -> TrainOutcome | ValidateOutcome:
        job = self._jobs.get(job_id)
        if job is None or job.state != RUNNING or job.executor is None:
            state = job.state if job else "not deployed"
            raise ExecutionError(
                f"cannot run a {kind} task for job {job_id} on this site: it is {state}",
                job_id=job_id,
            )
        task = TaskSpec(check_task_id(task_id), kind, int(round), int(total_rounds), model_path)
        if model_path is not None:
            job.executor.ctx.hand_over(model_path)
        assert job.log is not None
        job.log.event(f"{kind} task {task_id} (round {round}) started")
        job.busy = True
        try:
            outcome = await job.executor.run_task(task)
        except ExecutionError as exc:
            job.log.event(f"{kind} task {task_id} failed: {exc.message}")
            died = exc.details.get("returncode") is not None or exc.details.get("aborted")
            if died and job.state == RUNNING:
                await self._fail(job, exc)
            elif job.state == RUNNING:
                self._record_error(job, exc.message)
            raise
        finally:
            job.busy = False
        job.tasks_done += 1
        job.log.event(f"{kind} task {task_id} (round {round}) done")
        return outcome


def task_result_body(
    task_id: str, round: int, outcome: TrainOutcome | ValidateOutcome
) -> TaskResult:
    """The ``task.result`` body of a successful task (docs/site-protocol.md)."""
    if isinstance(outcome, TrainOutcome):
        return TaskResult(
            task_id,
            "train",
            round,
            params_type=outcome.params_type.value,
            num_examples=outcome.num_examples,
            metrics=dict(outcome.metrics),
        )
    return TaskResult(task_id, "validate", round, metrics=dict(outcome.metrics))


def describe_error(exc: BaseException) -> str:
    """One line (or a few) for a ``job.status``/``task.result`` error field."""
    if isinstance(exc, FlareError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def dumps(body: Mapping[str, Any]) -> str:
    """Compact JSON for an envelope body (NaN refused, as on the server)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False)
