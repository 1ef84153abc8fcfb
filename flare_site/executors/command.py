"""The command executor: Scaleout-style entry points, one process per call.

``startup`` runs once when the job starts; each training task runs ``train`` with
``{model_in}`` (the global model), ``{model_out}`` (where to write the update) and
``{metadata_out}`` (a JSON object with a mandatory integer ``num_examples``, optional
``params_type`` "FULL"/"DIFF" and ``metrics``); each validation task runs ``validate``
with ``{model_in}`` and ``{metrics_out}`` (a JSON object of numbers). Commands are argv
lists with placeholders substituted, never a shell string. They may also stream metrics
through ``flare.log_metric`` (the channel is open in metrics-only mode).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

from flare_protocol.app_config import CommandExecutorConfig, substitute_argv
from flare_protocol.errors import ExecutionError
from flare_protocol.models import ParamsType, save_params
from flare_site.executors.base import (
    IPC_RECORD,
    ExecutorHost,
    IpcServer,
    JobContext,
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
from flare_site.executors.script import describe_exit

__all__ = ["CommandExecutor"]


class CommandExecutor(ExecutorHost):
    """Runs the app's ``startup``/``train``/``validate`` commands as subprocesses."""

    #: Appended to the update's name for ``{metadata_out}``, the file read after ``train``.
    metadata_suffix = ".metadata.json"

    def __init__(
        self,
        config: CommandExecutorConfig,
        ctx: JobContext,
        *,
        on_metric: MetricSink | None = None,
        on_output: OutputSink | None = None,
    ) -> None:
        super().__init__(ctx, on_metric=on_metric, on_output=on_output)
        self.config = config
        self._ipc = IpcServer(self._on_frame, record=ctx.workspace / IPC_RECORD, run_as=ctx.run_as)
        self._current: UserProcess | None = None
        self._pgids: list[int] = []
        self._aborted = False
        self._started = False

    @property
    def pids(self) -> list[int]:
        return list(self._pgids)

    async def _on_frame(self, message: dict[str, object]) -> dict[str, object] | None:
        if message["op"] == "metric":
            self._emit_metric(dict(message))
            return None
        return {"op": "error", "message": "commands may only stream metrics (flare.log_metric)"}

    async def start(self) -> None:
        await self._ipc.start()
        self._started = True
        if self.config.startup:
            await self._run("startup", self.config.startup, {}, "startup command")

    async def _run(
        self, entry: str, template: Sequence[str], paths: dict[str, str], where: str
    ) -> None:
        if self._aborted:
            raise ExecutionError(f"{where} was not run: the job was aborted", aborted=True)
        values = {"python": self.ctx.python, "app_dir": str(self.ctx.app_dir), **paths}
        argv = substitute_argv(template, values)
        env = user_env(self.ctx, self.config.env, self._ipc, "command")
        try:
            proc = await UserProcess.spawn(
                argv,
                cwd=self.ctx.app_dir,
                env=env,
                on_output=self.on_output,
                run_as=self.ctx.run_as,
            )
        except OSError as exc:
            raise ExecutionError(f"cannot run the {entry} command {argv[0]!r}: {exc}") from exc
        self._current = proc
        self._pgids.append(proc.pid)
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            await proc.kill_group(grace=1.0)
            raise
        finally:
            self._current = None
        await proc.reap_group()
        if self._aborted:
            raise ExecutionError(f"{where} was aborted", aborted=True)
        if code != 0:
            tail = proc.stderr_tail()
            raise ExecutionError(
                describe_exit(where, code, tail), returncode=code, stderr_tail=tail
            )

    def _model_in(self, task: TaskSpec) -> Path:
        if task.model_path is not None:
            return task.model_path
        empty = self.output_path(task, ".in.npz")  # no initial model: an empty one
        save_params({}, empty)
        self.ctx.hand_over(empty)
        return empty

    async def run_task(self, task: TaskSpec) -> TrainOutcome | ValidateOutcome:
        if not self._started:
            raise ExecutionError("the command executor was not started")
        where = f"{task.kind} command (round {task.round})"
        model_in = str(self._model_in(task))
        if task.kind == "validate":
            if not self.config.validate:
                raise ExecutionError(
                    "the server asked for validation but the app's client config has no "
                    "'validate' command"
                )
            metrics_out = self.output_path(task, ".metrics.json")
            with contextlib.suppress(FileNotFoundError):
                metrics_out.unlink()
            await self._run(
                "validate",
                self.config.validate,
                {"model_in": model_in, "metrics_out": str(metrics_out)},
                where,
            )
            return ValidateOutcome(
                task.task_id, clean_metrics(self.read_json(metrics_out, where), where)
            )
        model_out = self.output_path(task, ".npz")
        metadata_out = self.output_path(task, self.metadata_suffix)
        for stale in (model_out, metadata_out):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        await self._run(
            "train",
            self.config.train,
            {"model_in": model_in, "model_out": str(model_out), "metadata_out": str(metadata_out)},
            where,
        )
        metadata = self.read_json(metadata_out, where)
        if not isinstance(metadata, dict):
            raise ExecutionError(f"{where}: the metadata JSON must be an object")
        num = metadata.get("num_examples")
        if isinstance(num, bool) or not isinstance(num, int) or num < 0:
            raise ExecutionError(
                f"{where}: the metadata JSON needs an integer 'num_examples' >= 0, got {num!r}"
            )
        try:
            params_type = ParamsType(str(metadata.get("params_type", "FULL")).upper())
        except ValueError as exc:
            raise ExecutionError(f"{where}: metadata 'params_type' must be FULL or DIFF") from exc
        metrics = clean_metrics(metadata.get("metrics", {}), where)
        model_out = await asyncio.to_thread(take_written_file, model_out, self.ctx, where)
        digest = await asyncio.to_thread(check_update_file, model_out, self.ctx, where)
        meta = {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))}
        return TrainOutcome(task.task_id, model_out, params_type, num, metrics, meta, digest)

    async def stop(self, grace: float = 10.0) -> None:
        # A command still running when the job ends is a task nobody waits for: killed
        # as at an abort (``grace`` is for user code that would exit by itself).
        if self._current is not None:
            await self._current.kill_group()
        await self._ipc.close()

    async def abort(self) -> None:
        self._aborted = True
        if self._current is not None:
            await self._current.kill_group(grace=2.0)
        await self._ipc.close()
