"""Executors: how a site runs a job's user code (see ``base`` for the runtime seam).

``create_executor(config, ctx)`` picks :class:`ScriptExecutor` (Client API script),
:class:`CommandExecutor` (Scaleout-style entry points in ``config_fed_client.json``) or
:class:`PackageExecutor` (a compute package's ``scaleout.yaml``) from the app's config.
"""

from __future__ import annotations

from flare_protocol.app_config import ClientConfig, ScriptExecutorConfig
from flare_protocol.compute_package import PackageExecutorConfig
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
from flare_site.executors.package import PackageExecutor
from flare_site.executors.process import OutputSink, UserProcess
from flare_site.executors.python_env import PythonEnvs
from flare_site.executors.script import ScriptExecutor

__all__ = [
    "CommandExecutor",
    "ExecutorHost",
    "JobContext",
    "MetricEvent",
    "MetricSink",
    "OutputSink",
    "PackageExecutor",
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
    python_envs: PythonEnvs | None = None,
) -> ExecutorHost:
    """The executor the app's config asks for; ``python_envs``: where a compute package's
    ``python_env`` is built or found."""
    if isinstance(config, ScriptExecutorConfig):
        return ScriptExecutor(config, ctx, on_metric=on_metric, on_output=on_output)
    if isinstance(config, PackageExecutorConfig):
        return PackageExecutor(
            config, ctx, python_envs=python_envs, on_metric=on_metric, on_output=on_output
        )
    return CommandExecutor(config, ctx, on_metric=on_metric, on_output=on_output)
