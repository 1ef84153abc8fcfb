"""Server workflows: built-in FedAvg and FedOpt, configured by JSON, with no I/O.

The server's job runner drives a :class:`RoundController` (a pure state machine) and
stores what it reports: :class:`RoundRecord` (model trail), :class:`ValidationRecord`,
:class:`MetricRow`.
"""

from __future__ import annotations

from flare_server.workflows.aggregation import ModelUpdate, check_update, fedavg, weighted_mean
from flare_server.workflows.controller import (
    ABNORMAL,
    ABORTED,
    COMPLETED,
    EXECUTION_EXCEPTION,
    Action,
    JobFinished,
    Phase,
    ResumePoint,
    RoundAggregated,
    RoundController,
    SendTasks,
    StartTimer,
    Task,
    ValidationRecorded,
)
from flare_server.workflows.fedopt import ServerOptimizer
from flare_server.workflows.records import MetricRow, RoundRecord, ValidationRecord

__all__ = [
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
