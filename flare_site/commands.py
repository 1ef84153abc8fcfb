"""``site.command``: the admin commands a site answers, confined to its workspace.

The server checks the admin's right before it forwards a command (see
``flare_server/commands.py``); the site checks the arguments again, because a path is a
path to *its* disk. The file commands (ls, cat, head, tail, grep, pwd) are
:mod:`flare_protocol.workspace_files`, the code the server runs for its own workspace.
The others:

=============  =====================================  ===================================
command        args                                   result
=============  =====================================  ===================================
show_stats     ``job_id?``                            jobs, limits, uptime, connection
show_errors    ``job_id?``                            ``[{time, job_id, error}]``
reset_errors   ``job_id``                             ``{"reset": n}``: the job's errors
                                                      forgotten (what show_errors shows)
restart        (none)                                 ``"restarting"``; then it restarts
shutdown       (none)                                 ``"stopping"``; then it stops
=============  =====================================  ===================================

File commands are confined to the site workspace (no ``..``, absolute path or symlink
out; ``*.key`` files are never shown). Any failure is a ``{"type", "message"}`` error
whose type is a name from :data:`flare_protocol.errors.WIRE_ERRORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_protocol.errors import InvalidArgumentError
from flare_protocol.workspace_files import FILE_COMMANDS, run_file_command

__all__ = ["CommandResult", "SiteCommands"]


@dataclass(frozen=True)
class CommandResult:
    """A command's answer: ``result`` on success, else ``error`` (type, message)."""

    result: Any = None
    error: dict[str, str] | None = None
    #: After replying, the site should do this: "restart", "shutdown" or "".
    then: str = ""

    def body(self) -> dict[str, Any]:
        return {"result": self.result, "error": self.error}


class SiteCommands:
    """Runs one ``site.command``; ``stats``/``errors``/``reset_errors`` come from the runtime."""

    FILE_COMMANDS = FILE_COMMANDS
    COMMANDS = frozenset({"show_stats", "show_errors", "reset_errors", "restart", "shutdown"})

    def __init__(
        self,
        workspace: Path,
        *,
        stats: Callable[[str | None], Any],
        errors: Callable[[str | None], Any],
        reset_errors: Callable[[str], int],
    ) -> None:
        self.root = Path(workspace).resolve()
        self._stats = stats
        self._errors = errors
        self._reset_errors = reset_errors

    def run(self, command: object, args: object) -> CommandResult:
        """Answer ``command`` with ``args`` (a JSON object); never raises."""
        try:
            if not isinstance(command, str):
                raise InvalidArgumentError("the command must be a string")
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise InvalidArgumentError(f"arguments of {command!r} must be a JSON object")
            if command in self.FILE_COMMANDS:
                return CommandResult(self._file(command, args))
            job_id = args.get("job_id") or None
            if job_id is not None and not isinstance(job_id, str):
                raise InvalidArgumentError("argument 'job_id' must be a string")
            if command == "show_stats":
                return CommandResult(self._stats(job_id))
            if command == "show_errors":
                return CommandResult(self._errors(job_id))
            if command == "reset_errors":
                if job_id is None:
                    raise InvalidArgumentError("reset_errors needs a job_id")
                return CommandResult({"reset": self._reset_errors(job_id)})
            if command == "restart":
                return CommandResult("restarting", then="restart")
            if command == "shutdown":
                return CommandResult("stopping", then="shutdown")
            known = sorted(self.FILE_COMMANDS | {*self.COMMANDS})
            raise InvalidArgumentError(
                f"unknown site command {command[:64]!r}; known: {', '.join(known)}"
            )
        except InvalidArgumentError as exc:
            return CommandResult(error={"type": "InvalidArgumentError", "message": exc.message})
        except OSError as exc:
            return CommandResult(
                error={"type": "InvalidArgumentError", "message": f"{exc.strerror}: {exc.filename}"}
            )
        except Exception as exc:  # a bug must not kill the site's message loop
            return CommandResult(
                error={"type": "InternalError", "message": f"{type(exc).__name__}: {exc}"}
            )

    def _file(self, name: str, args: dict[str, Any]) -> Any:
        return run_file_command(self.root, name, args, where="site workspace")
