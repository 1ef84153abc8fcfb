"""Run one command line: parse, confirm, call, then print a table or a JSON document.

:class:`Dispatcher` is shared by the interactive loop, ``-c``, ``-f`` and commands read
from stdin, so all behave alike. It never raises for a command's failure: every
flare exception becomes one red line (or an error document with ``--format json``) and
an :class:`ExitCode`; Ctrl-C cancels the command, not the shell.
"""

from __future__ import annotations

import enum
import json
import shlex
import sys
from typing import IO, Any

from flare_admin.shell.context import Connection, ShellContext
from flare_admin.shell.params import UsageError
from flare_admin.shell.registry import Registry
from flare_admin.shell.views import jsonable
from flare_protocol import errors

__all__ = ["Dispatcher", "ExitCode", "error_document", "exit_code_for"]


class ExitCode(enum.IntEnum):
    """``flare admin``'s exit codes (documented in docs/shell.md)."""

    OK = 0
    FAILED = 1  # a command failed (the server said no, a job was not found, ...)
    USAGE = 2  # a command line (or flare admin's own arguments) did not parse
    NO_CONNECTION = 3  # the kit is unusable, the server unreachable or it refused us


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code a failure maps to."""
    if isinstance(exc, UsageError):
        return ExitCode.USAGE
    if isinstance(
        exc,
        (errors.NoConnection, errors.AuthenticationError, errors.KitError, errors.SessionClosed),
    ):
        return ExitCode.NO_CONNECTION
    return ExitCode.FAILED


def error_document(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message", ...data}`` for an error (its data: job_id, status, ...)."""
    if isinstance(exc, errors.FlareError):
        data = {k: jsonable(v) for k, v in exc.details.items()}
        return {"type": type(exc).__name__, "message": exc.message, **data}
    if isinstance(exc, UsageError):
        return {"type": "UsageError", "message": exc.message, "usage": exc.usage}
    return {"type": type(exc).__name__, "message": str(exc)}


class Dispatcher:
    """Runs command lines against one :class:`ShellContext`."""

    def __init__(
        self,
        ctx: ShellContext,
        registry: Registry,
        *,
        stdout: IO[str] | None = None,
        debug: bool = False,
    ) -> None:
        self.ctx = ctx
        self.registry = registry
        self.stdout = stdout
        self.debug = debug
        self._err_console: Any = None

    # -- running -------------------------------------------------------------------------
    def run_line(self, line: str) -> ExitCode:
        """Run one line (blank lines and ``# comments`` do nothing)."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            return self.fail("?", UsageError(f"cannot split the line: {exc}"))
        if not words:
            return ExitCode.OK
        return self.run(words[0], words[1:])

    def run(self, name: str, words: list[str]) -> ExitCode:
        """Run command ``name`` with the given words."""
        try:
            cmd = self.registry.get(name)
            args = cmd.parse(words)
            if not cmd.offline and self.ctx.connection is Connection.DISCONNECTED:
                self.ctx.reconnect()
            if cmd.confirm is not None and not args.get("yes"):
                if not self.ctx.confirm(cmd.confirm(self.ctx, args)):
                    self.note(name, "cancelled: nothing was done")
                    return ExitCode.OK
            result = cmd.run(self.ctx, args)
        except KeyboardInterrupt:
            self.note(name, "cancelled (Ctrl-C)")
            return ExitCode.FAILED
        except (errors.FlareError, UsageError) as exc:
            if isinstance(exc, errors.NoConnection):
                self.ctx.mark(False, exc.message)
            return self.fail(name, exc)
        except Exception as exc:  # a bug of ours: one line, the traceback only with --debug
            if self.debug:
                import traceback

                traceback.print_exc()
            return self.fail(name, exc, internal=True)
        if not cmd.offline:
            self.ctx.mark(True)
        self.show(cmd.name, result)
        return ExitCode.OK

    # -- output --------------------------------------------------------------------------
    def show(self, name: str, result: Any) -> None:
        """Print a result: a JSON document, or rich renderables."""
        if self.ctx.json_output:
            self._json({"command": name, "ok": True, "result": jsonable(result)})
            return
        from flare_admin.shell.render import renderables

        for item in renderables(result):
            self.ctx.console.print(item)

    def note(self, name: str, text: str) -> None:
        """A remark that is neither a result nor an error (e.g. a declined confirmation)."""
        if self.ctx.json_output:
            self._json({"command": name, "ok": True, "result": {"message": text}})
        else:
            self.ctx.console.print(text, style="warning", markup=False, highlight=False)

    def fail(self, name: str, exc: BaseException, *, internal: bool = False) -> ExitCode:
        """Report a failure; return its exit code."""
        code = exit_code_for(exc)
        if self.ctx.json_output:
            self._json({"command": name, "ok": False, "error": error_document(exc)})
            return code
        console = self._errors()
        if internal:
            console.print(
                f"internal error in {name}: {type(exc).__name__}: {exc} "
                "(please report it; --debug shows the traceback)",
                style="error",
                markup=False,
                highlight=False,
            )
            return code
        message = exc.message if isinstance(exc, (errors.FlareError, UsageError)) else str(exc)
        console.print(f"error: {message}", style="error", markup=False, highlight=False)
        if isinstance(exc, UsageError) and exc.usage:
            console.print(exc.usage, style="muted", markup=False, highlight=False)
        return code

    def _errors(self) -> Any:
        if self.ctx.interactive:
            return self.ctx.console
        if self._err_console is None:
            from rich.console import Console

            from flare_admin.shell.theme import THEME

            self._err_console = Console(stderr=True, theme=THEME, highlight=False, soft_wrap=True)
        return self._err_console

    def _json(self, document: dict[str, Any]) -> None:
        out = self.stdout or sys.stdout
        out.write(json.dumps(document, allow_nan=False, default=str) + "\n")
        out.flush()
