"""flare_job: write federated jobs in Python, as with NVIDIA FLARE's Job API.

    from flare_job import FedAvgJob, ScriptRunner

    job = FedAvgJob("hello", n_clients=2, num_rounds=3, initial_model={"w": np.zeros(4)})
    job.to_clients(ScriptRunner("train.py", script_args="--lr 0.1"))
    job.export_job("/tmp/jobs")          # a folder `flare job validate` accepts
    job.simulator_run("/tmp/ws")         # or run it as `flare simulate` does
    session.submit_job(job)              # or submit it to a real server

It depends on :mod:`flare_protocol` only (the job format it writes and checks); the
simulator is imported when :meth:`FedJob.simulator_run` is called. See docs/jobs.md.
"""

from __future__ import annotations

from flare_job._app import AppContent
from flare_job.executors import CommandRunner, PackageRunner, ScriptRunner, SiteExecutor
from flare_job.job import FedAvgJob, FedJob, FedOptJob
from flare_job.workflows import FedAvg, FedOpt, InitialModel, Workflow

__all__ = [
    "AppContent",
    "CommandRunner",
    "FedAvg",
    "FedAvgJob",
    "FedJob",
    "FedOpt",
    "FedOptJob",
    "InitialModel",
    "PackageRunner",
    "ScriptRunner",
    "SiteExecutor",
    "Workflow",
]
