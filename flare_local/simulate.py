"""``flare simulate JOB -n N``: a job end to end on a throw-away local project.

It checks the job folder, provisions a local project with N sites (the sites the job's
``deploy_map`` names, topped up with ``site-1 .. site-N``), starts the server and the
sites on 127.0.0.1 (:class:`flare_local.poc.LocalProject`), submits the job through the
admin :class:`~flare_admin.Session`, shows its status, round and metrics while it runs
(a live table on a terminal, plain lines otherwise), downloads the result, prints the
per-round metrics and where the result went, and stops everything. A job that does not
finish within ``--timeout`` is aborted; what it logged and its result are still fetched and
shown. Without ``-w`` the project lives in a temporary folder that is removed at the end
(it holds the project's private keys) unless ``--keep`` is given. The exit status is 0
only when the job ended ``FINISHED:COMPLETED``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from flare_admin import (
    JobMeta,
    MetricRow,
    Session,
    ValidationRow,
    rounds_table,
)
from flare_admin.shell.live import follow_job
from flare_admin.shell.render import rounds_metrics_table
from flare_admin.shell.theme import THEME
from flare_local.poc import LocalProject, provision_local, sigterm_interrupts, site_names
from flare_protocol.errors import FlareError, JobNotRunning
from flare_protocol.job_status import JobStatus

__all__ = [
    "SimulationResult",
    "main",
    "report",
    "run_simulation",
    "simulation_sites",
    "temporary_workspace",
]

COMPLETED = JobStatus.FINISHED_COMPLETED.value


@dataclass(frozen=True)
class SimulationResult:
    """What a simulation ended with."""

    job_id: str
    status: str
    #: Why the job ended as it did (the reason of its last status), "" when none was given.
    reason: str
    workspace: Path
    #: The downloaded result folder (``<workspace>/results/<job_id>``), None if none.
    result_dir: Path | None
    #: The final global model inside the result, None if the job produced none.
    model_path: Path | None
    metrics: list[MetricRow] = field(default_factory=list)
    validations: list[ValidationRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def simulation_sites(job_dir: Path, count: int, names: Sequence[str] | None = None) -> list[str]:
    """The sites to run: ``names`` if given; else those the job's deploy_map names, topped
    up with ``site-1 ..`` to ``count``.

    Raises:
        InvalidJobDefinition: the job folder is invalid (naming the file and field).
        FlareError: fewer sites than the job's ``min_clients``, or bad names.
    """
    from flare_protocol.job_format import validate_job_folder

    definition = validate_job_folder(job_dir)
    meta = definition.meta
    if names:
        sites = site_names(names=names)
    else:
        sites = []
        for targets in (meta.get("deploy_map") or {}).values():
            for target in targets:
                if target not in ("server", "@ALL") and target not in sites:
                    sites.append(target)
        for candidate in site_names(max(count, 1) + len(sites)):
            if len(sites) >= count:
                break
            if candidate not in sites:
                sites.append(candidate)
        sites = site_names(names=sites)
    needed = int(meta.get("min_clients") or 1)
    if len(sites) < needed:
        raise FlareError(
            f"job {meta.get('name')!r} needs at least {needed} sites (min_clients) but the "
            f"simulation has {len(sites)}: run with -n {needed}"
        )
    return sites


def last_reason(meta: JobMeta) -> str:
    """The reason recorded with the job's latest status, or ``""``."""
    history = meta.get("status_history") if isinstance(meta, JobMeta) else None
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        return str(history[-1].get("reason") or "")
    return ""


