"""The job lifecycle: NVIDIA FLARE's status strings and the one table of legal moves.

Theory of operation: a job is born ``SUBMITTED``; the scheduler ``DISPATCHED`` it to its
sites, which report it ``RUNNING``; every path ends in exactly one ``FINISHED:*`` status,
which is terminal. :data:`TRANSITIONS` is the only place that says which move is legal and
:func:`check_transition` the only function that enforces it; the store calls it before it
writes any status change. ``FINISHED:ABANDONED`` is accepted when read (NVIDIA FLARE writes
it) but nothing moves a job into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType

from flare_protocol.errors import InvalidArgumentError, InvalidTransition

__all__ = ["TRANSITIONS", "JobStatus", "check_transition", "is_finished", "parse_status"]


class JobStatus(str, Enum):
    """A job's status, spelled as NVIDIA FLARE spells it."""

    SUBMITTED = "SUBMITTED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    FINISHED_COMPLETED = "FINISHED:COMPLETED"
    FINISHED_ABORTED = "FINISHED:ABORTED"
    FINISHED_EXECUTION_EXCEPTION = "FINISHED:EXECUTION_EXCEPTION"
    FINISHED_ABNORMAL = "FINISHED:ABNORMAL"
    FINISHED_CAN_NOT_SCHEDULE = "FINISHED:CAN_NOT_SCHEDULE"
    FINISHED_FAILED_TO_RUN = "FINISHED:FAILED_TO_RUN"
    FINISHED_ABANDONED = "FINISHED:ABANDONED"

    def __str__(self) -> str:
        return self.value


S = JobStatus

#: Every legal move. A status missing from a value set cannot be reached from the key;
#: finished statuses map to the empty set (terminal).
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        S.SUBMITTED: frozenset({S.DISPATCHED, S.FINISHED_ABORTED, S.FINISHED_CAN_NOT_SCHEDULE}),
        S.DISPATCHED: frozenset(
            {S.RUNNING, S.FINISHED_ABORTED, S.FINISHED_FAILED_TO_RUN, S.FINISHED_ABNORMAL}
        ),
        S.RUNNING: frozenset(
            {
                S.FINISHED_COMPLETED,
                S.FINISHED_ABORTED,
                S.FINISHED_EXECUTION_EXCEPTION,
                S.FINISHED_ABNORMAL,
                S.FINISHED_FAILED_TO_RUN,
            }
        ),
        **{status: frozenset() for status in S if status.value.startswith("FINISHED:")},
    }
)


def parse_status(value: JobStatus | str) -> JobStatus:
    """The :class:`JobStatus` spelled ``value``.

    Raises:
        InvalidArgumentError: ``value`` is not one of NVIDIA FLARE's status strings.
    """
    try:
        return JobStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgumentError(
            f"unknown job status {value!r}; expected one of {known}", status=value
        ) from None


def is_finished(status: JobStatus | str) -> bool:
    """True for every ``FINISHED:*`` status (the terminal ones)."""
    return parse_status(status).value.startswith("FINISHED:")


def check_transition(old: JobStatus | str, new: JobStatus | str) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is in :data:`TRANSITIONS`.

    Raises:
        InvalidTransition: naming both statuses (attributes ``old`` and ``new``).
    """
    old_s, new_s = parse_status(old), parse_status(new)
    if new_s in TRANSITIONS[old_s]:
        return
    if is_finished(old_s):
        why = f"{old_s.value} is final"
    else:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old_s]))
        why = f"from {old_s.value} a job may only move to {allowed}"
    raise InvalidTransition(
        f"cannot move a job from {old_s.value} to {new_s.value}: {why}",
        old=old_s,
        new=new_s,
    )
