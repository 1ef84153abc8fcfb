"""The one place the Job API reaches the local simulator (``flare simulate``).

``flare simulate`` needs the server, the sites and the admin Session, so the Job API
imports it only here, and only when :meth:`flare_job.FedJob.simulator_run` is called;
when the simulator moves to another package, this import is the line to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flare_local.simulate import SimulationResult

__all__ = ["simulate"]


def simulate(job_dir: Path, count: int, workspace: Path, *, timeout: float) -> SimulationResult:
    """Run ``job_dir`` on ``count`` local sites (or those its deploy_map names), as
    ``flare simulate JOB -n COUNT -w WORKSPACE`` does; return the outcome."""
    from flare_local.simulate import run_simulation, simulation_sites

    sites = simulation_sites(job_dir, count)
    return run_simulation(job_dir, sites, workspace, timeout=timeout)
