"""``flare <command> ...``: one console script, one ``main(argv)`` per package.

Sub-commands are imported lazily so ``flare --help`` and ``flare kit verify`` stay fast.
"""

from __future__ import annotations

import importlib
import sys

#: command word -> (module, one-line help). Each module exposes ``main(argv) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "provision": ("provisioning.cli", "create or extend a project: CA, certificates, kits"),
    "kit": ("provisioning.kit_cli", "check a startup kit: flare kit verify KIT_DIR"),
    "server": ("flare_server.cli", "run the server: flare server start KIT_DIR"),
    "site": ("flare_site.cli", "run a site: flare site start KIT_DIR"),
    "admin": ("flare_admin.shell.cli", "interactive admin shell: flare admin KIT_DIR"),
    "driver": ("flare_admin.driver_cli", "drive a driver job: flare driver run MODULE:ATTR ..."),
    "job": ("flare_site.job_cli", "check or try a job locally: flare job validate PATH"),
    "poc": ("flare_local.poc", "a local project with a server and sites on 127.0.0.1"),
    "simulate": ("flare_local.simulate", "run a job end to end on a throw-away project"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: flare <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'flare <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"flare-admin {version('flare-admin')}")
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"flare: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(entry[0])
    except ModuleNotFoundError as exc:
        if exc.name and entry[0].startswith(exc.name):
            print(f"flare: '{args[0]}' is not available in this build yet", file=sys.stderr)
            return 2
        raise
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
