"""Typed results are frozen dataclasses that also read like FLARE's dicts."""

from __future__ import annotations

import dataclasses
import json

import pytest

from flare_admin import JobMeta, JobStatus, JobSummary, ServerInfo, SiteInfo, SystemInfo

META = {
    "job_id": "3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11",
    "name": "hello",
    "status": "RUNNING",
    "submitter_name": "admin@org_a.com",
    "submit_time": 1700000000.5,
    "min_clients": 2,
    "deploy_map": {"app": ["@ALL"]},
    "schedule_reason": "",
    "custom_key": [1, 2],
}


def test_job_meta_has_typed_attributes_and_every_key_of_the_server():
    meta = JobMeta.from_dict(META)
    assert meta.status == meta["status"] == "RUNNING"
    assert meta.min_clients == 2 and meta.submit_time == 1700000000.5
    assert meta["custom_key"] == [1, 2]
    assert set(meta) == set(META) and len(meta) == len(META)
    assert meta.get("missing") is None and "name" in meta
    assert not meta.finished


def test_job_meta_is_immutable():
    meta = JobMeta.from_dict(META)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.status = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        meta.deploy_map["app"] = []  # type: ignore[index]


def test_job_meta_to_dict_round_trips_through_json():
    assert json.loads(json.dumps(JobMeta.from_dict(META).to_dict())) == META


def test_a_finished_status_is_finished():
    assert JobMeta.from_dict({**META, "status": "FINISHED:ABORTED"}).finished


def test_status_stays_a_plain_string_and_job_status_gives_the_enum():
    meta = JobMeta.from_dict({**META, "status": "FINISHED:COMPLETED"})
    assert type(meta.status) is str and type(meta["status"]) is str
    assert meta.job_status is JobStatus.FINISHED_COMPLETED and meta.job_status.ok
    assert "job_status" not in meta  # a property, not a key of the meta
    newer = JobMeta.from_dict({**META, "status": "FINISHED:SOMETHING_NEW"})
    assert newer.job_status is None and newer.finished
    row = JobSummary("id", "hello", "RUNNING", "", 0.0)
    assert row.job_status is JobStatus.RUNNING and not row.finished


def test_a_summary_row_has_flares_keys():
    row = JobSummary("id", "hello", "SUBMITTED", "2026-01-01T00:00:00+00:00", 0.0)
    assert list(row)[:5] == ["job_id", "job_name", "status", "submit_time", "duration"]
    assert row["job_name"] == row.job_name == "hello"
    with pytest.raises(KeyError):
        row["nope"]


def test_system_info_nests_results_and_converts_them_to_dicts():
    info = SystemInfo(
        ServerInfo("localhost", "p", "started", 1.0),
        (SiteInfo("site-1", "org_a", 2.0),),
        (JobSummary("id", "n", "RUNNING", "", 3.0),),
    )
    plain = info.to_dict()
    assert plain["client_info"][0]["name"] == "site-1"
    assert plain["job_info"][0]["status"] == "RUNNING"
    assert info["server_info"]["status"] == "started"
    json.dumps(plain)


def test_a_malformed_meta_from_the_server_still_reads():
    meta = JobMeta.from_dict(
        {"job_id": 5, "deploy_map": ["x"], "mandatory_clients": 3, "min_clients": "2"}
    )
    assert meta.job_id == "5" and dict(meta.deploy_map) == {}
    assert meta.mandatory_clients == () and meta.min_clients is None
