"""The one table of shell commands: it covers the Session, and the docs come from it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from flare_admin import Session
from flare_admin.shell.commands import REGISTRY
from flare_admin.shell.params import UsageError
from flare_admin.shell.reference import REFERENCE_BEGIN, REFERENCE_END, markdown_reference
from flare_admin.shell.registry import YES

DOCS = Path(__file__).resolve().parents[3] / "docs" / "shell.md"

#: Session members the shell deliberately has no command for, and why.
NOT_A_COMMAND = {
    "close": "leaving the shell (bye, Ctrl-D) closes the session",
    "address": "shown by info and the toolbar",
    "startup_kit_location": "shown by info",
    "state": "the shell's session is open while it runs",
    "timeout": "shown by info; changed by set_timeout",
    "get_driver": "returns a Driver object to program against (docs/driver.md); the shell "
    "shows a driver job's messages with 'messages'",
}


def _session_members() -> set[str]:
    return {name for name, _ in inspect.getmembers(Session) if not name.startswith("_")}


def test_every_session_method_has_a_command():
    wrapped = {name for cmd in REGISTRY for name in cmd.wraps}
    missing = _session_members() - wrapped - set(NOT_A_COMMAND)
    assert not missing, f"Session members without a shell command: {sorted(missing)}"


def test_every_command_wraps_what_exists():
    members = _session_members()
    for cmd in REGISTRY:
        for name in cmd.wraps:
            assert name in members, f"{cmd.name} claims to wrap Session.{name}"


def test_flare_console_names_are_there():
    for name in (
        "check_status", "sys_info", "list_jobs", "get_job_meta", "submit_job", "abort_job",
        "clone_job", "delete_job", "download_job", "list_clients", "show_stats", "show_errors",
        "reset_errors", "ls", "cat", "head", "tail", "grep", "pwd", "shutdown", "restart",
        "shutdown_system", "set_timeout", "unset_timeout", "lpwd", "info", "help", "?", "bye",
    ):  # fmt: skip
        assert name in REGISTRY, name


def test_destructive_commands_ask_first_and_take_yes():
    destructive = {c.name for c in REGISTRY if c.destructive}
    assert destructive == {"abort_job", "delete_job", "shutdown", "shutdown_system", "restart"}
    for name in destructive:
        assert YES in REGISTRY.get(name).grammar.opts


def test_names_and_aliases_are_unique():
    names = list(REGISTRY.names())
    assert len(names) == len(set(names))


def test_an_unknown_command_suggests_the_closest_names():
    with pytest.raises(UsageError, match="unknown command 'list_job'; did you mean list_jobs"):
        REGISTRY.get("list_job")


def test_every_command_has_a_summary_and_a_help_group():
    for cmd in REGISTRY:
        assert cmd.summary and cmd.summary[0].islower() and not cmd.summary.endswith(".")
        assert cmd.group in {"jobs", "results", "sites", "files", "session"}


def test_docs_shell_md_holds_the_generated_reference():
    text = DOCS.read_text(encoding="utf-8")
    start, end = text.index(REFERENCE_BEGIN), text.index(REFERENCE_END) + len(REFERENCE_END)
    assert text[start:end] == markdown_reference(REGISTRY), (
        "docs/shell.md is out of date: paste the output of "
        "`python -m flare_admin.shell.reference` between its markers"
    )
