"""The script executor: one long-lived Python process that uses the Client API.

The site launches ``python -u custom/train.py ARGS`` once per job and waits for it to call
``flare.init()``. Each task is queued; the script's ``flare.receive()`` (a ``next`` frame)
takes it, and its ``flare.send()`` (a ``result`` frame) resolves it after the site checked
the update file. If the process exits while a task is outstanding, the task fails with
the exit code and the last lines of stderr. ``stop()`` answers the script's next
``next`` with ``stop`` (its ``is_running()`` turns False) and reaps the process group; a
script still busy with a task when the job ends is killed at once (SIGTERM to its group,
SIGKILL two seconds later), since it would never ask.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from flare_protocol.app_config import ScriptExecutorConfig
from flare_protocol.errors import ExecutionError
from flare_protocol.models import ParamsType
from flare_site.executors.base import (
    IPC_RECORD,
    ExecutorHost,
    IpcServer,
    JobContext,
    MessageOutcome,
    MessageSpec,
    MetricSink,
    TaskSpec,
    TrainOutcome,
    ValidateOutcome,
    check_update_file,
    clean_metrics,
    take_written_file,
    user_env,
)
from flare_site.executors.process import OutputSink, UserProcess

__all__ = ["ScriptExecutor", "describe_exit"]


def describe_exit(what: str, code: int, stderr_tail: str) -> str:
    """``what exited with code 1`` / ``was killed by SIGKILL``, plus the stderr tail."""
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    text = f"{what} {how}"
    if stderr_tail.strip():
        text += f"; last lines of stderr:\n{stderr_tail}"
    return text


class ScriptExecutor(ExecutorHost):
    """Runs a Client API script for the whole job."""

    def __init__(
        self,
        config: ScriptExecutorConfig,
        ctx: JobContext,
        *,
        on_metric: MetricSink | None = None,
        on_output: OutputSink | None = None,
    ) -> None:
        super().__init__(ctx, on_metric=on_metric, on_output=on_output)
        self.config = config
        self._ipc = IpcServer(self._on_frame, record=ctx.workspace / IPC_RECORD, run_as=ctx.run_as)
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pending: dict[
            str, tuple[TaskSpec, asyncio.Future[TrainOutcome | ValidateOutcome]]
        ] = {}
        self._proc: UserProcess | None = None
        self._exited: asyncio.Future[int] | None = None
        self._aborted = False
        self._abort_requested = asyncio.Event()
        self._ended = False  # stopped with a task still out (the job ended)
        # Tasks the runtime gave up on (cancelled run_task): not handed out if still
        # queued, and a late result for one is accepted and dropped, not an error.
        self._discarded: set[str] = set()
        #: Driver API messages handed out and not yet answered: id -> (spec, reply).
        self._messages: dict[str, tuple[MessageSpec, asyncio.Future[MessageOutcome]]] = {}

    @property
    def pids(self) -> list[int]:
        return [self._proc.pid] if self._proc else []

    @property
    def returncode(self) -> int | None:
        """The script's exit code once it exited (negative: killed by that signal)."""
        return self._proc.returncode if self._proc else None

    async def start(self) -> None:
        await self._ipc.start()
        script = self.ctx.app_dir / self.config.script
        argv = [self.ctx.python, "-u", str(script), *self.config.args]
        env = user_env(self.ctx, self.config.env, self._ipc, "script")
        try:
            self._proc = await UserProcess.spawn(
                argv,
                cwd=self.ctx.app_dir,
                env=env,
                on_output=self.on_output,
                run_as=self.ctx.run_as,
            )
        except OSError as exc:
            await self._ipc.close()
            raise ExecutionError(f"cannot start {self.config.script}: {exc}") from exc
        self._exited = asyncio.ensure_future(self._proc.wait())
        connected = asyncio.ensure_future(self._ipc.connected.wait())
        # An abort that came while the process was being spawned found no process to kill:
        # it is seen here, and one that comes during the wait ends the wait at once.
        aborting = asyncio.ensure_future(self._abort_requested.wait())
        done, _ = await asyncio.wait(
            {connected, self._exited, aborting},
            timeout=self.config.launch_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        aborting.cancel()
        if connected in done and not self._aborted:
            return
        connected.cancel()
        if self._aborted:
            await self._proc.kill_group(grace=2.0)
            await self._ipc.close()
            raise ExecutionError(f"{self.config.script} was aborted while starting", aborted=True)
        if self._exited in done:
            code = self._exited.result()
            message = describe_exit(
                f"{self.config.script} (before calling flare.init())",
                code,
                self._proc.stderr_tail(),
            )
        else:
            await self._proc.kill_group()
            message = (
                f"{self.config.script} did not call flare.init() within "
                f"{self.config.launch_timeout:g}s (launch_timeout)"
            )
        await self._ipc.close()
        raise ExecutionError(
            message, returncode=self._proc.returncode, stderr_tail=self._proc.stderr_tail()
        )

    async def run_task(self, task: TaskSpec) -> TrainOutcome | ValidateOutcome:
        if self._proc is None or self._exited is None:
            raise ExecutionError("the script executor was not started")
        if self._exited.done() or self._aborted:
            raise self._exit_error(task)
        future: asyncio.Future[TrainOutcome | ValidateOutcome] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[task.task_id] = (task, future)
        await self._queue.put(
            {
                "op": "task",
                "task_id": task.task_id,
                "kind": task.kind,
                "round": task.round,
                "total_rounds": task.total_rounds,
                "model_path": str(task.model_path) if task.model_path else None,
                "output_path": str(self.output_path(task, ".npz")),
            }
        )
        try:
            waiting: set[asyncio.Future[Any]] = {future, self._exited}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._discarded.add(task.task_id)
            raise
        finally:
            self._pending.pop(task.task_id, None)
        if future.done():
            return future.result()
        future.cancel()
        raise self._exit_error(task)

    async def run_message(self, message: MessageSpec) -> MessageOutcome:
        if self._proc is None or self._exited is None:
            raise ExecutionError("the script executor was not started")
        what = f"{self.config.script} (message {message.message_id})"
        if self._exited.done() or self._aborted:
            raise self._exit_error(None, what)
        future: asyncio.Future[MessageOutcome] = asyncio.get_running_loop().create_future()
        self._messages[message.message_id] = (message, future)
        await self._queue.put(
            {
                "op": "message",
                "task_id": message.message_id,
                "message": dict(message.message),
                "npz_path": str(message.npz_path) if message.npz_path else None,
                "reply_path": str(message.reply_path),
            }
        )
        try:
            waiting: set[asyncio.Future[Any]] = {future, self._exited}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._discarded.add(message.message_id)
            raise
        finally:
            self._messages.pop(message.message_id, None)
        if future.done():
            return future.result()
        future.cancel()
        raise self._exit_error(None, what)

    def _on_reply(self, frame: dict[str, Any]) -> dict[str, Any]:
        message_id = str(frame.get("message_id"))
        entry = self._messages.get(message_id)
        if entry is None:
            if message_id in self._discarded:
                return {"op": "ok"}
            return {"op": "error", "message": f"no message {message_id[:64]!r} awaits a reply"}
        spec, future = entry
        reply = frame.get("message")
        if not isinstance(reply, dict):
            return {"op": "error", "message": "a reply's 'message' must be a JSON object"}
        npz: Path | None = None
        if frame.get("npz"):
            npz = spec.reply_path
            if not npz.is_file():
                return {"op": "error", "message": f"no arrays were written to {npz.name}"}
            try:
                npz = take_written_file(
                    npz, self.ctx, f"{self.config.script} (message {message_id[:64]})"
                )
            except ExecutionError as exc:
                return {"op": "error", "message": exc.message}
            if npz.stat().st_size > self.ctx.max_model_bytes:
                cap = self.ctx.max_model_bytes
                return {"op": "error", "message": f"the reply's arrays exceed {cap} bytes"}
        if not future.done():
            future.set_result(MessageOutcome(message_id, reply, npz))
        return {"op": "ok"}

    def _exit_error(self, task: TaskSpec | None, what: str = "") -> ExecutionError:
        assert self._proc is not None
        if task is not None:
            what = f"{self.config.script} ({task.kind} task of round {task.round})"
        if self._aborted:
            return ExecutionError(f"{what} was aborted", aborted=True)
        if self._ended:
            return ExecutionError(f"{what} was stopped: the job ended", aborted=True)
        code = self._proc.returncode if self._proc.returncode is not None else -1
        tail = self._proc.stderr_tail()
        if code == 0:
            call = "flare.send()" if task is not None else "flare.send_reply()"
            text = f"{what} exited with code 0 without sending a result (call {call})"
            return ExecutionError(text, returncode=0, stderr_tail=tail)
        return ExecutionError(describe_exit(what, code, tail), returncode=code, stderr_tail=tail)

    async def _on_frame(self, message: dict[str, Any]) -> dict[str, Any] | None:
        op = message["op"]
        if op == "metric":
            self._emit_metric(message)
            return None
        if op == "next":
            while True:
                item = await self._queue.get()
                if item is None:
                    return {"op": "stop"}
                if item["task_id"] not in self._discarded:
                    return item
        if op == "result":
            return await self._on_result(message)
        if op == "reply":
            return self._on_reply(message)
        return {"op": "error", "message": f"unknown request {op!r}"}

    async def _on_result(self, message: dict[str, Any]) -> dict[str, Any]:
        entry = self._pending.get(str(message.get("task_id")))
        if entry is None and message.get("task_id") in self._discarded:
            return {"op": "ok"}
        if entry is None:
            return {"op": "error", "message": f"no task {message.get('task_id')!r} is waiting"}
        task, future = entry
        where = f"{self.config.script} ({task.kind} task of round {task.round})"
        if isinstance(message.get("error"), str):  # the script reports the task failed
            if not future.done():
                text = message["error"][:8000]
                future.set_exception(ExecutionError(f"{where} reported an error: {text}"))
            return {"op": "ok"}
        try:
            metrics = clean_metrics(message.get("metrics", {}), where)
            outcome: TrainOutcome | ValidateOutcome
            if task.kind == "train":
                meta = message.get("meta") or {}
                num = meta.get("num_examples") if isinstance(meta, dict) else None
                if isinstance(num, bool) or not isinstance(num, int) or num < 0:
                    raise ExecutionError(f"{where}: meta num_examples must be an integer >= 0")
                try:
                    params_type = ParamsType(message.get("params_type"))
                except ValueError as exc:
                    raise ExecutionError(f"{where}: params_type must be FULL or DIFF") from exc
                path = await asyncio.to_thread(
                    take_written_file, self.output_path(task, ".npz"), self.ctx, where
                )
                # Off the event loop: it reads the whole update (~0.1 s per 100 MB).
                digest = await asyncio.to_thread(check_update_file, path, self.ctx, where)
                outcome = TrainOutcome(task.task_id, path, params_type, num, metrics, meta, digest)
            else:
                outcome = ValidateOutcome(task.task_id, metrics)
        except ExecutionError as exc:
            return {"op": "error", "message": exc.message}
        if not future.done():
            future.set_result(outcome)
        return {"op": "ok"}

    async def stop(self, grace: float = 10.0) -> None:
        if self._proc is not None and self._exited is not None:
            if self._pending or self._messages:
                # A task is still out: nobody wants its result, and a script busy with it
                # (or hung in it) would not ask for the stop. End it now.
                self._ended = True
                await self._proc.kill_group()
            else:
                await self._queue.put(None)  # its next receive() gets "stop"
                try:
                    await asyncio.wait_for(asyncio.shield(self._exited), grace)
                except asyncio.TimeoutError:
                    pass
                await self._proc.kill_group(grace=1.0)
        await self._ipc.close()

    async def abort(self) -> None:
        self._aborted = True
        self._abort_requested.set()
        if self._proc is not None:
            await self._proc.kill_group(grace=2.0)
        await self._ipc.close()
