"""Executors: how a site runs a job's user code (see ``base`` for the runtime seam).

``create_executor(config, ctx)`` picks :class:`ScriptExecutor` (Client API script) or
:class:`CommandExecutor` (Scaleout-style entry points) from the app's client config.
"""

from __future__ import annotations

from flare_protocol.app_config import ClientConfig, ScriptExecutorConfig
from flare_site.executors.base import (
    ExecutorHost,
    JobContext,
    MetricEvent,
    MetricSink,
    TaskSpec,
    TrainOutcome,
    ValidateOutcome,
)
from flare_site.executors.command import CommandExecutor
from flare_site.executors.process import OutputSink, UserProcess
from flare_site.executors.script import ScriptExecutor

__all__ = [
    "CommandExecutor",
    "ExecutorHost",
    "JobContext",
    "MetricEvent",
    "MetricSink",
    "OutputSink",
    "ScriptExecutor",
    "TaskSpec",
    "TrainOutcome",
    "UserProcess",
    "ValidateOutcome",
    "create_executor",
]


def create_executor(
    config: ClientConfig,
    ctx: JobContext,
    *,
    on_metric: MetricSink | None = None,
    on_output: OutputSink | None = None,
) -> ExecutorHost:
    """The executor the app's client config asks for."""
    if isinstance(config, ScriptExecutorConfig):
        return ScriptExecutor(config, ctx, on_metric=on_metric, on_output=on_output)
    return CommandExecutor(config, ctx, on_metric=on_metric, on_output=on_output)
