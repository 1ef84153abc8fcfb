"""Command-line grammar of the shell: what a command takes, and parsing one line's words.

Every shell command declares its positional :class:`Arg`\\ s and its :class:`Opt`\\ ions;
the same declaration drives parsing (:meth:`Grammar.parse`), the usage line, the help
text, tab completion (each argument has a :class:`Kind` the completer knows how to
offer) and the command reference in docs/shell.md. Nothing here talks to a server:
job ids stay text until the command resolves them (a unique prefix is enough).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Arg", "Grammar", "Kind", "Opt", "UsageError"]


class UsageError(Exception):
    """A command line that does not fit its command's grammar (exit code 2)."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class Kind(enum.Enum):
    """What an argument holds: drives conversion and completion."""

    TEXT = "text"
    JOB = "job"  # a job id or a unique prefix of one, or 'last'
    SITE = "site"  # a site name
    TARGET = "target"  # 'server' or a site name
    TARGET_TYPE = "target_type"  # server | client | all
    LOCAL_PATH = "local_path"  # a path on this machine
    REMOTE_PATH = "remote_path"  # a path in a target's workspace
    INT = "int"  # an integer >= 0
    SECONDS = "seconds"  # a number of seconds >= 0
    COMMAND = "command"  # a shell command name
    CHOICE = "choice"  # one of ``choices``


TARGET_TYPES = ("server", "client", "all")


def convert(kind: Kind, value: str, what: str, choices: Sequence[str] = ()) -> Any:
    """``value`` as the Python value of ``kind``; UsageError naming ``what`` when it is not."""
    if kind is Kind.INT:
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"{what} must be a whole number, got {value!r}") from None
        if number < 0:
            raise UsageError(f"{what} must be 0 or more, got {number}")
        return number
    if kind is Kind.SECONDS:
        try:
            seconds = float(value)
        except ValueError:
            raise UsageError(f"{what} must be a number of seconds, got {value!r}") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise UsageError(f"{what} must be a number of seconds >= 0, got {value!r}")
        return seconds
    if kind is Kind.TARGET_TYPE:
        choices = TARGET_TYPES
    if choices and value not in choices:
        raise UsageError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


@dataclass(frozen=True)
class Arg:
    """A positional argument. ``many``: takes every remaining word (a list)."""

    name: str
    kind: Kind = Kind.TEXT
    help: str = ""
    required: bool = True
    many: bool = False
    choices: tuple[str, ...] = ()
    default: Any = None

    @property
    def metavar(self) -> str:
        return self.name.upper()

    def usage(self) -> str:
        text = "|".join(self.choices) if self.choices else self.metavar
        if self.many:
            text += " ..."
        return text if self.required else f"[{text}]"


@dataclass(frozen=True)
class Opt:
    """An option. With ``kind`` None it is a switch (True when given), else it takes a value."""

    flags: tuple[str, ...]
    dest: str
    help: str = ""
    kind: Kind | None = None
    default: Any = None
    choices: tuple[str, ...] = ()
    metavar: str = ""

    @property
    def takes_value(self) -> bool:
        return self.kind is not None

    @property
    def value_name(self) -> str:
        return self.metavar or self.dest.upper()

    def usage(self) -> str:
        flag = self.flags[0]
        return f"[{flag} {self.value_name}]" if self.takes_value else f"[{flag}]"

    def initial(self) -> Any:
        if self.takes_value:
            return self.default
        return bool(self.default)


