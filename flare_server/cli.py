"""``flare server start KIT_DIR``: check the server kit, then serve until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import sys
from pathlib import Path

from flare_protocol._daemon import prepare_daemon_process
from flare_protocol.errors import FlareError
from flare_protocol.kit_workspace import check_default_workspace
from flare_server.app import Server
from flare_server.server_kit import check_server_kit, load_server_kit
from flare_server.settings import ServerSettings

log = logging.getLogger("flare_server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flare server", description="Run the flare server.")
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start the server from its startup kit")
    start.add_argument("kit_dir", type=Path, help="the server's kit folder (prod_NN/<server>)")
    where = start.add_mutually_exclusive_group()
    where.add_argument(
        "--workspace", type=Path, help="server workspace (default: KIT_DIR/workspace)"
    )
    where.add_argument(
        "--new-workspace",
        action="store_true",
        help="use KIT_DIR/workspace even though an earlier prod_NN kit's workspace holds jobs",
    )
    start.add_argument("--admin-port", type=int, help="admin endpoint port (0: any free port)")
    start.add_argument("--fed-learn-port", type=int, help="site endpoint port (0: any free port)")
    start.add_argument("--host", help="address to bind (default 0.0.0.0)")
    start.add_argument(
        "--ready-file", type=Path, help="write the bound ports here as JSON once listening"
    )
    return parser


async def _serve(server: Server, ready_file: Path | None) -> bool:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, functools.partial(server.request_stop, by=sig.name))
    loop.add_signal_handler(signal.SIGHUP, server.reload_kit)
    return await server.run(ready_file)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prepare_daemon_process()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        kit = load_server_kit(args.kit_dir)
        check_server_kit(kit)
        settings = ServerSettings.from_kit(
            kit,
            workspace=args.workspace,
            admin_port=args.admin_port,
            fed_learn_port=args.fed_learn_port,
            host=args.host,
        )
        if settings.workspace is None and not args.new_workspace:
            check_default_workspace(kit.root, "flare server start")
        while True:
            server = Server(kit, settings)
            restart = asyncio.run(_serve(server, args.ready_file))
            if not restart:
                return 0
            # Sites keep dialling the ports they know: a restart binds the same ones again
            # (and rewrites the ready file), also when they were chosen with port 0.
            settings = settings.replace(
                admin_port=server.admin_port, fed_learn_port=server.site_port
            )
            log.info("restarting on the same ports")
    except FlareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