def run_simulation(
    job_dir: str | Path,
    sites: Sequence[str],
    workspace: str | Path,
    *,
    console: Console | None = None,
    timeout: float = 600.0,
    on_step: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Provision, start, submit, watch, download, stop; the outcome.

    ``on_step(text)`` is told of each step (provisioned, started, submitted, ...).

    Raises:
        FlareError: the project could not be started or the job submitted (the job's
            own failure is not an exception: see ``SimulationResult.status``).
    """
    console = console or Console()
    step = on_step or (lambda text: console.print(f"[dim]- {escape(text)}[/dim]"))
    workspace = Path(workspace).resolve()
    begin = time.monotonic()
    kits = provision_local(workspace, sites)
    step(f"provisioned project 'poc' with {len(sites)} sites in {workspace}")
    project = LocalProject(kits)
    try:
        project.start()
        assert project.server is not None
        step(
            f"server on {project.admin_address} (admin) / {project.site_address} (sites); "
            f"sites connected: {', '.join(sites)}"
        )
        with project.session(timeout=30.0) as session:
            return _run_job(session, Path(job_dir), workspace, console, timeout, step, begin)
    finally:
        project.stop()
        step("stopped the sites and the server")


def _run_job(
    session: Session,
    job_dir: Path,
    workspace: Path,
    console: Console,
    timeout: float,
    step: Callable[[str], None],
    begin: float,
) -> SimulationResult:
    job_id = session.submit_job(job_dir)
    step(f"submitted {job_dir} as job {job_id}")
    # A live table on a terminal, a plain line per change otherwise (a log, a pipe);
    # watch_job is pushed by the server. Ctrl-C raises here and stops everything.
    follow_job(session, console, job_id, timeout=timeout)
    meta = session.get_job_meta(job_id)
    reason = ""
    if not meta.finished:
        step(f"job {job_id} did not finish within {timeout:.0f} s ({meta.status}): aborting it")
        with contextlib.suppress(JobNotRunning):  # it may have ended just now
            session.abort_job(job_id)
        meta = session.wait_for_job(job_id, timeout=30)
        if meta.status != COMPLETED:
            reason = f"did not finish within {timeout:.0f} s"
    # whatever it logged and its result, also when it was aborted
    metrics = session.get_job_metrics(job_id)
    validations = session.get_validations(job_id)
    results = workspace / "results"
    results.mkdir(exist_ok=True)
    result_dir = Path(session.download_job_result(job_id, results))
    model = result_dir / "global_model.npz"
    step(f"job {job_id} ended {meta.status}; result downloaded to {result_dir}")
    return SimulationResult(
        job_id=job_id,
        status=meta.status,
        reason=reason or last_reason(meta),
        workspace=workspace,
        result_dir=result_dir,
        model_path=model if model.is_file() else None,
        metrics=metrics,
        validations=validations,
        seconds=time.monotonic() - begin,
    )


def report(result: SimulationResult, console: Console, *, removed: bool = False) -> int:
    """Print the per-round metrics and where the result went; the exit status.

    ``removed``: the (temporary) workspace, result included, is gone already.
    """
    if rounds_table(result.metrics, result.validations):
        with console.use_theme(THEME):
            table = rounds_metrics_table(result.metrics, result.validations, "per-round metrics")
            console.print(table)
    elif result.metrics or result.validations:
        console.print(
            f"{len(result.metrics)} metric and {len(result.validations)} validation row(s) "
            "were logged, none of them in a round (see metrics.jsonl in the result)"
        )
    else:
        console.print("no per-round metrics were logged")
    if removed:
        console.print(
            "workspace   removed with its result (it held the project's private keys); "
            "run with --keep, or -w DIR, to keep the result and the final model"
        )
    else:
        if result.result_dir is not None:
            console.print(f"result      {escape(str(result.result_dir))}")
        if result.model_path is not None:
            console.print(f"final model {escape(str(result.model_path))}")
        console.print(
            f"workspace   {escape(str(result.workspace))} "
            "(kits with private keys, logs; delete it when done)"
        )
    if result.completed:
        console.print(
            f"[green]job {result.job_id} {result.status}[/green] in {result.seconds:.1f} s"
        )
        return 0
    why = f": {result.reason}" if result.reason else ""
    console.print(f"[red]job {result.job_id} ended {escape(result.status + why)}[/red]")
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flare simulate",
        description="Run a job end to end on a throw-away local project: provision, start a "
        "server and N sites, submit, watch, download the result, stop.",
    )
    parser.add_argument("job", type=Path, help="the job folder (with meta.json)")
    parser.add_argument("-n", "--sites-count", type=int, default=2, help="number of sites (2)")
    parser.add_argument("--sites", help="comma-separated site names instead of site-1..site-N")
    parser.add_argument(
        "-w",
        "--workspace",
        type=Path,
        help="where the project and the result go, kept (default: a new temporary folder, "
        "removed at the end unless --keep)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary workspace (kits, logs, result) instead of removing it",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds the job may run (600)"
    )
    return parser


@contextlib.contextmanager
def temporary_workspace(workspace: Path | None, prefix: str, keep: bool) -> Iterator[Path]:
    """``workspace``, or a new temporary folder that is removed on leaving unless ``keep``
    (it holds the project's CA and private keys)."""
    if workspace is not None:
        yield workspace
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(soft_wrap=True)  # paths stay whole lines, for copy and paste
    removed = args.workspace is None and not args.keep
    try:
        with sigterm_interrupts():
            sites = simulation_sites(
                args.job, args.sites_count, args.sites.split(",") if args.sites else None
            )
            with temporary_workspace(args.workspace, "flare-simulate-", args.keep) as workspace:
                result = run_simulation(
                    args.job, sites, workspace, console=console, timeout=args.timeout
                )
        return report(result, console, removed=removed)
    except FlareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopped the sites and the server", file=sys.stderr)
        return 130
