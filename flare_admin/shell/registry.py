"""The one table of shell commands: it drives dispatch, help, completion and the docs.

A :class:`Command` is a :class:`~flare_admin.shell.params.Grammar` plus what it does
(``run(ctx, args) -> result``), a one-line summary, a help group and, for destructive
commands, the confirmation question. Destructive commands get a ``-y/--yes`` option
here, so no command can forget it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from flare_admin.shell.params import Arg, Grammar, Opt, UsageError

if TYPE_CHECKING:
    from flare_admin.shell.context import ShellContext

__all__ = ["GROUPS", "YES", "Command", "Registry"]

Handler = Callable[["ShellContext", dict[str, Any]], Any]
Question = Callable[["ShellContext", dict[str, Any]], str]

#: Help groups, in the order ``help`` lists them.
GROUPS = {
    "jobs": "Jobs",
    "results": "Results",
    "sites": "Server and sites",
    "files": "Files on the server and sites",
    "session": "This shell",
}

YES = Opt(("-y", "--yes"), "yes", "do not ask for confirmation")


@dataclass(frozen=True)
class Command:
    """One shell command."""

    grammar: Grammar
    summary: str
    run: Handler
    group: str = "jobs"
    aliases: tuple[str, ...] = ()
    #: For destructive commands: the question asked before running (``-y`` skips it).
    confirm: Question | None = None
    #: Longer help, shown by ``help CMD`` and in docs/shell.md.
    details: str = ""
    #: The Session method(s) this command wraps (for the docs' cross-reference).
    wraps: tuple[str, ...] = ()
    #: True for commands that need no server (help, lpwd, bye...).
    offline: bool = False

    @property
    def name(self) -> str:
        return self.grammar.name

    @property
    def destructive(self) -> bool:
        return self.confirm is not None

    def usage(self) -> str:
        return self.grammar.usage()

    def parse(self, words: list[str]) -> dict[str, Any]:
        return self.grammar.parse(words)


class Registry:
    """Commands by name (and alias), in the order they were added."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._aliases: dict[str, str] = {}

    def add(self, command: Command) -> Command:
        if command.destructive and YES not in command.grammar.opts:
            grammar = replace(command.grammar, opts=(*command.grammar.opts, YES))
            command = replace(command, grammar=grammar)
        for name in (command.name, *command.aliases):
            if name in self._commands or name in self._aliases:
                raise ValueError(f"shell command {name!r} is defined twice")
        self._commands[command.name] = command
        for alias in command.aliases:
            self._aliases[alias] = command.name
        return command

    def command(
        self,
        name: str,
        summary: str,
        *,
        args: tuple[Arg, ...] = (),
        opts: tuple[Opt, ...] = (),
        **kw: Any,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register the function as the command ``name``."""

        def register(run: Handler) -> Handler:
            self.add(Command(Grammar(name, args, opts), summary, run, **kw))
            return run

        return register

    def get(self, name: str) -> Command:
        """The command called ``name`` (or aliased so).

        Raises:
            UsageError: no such command; the closest names are suggested.
        """
        found = self._commands.get(self._aliases.get(name, name))
        if found is None:
            close = difflib.get_close_matches(name, list(self.names()), n=2, cutoff=0.75)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UsageError(f"unknown command {name!r}{hint} (type 'help' for the list)")
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._commands or name in self._aliases

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def __len__(self) -> int:
        return len(self._commands)

    def names(self, *, aliases: bool = True) -> Iterator[str]:
        """Every command name, then (optionally) every alias."""
        yield from self._commands
        if aliases:
            yield from self._aliases

    def grouped(self) -> list[tuple[str, list[Command]]]:
        """Commands by help group, groups in :data:`GROUPS` order."""
        return [
            (title, [c for c in self if c.group == key])
            for key, title in GROUPS.items()
            if any(c.group == key for c in self)
        ]
