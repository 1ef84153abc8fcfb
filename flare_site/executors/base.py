"""What the site runtime sees of an executor: tasks in, outcomes and metrics out.

The seam is asyncio (the site runtime is asyncio over grpc.aio). The runtime builds an
:class:`ExecutorHost` per job with :func:`flare_site.executors.create_executor`, then::

    await host.start()                         # launch the script / run `startup`
    outcome = await host.run_task(task)        # per task: TrainOutcome | ValidateOutcome
    await host.stop()                          # job over: let idle user code exit; reap
    await host.abort()                         # any time: kill the process group now

Metrics stream through ``on_metric`` while a task runs; user code's output lines go to
``on_output`` (the site's job log). Failures of user code raise
:class:`~flare_protocol.errors.ExecutionError` carrying ``returncode`` and ``stderr_tail``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_protocol.errors import ExecutionError, InvalidModel
from flare_protocol.models import MAX_MODEL_BYTES, ParamsType
from flare_protocol.tracking import MAX_RECORD_CHARS, METRIC, RECORD_KINDS
from flare_site.client import _ipc
from flare_site.executors.process import OutputSink, safe_base_env
from flare_site.update_check import verify_update
from flare_site.user_account import UserAccount

__all__ = [
    "IPC_RECORD",
    "RECEIVED",
    "ExecutorHost",
    "IpcServer",
    "JobContext",
    "MessageOutcome",
    "MessageSpec",
    "MetricEvent",
    "MetricSink",
    "TaskSpec",
    "TrainOutcome",
    "ValidateOutcome",
    "remove_stale_ipc_folders",
    "take_written_file",
]


@dataclass(frozen=True)
class JobContext:
    """Where and as whom a job's user code runs on a site."""

    job_id: str
    site_name: str
    #: The extracted app folder: user code's working directory.
    app_dir: Path
    #: The job's workspace on the site; models are exchanged under ``models/``.
    workspace: Path
    #: The interpreter for scripts and ``{python}``: the site's own by default.
    python: str = sys.executable
    #: Inherited environment; None: a small allowlist of the site's (PATH, HOME, LANG, ...).
    base_env: Mapping[str, str] | None = None
    #: Largest model user code may hand back.
    max_model_bytes: int = MAX_MODEL_BYTES
    #: Load each update on the site to fail fast, naming the problem, before uploading it
    #: (about 0.1-0.3 s per 100 MB). The server checks every update again on receipt.
    verify_updates: bool = True
    #: The OS user user code runs as (``run_user_code_as``); None: the site's own.
    run_as: UserAccount | None = None

    @property
    def models_dir(self) -> Path:
        return self.workspace / "models"

    def hand_over(self, path: Path) -> None:
        """Make ``path`` (a file or folder the site made for user code) its own when it
        runs as another user; nothing otherwise."""
        if self.run_as is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)


@dataclass(frozen=True)
class TaskSpec:
    """One task for the executor. ``model_path`` is the global model's ``.npz``."""

    task_id: str
    kind: str  # "train" | "validate"
    round: int
    total_rounds: int
    model_path: Path | None


@dataclass(frozen=True)
class TrainOutcome:
    """A training result: the update file and its weight."""

    task_id: str
    params_path: Path
    params_type: ParamsType
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: SHA-256 and size of ``params_path`` when the check read it (saves the upload a pass).
    digest: tuple[str, int] | None = None


@dataclass(frozen=True)
class ValidateOutcome:
    """A validation result."""

    task_id: str
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class MessageSpec:
    """A Driver API message for user code: its JSON (:mod:`flare_protocol.message`), its
    arrays' ``.npz`` (None: none), and where user code writes its reply's arrays."""

    message_id: str
    message: Mapping[str, Any]
    npz_path: Path | None
    reply_path: Path


@dataclass(frozen=True)
class MessageOutcome:
    """User code's reply: its JSON, and its arrays' ``.npz`` (None: none)."""

    message_id: str
    reply: Mapping[str, Any]
    npz_path: Path | None


