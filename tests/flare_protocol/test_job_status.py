"""The shared job vocabulary: NVIDIA FLARE's status strings and the job id form."""

from __future__ import annotations

import json
import uuid

import pytest

from flare_protocol.job_status import (
    JOB_ID_RE,
    JobStatus,
    is_finished,
    is_job_id,
    is_job_id_prefix,
)

S = JobStatus


def test_statuses_are_nvidia_flares_strings_and_compare_as_strings():
    assert [s.value for s in JobStatus] == [
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
    ]
    assert S.RUNNING == "RUNNING" and "FINISHED:COMPLETED" == S.FINISHED_COMPLETED
    assert str(S.FINISHED_ABORTED) == "FINISHED:ABORTED" == f"{S.FINISHED_ABORTED}"
    assert f"{S.RUNNING:>9}" == "  RUNNING"
    assert json.dumps({"status": S.RUNNING}) == '{"status": "RUNNING"}'
    assert {"RUNNING": 1}[S.RUNNING] == 1


def test_finished_ok_and_failed_sort_every_status_for_a_renderer():
    finished = {s for s in S if s.finished}
    assert finished == {s for s in S if s.value.startswith("FINISHED:")}
    assert {s for s in S if s.ok} == {S.FINISHED_COMPLETED}
    assert {s for s in S if s.failed} == finished - {S.FINISHED_COMPLETED, S.FINISHED_ABORTED}
    assert not any(s.failed or s.ok for s in (S.SUBMITTED, S.DISPATCHED, S.RUNNING))


def test_parse_tolerates_a_status_from_a_newer_server():
    assert S.parse("FINISHED:COMPLETED") is S.FINISHED_COMPLETED
    assert S.parse(S.RUNNING) is S.RUNNING
    for unknown in ("FINISHED:SOMETHING_NEW", "PAUSED", "running", "", None, 3):
        assert S.parse(unknown) is None


def test_is_finished_follows_flares_prefix_rule_for_known_and_unknown_statuses():
    assert is_finished("FINISHED:COMPLETED") and is_finished(S.FINISHED_ABANDONED)
    assert is_finished("FINISHED:SOMETHING_NEW")
    assert not is_finished("RUNNING") and not is_finished("") and not is_finished(None)


def test_job_ids_are_canonical_uuids_only():
    job_id = str(uuid.uuid4())
    assert is_job_id(job_id) and JOB_ID_RE.match(job_id)
    for bad in (
        job_id.upper(),
        job_id + "\n",
        " " + job_id,
        job_id[:-1],
        job_id.replace("-", ""),
        "../" + job_id[3:],
        None,
        42,
    ):
        assert not is_job_id(bad), bad


@pytest.mark.parametrize(
    "prefix", ["3", "3F2C", "3f2c0a4e-9b", "3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11"]
)
def test_a_job_id_prefix_is_hex_digits_and_hyphens(prefix):
    assert is_job_id_prefix(prefix)


@pytest.mark.parametrize("prefix", ["", "g", "3f2c\n", "x" * 37, "0" * 37, None])
def test_anything_else_is_not_a_job_id_prefix(prefix):
    assert not is_job_id_prefix(prefix)
