"""``flare site start KIT_DIR``: check the site kit, then serve the server until stopped.

The kit is checked before any network call (:func:`flare_protocol.preflight.check_kit`:
files present, key mode 0600, key matches certificate, issued by the kit's CA, valid
dates, a site certificate, the signature over ``startup/``); a kit that fails prints one
``error:`` line naming the file and the fix and exits with status 2. SIGTERM and SIGINT
stop the site gracefully (its jobs' process groups are killed) with status 0; a
``restart`` command from the server re-checks the kit and starts over in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from flare_protocol._daemon import prepare_daemon_process
from flare_protocol.errors import FlareError
from flare_protocol.identity import ParticipantType
from flare_protocol.kit import Kit, load_kit
from flare_protocol.kit_workspace import check_default_workspace
from flare_protocol.preflight import check_kit
from flare_site.runtime import SiteRuntime, SiteSettings, load_site_settings
from flare_site.user_account import (
    UserAccount,
    check_key_not_owned,
    check_reachable,
    user_code_account,
)

log = logging.getLogger("flare_site")

SITE_LOG = Path("logs") / "site.log"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flare site", description="Run a flare site.")
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start the site from its startup kit")
    start.add_argument("kit_dir", type=Path, help="the site's kit folder (prod_NN/<site>)")
    where = start.add_mutually_exclusive_group()
    where.add_argument("--workspace", type=Path, help="site workspace (default: KIT_DIR/workspace)")
    where.add_argument(
        "--new-workspace",
        action="store_true",
        help="use KIT_DIR/workspace even though an earlier prod_NN kit's workspace holds jobs",
    )
    start.add_argument(
        "--server", metavar="HOST:PORT", help="server site endpoint to dial (default: the kit's)"
    )
    start.add_argument(
        "--max-jobs",
        type=int,
        help="jobs run at once (default: max_concurrent_jobs of local/resources.json)",
    )
    return parser


def load_checked_kit(kit_dir: Path) -> Kit:
    """Load a site kit and run every pre-flight check (raises a KitError naming the fix)."""
    kit = load_kit(kit_dir, ParticipantType.SITE)
    check_kit(kit)
    return kit


@contextlib.contextmanager
def workspace_lock(workspace: Path) -> Iterator[None]:
    """Hold ``<workspace>/site.lock``: two sites on one workspace would fight over it.

    Raises:
        FlareError: another process holds the lock (its pid is named).
    """
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / "site.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FlareError(
                f"another site process (pid {holder}) already uses workspace {workspace}; "
                "stop it first, or give this one its own --workspace"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _install_logging(settings: SiteSettings) -> logging.Handler:
    logger = logging.getLogger("flare_site")
    logger.setLevel(settings.log_level.upper())
    path = settings.workspace / SITE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    return handler


def _warn_expiring(kit: Kit) -> None:
    """Log a warning for the site's certificate and the root CA if they end within 30 days."""
    from cryptography import x509

    from flare_protocol.expiry import expiring, expiry_of

    certs = [("site certificate", kit.cert_path), ("root CA", kit.root_ca_path)]
    items = [expiry_of(what, x509.load_pem_x509_certificate(p.read_bytes())) for what, p in certs]
    for soon in expiring(items):
        log.warning("%s: ask the project admin for a new kit in time", soon.describe())


async def _serve(runtime: SiteRuntime) -> str:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.request_stop, False, sig.name)
    return await runtime.run()


def user_code_runs_as(kit: Kit, settings: SiteSettings) -> UserAccount | None:
    """The user a job's code runs as (``run_user_code_as``; None: the site's own), once
    checked: it can reach the workspace and cannot read the kit's key.

    Raises:
        KitError: a root site without the setting, an unknown user, a workspace the user
            cannot reach, a key the user owns; each names the fix.
    """
    account = user_code_account(settings.run_user_code_as, source=str(kit.local / "settings.json"))
    if account is not None:
        settings.workspace.mkdir(parents=True, exist_ok=True)
        check_reachable(settings.workspace / "jobs", account, "the site's workspace")
        check_key_not_owned(kit.key_path, account)
    return account


def _run_once(kit: Kit, settings: SiteSettings) -> str:
    """One life of the site, from connect to stop: ``"stop"`` or ``"restart"``."""
    run_as = user_code_runs_as(kit, settings)
    with workspace_lock(settings.workspace):
        handler = _install_logging(settings)
        log.info(
            "site %s of project %s starting: server %s, workspace %s, up to %d job(s)",
            kit.name,
            kit.project,
            settings.server_address,
            settings.workspace,
            settings.max_jobs,
        )
        _warn_expiring(kit)
        if os.geteuid() == 0:
            who = run_as.name if run_as else "root (run_user_code_as: root)"
            log.info("user code runs as %s", who)
        try:
            return asyncio.run(_serve(SiteRuntime(kit, settings, run_as=run_as)))
        finally:
            logging.getLogger("flare_site").removeHandler(handler)
            handler.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prepare_daemon_process()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        checked = args.workspace is not None or args.new_workspace
        while True:
            kit = load_checked_kit(args.kit_dir)
            if not checked:  # once: a restart must not stop on the workspace it created
                check_default_workspace(kit.root, "flare site start")
                checked = True
            settings = load_site_settings(
                kit, workspace=args.workspace, server=args.server, max_jobs=args.max_jobs
            )
            if _run_once(kit, settings) != "restart":
                log.info("site %s stopped", kit.name)
                return 0
            log.info("site %s restarting", kit.name)
    except FlareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
