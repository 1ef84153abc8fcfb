"""``flare driver run MODULE:ATTR``: run a Flower-style ServerApp against a driver job.

    flare driver run server_app:app --kit prod_00/admin@org_a.com --job jobs/driver-fedavg
    flare driver run server_app:app --kit KIT --job 3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11

``--job`` is a job folder (submitted first) or the id of a submitted job (attached to).
The command waits until the job runs, then calls the app's ``@app.main()`` function with
``(driver, context)`` on this machine; ``context.run_config`` is the job config's
``run_config``. When the function returns, a job it did not finish is finished
``COMPLETED``. Ctrl-C aborts the job (``FINISHED:ABORTED``); an exception finishes it
``FAILED`` (``FINISHED:EXECUTION_EXCEPTION``) with the traceback as its reason, in its
result's ``summary.json``. Exit codes: 0 the job completed, 1 it did not (or the app
failed), 2 usage, 3 cannot connect, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_app", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CONNECTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flare driver",
        description="Run a Flower-style ServerApp (@app.main()) against a driver job.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="submit (or attach to) a driver job and drive it")
    run.add_argument("app", metavar="MODULE:ATTR", help="the ServerApp, e.g. server_app:app")
    run.add_argument("--kit", required=True, metavar="ADMIN_KIT", help="your admin startup kit")
    run.add_argument(
        "--job", required=True, metavar="JOB", help="a job folder to submit, or a job id"
    )
    run.add_argument("--username", help="your name (default: the kit's)")
    run.add_argument("--server", metavar="HOST:PORT", help="dial this address, not the kit's")
    run.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="where MODULE is found (default: the current folder)",
    )
    run.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long to wait for the job to run (default: no limit)",
    )
    run.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="call deadline (10)"
    )
    return parser


def load_app(spec: str, app_dir: str | os.PathLike[str] = ".") -> Any:
    """The object ``MODULE:ATTR`` names (``app_dir`` first on the import path).

    Raises:
        InvalidArgumentError: the spec is malformed, or the module or attribute is missing.
    """
    from flare_protocol.errors import InvalidArgumentError

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidArgumentError(
            f"{spec!r} is not MODULE:ATTR (e.g. server_app:app, the module's ServerApp)"
        )
    folder = str(Path(app_dir).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    loaded = sys.modules.get(module_name)
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(folder):
        del sys.modules[module_name]  # another app of that name, from elsewhere
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InvalidArgumentError(
            f"cannot import {module_name!r} from {folder} (or the import path): {exc}"
        ) from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise InvalidArgumentError(f"module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise InvalidArgumentError(f"{spec} is not a ServerApp (nor a function of driver, context)")
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from flare_protocol.errors import FlareError

    try:
        app = load_app(args.app, args.app_dir)
    except FlareError as exc:
        print(f"flare driver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        session = _open(args)
    except FlareError as exc:
        print(f"flare driver: cannot open a session: {exc}", file=sys.stderr)
        return EXIT_NO_CONNECTION
    try:
        return _drive(session, app, args)
    finally:
        session.close()


def _open(args: argparse.Namespace) -> Any:
    from flare_admin.session import new_secure_session
    from flare_protocol.identity import ParticipantType
    from flare_protocol.kit import load_kit

    username = args.username or load_kit(args.kit, ParticipantType.ADMIN).name
    return new_secure_session(username, args.kit, timeout=args.timeout, server_address=args.server)


def _drive(session: Any, app: Any, args: argparse.Namespace) -> int:
    from flare_protocol.errors import FlareError, JobNotRunning
    from flare_protocol.job_status import is_job_id
    from flare_protocol.records import Context, RecordSet

    job_id = ""
    try:
        if Path(args.job).exists():
            job_id = session.submit_job(args.job)
            print(f"submitted job {job_id}", flush=True)
        elif is_job_id(args.job.lower()):
            job_id = args.job.lower()
        else:
            print(f"flare driver: --job {args.job!r} is neither a folder nor a job id",
                  file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        driver = session.get_driver(job_id, timeout=args.wait)
        print(f"driving job {job_id} on {', '.join(driver.node_names.values())}", flush=True)
        context = Context(run_id=job_id, run_config=driver.run_config, state=RecordSet())
        app(driver, context)
        meta = session.get_job_meta(job_id)
        if not meta.finished:
            meta = driver.finish("COMPLETED")
    except KeyboardInterrupt:
        if job_id:
            try:
                session.abort_job(job_id)
                print(f"\ninterrupted: job {job_id} aborted", file=sys.stderr)
            except FlareError as exc:
                print(f"\ninterrupted; job {job_id} not aborted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        text = traceback.format_exc()
        print(text, file=sys.stderr, end="")
        if job_id and not isinstance(exc, JobNotRunning):
            try:
                meta = session.get_job_meta(job_id)
                if not meta.finished:
                    session.get_driver(job_id, timeout=args.timeout).finish(
                        "FAILED", reason=f"the driver failed:\n{text}"
                    )
                    print(f"job {job_id} finished FAILED", file=sys.stderr)
            except FlareError as why:
                print(f"flare driver: could not end job {job_id}: {why}", file=sys.stderr)
        return EXIT_FAILED
    print(f"job {job_id}: {meta.status}")
    return EXIT_OK if str(meta.status) == "FINISHED:COMPLETED" else EXIT_FAILED
