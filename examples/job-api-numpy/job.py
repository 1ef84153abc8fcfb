"""The NVIDIA FLARE Client API example's job, written with flare_job.

python job.py --script train_full.py                  # run it in a local simulation
python job.py --script train_full.py --export_config  # write the job folder only
python job.py --script train_metrics.py               # with MLflow/WandB-style tracking
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from flare_job import FedAvgJob, ScriptRunner

HERE = Path(__file__).resolve().parent


def define_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_clients", type=int, default=2)
    parser.add_argument("--num_rounds", type=int, default=3)
    parser.add_argument("--script", type=str, default="train_full.py")
    parser.add_argument("--launch_process", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--export_config", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--job_root", default="/tmp/flare/jobs/job_config")
    parser.add_argument("--workspace", default="/tmp/flare/jobs/workdir")
    return parser


def build_job(args: argparse.Namespace) -> FedAvgJob:
    """The job: FedAvg on n_clients sites from a 3x3 initial model, the script on each."""
    script = Path(args.script)
    if not script.exists() and (HERE / script).exists():
        script = HERE / script  # run from anywhere: the scripts sit next to this file

    job = FedAvgJob(
        name="np_client_api",
        n_clients=args.n_clients,
        num_rounds=args.num_rounds,
        initial_model={"numpy_key": np.arange(1, 10, dtype=np.float32).reshape(3, 3)},
    )
    # train_metrics.py imports train_full.py: both go to the sites' custom/ folder
    runner = ScriptRunner(
        script=script,
        launch_external_process=args.launch_process,
        files=[HERE / "train_full.py"] if script.name != "train_full.py" else [],
    )
    job.to_clients(runner)
    return job


def main(argv: list[str] | None = None) -> int:
    args = define_parser().parse_args(argv)
    job = build_job(args)

    if args.export_config:
        path = job.export_job(args.job_root)
        print(f"job folder: {path}")
        print(f"run it with: flare simulate {path} -n {args.n_clients}")
        return 0
    result = job.simulator_run(args.workspace, n_clients=args.n_clients)
    print(f"job {result.job_id} ended {result.status}")
    if result.model_path is not None:
        print(f"final model: {result.model_path}")
    return 0 if result.completed else 1


if __name__ == "__main__":
    sys.exit(main())
