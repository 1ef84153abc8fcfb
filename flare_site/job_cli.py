"""``flare job validate|run|pack``: check, try and pack a job locally.

``validate`` runs every check the server runs on submission (meta.json, deploy_map, the
app configs, referenced files, the initial model) and prints one clear line per outcome.
``run`` executes one entry point of an app on this machine, with the same executor, IPC
and subprocess handling a site uses (and, for a compute package with ``python_env``, a
virtualenv built as a site builds it), so user code can be tested before it is submitted:

    flare job run train --path my-job/app --input global.npz --output update.npz
    flare job run validate --path my-job/app --input global.npz --output metrics.json
    flare job run startup --path my-job/app
    flare job run build --path my-job/app --output my-job/app/seed.npz   (compute packages)

``pack`` writes the archive ``Session.submit_job`` would send (ignore files honoured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    ClientConfig,
    ScriptExecutorConfig,
    folder_reader,
    load_site_config,
    validate_app,
)
from flare_protocol.compute_package import PACKAGE_FILES, PackageExecutorConfig
from flare_protocol.errors import ExecutionError, FlareError, InvalidJobDefinition, InvalidModel
from flare_protocol.models import load_params
from flare_site.executors import (
    JobContext,
    MetricEvent,
    PackageExecutor,
    TaskSpec,
    TrainOutcome,
    ValidateOutcome,
    create_executor,
)
from flare_site.executors.python_env import PythonEnvs
from flare_site.job_pack import pack_job

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flare job", description="Check or try a job locally.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check a job folder (or one app folder)")
    check.add_argument("path", type=Path, help="job folder with meta.json, or an app folder")
    run = sub.add_parser("run", help="run one entry point of an app locally")
    run.add_argument("entry", choices=("train", "validate", "startup", "build"))
    run.add_argument(
        "--path", type=Path, required=True, help="the app folder (config/ or scaleout.yaml)"
    )
    run.add_argument("--input", type=Path, help="the global model .npz (train, validate)")
    run.add_argument(
        "--output",
        type=Path,
        help="train: the update .npz to write; validate: metrics JSON; build: copy the seed here",
    )
    run.add_argument("--metadata", type=Path, help="train: also write the metadata JSON here")
    run.add_argument("--round", type=int, default=1, help="round number to announce (1)")
    run.add_argument("--total-rounds", type=int, default=1, help="total rounds to announce (1)")
    run.add_argument("--site", default="local", help="site name the code sees (local)")
    run.add_argument("--timeout", type=float, default=3600.0, help="give up after N seconds")
    run.add_argument(
        "--envs",
        type=Path,
        help="where python_env virtualenvs are kept and reused (default: "
        "~/.cache/flare-admin/envs; a site's: its workspace's envs/)",
    )
    run.add_argument(
        "--system-site-packages",
        action="store_true",
        help="python_env virtualenvs also see this Python's packages (as the site setting)",
    )
    pack = sub.add_parser("pack", help="write the archive submit_job would send")
    pack.add_argument("path", type=Path, help="the job folder (with meta.json)")
    pack.add_argument(
        "-o", "--output", type=Path, help="the zip to write (default: ./<folder name>.zip)"
    )
    return parser


def _is_app(path: Path) -> bool:
    return (path / "config").is_dir() or any((path / name).is_file() for name in PACKAGE_FILES)


def _validate(path: Path) -> int:
    if (path / "meta.json").is_file() or not _is_app(path):
        from flare_protocol.job_format import validate_job_folder

        job = validate_job_folder(path)
        name = job.meta.get("name", path.name)
        print(
            f"OK: job {name!r} at {path}: {len(job.apps)} app(s) "
            f"({', '.join(job.apps)}), {job.entries} file(s), "
            f"min_clients {job.meta.get('min_clients')}, deploy_map {job.meta.get('deploy_map')}"
        )
        return 0
    validate_app(
        path.name,
        folder_reader(path),
        deployed_to_server=(path / SERVER_CONFIG).is_file(),
        deployed_to_sites=any((path / name).is_file() for name in (CLIENT_CONFIG, *PACKAGE_FILES)),
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


def _python_envs(args: argparse.Namespace) -> PythonEnvs:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = args.envs if args.envs is not None else Path(cache) / "flare-admin" / "envs"
    # Your pip configuration applies (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS ...).
    return PythonEnvs(root, env=os.environ, system_site_packages=args.system_site_packages)


def _context(args: argparse.Namespace, app: Path, workspace: str) -> JobContext:
    return JobContext(job_id="local", site_name=args.site, app_dir=app, workspace=Path(workspace))


async def _run(args: argparse.Namespace) -> int:
    app = args.path.resolve()
    config = load_site_config(folder_reader(app), app_name=app.name)
    if args.entry == "build":
        return await _build(args, app, config)
    if args.entry in ("train", "validate") and args.output is None:
        raise InvalidJobDefinition(f"flare job run {args.entry} needs --output")
    if args.entry == "validate" and args.input is None:
        raise InvalidJobDefinition("flare job run validate needs --input MODEL.npz")
    if args.input is not None:
        load_params(args.input)  # a clear error now rather than inside user code
    with tempfile.TemporaryDirectory(prefix="flare-job-run-") as workspace:
        host = create_executor(
            config,
            _context(args, app, workspace),
            on_metric=_print_metric,
            on_output=_forward,
            python_envs=_python_envs(args),
        )
        try:
            await host.start()
            if args.entry == "startup":
                print(f"OK: {_started(config)}")
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


def _started(config: ClientConfig) -> str:
    if isinstance(config, ScriptExecutorConfig):
        return "script started"
    startup = (
        config.entry("startup") if isinstance(config, PackageExecutorConfig) else config.startup
    )
    return "startup command ran" if startup else "ready (the app has no startup entry point)"


def _npz_files(app: Path) -> dict[Path, tuple[int, int]]:
    """The ``.npz`` files in ``app`` (at any depth) and beside it, with (mtime, size)."""
    found = [*app.rglob("*.npz"), *app.parent.glob("*.npz")]
    stamps = {}
    for path in found:
        with contextlib.suppress(OSError):
            st = path.stat()
            stamps[path] = (st.st_mtime_ns, st.st_size)
    return stamps


async def _build(args: argparse.Namespace, app: Path, config: ClientConfig) -> int:
    """Run a compute package's ``build`` entry point and find the seed model it wrote.

    Scaleout's build scripts choose the path themselves (``python model.py`` writes
    ``../seed.npz``): the seed is the ``.npz`` the command wrote in the app or beside it.
    """
    if not isinstance(config, PackageExecutorConfig) or config.entry("build") is None:
        raise InvalidJobDefinition(
            f"{app.name}: no build entry point; build belongs to compute packages "
            "(entry_points.build in scaleout.yaml). Other apps name their seed model as "
            "initial_model in config/config_fed_server.json"
        )
    before = _npz_files(app)
    with tempfile.TemporaryDirectory(prefix="flare-job-run-") as workspace:
        host = PackageExecutor(
            config,
            _context(args, app, workspace),
            python_envs=_python_envs(args),
            on_metric=_print_metric,
            on_output=_forward,
        )
        try:
            await asyncio.wait_for(host.build(), args.timeout)
        finally:
            await host.stop()
    written = sorted(p for p, stamp in _npz_files(app).items() if before.get(p) != stamp)
    seeds = [p for p in written if p.name == "seed.npz"] if len(written) > 1 else written
    if len(seeds) != 1:
        if args.output is None and not written:
            print("OK: the build command ran (it wrote no .npz in the app or beside it)")
            return 0
        found = ", ".join(map(str, written)) or "none"
        raise InvalidJobDefinition(
            f"cannot tell which file is the seed model: the build command wrote {found} "
            f"(.npz files in {app} or beside it)"
        )
    seed = seeds[0]
    try:
        params = load_params(seed)
    except InvalidModel as exc:
        raise InvalidModel(f"the seed model {seed} is not usable: {exc}") from exc
    text = f"OK: the build command wrote the seed model {seed} ({len(params)} arrays)"
    if args.output is not None and args.output.resolve() != seed:
        _copy_atomic(seed, args.output)
        text += f"; copied to {args.output}"
    print(text)
    return 0


def _pack(path: Path, output: Path | None) -> int:
    target = output if output is not None else Path(f"{path.resolve().name}.zip")
    result = pack_job(path, target)
    left = f"; {result.left_out} file(s) left out by ignore files" if result.left_out else ""
    print(
        f"OK: wrote {result.path}: job {result.job.meta.get('name')!r}, "
        f"{result.job.entries} file(s), {result.size} bytes{left}"
    )
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
        if args.command == "pack":
            return _pack(args.path, args.output)
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
