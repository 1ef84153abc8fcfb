"""A command's grammar: parsing words into arguments, usage lines, and what comes next."""

from __future__ import annotations

import pytest

from flare_admin.shell.params import Arg, Grammar, Kind, Opt, UsageError

LIST_JOBS = Grammar(
    "list_jobs",
    args=(Arg("id_prefix", required=False),),
    opts=(
        Opt(("-d", "--detailed"), "detailed"),
        Opt(("-n", "--name"), "name_prefix", kind=Kind.TEXT, metavar="NAME_PREFIX"),
        Opt(("-m", "--max"), "limit", kind=Kind.INT, metavar="MAX"),
        Opt(("-r",), "reverse"),
    ),
)
SHOW = Grammar(
    "show_stats",
    args=(
        Arg("job", Kind.JOB),
        Arg("target_type", Kind.TARGET_TYPE, required=False, default="all"),
        Arg("sites", Kind.SITE, required=False, many=True),
    ),
)


def test_switches_and_options_may_come_in_any_order():
    assert LIST_JOBS.parse(["-r", "3f2c", "-m", "5", "-d"]) == {
        "detailed": True,
        "name_prefix": None,
        "limit": 5,
        "reverse": True,
        "id_prefix": "3f2c",
    }


def test_long_options_take_their_value_after_an_equals_sign():
    assert LIST_JOBS.parse(["--name=hello world", "--max=2"])["name_prefix"] == "hello world"


def test_defaults_fill_what_was_not_given():
    assert LIST_JOBS.parse([]) == {
        "detailed": False,
        "name_prefix": None,
        "limit": None,
        "reverse": False,
        "id_prefix": None,
    }


def test_many_takes_every_remaining_word():
    parsed = SHOW.parse(["3f2c", "client", "site-1", "site-2"])
    assert parsed == {"job": "3f2c", "target_type": "client", "sites": ["site-1", "site-2"]}


def test_after_a_double_dash_everything_is_positional():
    grep = Grammar("grep", args=(Arg("pattern"),), opts=(Opt(("-i",), "ignore_case"),))
    assert grep.parse(["--", "-i"]) == {"ignore_case": False, "pattern": "-i"}


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["-x"], "unknown option '-x' (options: -d, --detailed, -n, --name, -m, --max, -r)"),
        (["-m"], "option -m needs a value (MAX)"),
        (["-m", "five"], "--max must be a whole number, got 'five'"),
        (["-m", "-1"], "--max must be 0 or more, got -1"),
        (["-d=yes"], "unknown option '-d=yes'"),
        (["--detailed=yes"], "option -d takes no value"),
        (["a", "b"], "unexpected argument(s): b"),
    ],
)
def test_a_line_that_does_not_fit_names_the_word_at_fault(words, message):
    with pytest.raises(UsageError) as err:
        LIST_JOBS.parse(words)
    assert err.value.message.startswith(f"list_jobs: {message}")
    assert err.value.usage == "usage: list_jobs [-d] [-n NAME_PREFIX] [-m MAX] [-r] [ID_PREFIX]"


def test_a_missing_argument_is_named_with_its_help():
    with pytest.raises(UsageError, match="missing JOB: a job"):
        Grammar("get_job_meta", args=(Arg("job", Kind.JOB, "a job"),)).parse([])


def test_a_target_type_must_be_one_of_three():
    with pytest.raises(UsageError, match="must be one of server, client, all; got 'sites'"):
        SHOW.parse(["3f2c", "sites"])


def test_seconds_accept_fractions_but_not_negatives_or_nan():
    wait = Grammar("w", opts=(Opt(("-t",), "timeout", kind=Kind.SECONDS),))
    assert wait.parse(["-t", "1.5"]) == {"timeout": 1.5}
    for bad in ("-2", "nan", "inf", "soon"):
        with pytest.raises(UsageError):
            wait.parse(["-t", bad])


def test_usage_lists_options_then_arguments():
    assert SHOW.usage() == "show_stats JOB [TARGET_TYPE] [SITES ...]"


class TestWhatComesNext:
    """``expects``: which argument or option value the word under the cursor is."""

    def test_the_first_word_is_the_first_argument(self):
        assert SHOW.expects([], current_word_started=False) is SHOW.args[0]
        assert SHOW.expects(["3f"], current_word_started=True) is SHOW.args[0]

    def test_after_the_job_comes_the_target_type(self):
        assert SHOW.expects(["3f2c"], current_word_started=False) is SHOW.args[1]

    def test_a_many_argument_keeps_taking_words(self):
        assert SHOW.expects(["3f2c", "client", "site-1"], False) is SHOW.args[2]

    def test_after_an_option_that_takes_a_value_comes_its_value(self):
        expected = LIST_JOBS.expects(["-m"], current_word_started=False)
        assert isinstance(expected, Opt) and expected.dest == "limit"

    def test_switches_do_not_count_as_arguments(self):
        assert LIST_JOBS.expects(["-d", "-r"], current_word_started=False) is LIST_JOBS.args[0]

    def test_nothing_is_expected_once_every_argument_is_there(self):
        assert LIST_JOBS.expects(["3f2c"], current_word_started=False) is None