@dataclass(frozen=True)
class MetricEvent:
    """A metric streamed by user code (``flare.log_metric`` or a writer).

    ``kind`` is ``"metric"`` (a number in ``value``) or ``"param"``, ``"tag"`` or
    ``"text"`` (MLflowWriter's params, tags and texts, a WandB string: the string is in
    ``text`` and ``value`` is 0).
    """

    key: str
    value: float
    step: int | None
    round: int | None
    time: float
    kind: str = "metric"
    text: str | None = None


MetricSink = Callable[[MetricEvent], None]


def user_env(
    ctx: JobContext, extra: Mapping[str, str], ipc: IpcServer, mode: str
) -> dict[str, str]:
    """User code's complete environment: allowlisted, the job's own, then FLARE_* last."""
    env = safe_base_env(ctx.base_env, ctx.run_as)
    env.update(extra)
    custom = ctx.app_dir / "custom"
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(custom),
            _ipc.ENV_SOCKET: ipc.path,
            _ipc.ENV_TOKEN: ipc.token,
            _ipc.ENV_MODE: mode,
            _ipc.ENV_SITE: ctx.site_name,
            _ipc.ENV_JOB: ctx.job_id,
            _ipc.ENV_WORKSPACE: str(ctx.workspace),
            _ipc.ENV_APP_DIR: str(ctx.app_dir),
        }
    )
    return env


