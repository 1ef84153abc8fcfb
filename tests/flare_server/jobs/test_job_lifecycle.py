"""The job lifecycle table, tested without I/O (every allowed and every forbidden move)."""

from __future__ import annotations

import itertools

import pytest

from flare_protocol.errors import InvalidArgumentError, InvalidTransition
from flare_server.jobs.lifecycle import (
    TRANSITIONS,
    JobStatus,
    check_transition,
    is_finished,
    parse_status,
)

S = JobStatus
ALLOWED = {
    (S.SUBMITTED, S.DISPATCHED),
    (S.SUBMITTED, S.FINISHED_ABORTED),
    (S.SUBMITTED, S.FINISHED_CAN_NOT_SCHEDULE),
    (S.DISPATCHED, S.RUNNING),
    (S.DISPATCHED, S.FINISHED_ABORTED),
    (S.DISPATCHED, S.FINISHED_FAILED_TO_RUN),
    (S.DISPATCHED, S.FINISHED_ABNORMAL),
    (S.RUNNING, S.FINISHED_COMPLETED),
    (S.RUNNING, S.FINISHED_ABORTED),
    (S.RUNNING, S.FINISHED_EXECUTION_EXCEPTION),
    (S.RUNNING, S.FINISHED_ABNORMAL),
    (S.RUNNING, S.FINISHED_FAILED_TO_RUN),
}
ALL_PAIRS = list(itertools.product(JobStatus, repeat=2))


def test_statuses_are_nvidia_flare_strings() -> None:
    assert {s.value for s in JobStatus} == {
        "SUBMITTED",
        "DISPATCHED",
        "RUNNING",
        "FINISHED:COMPLETED",
        "FINISHED:ABORTED",
        "FINISHED:EXECUTION_EXCEPTION",
        "FINISHED:ABNORMAL",
        "FINISHED:CAN_NOT_SCHEDULE",
        "FINISHED:FAILED_TO_RUN",
        "FINISHED:ABANDONED",
    }
    assert JobStatus("FINISHED:COMPLETED") == "FINISHED:COMPLETED"


def test_table_has_exactly_the_contract_moves() -> None:
    table = {(old, new) for old, news in TRANSITIONS.items() for new in news}
    assert table == ALLOWED
    assert set(TRANSITIONS) == set(JobStatus)


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED), ids=lambda s: s.value)
def test_allowed_move_passes(old: JobStatus, new: JobStatus) -> None:
    check_transition(old, new)
    check_transition(old.value, new.value)


@pytest.mark.parametrize(
    ("old", "new"), [p for p in ALL_PAIRS if p not in ALLOWED], ids=lambda s: s.value
)
def test_forbidden_move_raises_naming_both(old: JobStatus, new: JobStatus) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition(old, new)
    assert old.value in str(info.value) and new.value in str(info.value)
    assert info.value.old is old and info.value.new is new


def test_finished_statuses_are_terminal() -> None:
    for status in JobStatus:
        assert is_finished(status) == status.value.startswith("FINISHED:")
        if is_finished(status):
            assert TRANSITIONS[status] == frozenset()


def test_abandoned_is_accepted_but_never_reached() -> None:
    assert parse_status("FINISHED:ABANDONED") is S.FINISHED_ABANDONED
    assert all(S.FINISHED_ABANDONED not in news for news in TRANSITIONS.values())


def test_unknown_status_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown job status 'DONE'"):
        check_transition("SUBMITTED", "DONE")
