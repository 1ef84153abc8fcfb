"""The public names of the workflow and executor packages are pinned."""

from __future__ import annotations

import flare_server.workflows as workflows
import flare_site.executors as executors


def test_workflows_exports() -> None:
    assert sorted(workflows.__all__) == sorted(
        [
            "ABNORMAL",
            "ABORTED",
            "COMPLETED",
            "EXECUTION_EXCEPTION",
            "Action",
            "JobFinished",
            "MetricRow",
            "ModelUpdate",
            "Phase",
            "ResumePoint",
            "RoundAggregated",
            "RoundController",
            "RoundRecord",
            "SendTasks",
            "ServerOptimizer",
            "StartTimer",
            "Task",
            "ValidationRecord",
            "ValidationRecorded",
            "check_update",
            "fedavg",
            "weighted_mean",
        ]
    )
    for name in workflows.__all__:
        assert hasattr(workflows, name)


def test_executors_exports() -> None:
    assert sorted(executors.__all__) == sorted(
        [
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
    )
    for name in executors.__all__:
        assert hasattr(executors, name)