def check_written_file(path: Path, where: str) -> None:
    """A file user code wrote for the site to read is a plain file of its own: not a
    symlink or a hard link to something else (a site running as root would read that
    thing for it, a private key say), or ExecutionError."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ExecutionError(f"{where}: no model was written to {path.name}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise ExecutionError(
            f"{where}: {path.name} is not a plain file (a symlink, a hard link or a special "
            "file); refused: write the file itself"
        )


#: In a job's folder, when user code runs as another user: what it wrote, taken out of its
#: reach (the site's, 0700) before the site reads it.
RECEIVED = "received"


def take_written_file(path: Path, ctx: JobContext, where: str) -> Path:
    """Where the site reads a file user code wrote: ``path`` itself when user code runs as
    the site's user (it could read anything the site can anyway); when it runs as another
    user, the file moved into the job's ``received/`` folder, which that user cannot
    enter, and checked there (:func:`check_written_file`): what is checked stays what the
    site then reads, as user code can no longer put a link in its place.

    Raises:
        ExecutionError: no file, or (another user's) not a plain file.
    """
    if ctx.run_as is None:
        return path
    folder = ctx.workspace / RECEIVED
    folder.mkdir(mode=0o700, exist_ok=True)
    taken = folder / f"{secrets.token_hex(8)}-{path.name}"
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        raise ExecutionError(f"{where}: no model was written to {path.name}") from None
    check_written_file(taken, where)
    return taken


def clean_metrics(raw: object, where: str) -> dict[str, float]:
    """A flat ``{name: finite number}`` dict, or ExecutionError naming ``where``."""
    if not isinstance(raw, dict):
        raise ExecutionError(f"{where}: metrics must be a JSON object of numbers")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ExecutionError(f"{where}: metric {key!r} must be a finite number, got {value!r}")
        out[str(key)] = float(value)
    return out


def check_update_file(path: Path, ctx: JobContext, where: str) -> tuple[str, int] | None:
    """The update user code wrote must exist and be a safe, finite ``.npz``.

    Returns its (SHA-256, size) as read by the check, or None when ``verify_updates`` is off.
    """
    if not path.is_file():
        raise ExecutionError(f"{where}: no model was written to {path.name}")
    if path.stat().st_size > ctx.max_model_bytes:
        raise ExecutionError(
            f"{where}: the model written is {path.stat().st_size} bytes, "
            f"more than the limit of {ctx.max_model_bytes}"
        )
    if not ctx.verify_updates:
        return None
    try:
        return verify_update(path, max_bytes=ctx.max_model_bytes)
    except InvalidModel as exc:
        raise ExecutionError(f"{where}: the model written is unusable: {exc}") from exc


# Handlers the IPC server calls: (message) -> reply or None.
FrameHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


#: In a job's folder: a symlink to the job's IPC folder (see :func:`remove_stale_ipc_folders`).
IPC_RECORD = ".ipc-folder"
_IPC_PREFIX = "flare-ipc-"


class IpcServer:
    """The site's end of the channel: a Unix socket in a private temporary folder.

    Connections must say ``hello`` with the token first. Each later frame goes to
    ``handler`` and its reply (if any) is written back. Handlers run as tasks, so a
    ``next`` that waits for work does not block metrics arriving meanwhile.

    The folder lives in the temporary directory (a socket path must stay short) for as
    long as the job's executor: :meth:`close` removes it. ``record``, a path in the job's
    folder, gets a symlink to it, so that the next start of a site killed before it could
    close finds and removes it.
    """

    def __init__(
        self, handler: FrameHandler, record: Path | None = None, run_as: UserAccount | None = None
    ) -> None:
        """``run_as``: user code's user when it is not the site's: it gets the socket (the
        folder lets it pass, not list)."""
        self._handler = handler
        self._run_as = run_as
        self._dir = tempfile.mkdtemp(prefix=_IPC_PREFIX)  # 0700, and short enough for AF_UNIX
        self._record = record
        if record is not None:
            with contextlib.suppress(OSError):
                os.symlink(self._dir, record)
        self.path = os.path.join(self._dir, "s")
        self.token = secrets.token_hex(16)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o600)
        if self._run_as is not None:
            os.chown(self.path, self._run_as.uid, self._run_as.gid)
            os.chmod(self._dir, 0o711)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._connections.add(current)
        lock = asyncio.Lock()
        handlers: set[asyncio.Task[None]] = set()

        async def reply(message: dict[str, Any]) -> None:
            async with lock:
                writer.write(_ipc.encode_frame(message))
                await writer.drain()

        async def handle(message: dict[str, Any]) -> None:
            answer = await self._handler(message)
            if answer is not None:
                await reply(answer)

        try:
            hello = await self._read(reader)
            if hello.get("op") != "hello" or not secrets.compare_digest(
                str(hello.get("token", "")), self.token
            ):
                await reply({"op": "error", "message": "bad hello or token"})
                return
            await reply({"op": "welcome"})
            self.connected.set()
            while True:
                message = await self._read(reader)
                task = asyncio.ensure_future(handle(message))
                handlers.add(task)
                task.add_done_callback(handlers.discard)
        except (asyncio.IncompleteReadError, ConnectionError, _ipc.FrameError):
            return
        except asyncio.CancelledError:
            # close() (the job ended, the site stops) cancels the connection. Nothing awaits
            # this task, but asyncio's stream callback calls task.exception() on it, which
            # raises for a cancelled task: the site would log "Exception in callback ...
            # CancelledError" with a traceback (Python 3.11). So the task ends normally.
            return
        finally:
            for task in handlers:
                task.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if current is not None:
                self._connections.discard(current)

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
        header = await reader.readexactly(4)
        return _ipc.decode_body(await reader.readexactly(_ipc.frame_length(header)))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._record is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._record)


def remove_stale_ipc_folders(jobs_dir: Path) -> int:
    """Remove the IPC folders that ``<jobs_dir>/*/`` records (:data:`IPC_RECORD`); how many.

    For a site starting on its workspace (it holds the workspace lock, so no executor of
    that workspace is alive): a site killed with SIGKILL cannot remove its jobs' folders.
    Only a folder named like an IPC folder, owned by us and not a symlink, is removed.
    """
    removed = 0
    try:
        records = [p / IPC_RECORD for p in Path(jobs_dir).iterdir()]
    except OSError:
        return 0
    for record in records:
        try:
            target = Path(os.readlink(record))
        except OSError:
            continue  # no record: the job's executor closed cleanly
        try:
            st = os.lstat(target)
            if (
                target.name.startswith(_IPC_PREFIX)
                and stat.S_ISDIR(st.st_mode)
                and st.st_uid == os.getuid()
            ):
                shutil.rmtree(target, ignore_errors=True)
                removed += 1
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.unlink(record)
    return removed


def metric_from_frame(message: dict[str, Any]) -> MetricEvent | None:
    """A MetricEvent from a ``metric`` frame, or None when it is malformed."""
    try:
        kind = message.get("kind", METRIC)
        text = message.get("text")
        if kind != METRIC and (
            kind not in RECORD_KINDS or not isinstance(text, str) or len(text) > MAX_RECORD_CHARS
        ):
            return None
        value = float(message["value"]) if kind == METRIC else 0.0
        step = message.get("step")
        rnd = message.get("round")
        return MetricEvent(
            key=str(message["key"])[:256],
            value=value,
            step=None if step is None else int(step),
            round=None if rnd is None else int(rnd),
            time=float(message.get("time", 0.0)),
            kind=kind,
            text=text if kind != METRIC else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


class ExecutorHost(abc.ABC):
    """Runs one job's user code on a site; see the module docstring."""

    def __init__(
        self,
        ctx: JobContext,
        *,
        on_metric: MetricSink | None = None,
        on_output: OutputSink | None = None,
    ) -> None:
        self.ctx = ctx
        self.on_metric = on_metric
        self.on_output = on_output
        ctx.models_dir.mkdir(parents=True, exist_ok=True)
        ctx.hand_over(ctx.models_dir)

    @abc.abstractmethod
    async def start(self) -> None:
        """Prepare to run tasks (launch the script, or run ``startup``).

        Raises:
            ExecutionError: user code failed to start.
        """

    @abc.abstractmethod
    async def run_task(self, task: TaskSpec) -> TrainOutcome | ValidateOutcome:
        """Run one task to its outcome.

        Raises:
            ExecutionError: user code crashed or produced an unusable result.
        """

    async def run_message(self, message: MessageSpec) -> MessageOutcome:
        """Hand a Driver API message to user code; its reply (docs/driver.md). Only a
        script, which lives for the whole job, takes messages.

        Raises:
            ExecutionError: this executor takes no messages, or user code failed.
        """
        raise ExecutionError(
            f"the {type(self).__name__} takes no Driver API messages: a driver job needs a "
            "Client API script (executor 'script') that calls flare.receive_message()"
        )

    @abc.abstractmethod
    async def stop(self, grace: float = 10.0) -> None:
        """The job is over: user code that waits for work gets ``grace`` seconds to exit;
        a task still running is killed now (SIGTERM to the group, SIGKILL 2 s later)."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Kill user code's process group now (SIGTERM, then SIGKILL after 2 s)."""

    @property
    @abc.abstractmethod
    def pids(self) -> list[int]:
        """Process group ids of user code started so far (for checks and diagnostics)."""

    def _emit_metric(self, message: dict[str, Any]) -> None:
        event = metric_from_frame(message)
        if event is not None and self.on_metric is not None:
            with contextlib.suppress(Exception):
                self.on_metric(event)

    def output_path(self, task: TaskSpec, suffix: str) -> Path:
        return self.ctx.models_dir / f"{task.task_id}{suffix}"

    def read_json(self, path: Path, where: str) -> object:
        """The JSON user code wrote at ``path`` (taken as :func:`take_written_file`)."""
        if not path.is_file():
            raise ExecutionError(f"{where}: {path.name} was not written")
        name = path.name
        path = take_written_file(path, self.ctx, where)
        try:
            if path.stat().st_size > _ipc.MAX_FRAME:
                raise ExecutionError(f"{where}: {name} is larger than {_ipc.MAX_FRAME} bytes")
            return json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExecutionError(f"{where}: {name} is not valid JSON: {exc}") from exc
        finally:
            if self.ctx.run_as is not None:  # taken: the site's copy, read
                path.unlink(missing_ok=True)
