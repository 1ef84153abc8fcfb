"""Phase 1 of a run, prepare: the job's work area, its log, its result folder, its plan.

A run resumed after a server crash keeps the job's server log (``work/server.log``) and
its result folder, reopened for more rows (:func:`~flare_server.results.reopen_result_folder`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
from pathlib import Path

from flare_protocol import errors
from flare_server.job_runner.plan import make_plan
from flare_server.job_runner.run import FAILED_TO_RUN, Finish, JobRun
from flare_server.results import ResultFolder, reopen_result_folder

__all__ = ["prepare"]


async def prepare(run: JobRun) -> None:
    """Make the work area and the result folder, accept the job's uploads, make its plan.

    Raises:
        Finish: FAILED_TO_RUN when the job cannot run (naming why).
    """
    run.work = await asyncio.to_thread(_make_work_area, run)
    handler = logging.FileHandler(run.work / "server.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    run.log.addHandler(handler)
    run.log_handler = handler
    result_dir = await asyncio.to_thread(run.store.result_dir, run.job_id)
    if run.resumed is not None:
        await asyncio.to_thread(reopen_result_folder, result_dir)
    on_rows = functools.partial(run.context.result_rows.notify, run.job_id)  # watchers
    run.results = await asyncio.to_thread(ResultFolder, result_dir, on_rows)
    run.blobs.allow_uploads(run.job_id, run)
    run.log.info("job %s: preparing for %s", run.job_id, ", ".join(run.sites))
    try:
        run.plan = await asyncio.to_thread(
            make_plan, run.store, run.context.policy, run.job_id, run.meta, run.sites, run.work
        )
    except errors.FlareError as exc:
        raise Finish(FAILED_TO_RUN, f"the job cannot run: {exc.message}") from None
    missing = [s for s in run.sites if s not in run.plan.site_apps]
    if missing:
        raise Finish(FAILED_TO_RUN, f"no app is deployed to {', '.join(missing)}", tuple(missing))


def _make_work_area(run: JobRun) -> Path:
    work = run.store.job_dir(run.job_id) / "work"
    if work.exists() and run.resumed is not None:  # the log of the run before the crash stays
        for entry in work.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.name != "server.log":
                entry.unlink()
    elif work.exists():
        shutil.rmtree(work)
    for sub in ("", "uploads", "models", "apps"):
        (work / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    return work
