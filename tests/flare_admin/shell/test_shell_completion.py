"""Tab completion, through prompt_toolkit Documents, with job ids and sites from a real server."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from rich.console import Console

from flare_admin import Session
from flare_admin.shell.commands import REGISTRY
from flare_admin.shell.completion import ShellCompleter, split_for_completion
from flare_admin.shell.context import ShellContext
from tests.flare_admin.conftest import make_job


@pytest.fixture
def completer(session: Session) -> ShellCompleter:
    ctx = ShellContext(session, Console(file=io.StringIO()))
    return ShellCompleter(REGISTRY, ctx)


def complete(completer: ShellCompleter, text: str) -> list[str]:
    got = completer.get_completions(Document(text, len(text)), CompleteEvent())
    return [c.text for c in got]


def test_the_first_word_completes_to_command_names_and_aliases(completer):
    assert complete(completer, "list_") == ["list_jobs", "list_clients"]
    assert "download_job_result" in complete(completer, "download_job")
    assert "?" in complete(completer, "")


def test_a_dash_completes_the_commands_options(completer):
    assert complete(completer, "list_jobs -") == [
        "-d", "--detailed", "-n", "--name", "-m", "--max", "-r", "--reverse",
    ]  # fmt: skip
    assert complete(completer, "list_jobs --m") == ["--max"]


def test_options_already_given_are_not_offered_again(completer):
    assert "-d" not in complete(completer, "list_jobs -d -")


def test_job_arguments_complete_to_the_servers_job_ids(completer, session, tmp_path):
    first = session.submit_job(make_job(tmp_path / "a", name="alpha"))
    second = session.submit_job(make_job(tmp_path / "b", name="beta"))
    offered = complete(completer, "get_job_meta ")
    assert {first, second} <= set(offered)
    assert complete(completer, f"abort_job {first[:6]}") == [first]
    assert complete(completer, "metrics la") == ["last"]


def test_a_jobs_completion_shows_its_name_and_status(completer, session, tmp_path):
    job_id = session.submit_job(make_job(tmp_path / "a", name="alpha"))
    text = f"get_job_meta {job_id[:8]}"
    [only] = list(completer.get_completions(Document(text, len(text)), CompleteEvent()))
    assert "alpha" in only.display_text and only.display_meta_text == "SUBMITTED"


def test_job_ids_are_fetched_again_only_after_a_moment(completer, session, tmp_path):
    complete(completer, "get_job_meta ")  # fills the cache
    job_id = session.submit_job(make_job(tmp_path / "a"))
    assert job_id not in complete(completer, "get_job_meta ")  # cached for a moment
    completer.ctx.forget_cached()  # as submit_job in the shell does
    assert job_id in complete(completer, "get_job_meta ")


def test_targets_offer_the_server_and_connected_sites(completer):
    assert complete(completer, "ls s") == ["server"]  # no site is connected here
    assert complete(completer, "show_stats 3f2c c") == ["client"]
    assert complete(completer, "check_status ") == ["server", "client"]


def test_option_values_complete_by_their_kind(completer):
    assert complete(completer, "params 3f2c --kind t") == ["tag", "text"]
    assert complete(completer, "export_metrics 3f2c /tmp --format m") == ["mlflow"]


def test_local_paths_complete_from_this_machine(completer, tmp_path):
    (tmp_path / "my-job").mkdir()
    os.chdir(tmp_path)
    assert complete(completer, "submit_job my-") == ["job"]  # displayed as my-job/


def test_help_completes_command_names(completer):
    assert complete(completer, "help sub") == ["submit_job"]


def test_nothing_is_offered_past_the_last_argument(completer):
    assert complete(completer, "get_job_meta 3f2c ") == []
    assert complete(completer, "no_such_command ") == []


@pytest.mark.parametrize(
    ("text", "words", "started"),
    [
        ("", [], False),
        ("list_jobs", ["list_jobs"], True),
        ("list_jobs ", ["list_jobs"], False),
        ("grep server 'two words", ["grep", "server", "'two", "words"], True),
    ],
)
def test_lines_split_even_with_an_open_quote(text, words, started):
    assert split_for_completion(text) == (words, started)


def test_the_completer_survives_a_server_that_is_gone(completer, server):
    server.stop()
    completer.ctx.forget_cached()
    assert complete(completer, "get_job_meta ") == []
    assert complete(completer, "ls ") == ["server"]


@pytest.fixture(autouse=True)
def _cwd() -> object:
    here = Path.cwd()
    yield
    os.chdir(here)
