"""``flare admin KIT_DIR``: the admin shell, or one-shot commands for scripts.

    flare admin KIT                          interactive shell (on a terminal)
    flare admin KIT -c list_jobs -c "get_job_meta last"
    flare admin KIT -f commands.txt          a file of commands ('-': stdin)
    echo list_jobs | flare admin KIT         commands on stdin when it is not a terminal
    flare admin KIT --format json -c sys_info

Commands run in order and stop at the first failure. Exit codes: 0 ok, 1 a command
failed, 2 usage, 3 cannot connect or authenticate (also an unusable kit).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flare_admin.shell.dispatch import ExitCode

if TYPE_CHECKING:
    from flare_admin.session import Session
    from flare_admin.shell.context import ShellContext
    from flare_admin.shell.dispatch import Dispatcher

__all__ = ["PIPE_WIDTH", "main"]

#: Output width when stdout is not a terminal (and COLUMNS is not set).
PIPE_WIDTH = 200


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flare admin",
        description="The admin shell of a flare-admin project, or one-shot commands.",
        epilog="Exit codes: 0 ok, 1 a command failed, 2 usage, 3 cannot connect or "
        "authenticate. Type 'help' in the shell (or -c help) for the commands.",
    )
    parser.add_argument("kit", metavar="KIT_DIR", help="your admin startup kit (prod_NN/<you>/)")
    parser.add_argument("--username", help="your name (default: the kit's)")
    parser.add_argument(
        "-c",
        "--command",
        dest="commands",
        action="append",
        default=[],
        metavar="COMMAND",
        help="run this command and exit (repeatable)",
    )
    parser.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="run the commands in FILE ('-': standard input) and exit",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: tables (default); json: one JSON document per command",
    )
    parser.add_argument(
        "-y", "--yes", action="store_true", help="do not ask before destructive commands"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="connect timeout and default call deadline (default: 10)",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="dial this address instead of the kit's (TLS still checks the name)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="log every call and show tracebacks of internal errors"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.commands and args.file:
        print("flare admin: use -c or -f, not both", file=sys.stderr)
        return ExitCode.USAGE
    json_output = args.format == "json"
    try:
        lines = _script(args)
    except OSError as exc:
        print(f"flare admin: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return ExitCode.USAGE
    interactive = lines is None
    if interactive and json_output:
        print("flare admin: --format json needs -c, -f or commands on stdin", file=sys.stderr)
        return ExitCode.USAGE
    try:
        session = _open(args)
    except Exception as exc:  # one line naming the cause; exit 3
        return _cannot_open(exc, json_output)
    try:
        dispatcher = _dispatcher(session, args, json_output, interactive)
        if lines is not None:
            return _run_script(dispatcher, lines)
        return _interactive(dispatcher)
    finally:
        session.close()


def _script(args: argparse.Namespace) -> Iterable[str] | None:
    """The lines to run, or None for an interactive shell."""
    if args.commands:
        return list(args.commands)
    if args.file == "-":
        return sys.stdin
    if args.file:
        return Path(args.file).read_text(encoding="utf-8").splitlines()
    if not sys.stdin.isatty():
        return sys.stdin
    return None


def _open(args: argparse.Namespace) -> Session:
    from flare_admin.session import new_secure_session

    username = args.username or _kit_username(args.kit)
    return new_secure_session(
        username, args.kit, debug=args.debug, timeout=args.timeout, server_address=args.server
    )


def _kit_username(kit_dir: str) -> str:
    from flare_protocol.identity import ParticipantType
    from flare_protocol.kit import load_kit

    return load_kit(kit_dir, ParticipantType.ADMIN).name


def _cannot_open(exc: Exception, json_output: bool) -> int:
    from flare_admin.shell.dispatch import error_document, exit_code_for
    from flare_protocol.errors import FlareError

    if not isinstance(exc, FlareError):
        raise exc
    code = exit_code_for(exc)
    if code is ExitCode.FAILED:
        code = ExitCode.NO_CONNECTION  # nothing ran: the session itself could not open
    if json_output:
        import json

        doc = {"command": "open", "ok": False, "error": error_document(exc)}
        print(json.dumps(doc, default=str))
    else:
        print(f"flare admin: {exc.message}", file=sys.stderr)
    return code


def _dispatcher(
    session: Session, args: argparse.Namespace, json_output: bool, interactive: bool
) -> Dispatcher:
    from rich.console import Console

    from flare_admin.shell.commands import REGISTRY
    from flare_admin.shell.context import ShellContext
    from flare_admin.shell.dispatch import Dispatcher
    from flare_admin.shell.theme import THEME

    # Without a terminal rich would wrap at 80 columns: scripts and pagers want whole rows.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(theme=THEME, highlight=False, width=PIPE_WIDTH if wide else None)
    ctx = ShellContext(
        session, console, json_output=json_output, assume_yes=args.yes, interactive=interactive
    )
    return Dispatcher(ctx, REGISTRY, debug=args.debug)


def _run_script(dispatcher: Dispatcher, lines: Iterable[str]) -> int:
    for line in lines:
        code = dispatcher.run_line(line)
        if code is not ExitCode.OK:
            return code
        if dispatcher.ctx.stop_requested:
            break
    return ExitCode.OK


def expiry_warnings(ctx: ShellContext) -> list[str]:
    """One line per certificate that ends within 30 days: the admin's own (read from the
    kit) and the server's and the root CA's (as the server reported them)."""
    from cryptography import x509

    from flare_protocol.expiry import expiring, expiry_of
    from flare_protocol.identity import ParticipantType
    from flare_protocol.kit import CERT_FILE, STARTUP

    lines: list[str] = []
    cert_path = ctx.kit_dir / STARTUP / CERT_FILE[ParticipantType.ADMIN]
    try:
        own = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        own = None  # the pre-flight checked the kit; nothing to say here
    if own is not None:
        for soon in expiring([expiry_of("your certificate", own)]):
            lines.append(f"{soon.describe()}: ask the project admin for a new kit")
    for entry in ctx.expiring:
        if entry.what in ("server certificate", "root CA"):
            lines.append(f"{entry.describe()}: tell the project admin")
    return lines


def banner(ctx: ShellContext) -> None:
    """Who we are, where, and what runs: printed when the shell starts."""
    from rich.text import Text

    info = ctx.session.info
    ctx.refresh_status()
    console = ctx.console
    console.print(
        Text.assemble(
            ("flare admin", "key"),
            f" · project {info.project} · server {ctx.session.address}",
            (f" (version {info.server_version})" if info.server_version else "", "muted"),
        )
    )
    console.print(
        Text.assemble("signed in as ", (info.name, "key"), f" (org {info.org}, role {info.role})")
    )
    for line in expiry_warnings(ctx):
        console.print(Text.assemble(("warning: ", "warning"), line))
    console.print(
        f"{ctx.sites_connected} site(s) connected, {len(ctx.running_jobs)} job(s) running. "
        "Type help for commands, Tab to complete, Ctrl-D to leave.",
        style="muted",
        highlight=False,
        markup=False,
    )


def _interactive(dispatcher: Dispatcher) -> int:
    from flare_admin.shell.repl import Repl, history_for

    ctx = dispatcher.ctx
    banner(ctx)
    return Repl(dispatcher, history=history_for(ctx.kit_dir)).run()
