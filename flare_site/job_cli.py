"""``flare job validate PATH`` and ``flare job run ENTRY --path APP ...``: try a job locally.

``validate`` runs every check the server runs on submission (meta.json, deploy_map, the
app configs, referenced files, the initial model) and prints one clear line per outcome.
``run`` executes one entry point of an app on this machine, with the same executor, IPC
and subprocess handling a site uses, so user code can be tested before it is submitted:

    flare job run train --path my-job/app --input global.npz --output update.npz
    flare job run validate --path my-job/app --input global.npz --output metrics.json
    flare job run startup --path my-job/app
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from flare_protocol._direct_io import replace_file
from flare_protocol.app_config import (
    CLIENT_CONFIG,
    SERVER_CONFIG,
    ScriptExecutorConfig,
    parse_client_config,
    validate_app,
)
from flare_protocol.errors import ExecutionError, FlareError, InvalidJobDefinition
from flare_protocol.models import load_params
from flare_site.executors import (
    JobContext,
    MetricEvent,
    TaskSpec,
    TrainOutcome,
    ValidateOutcome,
    create_executor,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flare job", description="Check or try a job locally.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check a job folder (or one app folder)")
    check.add_argument("path", type=Path, help="job folder with meta.json, or an app folder")
    run = sub.add_parser("run", help="run one entry point of an app locally")
    run.add_argument("entry", choices=("train", "validate", "startup"))
    run.add_argument("--path", type=Path, required=True, help="the app folder (with config/)")
    run.add_argument("--input", type=Path, help="the global model .npz (train, validate)")
    run.add_argument(
        "--output", type=Path, help="train: the update .npz to write; validate: metrics JSON"
    )
    run.add_argument("--metadata", type=Path, help="train: also write the metadata JSON here")
    run.add_argument("--round", type=int, default=1, help="round number to announce (1)")
    run.add_argument("--total-rounds", type=int, default=1, help="total rounds to announce (1)")
    run.add_argument("--site", default="local", help="site name the code sees (local)")
    run.add_argument("--timeout", type=float, default=3600.0, help="give up after N seconds")
    return parser


def _validate(path: Path) -> int:
    if (path / "meta.json").is_file() or not (path / "config").is_dir():
        from flare_protocol.job_format import validate_job_folder

        job = validate_job_folder(path)
        name = job.meta.get("name", path.name)
        print(
            f"OK: job {name!r} at {path}: {len(job.apps)} app(s) "
            f"({', '.join(job.apps)}), {job.entries} file(s), "
            f"min_clients {job.meta.get('min_clients')}, deploy_map {job.meta.get('deploy_map')}"
        )
        return 0
    root = path.resolve()

    def read(relpath: str) -> bytes | None:
        target = (root / relpath).resolve()
        if root not in target.parents or not target.is_file():
            return None
        return target.read_bytes()

    validate_app(
        path.name,
        read,
        deployed_to_server=(path / SERVER_CONFIG).is_file(),
        deployed_to_sites=(path / CLIENT_CONFIG).is_file(),
    )
    print(f"OK: app {path.name!r} at {path} (no meta.json: checked the app's configs only)")
    return 0


def _print_metric(event: MetricEvent) -> None:
    step = "" if event.step is None else f" step={event.step}"
    if event.kind != "metric":
        print(f"{event.kind} {event.key}={event.text!r}{step} round={event.round}", flush=True)
        return
    print(f"metric {event.key}={event.value:g}{step} round={event.round}", flush=True)


def _forward(stream: str, line: str) -> None:
    print(line, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(target: Path, data: object) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    replace_file(target, text.encode(), durable=False, mode=0o644)


async def _run(args: argparse.Namespace) -> int:
    app = args.path.resolve()
    raw = (app / CLIENT_CONFIG).read_bytes() if (app / CLIENT_CONFIG).is_file() else None
    if raw is None:
        raise InvalidJobDefinition(f"{app}/{CLIENT_CONFIG}: missing; is --path an app folder?")
    config = parse_client_config(raw, source=f"{app.name}/{CLIENT_CONFIG}")
    if args.entry in ("train", "validate") and args.output is None:
        raise InvalidJobDefinition(f"flare job run {args.entry} needs --output")
    if args.entry == "validate" and args.input is None:
        raise InvalidJobDefinition("flare job run validate needs --input MODEL.npz")
    if args.input is not None:
        load_params(args.input)  # a clear error now rather than inside user code
    with tempfile.TemporaryDirectory(prefix="flare-job-run-") as workspace:
        ctx = JobContext(
            job_id="local", site_name=args.site, app_dir=app, workspace=Path(workspace)
        )
        host = create_executor(config, ctx, on_metric=_print_metric, on_output=_forward)
        try:
            await host.start()
            if args.entry == "startup":
                what = "script" if isinstance(config, ScriptExecutorConfig) else "startup command"
                print(f"OK: {what} started")
                return 0
            task = TaskSpec(
                task_id=f"local-{args.entry}",
                kind=args.entry,
                round=args.round,
                total_rounds=args.total_rounds,
                model_path=args.input.resolve() if args.input else None,
            )
            outcome = await asyncio.wait_for(host.run_task(task), args.timeout)
        finally:
            await host.stop(grace=10.0)
        if isinstance(outcome, TrainOutcome):
            _copy_atomic(outcome.params_path, args.output)
            metadata = {
                "num_examples": outcome.num_examples,
                "params_type": outcome.params_type.value,
                "metrics": dict(outcome.metrics),
            }
            if args.metadata is not None:
                _write_json(args.metadata, metadata)
            print(f"OK: update written to {args.output}: {json.dumps(metadata, sort_keys=True)}")
        elif isinstance(outcome, ValidateOutcome):
            _write_json(args.output, dict(outcome.metrics))
            print(f"OK: metrics written to {args.output}: {json.dumps(dict(outcome.metrics))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``flare job``; returns the exit code (0 ok, 1 failed, 2 usage)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command == "validate":
            return _validate(args.path)
        return asyncio.run(_run(args))
    except ExecutionError as exc:
        print(f"error: user code failed: {exc}", file=sys.stderr)
        return 1
    except FlareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except asyncio.TimeoutError:
        print(f"error: no result within {args.timeout:g}s (--timeout)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
