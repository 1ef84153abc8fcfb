"""Refusing a new default workspace that would hide an earlier prod_NN kit's jobs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from flare_protocol.errors import KitError
from flare_protocol.kit_workspace import (
    check_default_workspace,
    count_jobs,
    earlier_kits,
    earlier_workspace,
)


def _kit(project: Path, prod: int, name: str = "localhost", jobs: int = 0) -> Path:
    kit = project / f"prod_{prod:02d}" / name
    (kit / "startup").mkdir(parents=True)
    for _ in range(jobs):
        (kit / "workspace" / "jobs" / str(uuid.uuid4())).mkdir(parents=True)
    return kit


def test_only_folders_named_by_a_job_id_count_as_jobs(tmp_path):
    jobs = tmp_path / "ws" / "jobs"
    (jobs / "tmp").mkdir(parents=True)
    (jobs / "jobs.db").write_text("")
    (jobs / str(uuid.uuid4())).mkdir()
    (jobs / str(uuid.uuid4()).upper()).mkdir()
    assert count_jobs(tmp_path / "ws") == 1
    assert count_jobs(tmp_path / "missing") == 0


def test_earlier_kits_are_the_same_participants_newest_first(tmp_path):
    old, mid, new = (_kit(tmp_path, n) for n in (0, 1, 3))
    _kit(tmp_path, 2, "site-1")  # another participant
    _kit(tmp_path, 4)  # a later one
    assert earlier_kits(new) == [mid.resolve(), old.resolve()]
    assert earlier_kits(old) == []


def test_the_newest_earlier_workspace_with_jobs_is_named(tmp_path):
    _kit(tmp_path, 0, jobs=2)
    _kit(tmp_path, 1, jobs=0)  # provisioned, never used
    new = _kit(tmp_path, 2)
    workspace, jobs = earlier_workspace(new) or (None, 0)
    assert workspace == (tmp_path / "prod_00" / "localhost" / "workspace").resolve()
    assert jobs == 2
    with pytest.raises(KitError, match=r"(?s)has 2 job\(s\).*--workspace .*--new-workspace"):
        check_default_workspace(new, "flare server start")


def test_a_kit_whose_own_workspace_has_jobs_starts(tmp_path):
    _kit(tmp_path, 0, jobs=3)
    check_default_workspace(_kit(tmp_path, 1, jobs=1), "flare server start")


def test_a_kit_outside_a_prod_folder_or_without_earlier_jobs_starts(tmp_path):
    copied = tmp_path / "somewhere" / "localhost"
    copied.mkdir(parents=True)
    check_default_workspace(copied, "flare site start")
    _kit(tmp_path, 0)
    check_default_workspace(_kit(tmp_path, 1), "flare site start")
