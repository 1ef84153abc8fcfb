"""Every phase of a run handles every kind of event: read from the code, no kind forgotten.

mypy proves the same (each ``match`` ends in ``unhandled``, typed ``NoReturn``); this test
keeps the proof in the suite. A kind of event no phase knows fails loudly at run time
(``test_job_runner.py::test_an_event_no_phase_knows_ends_the_job_loudly``).
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from flare_server.job_runner import events
from flare_server.job_runner.events import Event, JobMessage, unhandled

PACKAGE = Path(events.__file__).parent
#: The union each ``match`` subject ranges over, by the subject's name.
UNIONS = {"event": Event, "body": JobMessage}


def _matches() -> list[tuple[str, int, str, ast.Match]]:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Match) and isinstance(node.subject, ast.Name):
                found.append((path.name, node.lineno, node.subject.id, node))
    return found


def _classes(pattern: ast.pattern) -> set[str]:
    if isinstance(pattern, ast.MatchClass) and isinstance(pattern.cls, ast.Name):
        return {pattern.cls.id}
    if isinstance(pattern, ast.MatchOr):
        return set().union(*(_classes(p) for p in pattern.patterns))
    return set()


def _ends_in_unhandled(match: ast.Match) -> bool:
    last = match.cases[-1]
    wildcard = isinstance(last.pattern, ast.MatchAs) and last.pattern.pattern is None
    call = last.body[0] if len(last.body) == 1 else None
    return (
        wildcard
        and isinstance(call, ast.Expr)
        and isinstance(call.value, ast.Call)
        and isinstance(call.value.func, ast.Name)
        and call.value.func.id == "unhandled"
    )


def test_the_phases_dispatch_on_events_and_message_bodies() -> None:
    subjects = {(name, subject) for name, _, subject, _ in _matches()}
    for phase in ("deploy.py", "rounds.py", "finish.py"):
        assert (phase, "event") in subjects, f"{phase} no longer matches on its events"
        assert (phase, "body") in subjects, f"{phase} no longer matches on message bodies"


@pytest.mark.parametrize(
    "match", _matches(), ids=lambda m: f"{m[0]}:{m[1]}" if isinstance(m, tuple) else ""
)
def test_every_match_names_every_kind_and_ends_in_unhandled(
    match: tuple[str, int, str, ast.Match],
) -> None:
    name, line, subject, node = match
    assert subject in UNIONS, f"{name}:{line} matches on {subject!r}: add its union to UNIONS"
    kinds = {cls.__name__ for cls in typing.get_args(UNIONS[subject])}
    named = set().union(*(_classes(case.pattern) for case in node.cases))
    assert kinds <= named, f"{name}:{line} does not handle {sorted(kinds - named)}"
    assert _ends_in_unhandled(node), f"{name}:{line} must end with `case _: unhandled(...)`"


def test_an_unhandled_event_is_an_assertion_error_naming_it() -> None:
    with pytest.raises(AssertionError, match=r"unhandled job event \('message', 'site-1'\)"):
        unhandled(("message", "site-1"))  # type: ignore[arg-type]