@dataclass(frozen=True)
class Grammar:
    """A command's name, positional arguments and options."""

    name: str
    args: tuple[Arg, ...] = ()
    opts: tuple[Opt, ...] = field(default=())

    def usage(self) -> str:
        """``name ARG [-d] [-n NAME] [OPTIONAL]``: required arguments, options, the rest."""
        required = [a.usage() for a in self.args if a.required]
        optional = [a.usage() for a in self.args if not a.required]
        parts = [self.name, *required, *(o.usage() for o in self.opts), *optional]
        return " ".join(parts)

    def option(self, flag: str) -> Opt | None:
        """The option a word names (``-n``, ``--name``, or ``--name=value``'s flag)."""
        name = flag.split("=", 1)[0] if flag.startswith("--") else flag
        for opt in self.opts:
            if name in opt.flags:
                return opt
        return None

    def parse(self, words: Sequence[str]) -> dict[str, Any]:
        """Match ``words`` (the line after the command name) to the grammar.

        Options may come anywhere; ``--`` ends them. A word starting with ``-`` that is
        no option is an error unless a numeric argument expects it (never negative here).

        Raises:
            UsageError: naming the word or argument at fault (with this command's usage).
        """
        values: dict[str, Any] = {o.dest: o.initial() for o in self.opts}
        positional: list[str] = []
        i = 0
        only_positional = False
        while i < len(words):
            word = words[i]
            i += 1
            if only_positional or not word.startswith("-") or word == "-":
                positional.append(word)
                continue
            if word == "--":
                only_positional = True
                continue
            opt = self.option(word)
            if opt is None:
                known = ", ".join(f for o in self.opts for f in o.flags) or "none"
                raise self.error(f"unknown option {word!r} (options: {known})")
            if not opt.takes_value:
                if "=" in word:
                    raise self.error(f"option {opt.flags[0]} takes no value")
                values[opt.dest] = True
                continue
            if word.startswith("--") and "=" in word:
                raw = word.split("=", 1)[1]
            elif i < len(words):
                raw = words[i]
                i += 1
            else:
                raise self.error(f"option {word} needs a value ({opt.value_name})")
            assert opt.kind is not None
            values[opt.dest] = self._convert(opt.kind, raw, f"{opt.flags[-1]}", opt.choices)
        self._positional(positional, values)
        return values

    def _positional(self, words: list[str], values: dict[str, Any]) -> None:
        rest = list(words)
        for arg in self.args:
            if arg.many:
                values[arg.name] = [
                    self._convert(arg.kind, w, arg.metavar, arg.choices) for w in rest
                ]
                rest = []
                if arg.required and not values[arg.name]:
                    raise self.error(f"missing {arg.metavar}: {arg.help or arg.name}")
                continue
            if rest:
                values[arg.name] = self._convert(arg.kind, rest.pop(0), arg.metavar, arg.choices)
            elif arg.required:
                raise self.error(f"missing {arg.metavar}: {arg.help or arg.name}")
            else:
                values[arg.name] = arg.default
        if rest:
            raise self.error(f"unexpected argument(s): {' '.join(rest)}")

    def _convert(self, kind: Kind, raw: str, what: str, choices: Sequence[str]) -> Any:
        try:
            return convert(kind, raw, what, choices)
        except UsageError as exc:
            raise self.error(exc.message) from None

    def error(self, message: str) -> UsageError:
        return UsageError(f"{self.name}: {message}", f"usage: {self.usage()}")

    def expects(self, words: Sequence[str], current_word_started: bool) -> Arg | Opt | None:
        """What the next (or current) word of a partly typed line is: an option's value,
        a positional argument, or None when nothing more is taken. For completion.

        ``words``: the words typed after the command name, the last one being the word
        under the cursor when ``current_word_started``.
        """
        done = list(words[:-1]) if current_word_started else list(words)
        pending: Opt | None = None
        count = 0
        only_positional = False
        for word in done:
            if pending is not None:
                pending = None
                continue
            if word == "--" and not only_positional:
                only_positional = True
                continue
            if word.startswith("-") and word != "-" and not only_positional:
                opt = self.option(word)
                if opt is not None and opt.takes_value and "=" not in word:
                    pending = opt
                continue
            count += 1
        if pending is not None:
            return pending
        for arg in self.args:
            if arg.many:
                return arg
            if count == 0:
                return arg
            count -= 1
        return None
