"""The interactive loop: a prompt_toolkit prompt over the :class:`Dispatcher`.

Tab completes (commands, options, live job ids, sites, local paths); history lives in
the admin kit's ``local/`` folder; Ctrl-C clears the line or cancels the running command,
never the shell; Ctrl-D (or ``bye``) leaves. The bottom toolbar shows the server, the
connection state and the running jobs, refreshed by a background thread every few
seconds and after each command, so drawing it never waits for the network.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import ThreadedCompleter
from prompt_toolkit.formatted_text import HTML, FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory

from flare_admin.shell.completion import ShellCompleter
from flare_admin.shell.context import Connection, ShellContext
from flare_admin.shell.dispatch import Dispatcher

__all__ = ["HISTORY_FILE", "Repl", "history_for"]

HISTORY_FILE = ".flare_admin_history"
#: Seconds between the toolbar's background refreshes.
STATUS_EVERY = 5.0


def history_for(kit_dir: Path) -> History:
    """The kit's ``local/.flare_admin_history`` (mode 0600), or memory if it cannot be written."""
    path = kit_dir / "local" / HISTORY_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
        os.close(fd)
        return FileHistory(str(path))
    except OSError:
        return InMemoryHistory()


class Repl:
    """One interactive shell run."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        history: History | None = None,
        status_every: float = STATUS_EVERY,
        **prompt_kw: Any,
    ) -> None:
        self.dispatcher = dispatcher
        self.ctx: ShellContext = dispatcher.ctx
        self._status_every = status_every
        self._stop = threading.Event()
        self.prompt: PromptSession[str] = PromptSession(
            completer=ThreadedCompleter(ShellCompleter(dispatcher.registry, self.ctx)),
            complete_while_typing=False,
            history=history or InMemoryHistory(),
            auto_suggest=AutoSuggestFromHistory(),
            bottom_toolbar=self.toolbar,
            refresh_interval=1.0,
            **prompt_kw,
        )
        self._ask: PromptSession[str] = PromptSession(**prompt_kw)

    def message(self) -> FormattedText:
        project = self.ctx.session.info.project
        return FormattedText([("bold", f"{project}"), ("", "> ")])

    def toolbar(self) -> HTML:
        ctx = self.ctx
        state = (
            "<style fg='ansigreen'>connected</style>"
            if ctx.connection is Connection.CONNECTED
            else "<style fg='ansired'>disconnected</style> (retried on the next command)"
        )
        jobs = len(ctx.running_jobs)
        return HTML(
            f" {_escape(ctx.session.address)}  {state}  "
            f"sites: {ctx.sites_connected}  running jobs: {jobs}  "
            "<i>Tab completes, Ctrl-D leaves</i>"
        )

    def ask(self, question: str) -> str:
        return self._ask.prompt(question)

    def run(self) -> int:
        """Read and run lines until Ctrl-D or ``bye``; always exit code 0."""
        self.ctx._ask = self.ask  # confirmations are asked at this terminal
        watcher = threading.Thread(target=self._watch_status, name="flare-toolbar", daemon=True)
        watcher.start()
        try:
            while not self.ctx.stop_requested:
                try:
                    line = self.prompt.prompt(self.message)
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt: a fresh line
                except EOFError:
                    break
                self.dispatcher.run_line(line)
                self.ctx.refresh_status()
        finally:
            self._stop.set()
        self.ctx.console.print("bye", style="muted")
        return 0

    def _watch_status(self) -> None:
        while not self._stop.wait(self._status_every):
            self.ctx.refresh_status()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
