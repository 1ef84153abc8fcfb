"""Tab completion from the registry: command names, options, and each argument by kind.

Job ids and site names come live from the server (through the context's short-lived
caches); local paths from this machine. The completer never raises: a line that does
not parse yet simply gets fewer suggestions.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from flare_admin.shell.context import LAST_JOB, ShellContext
from flare_admin.shell.params import Arg, Kind, Opt
from flare_admin.shell.registry import Registry

__all__ = ["ShellCompleter", "split_for_completion"]


def split_for_completion(text: str) -> tuple[list[str], bool]:
    """The words before the cursor, and whether the last one is still being typed."""
    started = bool(text) and not text[-1].isspace()
    try:
        words = shlex.split(text)
    except ValueError:  # an open quote: complete what is inside it
        words = text.split()
    if started and text.endswith(("'", '"')) and not words:
        words = [""]
    return words, started


class ShellCompleter(Completer):
    """Completes shell command lines."""

    def __init__(self, registry: Registry, ctx: ShellContext) -> None:
        self.registry = registry
        self.ctx = ctx
        self._paths = PathCompleter(expanduser=True)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        words, started = split_for_completion(document.text_before_cursor)
        current = words[-1] if started and words else ""
        if not words or (len(words) == 1 and started):
            yield from self._choices(current, self.registry.names(), meta=self._summary)
            return
        if words[0] not in self.registry:
            return
        cmd = self.registry.get(words[0])
        args = words[1:]
        if started and current.startswith("-"):
            used = {w for w in args[:-1]}
            flags = [f for o in cmd.grammar.opts if not (set(o.flags) & used) for f in o.flags]
            yield from self._choices(
                current, flags, meta=lambda f: self._opt_help(cmd.grammar.opts, f)
            )
            return
        expected = cmd.grammar.expects(args, started)
        if expected is None:
            return
        kind = expected.kind if isinstance(expected, Arg) else expected.kind
        choices = expected.choices
        yield from self._by_kind(kind, choices, current, document)

    # -- by argument kind ------------------------------------------------------------------
    def _by_kind(
        self, kind: Kind | None, choices: tuple[str, ...], current: str, document: Document
    ) -> Iterator[Completion]:
        if kind is None:
            return
        if kind is Kind.JOB:
            yield from self._jobs(current)
        elif kind is Kind.SITE:
            yield from self._choices(current, self.ctx.site_names())
        elif kind is Kind.TARGET:
            yield from self._choices(current, ["server", *self.ctx.site_names()])
        elif kind is Kind.TARGET_TYPE:
            yield from self._choices(current, ["server", "client", "all"])
        elif kind is Kind.CHOICE:
            yield from self._choices(current, choices)
        elif kind is Kind.COMMAND:
            yield from self._choices(current, self.registry.names(), meta=self._summary)
        elif kind is Kind.LOCAL_PATH:
            sub = Document(current, len(current))
            yield from self._paths.get_completions(sub, CompleteEvent())

    def _jobs(self, current: str) -> Iterator[Completion]:
        prefix = current.lower()
        for word in LAST_JOB[:1]:
            if word.startswith(prefix) and prefix:
                yield Completion(word, -len(current), display_meta="the newest job")
        for ref in self.ctx.job_refs():
            if ref.job_id.startswith(prefix):
                yield Completion(
                    ref.job_id,
                    -len(current),
                    display=f"{ref.job_id[:8]}  {ref.name}",
                    display_meta=ref.status,
                )

    @staticmethod
    def _choices(current: str, options: Iterable[str], meta: object = None) -> Iterator[Completion]:
        for option in options:
            if option.startswith(current):
                text = meta(option) if callable(meta) else None
                yield Completion(option, -len(current), display_meta=text)

    def _summary(self, name: str) -> str:
        return self.registry.get(name).summary

    @staticmethod
    def _opt_help(opts: tuple[Opt, ...], flag: str) -> str:
        for opt in opts:
            if flag in opt.flags:
                return opt.help
        return ""
