"""The job lifecycle: the one table of legal moves between NVIDIA FLARE's job statuses.

Theory of operation: a job is born ``SUBMITTED``; the scheduler ``DISPATCHED`` it to its
sites, which report it ``RUNNING``; every path ends in exactly one ``FINISHED:*`` status,
which is terminal. :data:`TRANSITIONS` is the only place that says which move is legal and
:func:`check_transition` the only function that enforces it; the store calls it before it
writes any status change. ``FINISHED:ABANDONED`` is accepted when read (NVIDIA FLARE writes
it) but nothing moves a job into it. The statuses themselves (:class:`JobStatus`) live in
:mod:`flare_protocol.job_status`, shared with the admin library; unlike a reader there,
the server refuses a status it does not know (:func:`parse_status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from flare_protocol.errors import InvalidArgumentError, InvalidTransition
from flare_protocol.job_status import JobStatus

__all__ = ["TRANSITIONS", "JobStatus", "check_transition", "is_finished", "parse_status"]


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
        **{status: frozenset() for status in S if status.finished},
    }
)


def parse_status(value: JobStatus | str) -> JobStatus:
    """The :class:`JobStatus` spelled ``value``.

    Raises:
        InvalidArgumentError: ``value`` is not one of NVIDIA FLARE's status strings.
    """
    status = JobStatus.parse(value)
    if status is None:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgumentError(
            f"unknown job status {value!r}; expected one of {known}", status=value
        )
    return status


def is_finished(status: JobStatus | str) -> bool:
    """True for every ``FINISHED:*`` status (the terminal ones)."""
    return parse_status(status).finished


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
